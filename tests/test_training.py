"""The training programs, run for real inside the built image on CPU.

No Hub access here: tests/assets/make_tiny_models.py builds a tiny BERT and a tiny GPT-2
from configs, with tokenizers trained on this test's own text, inside the container (the
host has no transformers). Every run uses `--network none`, HF_HUB_OFFLINE=1, a non-root
uid and a temporary folder as /volume. Every run also mounts tests/probes at /probes, first on
PYTHONPATH: its sitecustomize.py holds the test-only hooks (slow steps, a hanging save, failing
renames, ...), each off unless its TRAINKIT_TEST_* variable is set. The image has none of them.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import math
import os
import random
import shlex
import shutil
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, copy_tiny_models, docker, run_in_image

BERT = "/app/test_training_bert_base.py"
GPT = "/volume/test_training_distillgpt2.py"
USER = f"{os.getuid()}:{os.getgid()}" if os.getuid() != 0 else "1234:1234"
PROBES = ["-v", f"{ROOT / 'tests' / 'probes'}:/probes:ro"]
ENV = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": "/probes:/app"}
MARKER = "checkpoint-complete.json"  # trainkit.COMPLETE_MARKER

FILLER = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "was",
    "is",
    "and",
    "it",
    "this",
    "that",
    "very",
    "quite",
    "with",
    "of",
    "in",
    "to",
    "for",
    "on",
]
CUE = {"pos": "great", "neg": "awful", "meh": "okay"}
SENTENCES = [
    "the quick brown fox jumps over the lazy dog .",
    "a stitch in time saves nine .",
    "all that glitters is not gold .",
]
# The tokenizers of the tiny models (tests/conftest.py tiny_models) learn these words.
TINY_MODEL_TEXT = "\n".join([*FILLER, *CUE.values(), *SENTENCES]) + "\n"

BERT_ARGS = [
    "--model_name_or_path=/volume/models/tiny-bert",
    "--train_file=/volume/data/cls_train.csv",
    "--validation_file=/volume/data/cls_val.csv",
    "--text_column=review",
    "--label_column=sentiment",
]
GPT_ARGS = [
    "--model_name_or_path=/volume/models/tiny-gpt2",
    "--train_file=/volume/data/lm_train.jsonl",
    "--validation_file=/volume/data/lm_val.jsonl",
    "--block_size=32",
    "--num_train_epochs=4",
    "--per_device_train_batch_size=16",
    "--learning_rate=3e-3",
    "--save_steps=10",
    "--logging_steps=10",
    "--eval_on_start=True",
    "--disable_tqdm=True",
]


def review_rows(rng: random.Random, n: int, labels=("pos", "neg")) -> list[dict[str, str]]:
    """Random filler words plus one cue word that decides the label: a rule a tiny BERT can learn."""
    rows = []
    for _ in range(n):
        words = rng.choices(FILLER, k=rng.randint(4, 14))
        label = rng.choice(labels)
        words.insert(rng.randrange(len(words) + 1), CUE[label])
        rows.append({"review": " ".join(words), "sentiment": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def volume(image, tmp_path_factory, tiny_models) -> Path:
    """A volume with the test data, the volume script and the tiny models (tests/conftest.py)."""
    vol = tmp_path_factory.mktemp("volume")
    data = vol / "data"
    data.mkdir()
    rng = random.Random(0)
    write_csv(data / "cls_train.csv", review_rows(rng, 480))
    write_csv(data / "cls_val.csv", review_rows(rng, 120))
    write_csv(data / "cls_3labels.csv", review_rows(rng, 60, ("pos", "neg", "meh")))
    write_csv(data / "empty.csv", [])
    lines = [" ".join(SENTENCES[(i + j) % 3] for j in range(3)) for i in range(300)]
    (data / "lm_train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[:240]))
    (data / "lm_val.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[240:]))
    (data / "lm_tiny.jsonl").write_text(json.dumps({"text": SENTENCES[0]}) + "\n")
    (data / "vocab.txt").write_text(TINY_MODEL_TEXT)
    shutil.copy(ROOT / "volume" / "test_training_distillgpt2.py", vol)
    for path in [vol, *vol.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    copy_tiny_models(tiny_models(TINY_MODEL_TEXT), vol / "models", USER)
    return vol


def train(image, volume: Path, script: str, *args: str, env=None, extra=(), timeout=600):
    return run_in_image(
        image.tag,
        "train",
        script,
        *args,
        user=USER,
        volume=volume,
        env={**ENV, **(env or {})},
        extra=[*PROBES, *extra],
        timeout=timeout,
    )


def start(image, volume: Path, name: str, script: str, *args: str, env=None, extra=()) -> None:
    """docker run -d: a training container the test can signal."""
    cmd = ["run", "-d", "--name", name, "--network", "none", "--user", USER, "-v", f"{volume}:/volume"]
    for key, value in {**ENV, **(env or {})}.items():
        cmd += ["-e", f"{key}={value}"]
    docker(*cmd, *PROBES, *extra, image.tag, "train", script, *args)


def running(name: str) -> bool:
    return docker("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip() == "true"


def wait_for(predicate, what: str, name: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or not running(name):
            logs = docker("logs", name, check=False)
            raise AssertionError(f"timed out waiting for {what}:\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(0.2)


def finish(name: str) -> tuple[int, str]:
    """Wait for the container; return its exit code and logs, and remove it."""
    code = int(docker("wait", name, timeout=300).stdout.strip())
    logs = docker("logs", name)
    docker("rm", "-f", name, check=False)
    return code, logs.stdout + logs.stderr


def logs_of(name: str) -> str:
    proc = docker("logs", name, check=False)
    return proc.stdout + proc.stderr


def signal_mid_training(
    image, volume: Path, name: str, args: list[str], stop: list[str], env=None, extra=(), after="'loss'"
) -> tuple[int, str]:
    """Train GPT-2 in the background, run `docker STOP... NAME` once its logs show AFTER (by
    default the first logged loss, step 10), and return the container's exit code and logs."""
    # A tiny model trains faster than a signal arrives: slow each step (test-only hook).
    env = {"TRAINKIT_TEST_STEP_DELAY": "0.3", **(env or {})}
    try:
        start(image, volume, name, GPT, *args, env=env, extra=extra)
        wait_for(lambda: after in logs_of(name), repr(after), name)
        docker(*stop, name)
        return finish(name)
    finally:
        docker("rm", "-f", name, check=False)


