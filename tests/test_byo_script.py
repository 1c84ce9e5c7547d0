"""Scripts someone else wrote (issue 11): run by the image and judged by lib/script_support.sh.

tests/assets/byo_*.py are plain Hugging Face Trainer scripts that do not import trainkit.
They run for real in the built image on CPU (tiny models made by
tests/assets/make_tiny_models.py, `--network none`, a non-root uid that is not 1000). The
launcher-side functions of lib/script_support.sh are called from bash, as
launch_training.sh calls them, on the folders those runs leave behind.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, copy_tiny_models, docker, run_in_image
from emulator import storage_emulator

USER = "4321:4321"  # neither root nor the image's own 1000
ENV = {"HF_HUB_OFFLINE": "1"}
# torchrun's rendezvous resolves the hostname; --network none has no DNS.
HOST = ("--hostname", "trainer", "--add-host", "trainer:127.0.0.1")
CLASSIFY = "/volume/byo_classify.py"
ROWS = 16  # training rows: 8 steps of 2 with one process, 4 with two
WORDS = ["the", "a", "movie", "film", "plot", "was", "is", "and", "it", "this", "very"]
CUE = {"pos": "great", "neg": "awful"}
# byo_classify.py's BYO_STEP_DELAY for runs a test stops mid-way: 8 steps of it leave time to see
# a checkpoint (or the first step) and `docker stop` before the last step.
STEP_DELAY = "0.8"
SLOW = ["--env", f"BYO_STEP_DELAY={STEP_DELAY}"]  # the launcher's flags for it
# The tokenizers of the tiny models (tests/conftest.py tiny_models) learn these words.
TINY_MODEL_TEXT = "\n".join([*WORDS, *CUE.values()]) + "\n"


def classify_args(out: str, *extra: str) -> list[str]:
    return [
        "--model_name_or_path=/volume/models/tiny-bert-2labels",
        "--train_file=/volume/data/train.csv",
        f"--output_dir={out}",
        "--do_train",
        "--per_device_train_batch_size=2",
        "--num_train_epochs=1",
        "--report_to=none",
        "--disable_tqdm=True",
        "--log_level=info",
        *extra,
    ]


def open_up(vol: Path) -> None:
    for path in [vol, *vol.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)


@pytest.fixture(scope="module")
def vol(image, tmp_path_factory, tiny_models) -> Path:
    """A volume with the byo scripts, a csv and the tiny models (tests/conftest.py)."""
    vol = tmp_path_factory.mktemp("byo-volume")
    (vol / "data").mkdir()
    rng = random.Random(0)
    with (vol / "data" / "train.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["review", "sentiment"])
        writer.writeheader()
        for _ in range(ROWS):
            label = rng.choice(sorted(CUE))
            words = rng.choices(WORDS, k=6)
            words.insert(3, CUE[label])
            writer.writerow({"review": " ".join(words), "sentiment": label})
    (vol / "data" / "vocab.txt").write_text(TINY_MODEL_TEXT)
    for asset in ("byo_classify.py", "byo_extra.py"):
        shutil.copy(ROOT / "tests" / "assets" / asset, vol)
    open_up(vol)
    copy_tiny_models(tiny_models(TINY_MODEL_TEXT), vol / "models", USER)
    return vol


# ------------------------------------------------------------------ the library, from bash


def lib(func: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Call FUNC of lib/script_support.sh as launch_training.sh would (common.sh first)."""
    script = (
        'set -euo pipefail; PROG=launch_training.sh; source lib/common.sh; source lib/script_support.sh; "$@"'
    )
    return subprocess.run(
        ["bash", "-c", script, "bash", func, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def resume_plan(src: Path, volume: Path, *args: str, facts: str = "") -> tuple[str, list[str], str]:
    """script_resume_plan's results: mode, extra arguments (and "config-copy-names=CHECKPOINT" for a
    config-file run), note. FACTS: what hf_script_args.py would have said (its KEY=VALUE lines)."""
    script = (
        'set -euo pipefail; source lib/common.sh; source lib/script_support.sh; script_facts_read "$FACTS"; '
        'script_resume_plan "$@"; '
        'printf "%s\\n" "$SCRIPT_RESUME_MODE" "$SCRIPT_RESUME_NOTE" "${SCRIPT_RESUME_ARGS[@]}" '
        '${SCRIPT_RESUME_CONFIG:+"config-copy-names=$SCRIPT_RESUME_CONFIG"}'
    )
    proc = subprocess.run(
        ["bash", "-c", script, "bash", str(src), str(volume), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "FACTS": facts},
    )
    mode, note, *extra = proc.stdout.splitlines()
    return mode, extra, note


def test_output_paths_outside_the_volume_are_refused_or_warned():
    for args in (
        ["--output_dir", "/tmp/out"],
        ["--output_dir=/app/out"],
        ["--logging_dir", "/volume/../tmp/x"],
        ["--output-dir", "/tmp/out"],  # HfArgumentParser's dash spelling
        ["--output-dir=/tmp/out"],
        ["--output_dir", "../tmp/out"],  # relative to the workdir /volume, yet outside it
        ["--model_dir", "/tmp/m"],  # our programs' final model (app/trainkit.py RunArguments)
        ["--model-dir=/app/m"],
    ):
        proc = lib("script_check_output_paths", "refuse", "--do_train", *args)
        assert proc.returncode == 1, args
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and "outside /volume" in lines[0] and "--allow-outside-volume" in lines[0], (
            lines
        )
    warned = lib("script_check_output_paths", "warn", "--output_dir", "/tmp/out")
    assert warned.returncode == 0 and "warning: --output_dir /tmp/out is outside /volume" in warned.stderr
    for args in (
        ["--output_dir", "/volume/out"],
        ["--output_dir=out/rel"],
        ["--cache_dir", "/tmp/cache", "--train_file", "/app/data.csv"],  # inputs, not outputs
        ["--resume_from_checkpoint", "/tmp/ckpt"],
        ["--output-dir", "/tmp/y", "--output_dir", "/volume/x"],  # argparse keeps the last: /volume/x
        ["--=x", "--output_dir", "out"],
    ):
        proc = lib("script_check_output_paths", "refuse", *args)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr)
    last_outside = lib(
        "script_check_output_paths", "refuse", "--output_dir", "/volume/x", "--output-dir", "/tmp/y"
    )
    assert last_outside.returncode == 1 and "--output-dir /tmp/y is outside" in last_outside.stderr
    # The one walker (submit_vertex_job.sh's check uses it too): the last of each output option, in order.
    # --seed is no output option; --logging_dir without a value is left out.
    mixed = "--output_dir A --model_dir=M --seed 1 --output-dir B --logging_dir"
    show = 'printf "%s\\n" "${SCRIPT_OUTPUT_NAMES[@]}" "${SCRIPT_OUTPUT_VALUES[@]}"'
    found = lib("eval", f"script_output_args {mixed}; {show}")
    assert found.stdout.splitlines() == ["model_dir", "output-dir", "M", "B"], found.stdout


def facts_lines(**facts: str) -> str:
    base = {"form": "json", "config": "a.json", "output_dir": "out", "output_dir_real": "/volume/out"}
    return "".join(f"{k}={v}\n" for k, v in {**base, **facts}.items())


def with_facts(facts: str, func: str, *args: str) -> subprocess.CompletedProcess:
    call = " ".join(shlex.quote(a) for a in (func, *args))
    return lib("eval", f'script_facts_read "$FACTS"; {call}', env={"FACTS": facts})


def test_facts_follow_a_symlink_out_of_the_volume_and_an_empty_output_dir(tmp_path):
    """hf_script_args.py follows symlinks (output_dir_real): link/x -> /tmp/x is outside; an empty
    --output_dir= is the workdir /volume itself (Trainer saves checkpoint-N there), not 'unknown'."""
    out = with_facts(
        facts_lines(output_dir="link/x", output_dir_real="/tmp/x"), "script_check_facts", "refuse"
    )
    lines = out.stderr.splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert "output_dir link/x (a symlink to /tmp/x) (in a.json) is outside /volume" in lines[0], lines
    assert with_facts(facts_lines(), "script_check_facts", "refuse").returncode == 0
    where = with_facts(
        facts_lines(output_dir="link/x", output_dir_real="/tmp/x"), "script_outputs_where", "/V"
    )
    assert where.stdout.strip().endswith("(outside /volume: lost with it)"), where.stdout
    empty = facts_lines(form="command-line", config="", output_dir="", output_dir_real="/volume")
    assert with_facts(empty, "script_outputs_where", "/V").stdout.strip() == "/V"
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    src = tmp_path / "s.py"
    src.write_text("trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)\n")
    mode, extra, _note = resume_plan(src, tmp_path, "--output_dir=", facts=empty)
    assert (mode, extra) == ("resume", ["--resume_from_checkpoint", "/volume/checkpoint-4"]), (mode, extra)


def test_the_last_line_names_where_the_outputs_went(tmp_path):
    where = lambda *args: lib("script_outputs_where", "/V", *args).stdout.strip()  # noqa: E731
    assert where("--output-dir=/volume/out/./run") == "/V/out/run"
    # A script that named no output folder (a plain loop) made no trainer_output: "the volume".
    assert where() == "/V"
    (tmp_path / "trainer_output").mkdir()  # TrainingArguments' default, relative to /volume
    assert lib("script_outputs_where", str(tmp_path)).stdout.strip() == f"{tmp_path}/trainer_output"
    for args in (["--output_dir", "/tmp/o"], ["--output_dir=/app/o"], ["--output_dir", "../o"]):
        assert where(*args).endswith(" inside the container (outside /volume: lost with it)"), args


def test_a_trainer_or_parser_in_the_scripts_own_module_counts(tmp_path):
    """--checkpoint-bucket is refused only for scripts that train no Trainer: one whose Trainer is in
    its own module beside it (train.py: `from mylib import run`) gets the hook, not a refusal."""
    (tmp_path / "mylib.py").write_text("from transformers import Trainer\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "loop.py").write_text("trainer = Seq2SeqTrainer(model)\n")
    (tmp_path / "torchloop.py").write_text("import os\nimport torch\nloss.backward()\n")
    cases = {"from mylib import run\n": 0, "  import pkg.loop\n": 0, "import torchloop\nimport json\n": 1}
    for n, (source, status) in enumerate(cases.items()):
        src = tmp_path / f"train{n}.py"
        src.write_text(source)
        assert lib("script_uses_trainer", str(src)).returncode == status, source
    assert lib("script_uses_trainer", str(tmp_path / "torchloop.py")).returncode == 1
    # The same for reading its arguments as HfArgumentParser does (a JSON config parsed in mylib).
    (tmp_path / "args_lib.py").write_text("parser = HfArgumentParser((TrainingArguments,))\n")
    (tmp_path / "cli.py").write_text("from args_lib import parser\n")
    assert lib("script_reads_hf_args", str(tmp_path / "cli.py")).returncode == 0
    assert lib("script_reads_hf_args", str(tmp_path / "torchloop.py")).returncode == 1
    (tmp_path / "args_lib.py").write_text(
        "trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)\n"
    )
    assert lib("script_handles_resume", str(tmp_path / "cli.py")).returncode == 0


def test_stop_note_depends_on_what_the_script_does(tmp_path):
    byo = ROOT / "tests" / "assets" / "byo_classify.py"
    ours = lib("script_stop_note", str(ROOT / "app" / "test_training_bert_base.py")).stdout.strip()
    assert ours == "saves a checkpoint first"
    jit = lib("script_stop_note", str(byo), "--enable_jit_checkpoint", "--output_dir", "x").stdout.strip()
    assert jit == "saves a checkpoint first: --enable_jit_checkpoint"
    off = lib("script_stop_note", str(byo), "--enable_jit_checkpoint=false").stdout.strip()
    assert off.startswith("not known to save on a stop: the steps since its last checkpoint are lost")
    plain = lib("script_stop_note", str(ROOT / "tests" / "assets" / "byo_extra.py")).stdout.strip()
    assert plain == "not known to save a checkpoint on a stop: its progress is lost unless it saves by itself"
    dashed = lib("script_stop_note", str(byo), "--enable-jit-checkpoint", "--output-dir", "x").stdout.strip()
    assert dashed == "saves a checkpoint first: --enable_jit_checkpoint"


def fake_checkpoint(folder: Path, step: int, max_steps: int, complete: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text("x")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))


def test_resume_plan_says_resume_or_start_over(tmp_path):
    byo = ROOT / "tests" / "assets" / "byo_classify.py"
    out = tmp_path / "out"
    args = ["--output_dir", "/volume/out", "--do_train"]
    mode, extra, note = resume_plan(byo, tmp_path, *args)
    assert (mode, extra) == ("restart", []) and "FROM STEP 0: no complete checkpoint" in note
    fake_checkpoint(out / "checkpoint-4", 4, 8)
    # Dash spellings (HfArgumentParser accepts them): found, and answered in the same spelling.
    _, extra, _ = resume_plan(byo, tmp_path, "--output-dir", "/volume/out", "--do-train")
    assert extra == ["--resume_from_checkpoint", "/volume/out/checkpoint-4"]  # (the fallback's spelling)
    facts = "form=command-line\noutput_dir=/volume/out\nspelling=dash\nequals=true\n"
    _, extra, _ = resume_plan(byo, tmp_path, "--output-dir=/volume/out", facts=facts)
    assert extra == ["--resume-from-checkpoint=/volume/out/checkpoint-4"]
    facts = "form=json\nconfig=/volume/args.json\noutput_dir=out\nspelling=underscore\n"
    mode, extra, note = resume_plan(byo, tmp_path, "/volume/args.json", facts=facts)
    assert (mode, extra) == ("resume", ["config-copy-names=/volume/out/checkpoint-4"]), note  # no flag
    assert "a copy of /volume/args.json with resume_from_checkpoint: /volume/out/checkpoint-4" in note
    fake_checkpoint(out / "checkpoint-6", 6, 8, complete=False)  # killed mid-save: skipped
    mode, extra, note = resume_plan(byo, tmp_path, *args)
    assert mode == "resume" and extra == ["--resume_from_checkpoint", "/volume/out/checkpoint-4"], note
    assert "resume from step 4" in note
    mode, extra, _ = resume_plan(byo, tmp_path, *args, "--resume_from_checkpoint=/volume/out/checkpoint-2")
    assert (mode, extra) == ("resume", [])  # the caller's own choice stands
    mode, extra, note = resume_plan(ROOT / "tests" / "assets" / "byo_extra.py", tmp_path, *args)
    assert (
        (mode, extra) == ("restart", [])
        and "byo_extra.py is not known to resume" in note
        and "FROM STEP 0 unless" in note
    )
    mode, extra, note = resume_plan(ROOT / "app" / "test_training_bert_base.py", tmp_path)
    assert (mode, extra) == ("resume", []) and "by itself" in note
    # trainkit's folders: complete only with the marker, even when trainer_state.json exists.
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "checkpoint-complete.json").write_text("{}")
    _, extra, _ = resume_plan(byo, tmp_path, *args)
    assert extra == ["--resume_from_checkpoint", "/volume/out/checkpoint-2"]