def preempted_step(logs: str) -> int:
    """The step trainkit says it saved on the signal ("preempted at step N of M")."""
    return int(logs.split("preempted at step ")[1].split()[0])


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under FOLDER, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def global_step(out: Path) -> int:
    return json.loads((out / "trainer_state.json").read_text())["global_step"]


def complete_checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / MARKER).is_file())


@pytest.fixture(scope="module")
def gpt_uninterrupted(image, volume) -> Path:
    out = volume / "out" / "gpt-full"
    proc = train(image, volume, GPT, *GPT_ARGS, f"--output_dir=/volume/out/{out.name}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_bert_learns_the_rule_and_the_saved_model_predicts(image, volume):
    out = volume / "out" / "bert"
    # One .yaml argument is a config file (the same names as the flags).
    args = [*BERT_ARGS, "--num_train_epochs=2", "--learning_rate=0.003", "--per_device_train_batch_size=16"]
    args += ["--save_steps=1000", "--output_dir=/volume/out/bert", "--disable_tqdm=True"]
    (volume / "bert.yaml").write_text("".join(f"{a[2:].split('=')[0]}: {a.split('=', 1)[1]}\n" for a in args))
    proc = train(image, volume, BERT, "/volume/bert.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = results(out)
    assert metrics["eval_accuracy"] >= 0.85, metrics  # chance is 0.5
    assert metrics["eval_f1_macro"] >= 0.85, metrics
    assert metrics["train_samples"] == 480 and metrics["eval_samples"] == 120
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}  # string labels found in the data, sorted
    environment = json.loads((out / "environment.json").read_text())
    assert environment["packages"]["transformers"] == "5.20.2"
    resolved = json.loads((out / "run_args.json").read_text())["TrainingArguments"]
    assert resolved["learning_rate"] == 0.003 and resolved["num_train_epochs"] == 2
    assert resolved["do_train"] is True and resolved["do_eval"] is True  # our defaults, also for configs
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard logs"

    predict = (
        "from transformers import AutoModelForSequenceClassification as M, AutoTokenizer as T\n"
        "import torch\n"
        "m, t = M.from_pretrained('/volume/out/bert'), T.from_pretrained('/volume/out/bert')\n"
        "texts = ['the movie was great', 'the film was awful',\n"
        "         'awful plot and very awful actor', 'great story']\n"
        "with torch.no_grad(): ids = m(**t(texts, return_tensors='pt', padding=True)).logits.argmax(-1)\n"
        "print(' '.join(m.config.id2label[int(i)] for i in ids))\n"
    )
    proc = run_in_image(image.tag, "python3", "-c", predict, user=USER, volume=volume, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["pos", "neg", "neg", "pos"]


def test_gpt2_eval_perplexity_falls(gpt_uninterrupted):
    history = json.loads((gpt_uninterrupted / "trainer_state.json").read_text())["log_history"]
    start_loss = next(h["eval_loss"] for h in history if "eval_loss" in h and h["step"] == 0)
    final = results(gpt_uninterrupted)
    assert final["perplexity"] == pytest.approx(math.exp(final["eval_loss"]), rel=1e-6)
    assert final["perplexity"] < math.exp(start_loss) / 4, (math.exp(start_loss), final["perplexity"])


# Only a signal saves: the scheduled saves are out of reach, so a resume can only be from
# the checkpoint the signal wrote.
SIGNAL_ONLY = [a for a in GPT_ARGS if not a.startswith("--save_steps")] + ["--save_steps=1000"]


def test_sigterm_saves_exits_75_and_a_rerun_resumes(image, volume, gpt_uninterrupted):
    out, name = volume / "out" / "gpt-sigterm", f"hfgpu-sigterm-{uuid.uuid4().hex[:8]}"
    args = [*SIGNAL_ONLY, f"--output_dir=/volume/out/{out.name}"]
    code, logs = signal_mid_training(image, volume, name, args, ["kill", "--signal", "TERM"])
    assert code == 75, logs[-3000:]
    assert "SIGTERM received" in logs
    saved = preempted_step(logs)
    assert complete_checkpoints(out) == [saved], (complete_checkpoints(out), logs[-2000:])
    assert 10 <= saved < global_step(gpt_uninterrupted), saved
    assert not (out / "all_results.json").exists() and not (out / "model.safetensors").exists()

    proc = train(image, volume, GPT, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from /volume/out/{out.name}/checkpoint-{saved} " in proc.stderr
    assert f"global step {saved}" in proc.stderr
    assert global_step(out) == global_step(gpt_uninterrupted)
    assert "perplexity" in results(out)


def test_a_signal_outside_the_training_loop_exits_75(image, volume):
    out, name = volume / "out" / "gpt-outside", f"hfgpu-outside-{uuid.uuid4().hex[:8]}"
    args = [*GPT_ARGS, f"--output_dir=/volume/out/{out.name}"]
    env = {"TRAINKIT_TEST_WAIT_BEFORE_TRAIN": "120"}  # test-only hook: wait just before training
    stop = ["kill", "--signal", "TERM"]
    code, logs = signal_mid_training(
        image, volume, name, args, stop, env=env, after="waiting before training"
    )
    assert code == 75, logs[-3000:]
    assert "SIGTERM received outside training; exiting 75" in logs, logs[-3000:]
    assert not list(out.glob("checkpoint-*")) and not (out / "all_results.json").exists()


def test_a_stop_after_the_results_are_written_exits_0(image, volume):
    """Python puts back the default action of handled signals at shutdown: a SIGTERM during
    torch's teardown used to end a finished run with 143. The probe recreates that window."""
    out, name = volume / "out" / "gpt-linger", f"hfgpu-linger-{uuid.uuid4().hex[:8]}"
    args = [*GPT_ARGS, "--max_steps=3", f"--output_dir=/volume/out/{out.name}"]
    env = {"TRAINKIT_TEST_LINGER_AT_EXIT": "8"}  # seconds; a SIGTERM lands in them
    stop = ["kill", "--signal", "TERM"]
    code, logs = signal_mid_training(image, volume, name, args, stop, env=env, after="lingering at exit")
    assert code == 0, logs[-3000:]
    assert "perplexity" in results(out)


def test_a_rerun_of_a_finished_run_trains_nothing_and_changes_nothing(image, volume, gpt_uninterrupted):
    out = volume / "out" / "gpt-rerun"
    shutil.copytree(gpt_uninterrupted, out)
    for path in [out, *out.rglob("*")]:  # copied by this (host) user; the container runs as USER
        path.chmod(0o777 if path.is_dir() else 0o666)
    args = [*GPT_ARGS, f"--output_dir=/volume/out/{out.name}"]
    before = tree(out)
    proc = train(image, volume, GPT, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training already finished at step" in proc.stderr, proc.stderr[-3000:]
    assert tree(out) == before  # same files, same bytes: the model, results, state, logs

    # Only the evaluation is missing: it is redone, the model is left alone.
    (out / "eval_results.json").unlink()
    proc = train(image, volume, GPT, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "eval_results.json").is_file() and "perplexity" in results(out)
    assert tree(out)["model.safetensors"] == before["model.safetensors"]

    # Killed after its last checkpoint, before the final model: saved from that checkpoint,
    # no step taken (Trainer alone would resume and train one step more).
    for name in ("model.safetensors", "training-complete.json", "train_results.json", "trainer_state.json"):
        (out / name).unlink()
    proc = train(image, volume, GPT, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is at the planned last step" in proc.stderr, proc.stderr[-3000:]
    assert global_step(out) == global_step(gpt_uninterrupted)
    assert tree(out)["model.safetensors"] == before["model.safetensors"]


def marker_times(out: Path) -> list[tuple[int, datetime.datetime]]:
    """(step, time its marker says it completed) of each complete checkpoint."""
    times = []
    for step in complete_checkpoints(out):
        marker = json.loads((out / f"checkpoint-{step}" / MARKER).read_text())
        times.append((step, datetime.datetime.fromisoformat(marker["time"])))
    return times


def test_time_based_saves_come_on_time_and_resume(image, volume, gpt_uninterrupted):
    out, name = volume / "out" / "gpt-timed", f"hfgpu-timed-{uuid.uuid4().hex[:8]}"
    period = 3.0  # seconds; 10 steps at the hook's 0.3 s per step
    args = [a for a in GPT_ARGS if not a.startswith("--save_steps")]
    args += [f"--save_every_minutes={period / 60}", f"--output_dir=/volume/out/{out.name}"]
    try:
        start(image, volume, name, GPT, *args, env={"TRAINKIT_TEST_STEP_DELAY": "0.3"})
        wait_for(lambda: len(complete_checkpoints(out)) >= 2, "two timed checkpoints", name)
        timed = marker_times(out)[:2]
        docker("kill", "--signal", "TERM", name)
        code, logs = finish(name)
    finally:
        docker("rm", "-f", name, check=False)
    assert code == 75, logs[-3000:]
    assert "saving a checkpoint every 0.05 minutes and at the end" in logs
    gap = (timed[1][1] - timed[0][1]).total_seconds()
    # On time: not before the period is over, and soon after (a step and a save; this machine is slow).
    assert period <= gap < period + 10, (timed, gap)
    saved = preempted_step(logs)
    assert complete_checkpoints(out)[-1] == saved

    proc = train(image, volume, GPT, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from /volume/out/{out.name}/checkpoint-{saved} " in proc.stderr
    assert global_step(out) == global_step(gpt_uninterrupted)
    assert complete_checkpoints(out)[-1] == global_step(out)  # and one at the end
    resolved = json.loads((out / "run_args.json").read_text())
    assert resolved["TrainingArguments"]["save_strategy"] == "no"  # no step-based saves
    assert resolved["RunArguments"]["save_every_minutes"] == period / 60


def test_sigkill_during_a_save_resumes_from_the_previous_checkpoint_without_renames(
    image, volume, gpt_uninterrupted
):
    """Fault injection: with TRAINKIT_TEST_FAIL_RENAMES_UNDER=output_dir, the probe's
    sitecustomize.py makes os.rename, os.replace, os.renames and shutil.move raise
    OSError(EXDEV) for any path under output_dir in every process of both runs, as on a
    bucket mount. The run must save, skip the incomplete checkpoint, resume and rotate anyway."""
    out, name = volume / "out" / "gpt-sigkill", f"hfgpu-sigkill-{uuid.uuid4().hex[:8]}"
    args = [*GPT_ARGS, "--save_total_limit=2", f"--output_dir=/volume/out/{out.name}"]
    no_renames = {"TRAINKIT_TEST_FAIL_RENAMES_UNDER": f"/volume/out/{out.name}"}
    try:
        # Test-only hook: the save of checkpoint-20 hangs before its completion marker.
        start(image, volume, name, GPT, *args, env={**no_renames, "TRAINKIT_TEST_HANG_AT_SAVE": "20"})
        wait_for(lambda: "hanging before the marker" in logs_of(name), "the hanging save", name)
        docker("kill", "--signal", "KILL", name)
        code, _ = finish(name)
    finally:
        docker("rm", "-f", name, check=False)
    assert code == 137
    assert complete_checkpoints(out) == [10]
    # Make the interrupted folder as broken as a real mid-save kill leaves it: Trainer's own
    # resume would read this file and crash.
    (out / "checkpoint-20" / "trainer_state.json").unlink()

    proc = train(image, volume, GPT, *args, env=no_renames)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint-20 is incomplete" in proc.stderr
    assert f"resuming from /volume/out/{out.name}/checkpoint-10 " in proc.stderr
    final = global_step(out)
    assert final == global_step(gpt_uninterrupted)
    assert complete_checkpoints(out) == [40, final]  # rotated to the newest two complete ones
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (40, final)]


def test_rotation_counts_only_complete_checkpoints(image, tmp_path):
    """An incomplete folder (no marker) neither counts toward save_total_limit nor is deleted
    by rotation; Trainer's own rotation would count it and delete a complete one instead."""
    tmp_path.chmod(0o777)
    code = (
        "import pathlib, trainkit\n"
        "out = pathlib.Path('/volume/out')\n"
        "for step in (10, 20, 30, 40):\n"
        "    (out / f'checkpoint-{step}').mkdir(parents=True)\n"
        "    if step != 30: (out / f'checkpoint-{step}' / trainkit.COMPLETE_MARKER).write_text('{}')\n"
        "trainkit.rotate(str(out), 2)\n"
        "print(sorted(p.name for p in out.iterdir()))\n"
    )
    proc = run_in_image(image.tag, "python3", "-c", code, user=USER, volume=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "['checkpoint-20', 'checkpoint-30', 'checkpoint-40']"


def test_vertex_output_variables_place_checkpoints_model_and_logs(image, volume, tmp_path):
    """One container as Vertex AI starts it: AIP_* set to gs:// paths, the bucket at /gcs."""
    gcs = tmp_path / "gcs"
    gcs.mkdir()
    gcs.chmod(0o777)
    env = {
        "AIP_CHECKPOINT_DIR": "gs://bkt/job/checkpoints/",
        "AIP_MODEL_DIR": "gs://bkt/job/model/",
        "AIP_TENSORBOARD_LOG_DIR": "gs://bkt/job/logs/",
        "HF_HOME": "/tmp/hf-home",  # local disk, as on Vertex AI
    }
    args = [a for a in GPT_ARGS if not a.startswith("--num_train_epochs")] + ["--num_train_epochs=1"]
    proc = train(image, volume, GPT, *args, env=env, extra=["-v", f"{gcs}:/gcs"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = gcs / "bkt" / "job"
    assert complete_checkpoints(job / "checkpoints"), sorted(str(p) for p in job.rglob("*"))[:20]
    for name in ("model.safetensors", "all_results.json", "run_args.json", "trainer_state.json"):
        assert (job / "model" / name).is_file(), name
    assert not list((job / "checkpoints").glob("*.safetensors"))  # the final model is not here
    assert list((job / "logs").glob("events.out.tfevents.*")), (
        "no TensorBoard logs in AIP_TENSORBOARD_LOG_DIR"
    )
    assert not list(gcs.rglob("datasets")) and not list(gcs.rglob("hub"))  # HF_HOME stayed local
    resolved = json.loads((job / "model" / "run_args.json").read_text())
    assert resolved["TrainingArguments"]["output_dir"] == "/gcs/bkt/job/checkpoints"
    assert resolved["RunArguments"]["model_dir"] == "/gcs/bkt/job/model"


def test_fast_gelu_and_no_mask_give_the_same_outputs_and_loss(image, volume):
    """gelu_pytorch_tanh is gelu_new in one kernel; a packed block's all-ones mask changes nothing."""
    code = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM as M\n"
        "path = '/volume/models/tiny-gpt2'\n"
        "slow = M.from_pretrained(path, activation_function='gelu_new').eval()\n"
        "fast = M.from_pretrained(path, activation_function='gelu_pytorch_tanh').eval()\n"
        "assert slow.config.activation_function == 'gelu_new', slow.config.activation_function\n"
        "g = torch.Generator().manual_seed(0)\n"
        "ids = torch.randint(0, slow.config.vocab_size, (4, 32), generator=g)\n"
        "with torch.no_grad():\n"
        "    a = slow(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids))\n"
        "    b = fast(input_ids=ids, labels=ids)\n"
        "    c = slow(input_ids=ids, labels=ids)\n"
        "print(float((a.logits - b.logits).abs().max()), float(a.loss), float(b.loss), float(c.loss))\n"
    )
    proc = run_in_image(image.tag, "python3", "-c", code, user=USER, volume=volume, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff, masked_slow, fast_unmasked, slow_unmasked = map(float, proc.stdout.split())
    assert diff < 1e-4, diff
    assert fast_unmasked == pytest.approx(masked_slow, abs=1e-5)
    assert slow_unmasked == pytest.approx(masked_slow, abs=1e-6)  # the mask alone changes nothing


# --network none leaves the container's hostname unresolvable; torchrun's rendezvous needs it.
HOST = ("--hostname", "trainer", "--add-host", "trainer:127.0.0.1")


def test_torchrun_two_cpu_processes_write_one_set_of_outputs(image, volume, gpt_uninterrupted):
    out = volume / "tiny-gpt2"  # no --output_dir: the default, $OUTPUT_ROOT/<model name>
    args = [a for a in GPT_ARGS if not a.startswith("--per_device_train_batch_size")]
    host = list(HOST)
    proc = train(
        image,
        volume,
        GPT,
        *args,
        "--per_device_train_batch_size=8",
        "--save_total_limit=2",
        env={"NPROC_PER_NODE": "2"},
        extra=host,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "procs_per_node=2" in output
    assert "(w. parallel, distributed & accumulation) = 16" in output  # 2 processes x 8
    # 2 processes x 8 = the single run's batch of 16: the same number of optimizer steps.
    assert global_step(out) == global_step(gpt_uninterrupted)
    assert output.count("***** eval metrics *****") == 1
    assert "perplexity" in results(out)
    assert complete_checkpoints(out) == [40, 48]  # rotated after each marker, by rank 0
    assert json.loads((out / "run_args.json").read_text())["TrainingArguments"]["save_total_limit"] == 2
    writers = {p.name.split(".")[-2] for p in (out / "runs").rglob("events.out.tfevents.*")}
    assert len(writers) == 1, writers  # one process wrote TensorBoard logs


def test_sigterm_under_torchrun_exits_75_and_resumes(image, volume, gpt_uninterrupted):
    """torchrun itself exits 1 when signalled; the image's `train` launcher reports 75."""
    out, name = volume / "out" / "gpt-ddp-sigterm", f"hfgpu-ddp-sigterm-{uuid.uuid4().hex[:8]}"
    args = [a for a in SIGNAL_ONLY if not a.startswith("--per_device_train_batch_size")]
    args += ["--per_device_train_batch_size=8", f"--output_dir=/volume/out/{out.name}"]
    ddp = {"NPROC_PER_NODE": "2"}
    stop = ["stop", "--time", "60"]
    code, logs = signal_mid_training(image, volume, name, args, stop, env=ddp, extra=HOST)
    assert code == 75, logs[-3000:]
    assert "stopped by a signal after saving a checkpoint" in logs
    saved = preempted_step(logs)
    assert complete_checkpoints(out) == [saved], (complete_checkpoints(out), logs[-2000:])
    assert saved < global_step(gpt_uninterrupted)

    proc = train(image, volume, GPT, *args, env=ddp, extra=HOST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from /volume/out/{out.name}/checkpoint-{saved} " in proc.stderr
    assert global_step(out) == global_step(gpt_uninterrupted)


BAD_INPUTS = {
    "missing_column": (
        BERT,
        [*BERT_ARGS[:3], "--text_column=body", "--label_column=sentiment"],
        "column 'body' not found in the data; columns: review, sentiment",
    ),
    "empty_dataset": (
        BERT,
        [*BERT_ARGS[:1], "--train_file=/volume/data/empty.csv", *BERT_ARGS[3:]],
        "has no training rows",
    ),
    "missing_model": (
        BERT,
        ["--model_name_or_path=/volume/models/nope", *BERT_ARGS[1:]],
        "model path /volume/models/nope does not exist",
    ),
    "unwritable_output": (BERT, [*BERT_ARGS, "--output_dir=/app/out"], "output_dir /app/out is not writable"),
    "labels_do_not_fit": (
        BERT,
        [
            "--model_name_or_path=/volume/models/tiny-bert-2labels",
            "--train_file=/volume/data/cls_3labels.csv",
            *BERT_ARGS[3:],
        ],
        "holds 2 labels ['neg', 'pos'], the data has 3 ['meh', 'neg', 'pos']; "
        "pass --ignore_mismatched_sizes True",
    ),
    "hub_data_offline": (
        BERT,
        ["--model_name_or_path=/volume/models/tiny-bert"],
        "cannot load dataset stanfordnlp/imdb",
    ),
    "text_too_short": (
        GPT,
        [
            GPT_ARGS[0],
            "--train_file=/volume/data/lm_tiny.jsonl",
            "--validation_file=/volume/data/lm_tiny.jsonl",
        ],
        "gives no full block of 64 tokens; add text or lower --block_size",
    ),
}


def test_bad_inputs_give_one_line_errors(image, volume):
    # One container for all cases: each case is a separate python3 run.
    bad = volume / "bad"
    bad.mkdir(mode=0o777)
    bad.chmod(0o777)
    lines = [
        f"python3 {script} {shlex.join(args)} >/dev/null 2>/volume/bad/{name}.err; "
        f"echo $? >/volume/bad/{name}.rc"
        for name, (script, args, _) in BAD_INPUTS.items()
    ]
    proc = run_in_image(
        image.tag, "bash", "-c", "\n".join(lines), user=USER, volume=volume, env=ENV, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    for case, (_, _, expected) in BAD_INPUTS.items():
        rc = int((bad / f"{case}.rc").read_text())
        err = (bad / f"{case}.err").read_text()
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert rc == 2, (case, err[-2000:])
        assert "Traceback" not in err, (case, err[-2000:])
        assert len(errors) == 1 and expected in errors[0], (case, errors, err[-1500:])
    assert "HF_HUB_OFFLINE is set" in (bad / "hub_data_offline.err").read_text()