def test_run_outcome_says_finished_only_when_the_run_did(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    start = str(int(time.time()) - 1)
    args = ["--output_dir", "/volume/out"]
    (out / "all_results.json").write_text("{}")
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 1355, "max_steps": 20000}))
    proc = lib("script_run_outcome", str(tmp_path), "0", start, *args)
    assert (proc.returncode, proc.stdout.strip()) == (1, "stopped at step 1355 of 20000 (exit 0)")
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 20000, "max_steps": 20000}))
    proc = lib("script_run_outcome", str(tmp_path), "0", start, *args)
    assert (proc.returncode, proc.stdout.strip()) == (0, "finished: step 20000 of 20000")
    # An earlier run's files do not count for this one.
    later = str(int(time.time()) + 5)
    proc = lib("script_run_outcome", str(tmp_path), "143", later, *args)
    assert (proc.returncode, proc.stdout.strip()) == (1, "ended with exit 143")


# ------------------------------------------------------------------ the image


def start(image, vol: Path, name: str, *cmd: str, env=None, extra=()) -> None:
    args = ["run", "-d", "--name", name, "--network", "none", "--user", USER, "-v", f"{vol}:/volume"]
    for key, value in {**ENV, **(env or {})}.items():
        args += ["-e", f"{key}={value}"]
    docker(*args, *extra, image.tag, *cmd)


def stop_after_first_checkpoint(
    image, vol: Path, out: Path, *cmd: str, env=None, extra=()
) -> tuple[int, str]:
    """Run CMD detached, `docker stop` it once a complete checkpoint exists; exit code and logs."""
    name = f"hfgpu-byo-{uuid.uuid4().hex[:8]}"
    try:
        start(image, vol, name, *cmd, env={"BYO_STEP_DELAY": STEP_DELAY, **(env or {})}, extra=extra)
        deadline = time.monotonic() + 300
        while not list(out.glob("checkpoint-*/trainer_state.json")):
            assert time.monotonic() < deadline, docker("logs", name, check=False).stderr[-3000:]
            time.sleep(0.2)
        docker("stop", "-t", "60", name, timeout=120)
        code = int(docker("wait", name, timeout=120).stdout.strip())
        logs = docker("logs", name)
        return code, logs.stdout + logs.stderr
    finally:
        docker("rm", "-f", name, check=False)


def state(path: Path) -> dict:
    return json.loads(path.read_text())


def test_stopped_single_process_run_exits_143_and_resumes_at_its_checkpoint(image, vol):
    """transformers' --enable_jit_checkpoint saves on SIGTERM and returns normally: exit 0
    from the script, yet `train` says 143, and the outcome is "stopped", not "finished"."""
    out = vol / "jit"
    args = classify_args("/volume/jit", "--save_steps=2", "--enable_jit_checkpoint")
    started = str(int(time.time()))
    code, logs = stop_after_first_checkpoint(image, vol, out, "train", CLASSIFY, *args)
    assert code == 143, logs[-3000:]
    assert "train: stopped by SIGTERM (the program exited 0); exit 143" in logs
    outcome = lib("script_run_outcome", str(vol), str(code), started, *args)
    assert outcome.returncode == 1 and outcome.stdout.startswith("stopped at step "), outcome.stdout
    stopped_at = state(out / "trainer_state.json")["global_step"]
    assert 2 <= stopped_at < 8

    mode, extra, note = resume_plan(vol / "byo_classify.py", vol, *args)
    assert mode == "resume", note
    step = int(extra[1].rsplit("-", 1)[1])
    assert step >= 2 and f"resume from step {step}" in note
    started = str(int(time.time()))
    proc = run_in_image(
        image.tag, "train", CLASSIFY, *args, *extra, user=USER, volume=vol, env=ENV, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"byo: train begins at step {step} of 8" in proc.stdout
    outcome = lib("script_run_outcome", str(vol), "0", started, *args)
    assert (outcome.returncode, outcome.stdout.strip()) == (0, "finished: step 8 of 8")


def test_two_cpu_processes_train_as_one_job_and_a_stop_exits_143(image, vol):
    """--nproc 2 without a GPU: one job of 2 x 2 per step (4 steps, not 8 twice); a stopped
    torchrun run exits 143 like one process (torchrun itself exits 1); the rerun resumes."""
    out = vol / "ddp"
    args = classify_args("/volume/ddp", "--save_steps=1")
    env = {"NPROC_PER_NODE": "2"}
    code, logs = stop_after_first_checkpoint(image, vol, out, "train", CLASSIFY, *args, env=env, extra=HOST)
    assert logs.count("byo: train begins at step 0 of 4") == 1, logs[-3000:]  # one job: rank 0 speaks
    assert "(w. parallel, distributed & accumulation) = 4" in logs
    assert code == 143, logs[-3000:]
    assert "ACCELERATE_USE_CPU=true" in logs

    mode, extra, note = resume_plan(vol / "byo_classify.py", vol, *args)
    assert mode == "resume", note
    step = int(extra[1].rsplit("-", 1)[1])
    proc = run_in_image(
        image.tag, "train", CLASSIFY, *args, *extra, user=USER, volume=vol, env={**ENV, **env}, extra=HOST
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"byo: train begins at step {step} of 4" in proc.stdout
    final = state(out / "trainer_state.json")
    assert (final["global_step"], final["max_steps"]) == (4, 4)


def tiny_wheel(folder: Path, name: str = "hfgpu_byo_extra") -> Path:
    """A pure-Python wheel NAME (as hfgpu-byo-extra) that depends on numpy (already in the image)."""
    version = "1.0"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 'extra-ok'\n",
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\n"
            f"Version: {version}\nRequires-Dist: numpy\n"
        ),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def test_an_extra_package_installs_into_the_volume_and_persists_offline(image, tmp_path):
    vol = tmp_path / "vol"
    wheel = tiny_wheel(vol / "wheels")
    (vol / "requirements.txt").write_text("--no-index\n--find-links /volume/wheels\nhfgpu-byo-extra\n")
    shutil.copy(ROOT / "tests" / "assets" / "byo_extra.py", vol)
    open_up(vol)
    req = {"HFGPU_PIP_REQUIREMENTS": "/volume/requirements.txt"}
    first = run_in_image(image.tag, "train", "/volume/byo_extra.py", user=USER, volume=vol, env=req)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "byo-extra: extra-ok from /volume/.local/lib/python3" in first.stdout
    site = next((vol / ".local" / "lib").glob("python3*/site-packages"))
    assert sorted(p.name for p in site.iterdir()) == [
        "hfgpu_byo_extra",
        "hfgpu_byo_extra-1.0.dist-info",
    ]  # no numpy
    wheel.unlink()  # later runs cannot install it again: they reuse the volume's copy
    again = run_in_image(image.tag, "train", "/volume/byo_extra.py", user=USER, volume=vol, env=req)
    assert again.returncode == 0 and "byo-extra: extra-ok" in again.stdout, again.stderr[-3000:]
    # Private by default (issue 10.9: the entrypoint's umask is HFGPU_UMASK, default 077): another
    # uid cannot see what 4321 installed. Sharing is asked for (launcher --share = HFGPU_UMASK=022).
    other_uid = run_in_image(image.tag, "python3", "/volume/byo_extra.py", user="5555:5555", volume=vol)
    assert other_uid.returncode != 0, other_uid.stdout
    assert "No module named 'hfgpu_byo_extra'" in other_uid.stderr, other_uid.stderr[-2000:]
    shared = tmp_path / "shared"
    tiny_wheel(shared / "wheels")
    (shared / "requirements.txt").write_text("--no-index\n--find-links /volume/wheels\nhfgpu-byo-extra\n")
    shutil.copy(ROOT / "tests" / "assets" / "byo_extra.py", shared)
    open_up(shared)
    share = {**req, "HFGPU_UMASK": "022"}
    installed = run_in_image(image.tag, "train", "/volume/byo_extra.py", user=USER, volume=shared, env=share)
    assert installed.returncode == 0, installed.stderr[-3000:]
    plain = run_in_image(image.tag, "python3", "/volume/byo_extra.py", user="5555:5555", volume=shared)
    assert plain.returncode == 0 and "extra-ok" in plain.stdout, plain.stderr[
        -2000:
    ]  # shared: any uid reads it
    home = run_in_image(image.tag, "bash", "-c", "echo $HOME; touch ~/kept", user=USER, volume=vol)
    assert home.stdout.strip() == "/volume/.home/4321" and (vol / ".home" / "4321" / "kept").is_file()
    # A plain `pip install` (no --user) as a non-root uid lands in the volume's user site too.
    tiny_wheel(vol / "wheels", "hfgpu_byo_other")
    open_up(vol)
    cmd = "pip install -q --no-index --find-links /volume/wheels hfgpu-byo-other"
    cmd += " && python3 -c 'import hfgpu_byo_other'"
    other = run_in_image(image.tag, "bash", "-c", cmd, user=USER, volume=vol)
    assert other.returncode == 0 and (site / "hfgpu_byo_other").is_dir(), other.stderr[-2000:]


def test_evaluate_loads_a_metric_from_a_folder_in_the_volume_offline(image, tmp_path):
    """docs/bring-your-own-script.md's metrics recipe: VOLUME/accuracy/accuracy.py."""
    vol = tmp_path / "vol"
    (vol / "accuracy").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "assets" / "byo_accuracy_metric.py", vol / "accuracy" / "accuracy.py")
    open_up(vol)
    code = 'import evaluate; print(evaluate.load("accuracy").compute(predictions=[1, 0], references=[1, 1]))'
    proc = run_in_image(image.tag, "python3", "-c", code, user=USER, volume=vol, env=ENV, timeout=120)
    assert proc.returncode == 0 and "'accuracy': 0.5" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------ bad inputs: one line each

BAD_INPUTS = [
    # (environment, command, what the one line must say)
    ({}, ["train"], "train: error: no script given"),
    ({}, ["train", "/volume/nope.py"], "train: error: script not found: /volume/nope.py"),
    (
        {"NPROC_PER_NODE": "two"},
        ["train", "/volume/byo_extra.py"],
        "NPROC_PER_NODE must be a positive number",
    ),
    ({"NNODES": "2"}, ["train", "/volume/byo_extra.py"], "NNODES=2 needs MASTER_ADDR"),
    (
        {"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "x"},
        ["train", "/volume/byo_extra.py"],
        "NODE_RANK must be",
    ),
    ({"MASTER_PORT": "http"}, ["train", "/volume/byo_extra.py"], "MASTER_PORT must be a port number"),
    (
        {"HFGPU_PIP_REQUIREMENTS": "/volume/missing.txt"},
        ["touch", "/volume/ran"],
        "entrypoint: error: HFGPU_PIP_REQUIREMENTS=/volume/missing.txt: no such readable file",
    ),
    (
        {"HFGPU_PIP_REQUIREMENTS": "/volume/conflict.txt"},
        ["touch", "/volume/ran"],
        "conflicts with the image's locked versions (transformers==",
    ),
]


@pytest.mark.parametrize(
    ("env", "cmd", "says"), BAD_INPUTS, ids=[" ".join(c) + str(e) for e, c, _ in BAD_INPUTS]
)
def test_bad_inputs_to_the_entrypoint_and_train(image, tmp_path, env, cmd, says):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "conflict.txt").write_text("--no-index\ntransformers==4.0.0\n")
    shutil.copy(ROOT / "tests" / "assets" / "byo_extra.py", vol)
    open_up(vol)
    proc = run_in_image(image.tag, *cmd, user=USER, volume=vol, env=env, timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], (proc.returncode, proc.stderr)
    assert not (vol / "ran").exists()  # the command did not run
    if "conflict" in says:
        assert "PIP_CONSTRAINT=/opt/venv/constraints.txt" in lines[0] and "requirements.lock" in lines[0]
        assert not list(vol.glob(".local/lib/*/site-packages/transformers"))  # nothing half-installed


# ------------------------------------------------------------------ through the launcher

LAUNCHER = ROOT / "launch_training.sh"
ENV_PROBE = """
import os, sys
out = sys.argv[sys.argv.index("--output_dir") + 1]
print("byo-env:", os.environ.get("BYO_GREETING"), "out:", out, flush=True)
"""


def launcher_cmd(image, vol: Path, name: str, *args: str) -> list[str]:
    """launch_training.sh on CPU, offline, as the launcher's caller (this test's uid)."""
    return [str(LAUNCHER), "--image", image.tag, "--volume", str(vol), "--gpus", "none", "--network", "none",
            "--container-name", name, *args]  # fmt: skip


def launcher_env() -> dict[str, str]:
    return {**os.environ, "CONFIG_FILE": "/dev/null", "HFGPU_MIN_FREE_GB": "1"}


def launch(image, vol: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    name = f"hfgpu-byo-{uuid.uuid4().hex[:8]}"
    return subprocess.run(
        launcher_cmd(image, vol, name, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=launcher_env(),
    )


def launch_then_stop(image, vol: Path, ready, *args: str) -> tuple[int, str]:
    """Run the launcher in the foreground; `docker stop` its container once ready(log) holds (the
    first time only); wait for the launcher. Its exit status and its whole output."""
    name = f"hfgpu-byo-{uuid.uuid4().hex[:8]}"
    log = vol / f"{name}.launcher.log"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(
                launcher_cmd(image, vol, name, *args),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=launcher_env(),
            )
        deadline = time.monotonic() + 300
        while not ready(log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        docker("stop", "-t", "60", name, timeout=120)
        code = proc.wait(timeout=600)
        return code, log.read_text()
    finally:
        docker("rm", "-f", name, check=False)


def test_launcher_refuses_outputs_outside_the_volume_and_passes_env(image, vol):
    (vol / "byo_env.py").write_text(ENV_PROBE)
    open_up(vol)
    args = ["--env", "BYO_GREETING=hello", "byo_env.py", "--", "--output_dir", "/tmp/out"]
    refused = launch(image, vol, *args)
    assert refused.returncode == 1 and refused.stdout == "", refused.stderr
    assert refused.stderr.splitlines() == [
        "launch_training.sh: error: --output_dir /tmp/out is outside /volume, so it would be lost with the "
        "container; use a path under /volume (or a relative one), or pass --allow-outside-volume"
    ]
    allowed = launch(image, vol, "--allow-outside-volume", *args)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert (
        "warning: --output_dir /tmp/out is outside /volume: it is lost with the container" in allowed.stderr
    )
    assert "byo-env: hello out: /tmp/out" in allowed.stdout
    # No trainer_state.json to judge by: the exit status is all the launcher has, and it says so.
    assert "finished (exit 0; it wrote no trainer_state.json to check)" in allowed.stderr.splitlines()[-1]


def test_launcher_stop_is_not_finished_and_a_restart_resumes_at_the_checkpoint(image, vol):
    args = classify_args("/volume/lr", "--save_steps=2")
    has_checkpoint = lambda _log: bool(list((vol / "lr").glob("checkpoint-*/trainer_state.json")))  # noqa: E731
    code, text = launch_then_stop(image, vol, has_checkpoint, *SLOW, "byo_classify.py", "--", *args)
    assert code == 143, text[-3000:]
    assert "not known to save on a stop: the steps since its last checkpoint are lost" in text
    last = text.strip().splitlines()[-1]
    assert " stopped at step " in last and "of 8 (exit 143)" in last and "finished" not in last, last

    # Again with --restart-on-preemption: stopped once more after a checkpoint of this run, it is
    # started again with --resume_from_checkpoint and ends at the last step.
    started = time.time()

    def new_checkpoint(_log: str) -> bool:
        return any(p.stat().st_mtime >= started for p in (vol / "lr").glob("checkpoint-*/trainer_state.json"))

    restart = ["--restart-on-preemption", *SLOW, "byo_classify.py", "--", *args]
    code, text = launch_then_stop(image, vol, new_checkpoint, *restart)
    assert code == 0, text[-3000:]
    note = next(line for line in text.splitlines() if "exited 143; starting it again" in line)
    assert "to resume from step " in note and "(--resume_from_checkpoint /volume/lr/checkpoint-" in note, note
    step = int(note.split("to resume from step ")[1].split()[0])
    assert f"byo: train begins at step {step} of 8" in text
    assert "finished: step 8 of 8; outputs in" in text.strip().splitlines()[-1]


def test_launcher_restart_without_a_checkpoint_says_it_starts_over(image, vol):
    args = classify_args("/volume/so", "--save_strategy=no")
    restart = ["--restart-on-preemption", *SLOW, "byo_classify.py", "--", *args]
    code, text = launch_then_stop(image, vol, lambda log: "byo: train begins at step 0" in log, *restart)
    assert code == 0, text[-3000:]
    assert (
        "exited 143; starting it again FROM STEP 0: no complete checkpoint in its output folder yet (1/10)"
        in text
    )
    assert text.count("byo: train begins at step 0 of 8") == 2
    assert "finished: step 8 of 8" in text.strip().splitlines()[-1]


# ------------------------------------------------------------------ issue 21: arguments as HF reads them

HELPER_CASES = """
import json, sys
sys.path.insert(0, "/app")
import hf_script_args as h
cases = [
    ["--output-dir", "/volume/d", "--save-steps", "5", "--model_name_or_path", "m", "--do_train"],
    ["--output_dir=/volume/u", "--save_strategy=no", "--enable_jit_checkpoint"],
    ["--my_own_flag", "x", "--resume-from-checkpoint", "/volume/u/checkpoint-2"],
    ["/volume/args.json"],
    ["args.yaml"],
    ["both.yaml"],
    ["--save_strategy", "bogus"],
    ["--help", "--output-dir", "/volume/h"],  # the script's own --help is not the reader's
    ["--output_dir", "link/x"],  # link -> /tmp: the files land outside the volume
    ["--output-d", "/tmp/x", "--save_strategy=no", "--resume_from_c", "y"],  # argparse takes abbreviations
]
for args in cases:
    print(json.dumps(h.describe(args)))
"""


def test_the_image_reads_arguments_as_hf_argument_parser_does(image, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "args.json").write_text(
        json.dumps({"output_dir": "/tmp/j", "save_steps": 3, "model_name_or_path": "m"})
    )
    (vol / "args.yaml").write_text("output_dir: y\nsave_total_limit: 2\ntrain_file: t.csv\n")
    (vol / "both.yaml").write_text("output_dir: a\noutput-dir: /tmp/b\n")
    open_up(vol)
    (vol / "link").symlink_to("/tmp")
    proc = run_in_image(image.tag, "python3", "-c", HELPER_CASES, user=USER, volume=vol, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dash, under, extra, js, yml, both, bogus, helped, linked, abbrev = (
        json.loads(line) for line in proc.stdout.splitlines()
    )
    assert (abbrev["output_dir"], abbrev["output_dir_given"], abbrev["save_strategy"]) == (
        "/tmp/x",
        True,
        "no",
    )
    assert abbrev["resume_from_checkpoint"] is None  # maybe the script's own exact flag: not ours
    assert (linked["output_dir"], linked["output_dir_real"], dash["output_dir_real"]) == (
        "link/x",
        "/tmp/x",
        "/volume/d",
    )
    assert helped["output_dir"] == "/volume/h"
    assert (dash["output_dir"], dash["save_steps"], dash["spelling"], dash["equals"]) == (
        "/volume/d",
        5,
        "dash",
        False,
    )
    assert (under["output_dir"], under["save_strategy"], under["enable_jit_checkpoint"]) == (
        "/volume/u",
        "no",
        True,
    )
    assert under["equals"] is True and under["spelling"] == "underscore"
    assert (
        extra["resume_from_checkpoint"] == "/volume/u/checkpoint-2"
        and extra["output_dir"] == "trainer_output"
    )
    assert (js["form"], js["output_dir"], js["save_steps"], js["problem"]) == ("json", "/tmp/j", 3, None)
    assert (yml["form"], yml["output_dir"], yml["save_total_limit"]) == ("yaml", "y", 2)
    assert "key 'output-dir' is not read by HfArgumentParser" in both["problem"]
    assert "invalid choice: 'bogus'" in bogus["problem"]


def steps_run(text: str) -> list[int]:
    return [int(line.split()[-1]) for line in text.splitlines() if line.startswith("byo: step ")]


def form_args(vol: Path, form: str, out: str) -> list[str]:
    """The same run in FORM: dash flags, one JSON file or one YAML file (upstream's three forms)."""
    args = [*classify_args(out, "--save_steps=2", "--logging_steps=1")]
    if form == "dash-flags":
        return [a.replace("_", "-") if a.startswith("--") else a for a in args]
    values = {}
    for arg in args:
        key, _, value = arg[2:].partition("=")
        values[key] = True if not value else int(value) if value.isdigit() else value
    if form == "json":
        (vol / f"{out.rsplit('/', 1)[1]}.json").write_text(json.dumps(values))
        return [f"{out.rsplit('/', 1)[1]}.json"]
    text = "".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items())
    (vol / f"{out.rsplit('/', 1)[1]}.yaml").write_text(text)
    return [f"/volume/{out.rsplit('/', 1)[1]}.yaml"]


@pytest.mark.parametrize("form", ["dash-flags", "json", "yaml"])
def test_launcher_restart_resumes_each_form_at_its_checkpoint(image, vol, form):
    """A stop after a checkpoint, --restart-on-preemption: the run resumes at that checkpoint in the
    script's own form (a private config copy for JSON/YAML, the dash spelling for dash flags), ends
    at step 8 of 8, and no step up to the checkpoint runs twice."""
    out = f"/volume/form-{form}"
    args = form_args(vol, form, out)
    open_up(vol)
    has_checkpoint = lambda _log: bool(list((vol / out[8:]).glob("checkpoint-*/trainer_state.json")))  # noqa: E731
    restart = ["--restart-on-preemption", *SLOW, "byo_classify.py", "--", *args]
    code, text = launch_then_stop(image, vol, has_checkpoint, *restart)
    assert code == 0, text[-3000:]
    note = next(line for line in text.splitlines() if "exited 143; starting it again" in line)
    step = int(note.split("to resume from step ")[1].split()[0])
    if form == "dash-flags":
        assert f"(--resume-from-checkpoint {out}/checkpoint-{step})" in note, note
    else:
        assert f"a copy of {args[0]} with resume_from_checkpoint: {out}/checkpoint-{step}" in note, note
        copies = list((vol / ".hfgpu" / "resume").glob(f"*.{form}"))
        assert copies and all(p.stat().st_mode & 0o777 == 0o600 for p in copies)
    assert f"byo: train begins at step {step} of 8" in text, text[-3000:]
    ran = steps_run(text)
    assert ran[-1] == 8 and sorted(set(ran)) == list(range(1, 9)), ran
    assert all(ran.count(s) == 1 for s in range(1, step + 1)), ran  # nothing up to the checkpoint twice
    last = text.strip().splitlines()[-1]
    assert f"finished: step 8 of 8; outputs in {vol}/form-{form}," in last, last


def test_launcher_refuses_what_the_script_would_lose_or_stop_on(image, vol):
    (vol / "out-tmp.json").write_text(json.dumps({"output_dir": "/tmp/lost", "do_train": True}))
    (vol / "both.yaml").write_text("output_dir: kept\noutput-dir: /volume/other\n")
    open_up(vol)
    cases = [
        (["byo_classify.py", "--", "out-tmp.json"], "output_dir /tmp/lost (in out-tmp.json) is outside"),
        (["byo_classify.py", "--", "both.yaml"], "key 'output-dir' is not read by HfArgumentParser"),
        (["byo_classify.py", "--", "--output-dir=/tmp/x", "--do_train"], "--output-dir /tmp/x is outside"),
        (
            ["--checkpoint-bucket", "gs://hfgpu-test/x", "byo_extra.py"],
            "byo_extra.py does not train with a transformers Trainer, so nothing would reach gs://hfgpu-test/x",
        ),
    ]
    for args, says in cases:
        proc = launch(image, vol, *args)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 1 and proc.stdout == "", (args, proc.stderr)
        assert len(lines) == 1 and "error: " in lines[0] and says in lines[0], (args, lines)


# ------------------------------------------------ issue 21: any Trainer script's checkpoints in a bucket

BUCKET = "hfgpu-byo-checkpoints"


@pytest.fixture(scope="module")
def emulator():
    """gcp-storage-emulator on loopback with one bucket (tests/emulator.py, as tests/test_bucket.py)."""
    from google.cloud import storage

    with storage_emulator(BUCKET) as host:
        yield host, storage.Client()


def test_a_plain_trainer_script_checkpoints_to_the_bucket_and_resumes_from_it(image, vol, emulator):
    """byo_classify.py imports nothing of ours: with --checkpoint-bucket the image's hook mirrors its
    checkpoints (marker last); stopped, its output folder deleted, it resumes from the bucket to 8 of 8."""
    host, client = emulator
    prefix = f"byo-{uuid.uuid4().hex[:8]}"
    args = classify_args("/volume/bk", "--save_steps=2")
    common = ["--network", "host", "--env", f"STORAGE_EMULATOR_HOST={host}",
              "--checkpoint-bucket", f"gs://{BUCKET}/{prefix}"]  # fmt: skip

    def complete_in_bucket(_log: str = "") -> list[int]:
        names = [b.name for b in client.list_blobs(BUCKET, prefix=f"{prefix}/checkpoint-")]
        return sorted(
            int(n.split("/")[1].split("-")[1]) for n in names if n.endswith("/checkpoint-complete.json")
        )

    slow = [*common, "--env", "BYO_STEP_DELAY=1.0", "byo_classify.py", "--", *args]
    code, text = launch_then_stop(image, vol, complete_in_bucket, *slow)
    assert code == 143, text[-3000:]
    assert "checkpoint bucket: the image mirrors the checkpoints of every transformers Trainer" in text
    assert f"hfgpu bucket hook: mirroring the checkpoints of /volume/bk to gs://{BUCKET}/{prefix}" in text
    saved = complete_in_bucket()
    assert saved and all(s % 2 == 0 for s in saved), saved
    shutil.rmtree(vol / "bk")  # the VM (and its disk) is gone

    again = launch(image, vol, *common, "byo_classify.py", "--", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    step = max(saved)
    out = again.stdout + again.stderr
    assert f"resuming from checkpoint-{step}, downloaded from gs://{BUCKET}/{prefix}" in out, out[-3000:]
    assert f"byo: train begins at step {step} of 8" in out
    assert "finished: step 8 of 8" in again.stderr.strip().splitlines()[-1]
    finals = {b.name.split("/", 1)[1] for b in client.list_blobs(BUCKET, prefix=f"{prefix}/")}
    assert {"all_results.json", "model.safetensors"} <= finals, sorted(finals)


def test_dry_run_prints_the_command_that_runs_on_the_same_engine(image, vol, tmp_path):
    """--dry-run's output, pasted into a shell, starts the same container on the same engine; memlock
    is decided before printing (probed once per engine, then cached): the printed command never
    carries a --ulimit memlock=-1 that this engine refuses."""
    name = f"hfgpu-byo-{uuid.uuid4().hex[:8]}"
    cache = tmp_path / "cache"
    engine_id = docker("info", "--format", "{{.ID}}").stdout.strip()
    env = {**launcher_env(), "XDG_CACHE_HOME": str(cache), "DOCKER_HOST": "unix:///var/run/docker.sock"}
    cmd = [*launcher_cmd(image, vol, name, "--dry-run", "byo_extra.py")]
    cmd[cmd.index("--network") + 1] = "none"
    (vol / "byo_extra_ok.py").write_text("print('byo-dry: ran', flush=True)\n")
    open_up(vol)
    cmd[-1] = "byo_extra_ok.py"
    dry = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert dry.returncode == 0, dry.stderr
    probe = ["run", "--rm", "--network", "none", "--ulimit", "memlock=-1", "--entrypoint", "true", image.tag]
    granted = docker(*probe, check=False).returncode == 0  # this test machine's engine refuses it
    cached = cache / "hfgpu-engines" / f"memlock-{re.sub('[^A-Za-z0-9]', '_', engine_id)}"
    assert not cached.exists()  # probed, but a dry run writes nothing
    printed = dry.stdout.strip().splitlines()[-1]
    assert printed.startswith("docker --host unix:///var/run/docker.sock run --detach --name " + name)
    assert ("--ulimit memlock=-1" in printed) == granted, printed
    try:
        pasted = subprocess.run(["bash", "-c", dry.stdout], capture_output=True, text=True, timeout=120)
        assert pasted.returncode == 0, pasted.stderr
        assert int(docker("wait", name).stdout.strip()) == 0
        assert "byo-dry: ran" in docker("logs", name).stdout
    finally:
        docker("rm", "-f", name, check=False)
    # A real launch keeps the answer per engine; a kept answer is used as it is (no second probe).
    run = [*cmd]
    run.remove("--dry-run")
    run[run.index("--container-name") + 1] = name + "-real"
    real = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env)
    assert real.returncode == 0 and "byo-dry: ran" in real.stdout, real.stderr[-2000:]
    assert cached.read_text().strip() == str(int(granted))
    cached.write_text(f"{int(not granted)}\n")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0 and ("memlock=-1" in again.stdout) != granted, again.stdout


def test_dry_run_without_home_still_decides_memlock(image, tmp_path):
    """No HOME and no XDG_CACHE_HOME (cron, a bare unit): nowhere to cache the engine's answer, yet the
    printed command must still be the one that runs: probed, not assumed, and no shell error; the
    same before the image exists (a dry run builds or pulls nothing)."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "ok.py").write_text("print('ok')\n")
    open_up(vol)
    env = {k: v for k, v in launcher_env().items() if k not in ("HOME", "XDG_CACHE_HOME")}
    cmd = launcher_cmd(image, vol, f"hfgpu-byo-{uuid.uuid4().hex[:8]}", "--dry-run", "ok.py")
    dry = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert dry.returncode == 0 and "HOME" not in dry.stderr, dry.stderr
    probe = ["run", "--rm", "--network", "none", "--ulimit", "memlock=-1", "--entrypoint", "true", image.tag]
    granted = docker(*probe, check=False).returncode == 0
    assert ("--ulimit memlock=-1" in dry.stdout) == granted, dry.stdout
    # Before the image is built or pulled: probed with another image of the engine, not assumed.
    missing = [*cmd]
    missing[missing.index("--image") + 1] = f"hfgpu-byo-absent:{uuid.uuid4().hex[:8]}"
    missing.append("--build")  # an absent name other than IMAGE_NAME:TAG is built only when asked
    early = subprocess.run(missing, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert early.returncode == 0 and "build_and_push.sh" in early.stdout, early.stderr
    assert ("--ulimit memlock=-1" in early.stdout) == granted, early.stdout


def test_runtime_pip_trusts_the_ca_bundle_the_launcher_was_given(image, tmp_path):
    """This machine reaches PyPI through a TLS-intercepting proxy (docs/test-environment): the image's
    own roots do not trust it. --ca-bundle (the host's bundle, which does) is mounted read-only and
    HFGPU_PIP_REQUIREMENTS installs with it (PIP_CERT); the bundle is in no image layer."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "requirements.txt").write_text("pyjokes==0.8.3\n")
    (vol / "uses_pyjokes.py").write_text("import pyjokes\nprint('byo-ca:', pyjokes.__name__, flush=True)\n")
    open_up(vol)
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    args = [
        "--network",
        "bridge",
        "--ca-bundle",
        bundle,
        "--env",
        "HFGPU_PIP_REQUIREMENTS=/volume/requirements.txt",
    ]
    dry = launch(image, vol, "--dry-run", *args, "uses_pyjokes.py")
    assert "target=/run/hfgpu-ca-bundle.pem" in dry.stdout, dry.stdout
    assert "--env HFGPU_CA_BUNDLE=/run/hfgpu-ca-bundle.pem" in dry.stdout
    proc = launch(image, vol, *args, "uses_pyjokes.py", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "byo-ca: pyjokes" in proc.stdout


def test_ca_bundle_must_be_a_readable_pem_file_and_any_path_mounts(image, tmp_path):
    """--ca-bundle: a folder, an empty or a DER file is refused in one line before anything runs (pip
    would ignore it and fail later with CERTIFICATE_VERIFY_FAILED); commas and colons in the path
    mount fine (the --mount source is quoted)."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "ok.py").write_text("print('ok')\n")
    open_up(vol)
    pem = Path("/etc/ssl/certs/ca-certificates.crt").read_text()
    (tmp_path / "empty.pem").write_text("")
    (tmp_path / "der.cer").write_bytes(b"\x30\x82\x05\x00not pem")
    for bad, says in (
        (tmp_path, "(--ca-bundle): it is a folder"),
        (tmp_path / "empty.pem", "(--ca-bundle): no PEM certificate"),
        (tmp_path / "der.cer", "(--ca-bundle): no PEM certificate"),
    ):
        proc = launch(image, vol, "--dry-run", "--ca-bundle", str(bad), "ok.py")
        lines = proc.stderr.splitlines()
        assert proc.returncode == 1 and proc.stdout == "" and len(lines) == 1 and says in lines[0], (
            bad,
            lines,
        )
    odd = tmp_path / "a,b:c.pem"
    odd.write_text(pem)
    (vol / "ca.py").write_text(
        "print('byo-ca-mount:', open('/run/hfgpu-ca-bundle.pem').readline().strip())\n"
    )
    open_up(vol)
    proc = launch(image, vol, "--ca-bundle", str(odd), "ca.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "byo-ca-mount: -----BEGIN CERTIFICATE-----" in proc.stdout, proc.stdout


FAKE_CONFIG_SCRIPT = """# Reads one JSON config as HfArgumentParser scripts do;
# passes resume_from_checkpoint on to Trainer.
import json, pathlib, sys
cfg = json.load(open(sys.argv[1]))
if "resume_from_checkpoint" in cfg:
    print("fake-config: resumed from", cfg["resume_from_checkpoint"], flush=True)
    sys.exit(0)
ckpt = pathlib.Path(cfg["output_dir"], "checkpoint-2")
ckpt.mkdir(parents=True, exist_ok=True)
(ckpt / "trainer_state.json").write_text('{"global_step": 2, "max_steps": 4}')
print("fake-config: stopped at step 2", flush=True)
sys.exit(143)
"""


def test_a_config_restart_says_so_when_its_resume_copy_cannot_be_written(image, tmp_path):
    """A JSON-config run stopped after checkpoint-2 (a fake script: no training) resumes from a private
    copy of its config; when the copy cannot be written, the restart's line says it starts over
    with its own config instead of promising a resume."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "fake.py").write_text(FAKE_CONFIG_SCRIPT)
    (vol / "a.json").write_text(json.dumps({"output_dir": "/volume/out"}))
    open_up(vol)
    args = ["--restart-on-preemption", "--max-restarts", "1", "fake.py", "--", "a.json"]
    good = launch(image, vol, *args)
    assert good.returncode == 0, good.stderr[-2000:]
    assert "fake-config: resumed from /volume/out/checkpoint-2" in good.stdout, good.stdout
    shutil.rmtree(vol / "out")
    shutil.rmtree(vol / ".hfgpu")
    (vol / ".hfgpu").write_text("not a folder\n")  # the copy's folder cannot be made
    bad = launch(image, vol, *args)
    note = next(line for line in bad.stderr.splitlines() if "exited 143; starting it again" in line)
    assert "with its own a.json, FROM STEP 0 unless it resumes by itself" in note, note
    assert "to resume from step" not in note, note
