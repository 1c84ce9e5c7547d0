"""launch_training.sh against the real Docker engine and the built image, on CPU.

The launcher runs as a non-root user (uid/gid 4242, given the docker socket's group
with `setpriv`), with a `docker` symlink to the BuildKit-capable client first on PATH;
the two-users test creates two real users (useradd) and runs it as each.
Training runs are the real programs (app/test_training_bert_base.py and
volume/test_training_distillgpt2.py) on tiny models made by tests/assets/make_tiny_models.py;
a few launcher mechanics (secrets, the restart loop, torchrun with 2 processes) use tiny
scripts written below, so that they cost seconds, not minutes.
Images are pulled from Debian's real docker-registry on loopback (tests/gcp_env.py's Registry).
Only `nvidia-smi` is faked (the driver checks, old and new enough): no NVIDIA driver exists here.
Many configuration checks run the launcher with --dry-run, which prints the docker command
and changes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pwd
import random
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DOCKER, ROOT, copy_tiny_models, docker
from gcp_env import Registry

LAUNCHER = ROOT / "launch_training.sh"
UID = GID = 4242
CANARY = "hf_canary_" + uuid.uuid4().hex
# Bundled BERT program on a tiny model: 2 epochs of 128 rows, 8 a batch; a checkpoint every 5 steps.
BERT_ARGS = [
    "--model_name_or_path",
    "/volume/assets/tiny-bert",
    "--train_file",
    "/volume/assets/train.csv",
    "--num_train_epochs",
    "2",
    "--per_device_train_batch_size",
    "8",
    "--save_steps",
    "5",
    "--logging_steps",
    "5",
    "--max_eval_samples",
    "16",
    "--dataloader_num_workers",
    "0",
    "--output_dir",
    "/volume/out",
]

# trainkit's test-only hooks live in tests/probes/sitecustomize.py, never in the image: mounted
# and first on PYTHONPATH, TRAINKIT_TEST_STEP_DELAY slows each step of the tiny model (which
# otherwise finishes before a `docker stop` lands).
SLOW_STEPS = [
    f"--docker-arg=--volume={ROOT / 'tests' / 'probes'}:/probes:ro",
    "--docker-arg=--env=PYTHONPATH=/probes:/app",
    "--docker-arg=--env=TRAINKIT_TEST_STEP_DELAY=0.2",
]

# A preemptible stand-in: counts steps into a file; SIGTERM -> save, exit 75; a rerun continues.
PREEMPTIBLE = """
import os, signal, sys, time
out, total = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
path = os.path.join(out, "step")
step = int(open(path).read()) if os.path.exists(path) else 0
print(f"start at step {step}", flush=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while step < total:
    time.sleep(0.1)
    step += 1
    with open(path + ".tmp", "w") as f:
        f.write(str(step))
    os.replace(path + ".tmp", path)
    if stop:
        print(f"preempted at step {step}", flush=True)
        sys.exit(75)
print(f"done at step {step}", flush=True)
"""

# Proves the secrets arrived (their hashes) without printing them; waits for /volume/go.
SECRETS_PROBE = """
import hashlib, json, os, time
names = ("HF_TOKEN", "WANDB_API_KEY", "RUN_NOTE")
seen = {n: hashlib.sha256(os.environ[n].encode()).hexdigest() for n in names if n in os.environ}
with open("/volume/seen.json", "w") as f:
    json.dump(seen, f)
print("probe running; secrets seen:", sorted(seen), flush=True)
for _ in range(600):
    if os.path.exists("/volume/go"):
        break
    time.sleep(0.1)
"""

GLOO_PROBE = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([1.0])
dist.all_reduce(t)
rank, world, local = dist.get_rank(), dist.get_world_size(), os.environ["LOCAL_RANK"]
print(f"rank {rank} of {world} local {local} sum {t.item():.0f}", flush=True)
dist.destroy_process_group()
"""


# ------------------------------------------------------------------ helpers


def argv(text: str) -> list[str]:
    """Words of TEXT as an argument list (the tests' paths hold no spaces)."""
    return text.split()


def docker_gid() -> int:
    return os.stat("/var/run/docker.sock").st_gid


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A folder the non-root caller can reach (pytest's tmp folders are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="hfgpu-launch-"))
    path.chmod(0o755)
    (path / "bin").mkdir()
    (path / "bin" / "docker").symlink_to(DOCKER)
    home = path / "home"
    home.mkdir()
    os.chown(home, UID, GID)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def caller_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{workdir / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir / "home"),
        "LANG": "C.UTF-8",
        "HFGPU_MIN_FREE_GB": "1",
        "CONFIG_FILE": "/dev/null",
    }
    env.update(extra)
    return env


def as_caller(args: list[str], gid: int | None = None, uid: int = UID) -> list[str]:
    groups = str(docker_gid() if gid is None else gid)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid if uid != UID else GID}", f"--groups={groups}", *args]


def launch(
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    uid: int = UID,
    launcher: Path = LAUNCHER,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run launch_training.sh as uid 4242 (or UID); capture stdout and stderr."""
    return subprocess.run(
        as_caller([str(launcher), *args], uid=uid),
        env=caller_env(workdir, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or workdir,
    )


def launch_bg(
    workdir: Path,
    *args: str,
    log: Path,
    env: dict[str, str] | None = None,
    uid: int = UID,
    launcher: Path = LAUNCHER,
) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            as_caller([str(launcher), *args], uid=uid),
            env=caller_env(workdir, **(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=workdir,
        )


def make_volume(workdir: Path, name: str, assets: Path | None = None, uid: int = UID) -> Path:
    vol = workdir / name
    if assets is not None:
        shutil.copytree(assets, vol / "assets")
    vol.mkdir(exist_ok=True)
    for path in [vol, *vol.rglob("*")]:
        os.chown(path, uid, GID if uid == UID else uid, follow_symlinks=False)
    return vol


def write_script(vol: Path, name: str, text: str, uid: int = UID) -> Path:
    path = vol / name
    path.write_text(textwrap.dedent(text))
    os.chown(path, uid, GID if uid == UID else uid)
    return path


def dry_cmd(proc: subprocess.CompletedProcess) -> list[str]:
    """The docker run command a --dry-run printed (its last stdout line), as argv."""
    assert proc.returncode == 0, output(proc)
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("docker run "), proc.stdout
    return shlex.split(line)


def option_values(cmd: list[str], option: str) -> list[str]:
    return [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == option]


def mount_source(cmd: list[str], target: str = "/volume") -> str:
    """The host folder of the --mount with TARGET (a CSV field list, as docker parses it)."""
    for value in option_values(cmd, "--mount"):
        fields = dict(f.split("=", 1) for f in next(csv.reader([value])) if "=" in f)
        if fields.get("target") == target:
            return fields["source"]
    raise AssertionError(f"no --mount with target={target} in {cmd}")


def env_values(cmd: list[str]) -> dict[str, str]:
    return dict(v.split("=", 1) for v in option_values(cmd, "--env") if "=" in v)


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under ROOTS with its size and mtime: what 'changes nothing' compares."""
    seen: dict[str, tuple[int, int]] = {}
    for root in roots:
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            seen[str(path)] = (st.st_size, st.st_mtime_ns)
    return seen


OURS: dict[str, str] = {}
MOUNT_SOURCES = "{{range .Mounts}}{{println .Source}}{{end}}"  # docker inspect: one line per mount


@pytest.fixture(autouse=True)
def _our_image(request) -> None:
    """Remember the session's image and this file's workdir: other people's containers on this
    shared engine are not ours, nor are other test files' (`make test` runs two files at once)."""
    for name in ("image", "workdir"):
        if name in request.fixturenames:
            value = request.getfixturevalue(name)
            OURS[name] = value.tag if name == "image" else str(value)


def containers() -> list[str]:
    """Containers this test file's callers could have made: with our owner labels, or from our
    image with a mount from this file's workdir (every launcher container mounts its volume)."""
    filters = [
        ["--filter", f"label=hfgpu.owner={owner}"] for owner in (UID, "hfgpu-lt-alice", "hfgpu-lt-bob")
    ]
    found: set[str] = set()
    for f in filters:
        found.update(docker("ps", "-aq", "--no-trunc", *f).stdout.split())
    if "image" in OURS:
        for cid in docker("ps", "-aq", "--no-trunc", "--filter", f"ancestor={OURS['image']}").stdout.split():
            listed = docker("inspect", "--format", MOUNT_SOURCES, cid, check=False)
            mounts = [Path(line) for line in listed.stdout.splitlines() if line]
            if any(m.is_relative_to(OURS.get("workdir", "/")) for m in mounts):
                found.add(cid)
    return sorted(found)


def wait_for(predicate, what: str, limit: float = 180) -> None:
    """Poll PREDICATE; fail naming WHAT if it never holds (a hang guard, not a timing assertion)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def global_step(output_dir: Path) -> int:
    return json.loads((output_dir / "trainer_state.json").read_text())["global_step"]


def container_gone(name: str) -> bool:
    return docker("container", "inspect", name, check=False).returncode != 0


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def tiny_rows() -> list[tuple[str, str]]:
    """128 labelled rows: five filler words and one cue word (good or bad) each."""
    rng = random.Random(0)
    good, bad = ["good", "great", "fine", "superb"], ["bad", "awful", "poor", "dull"]
    filler = ["the", "a", "movie", "film", "plot", "actor", "scene", "story", "was", "is", "very"]
    rows = []
    for _ in range(128):
        label = rng.choice(["pos", "neg"])
        words = [*rng.sample(filler, 5), rng.choice(good if label == "pos" else bad)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


ROWS = tiny_rows()
# The tokenizers of the tiny models (tests/conftest.py tiny_models) learn these words.
TINY_MODEL_TEXT = "\n".join(text for text, _ in ROWS) + "\n"


@pytest.fixture(scope="module")
def assets(image, workdir: Path, tiny_models) -> Path:
    """Tiny BERT/GPT-2 models (random weights, local tokenizers) and a tiny labelled csv."""
    out = make_volume(workdir, "asset-build")
    with (out / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *ROWS])
    (out / "text.txt").write_text(TINY_MODEL_TEXT)
    models = tiny_models(TINY_MODEL_TEXT)
    for model in sorted(models.iterdir()):
        copy_tiny_models(model, out / model.name, f"{UID}:{GID}")
    return out


@pytest.fixture(scope="module")
def bert_reference(image, workdir: Path, assets: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted run of the bundled BERT program through the launcher."""
    vol = make_volume(workdir, "vol-bert", assets)
    name = f"lt-bert-{uuid.uuid4().hex[:6]}"
    proc = launch(
        workdir, *argv(f"--image {image.tag} --volume {vol} --container-name {name} bert --"), *BERT_ARGS
    )
    return vol, proc


# -------------------------------------------------------------------- tests


def test_help_prints_the_header():
    proc = subprocess.run([str(LAUNCHER), "--help"], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("Summary: run a training script")
    assert "--restart-on-preemption" in proc.stdout


def nameless_uid(start: int = UID) -> int:
    """The first uid from START up that has no user name on this machine (chosen, not assumed)."""
    for uid in range(start, start + 10000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError(f"every uid from {start} to {start + 9999} has a name")


def test_dry_run_prints_the_command_and_starts_nothing(image, workdir: Path):
    uid = nameless_uid()  # a caller without a name: the container's name falls back to the uid
    gid = GID if uid == UID else uid  # as_caller's group for a uid
    home = workdir / f"home-{uid}"
    home.mkdir(exist_ok=True)
    os.chown(home, uid, gid)
    vol = make_volume(workdir, "vol-dry", uid=uid)
    before = containers()
    flags = "--nnodes 2 --node-rank 1 --master-addr 10.0.0.2 --nproc 4"
    proc = launch(
        workdir,
        *f"--dry-run --image {image.tag} --volume {vol} {flags} bert -- --learning_rate 3e-5".split(),
        uid=uid,
        env={"HOME": str(home)},
    )
    cmd = dry_cmd(proc)
    assert mount_source(cmd) == str(vol)
    assert option_values(cmd, "--name") == [f"hfgpu-{uid}-test_training_bert_base"]
    owner, launch_label = option_values(cmd, "--label")  # whose, and which launch (a failed start goes by it)
    assert owner == f"hfgpu.owner={uid}" and launch_label.startswith("hfgpu.launch=")
    assert env_values(cmd)["HFGPU_UMASK"] == "077"
    line = proc.stdout.strip().splitlines()[-1]
    for part in (
        f"--user {uid}:{gid}",
        "--ipc host",
        "--network host",
        "NNODES=2",
        "NODE_RANK=1",
        "MASTER_ADDR=10.0.0.2",
        "NPROC_PER_NODE=4",
        f"{image.tag} train /app/test_training_bert_base.py",
        "--learning_rate 3e-5",
        "--stop-timeout 120",
        "--ulimit stack=67108864",
    ):
        assert part in line, part
    assert containers() == before
    assert not (vol / "logs").exists()


def test_script_shortcuts_and_paths_resolve(image, workdir: Path):
    vol = make_volume(workdir, "vol-resolve")
    write_script(vol, "sub.py", "print('hi')\n")

    def resolved(*args: str, **env: str) -> str:
        proc = launch(workdir, "--dry-run", "--image", image.tag, "--volume", str(vol), *args, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert f"{image.tag} train /app/test_training_bert_base.py" in resolved()
    gpt2 = resolved("gpt2")
    assert f"cp -- {ROOT}/volume/test_training_distillgpt2.py {vol}/test_training_distillgpt2.py" in gpt2
    assert "train /volume/test_training_distillgpt2.py" in gpt2
    for form in ("sub.py", "sub", f"{vol}/sub.py", "/volume/sub.py"):
        assert f"{image.tag} train /volume/sub.py" in resolved(form), form
    outside = workdir / "outside.py"
    outside.write_text("print('no')\n")
    line = one_error_line(launch(workdir, "--image", image.tag, "--volume", str(vol), str(outside)))
    assert f"script {outside} resolves to {outside}, outside the volume {vol}: copy it there" in line


def remove_image_name(name: str) -> None:
    """Remove every tag of the image NAME (build_and_push.sh also tags sha-... and latest)."""
    refs = docker("images", "--format", "{{.Repository}}:{{.Tag}}", name).stdout.split()
    for ref in refs:
        docker("image", "rm", "--force", ref, check=False)


def test_a_local_image_found_nowhere_is_built_with_build_and_push(image, workdir: Path):
    # The layers are the `image` fixture's, cached: only the tags are new. A name of its own, so
    # that build_and_push.sh's extra tags (sha-..., latest) touch no one else's image.
    name = f"hfgpu-lt-autobuild-{uuid.uuid4().hex[:6]}"
    tag = f"{name}:t1"
    vol = make_volume(workdir, "vol-autobuild")
    write_script(vol, "hello.py", "print('hello from the built image')\n")
    # Built only because it is the project's own local name, IMAGE_NAME:TAG (any other absent name
    # is refused: test_an_absent_image_that_is_not_ours_is_refused_and_never_built).
    env = {
        "BASE_IMAGE": "hfgpu-test-base:bookworm",
        "CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
        "IMAGE_NAME": name,
        "TAG": "t1",
        "PROJECT": "",
    }
    try:
        dry = launch(workdir, "--dry-run", "--volume", str(vol), "hello.py", env=env)
        assert f"IMAGE_NAME={name} TAG=t1" in dry.stdout and "build_and_push.sh --no-push" in dry.stdout
        assert not image_exists(tag)
        proc = launch(workdir, "--volume", str(vol), "hello.py", env=env, timeout=1800)
        assert proc.returncode == 0, output(proc)[-4000:]
        assert f"building {tag} locally with build_and_push.sh --no-push" in proc.stderr
        assert "hello from the built image" in proc.stdout
    finally:
        remove_image_name(name)


def test_bundled_script_runs_and_files_belong_to_the_caller(bert_reference):
    vol, proc = bert_reference
    assert proc.returncode == 0, output(proc)[-4000:]
    results = json.loads((vol / "out" / "all_results.json").read_text())
    assert "eval_accuracy" in results
    state = json.loads((vol / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] > 0
    created = [p for p in vol.rglob("*") if not p.is_relative_to(vol / "assets")]
    assert len(created) > 10
    wrong = [str(p) for p in created if (p.lstat().st_uid, p.lstat().st_gid) != (UID, GID)]
    assert not wrong, wrong[:5]
    assert list((vol / "logs").glob("*.log")), "no log file in VOLUME/logs"


def test_volume_script_runs_without_rebuild_then_offline_from_the_cache(image, workdir: Path, assets: Path):
    vol = make_volume(workdir, "vol-gpt2", assets)
    image_id = docker("image", "inspect", "--format", "{{.Id}}", image.tag).stdout.strip()
    shutil.copy(ROOT / "volume" / "test_training_distillgpt2.py", vol / "my_lm.py")
    os.chown(vol / "my_lm.py", UID, GID)
    args = [
        *f"--image {image.tag} --volume {vol} my_lm.py --".split(),
        *argv("--model_name_or_path /volume/assets/tiny-gpt2 --train_file /volume/assets/text.txt"),
        *argv("--max_steps 6 --per_device_train_batch_size 4 --block_size 32 --dataloader_num_workers 0"),
        *argv("--output_dir /volume/lm"),
    ]
    first = launch(workdir, *args)
    assert first.returncode == 0, output(first)[-4000:]
    assert "/volume/my_lm.py" in first.stderr
    assert docker("image", "inspect", "--format", "{{.Id}}", image.tag).stdout.strip() == image_id
    cache = {
        p: p.stat().st_mtime_ns for p in (vol / ".cache").rglob("*") if p.is_file() and p.suffix != ".lock"
    }
    assert cache, "the first run cached nothing in the volume"

    second = launch(workdir, *args[:4], "--network", "none", *args[4:])
    assert second.returncode == 0, output(second)[-4000:]
    assert "--network none" in second.stderr
    rewritten = [str(p) for p, mtime in cache.items() if not p.exists() or p.stat().st_mtime_ns != mtime]
    assert not rewritten, f"cache files made again on the second run: {rewritten[:5]}"


def test_docker_stop_then_the_same_command_resumes_to_the_same_final_step(
    image, workdir, assets, bert_reference
):
    ref_vol, ref = bert_reference
    assert ref.returncode == 0
    vol = make_volume(workdir, "vol-resume", assets)
    name = f"lt-resume-{uuid.uuid4().hex[:6]}"
    # --save_steps 1000: no scheduled checkpoint, so the only one is the one the stop saves.
    script = ["bert", "--", *BERT_ARGS, "--save_steps", "1000"]
    args = ["--image", image.tag, "--volume", str(vol), "--container-name", name, *script]
    log = workdir / f"{name}.1.log"
    first = launch_bg(workdir, *SLOW_STEPS, *args, log=log)
    wait_for(lambda: "'loss'" in log.read_text(), "the first logged loss (step 5)")
    docker("stop", name)
    assert first.wait(timeout=180) == 75, log.read_text()[-3000:]
    first_log = log.read_text()
    signalled = int(first_log.split("preempted at step ")[1].split()[0])
    saved = [int(p.name.split("-")[1]) for p in (vol / "out").glob("checkpoint-*") if p.is_dir()]
    assert saved == [signalled], first_log[-3000:]
    saved = signalled
    assert 5 <= saved < global_step(ref_vol / "out"), first_log[-3000:]
    assert not (vol / "out" / "all_results.json").exists(), first_log[-3000:]

    second = launch(workdir, *args)
    assert second.returncode == 0, output(second)[-4000:]
    assert "resuming from" in output(second), output(second)[-4000:]
    assert f"checkpoint-{saved}" in output(second), output(second)[-4000:]
    assert global_step(vol / "out") == global_step(ref_vol / "out")


def test_a_copied_launcher_knows_the_bundled_program_saves_and_resumes(image, workdir, assets):
    """A VM gets only launch_training.sh, lib/ and VERSION (create_instance.sh), no app/: the
    launcher reads the bundled program from the image, so it still says it saves and resumes."""
    copy = workdir / "vm-copy-bundled"
    copy.mkdir()
    shutil.copy2(LAUNCHER, copy)
    shutil.copy2(ROOT / "VERSION", copy)
    shutil.copytree(ROOT / "lib", copy / "lib")
    vol = make_volume(workdir, "vol-copied", assets)
    name = f"lt-copied-{uuid.uuid4().hex[:6]}"
    log = workdir / f"{name}.log"
    args = ["--image", image.tag, "--volume", str(vol), "--container-name", name, "--restart-on-preemption"]
    proc = launch_bg(
        workdir, *SLOW_STEPS, *args, "bert", "--", *BERT_ARGS, log=log, launcher=copy / LAUNCHER.name
    )
    wait_for(lambda: list((vol / "out").glob("checkpoint-*/checkpoint-complete.json")), "a first checkpoint")
    docker("stop", name)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"stop:   Ctrl-C or docker stop {name} (saves a checkpoint first)" in text
    assert (
        f"{name} exited 75; starting it again: it resumes from its newest complete checkpoint by itself"
        in text
    )
    assert f"{name} finished; outputs in" in text


def test_restart_on_preemption_runs_again_until_done(image, workdir: Path):
    vol = make_volume(workdir, "vol-restart")
    write_script(vol, "preemptible.py", PREEMPTIBLE)
    name = f"lt-restart-{uuid.uuid4().hex[:6]}"
    log = workdir / f"{name}.log"
    args = (
        f"--image {image.tag} --volume {vol} --container-name {name} --restart-on-preemption preemptible.py"
    )
    proc = launch_bg(workdir, *args.split(), "--", "/volume/p", "60", log=log)
    step = vol / "p" / "step"
    wait_for(lambda: step.exists() and int(step.read_text() or 0) >= 5, "5 steps")
    docker("stop", name)  # what a VM shutdown or a daemon restart does to the container
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "preempted at step" in text
    # A volume script the launcher cannot judge: it says so (this one does resume by itself).
    assert "exited 75; starting it again: preemptible.py is not known to resume" in text
    assert "FROM STEP 0 unless it resumes by itself; it may overwrite its checkpoints (1/10)" in text
    restarted_at = int(text.split("start at step ")[2].split()[0])
    assert restarted_at >= 5
    assert "done at step 60" in text
    assert container_gone(name)


def test_stopping_the_launcher_stops_without_restarting(image, workdir: Path):
    vol = make_volume(workdir, "vol-sigterm")
    write_script(vol, "preemptible.py", PREEMPTIBLE)
    name = f"lt-sigterm-{uuid.uuid4().hex[:6]}"
    log = workdir / f"{name}.log"
    args = (
        f"--image {image.tag} --volume {vol} --container-name {name} --restart-on-preemption preemptible.py"
    )
    proc = launch_bg(workdir, *args.split(), "--", "/volume/p", "600", log=log)
    step = vol / "p" / "step"
    wait_for(lambda: step.exists(), "the first step")
    proc.send_signal(signal.SIGTERM)  # what systemd does on `systemctl stop`
    assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    assert "starting it again" not in log.read_text()
    assert container_gone(name)


def test_two_nodes_on_a_docker_network_train_together(image, workdir: Path, assets: Path, bert_reference):
    # No --use_cpu flag: trainkit's CPU defaults set it, without which this transformers/accelerate
    # pair would run each rank as a lone process ("parallel_mode != DISTRIBUTED").
    node_args = list(BERT_ARGS)
    net = f"lt-net-{uuid.uuid4().hex[:6]}"
    names = [f"lt-node{rank}-{net[-6:]}" for rank in (0, 1)]
    vols = [make_volume(workdir, f"vol-node{rank}", assets) for rank in (0, 1)]
    docker("network", "create", net)
    try:
        procs = []
        for rank in (0, 1):
            flags = f"--nnodes 2 --node-rank {rank} --master-addr {names[0]} --master-port 29400".split()
            common = [
                "--image",
                image.tag,
                "--volume",
                str(vols[rank]),
                "--container-name",
                names[rank],
                "--network",
                net,
            ]
            log = workdir / f"{names[rank]}.log"
            procs.append(launch_bg(workdir, *common, *flags, "bert", "--", *node_args, log=log))
            # Rank 1 looks rank 0 up by its container name: start it once that name exists.
            wait_for(lambda: not container_gone(names[0]), "the rank-0 container")
        codes = [p.wait(timeout=300) for p in procs]
        logs = [(workdir / f"{n}.log").read_text() for n in names]
        assert codes == [0, 0], [log[-3000:] for log in logs]
    finally:
        for name in names:
            docker("rm", "--force", name, check=False)
        docker("network", "rm", net, check=False)
    for rank in (0, 1):
        assert f"train: nodes=2 node_rank={rank} procs_per_node=1" in logs[rank]
    # One training over 2 ranks: each takes half the batches, so fewer steps than the single
    # process run of the same arguments; only rank 0 writes the results.
    state = json.loads((vols[0] / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] > 0
    assert state["global_step"] < global_step(bert_reference[0] / "out")
    assert "eval_accuracy" in json.loads((vols[0] / "out" / "all_results.json").read_text())
    assert not (vols[1] / "out" / "all_results.json").exists()


def test_nproc_2_on_one_node_completes(image, workdir: Path):
    vol = make_volume(workdir, "vol-nproc")
    write_script(vol, "gloo_probe.py", GLOO_PROBE)
    proc = launch(workdir, "--image", image.tag, "--volume", str(vol), "--nproc", "2", "gloo_probe.py")
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "train: nodes=1 node_rank=0 procs_per_node=2" in proc.stdout
    for rank in (0, 1):
        assert f"rank {rank} of 2 local {rank} sum 2" in proc.stdout


def test_secrets_reach_the_program_and_nothing_else(image, workdir: Path):
    vol = make_volume(workdir, "vol-secrets")
    write_script(vol, "probe.py", SECRETS_PROBE)
    env_file = workdir / "run.env"
    env_file.write_text(f"WANDB_API_KEY={CANARY}-wandb\nRUN_NOTE=plain\n")
    env_file.chmod(0o644)
    name = f"lt-secrets-{uuid.uuid4().hex[:6]}"
    runtime = workdir / "xdg-runtime-4242"  # what pam_systemd gives a logged-in user: 0700, theirs
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.chown(runtime, UID, GID)
    args = argv(f"--image {image.tag} --volume {vol} --container-name {name} --detach --env-file {env_file}")
    proc = launch(workdir, *args, "probe.py", env={"HF_TOKEN": CANARY, "XDG_RUNTIME_DIR": str(runtime)})
    assert proc.returncode == 0, output(proc)
    assert CANARY not in output(proc)
    wait_for(lambda: (vol / "seen.json").exists(), "the probe to start")
    inspect = docker("container", "inspect", name).stdout
    running_logs = docker("logs", name)
    assert CANARY not in inspect
    assert CANARY not in running_logs.stdout + running_logs.stderr
    mounts = json.loads(inspect)[0]["Mounts"]
    secret_dirs = [m["Source"] for m in mounts if m["Destination"] == "/run/hfgpu-secrets"]
    assert len(secret_dirs) == 1 and secret_dirs[0].startswith(f"{runtime}/hfgpu-secrets.")
    (vol / "go").touch()
    wait_for(lambda: container_gone(name), "the detached run to end")
    wait_for(lambda: not Path(secret_dirs[0]).exists(), "the secrets folder to be removed")
    seen = json.loads((vol / "seen.json").read_text())
    assert seen["HF_TOKEN"] == hashlib.sha256(CANARY.encode()).hexdigest()
    assert seen["WANDB_API_KEY"] == hashlib.sha256(f"{CANARY}-wandb".encode()).hexdigest()
    assert "RUN_NOTE" in seen
    leaks = [str(p) for p in vol.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert not leaks
    assert "probe running" in "".join(p.read_text() for p in (vol / "logs").glob("*.log"))


# ------------------------------------------------------------ preflight


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False).returncode == 0


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 1, output(proc)
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_gpus_without_the_nvidia_runtime_is_one_line_with_the_fix(image, workdir: Path):
    # Docker's own error (exit 125 on this machine, which has no NVIDIA container toolkit) reaches
    # the user: the launcher does not hold that text itself, so it cannot fake it.
    assert "[[gpu]]" not in LAUNCHER.read_text()
    vol = make_volume(workdir, "vol-nogpu")
    before = containers()
    line = one_error_line(launch(workdir, "--image", image.tag, "--volume", str(vol), "--gpus", "all"))
    assert 'could not select device driver "" with capabilities: [[gpu]]' in line
    assert "nvidia-ctk runtime configure" in line and "--gpus none" in line
    assert containers() == before  # docker created one; the launcher removed its own


def test_default_gpus_without_runtime_warns_and_uses_cpu(image, workdir: Path):
    proc = launch(
        workdir, "--dry-run", "--image", image.tag, "--volume", str(make_volume(workdir, "vol-cpu"))
    )
    assert proc.returncode == 0, proc.stderr
    assert "running on CPU" in proc.stderr
    assert "--gpus" not in proc.stdout


def fake_nvidia_smi(workdir: Path, driver: str) -> str:
    """PATH with a fake nvidia-smi reporting DRIVER first: allowed, since no NVIDIA driver exists here."""
    fake = workdir / f"fake-nvidia-{driver}"
    fake.mkdir(exist_ok=True)
    smi = fake / "nvidia-smi"
    smi.write_text(
        f"#!/bin/sh\ncase \"$*\" in *driver_version*) echo {driver} ;; *) echo 'GPU 0: Fake' ;; esac\n"
    )
    smi.chmod(0o755)
    return f"{fake}:{caller_env(workdir)['PATH']}"


def test_old_host_driver_is_refused(image, workdir: Path):
    vol = make_volume(workdir, "vol-driver")
    path = fake_nvidia_smi(workdir, "470.57.02")
    proc = launch(workdir, *argv(f"--image {image.tag} --volume {vol} --gpus all"), env={"PATH": path})
    line = one_error_line(proc)
    assert "NVIDIA driver 470.57.02 is older than the 525.60.13" in line
    assert "upgrade the host driver" in line


def test_new_enough_host_driver_is_accepted(image, workdir: Path):
    vol = make_volume(workdir, "vol-driver-ok")
    path = fake_nvidia_smi(workdir, "550.54.15")
    proc = launch(
        workdir, *argv(f"--dry-run --image {image.tag} --volume {vol} --gpus all"), env={"PATH": path}
    )
    cmd = dry_cmd(proc)
    assert option_values(cmd, "--gpus") == ["all"]
    assert "NVIDIA driver 550.54.15 (the image needs 525.60.13 or newer)" in proc.stderr
    assert "error" not in proc.stderr


def test_missing_script_lists_the_available_ones(image, workdir: Path):
    vol = make_volume(workdir, "vol-missing")
    write_script(vol, "mine.py", "print('hi')\n")
    line = one_error_line(launch(workdir, "--image", image.tag, "--volume", str(vol), "nope.py"))
    assert "script 'nope.py' not found" in line
    assert "test_training_bert_base.py" in line and "mine.py" in line


def test_unwritable_volume_is_refused(image, workdir: Path):
    vol = workdir / "vol-root"
    vol.mkdir()
    vol.chmod(0o755)  # root's, not the caller's
    line = one_error_line(launch(workdir, "--image", image.tag, "--volume", str(vol)))
    assert f"volume {vol} (--volume) is not writable by uid {UID}" in line and "chown" in line


def test_docker_daemon_down_and_docker_missing(workdir: Path):
    # A volume the caller owns, made here: the default (./volume) may not be writable on this machine.
    volume = {"VOLUME": str(make_volume(workdir, "vol-no-docker"))}
    down = launch(workdir, "--dry-run", env={"DOCKER_HOST": f"unix://{workdir}/no.sock", **volume})
    assert "Docker daemon is not reachable (Cannot connect" in one_error_line(down)
    no_group = subprocess.run(
        as_caller([str(LAUNCHER), "--dry-run"], gid=GID),
        env=caller_env(workdir, **volume),
        capture_output=True,
        text=True,
    )
    assert "add yourself to the docker group" in one_error_line(no_group)
    # PATH with every tool but docker (rbenv-style: hide one real binary).
    bare = workdir / "bare"
    if not bare.exists():
        bare.mkdir()
        for folder in ("/usr/bin", "/bin"):
            for tool in Path(folder).iterdir():
                if tool.name != "docker" and not (bare / tool.name).exists():
                    (bare / tool.name).symlink_to(tool)
    missing = launch(workdir, "--dry-run", env={"PATH": str(bare), **volume})
    assert "docker not found on PATH" in one_error_line(missing)


def test_low_free_disk_is_a_warning(image, workdir: Path):
    vol = make_volume(workdir, "vol-disk")
    proc = launch(
        workdir,
        *argv(f"--dry-run --image {image.tag} --volume {vol}"),
        env={"HFGPU_MIN_FREE_GB": "100000000"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "GiB free under" in proc.stderr and "warning:" in proc.stderr


# ------------------------------------------------------------ bad inputs

# (id, arguments, extra environment, what the one error line must say). {image}, {vol} and
# {workdir} are filled in. Every case exits 1 with ONE line on stderr and changes nothing.
BAD_INPUTS = [
    ("switch-with-value", "--dry-run=1", {}, ["--dry-run is an on/off flag", "write --dry-run alone"]),
    ("switch-with-value-2", "--detach=yes", {}, ["--detach is an on/off flag"]),
    ("count-not-a-number", "--max-restarts 1x", {}, ["--max-restarts must be a whole number"]),
    ("port-out-of-range", "--master-port 70000", {}, ["--master-port must be from 1 to 65535"]),
    ("nproc-zero", "--nproc 0", {}, ["--nproc (auto or a count) must be from 1 to 1024"]),
    ("stop-timeout-too-long", "--stop-timeout 99999", {}, ["--stop-timeout must be from 1 to 3600"]),
    (
        "nnodes-without-address",
        "--nnodes 2",
        {},
        ["needs --node-rank R", "and --master-addr HOST", "or --rdzv-endpoint"],
    ),
    (
        "nnodes-without-rank",
        "--nnodes 2 --master-addr h",
        {},
        ["--nnodes 2 with --master-addr needs --node-rank R (this node's rank, 0..1)"],
    ),
    ("rank-without-nnodes", "--node-rank 0", {}, ["--node-rank needs --nnodes: a rank", "give --nnodes N"]),
    (
        "addr-and-rdzv",
        "--master-addr h --rdzv-endpoint h:1",
        {},
        ["--master-addr and --rdzv-endpoint cannot be"],
    ),
    (
        "rank-and-rdzv",
        "--nnodes 2 --node-rank 1 --rdzv-endpoint h:1",
        {},
        ["--node-rank and --rdzv-endpoint cannot"],
    ),
    (
        "port-and-rdzv",
        "--master-port 29500 --rdzv-endpoint h:1",
        {},
        ["--master-port and --rdzv-endpoint cannot be"],
    ),
    ("node-rank-too-big", "--nnodes 2 --node-rank 2 --master-addr h", {}, ["--node-rank must be in 0..1"]),
    ("nnodes-rank-no-address", "--nnodes 2 --node-rank 1", {}, ["--nnodes 2 needs --master-addr HOST"]),
    ("gpus-word", "--gpus many", {}, ["--gpus (all, none, a count or device=I,J) must be a whole number"]),
    ("rdzv-without-port", "--rdzv-endpoint hostonly", {}, ["--rdzv-endpoint 'hostonly' is not HOST:PORT"]),
    ("rdzv-port-zero", "--rdzv-endpoint h:0", {}, ["--rdzv-endpoint: the port must be from 1 to 65535"]),
    ("container-name", "--container-name bad!name", {}, ["is not a valid container name"]),
    (
        "bucket-scheme",
        "--checkpoint-bucket s3://b/p",
        {},
        ["invalid gs:// URL 's3://b/p' (--checkpoint-bucket)"],
    ),
    ("bucket-uppercase", "--checkpoint-bucket gs://Bad_Bucket/p", {}, ["invalid gs:// URL", "lowercase"]),
    ("bucket-google", "--checkpoint-bucket gs://my-google-runs/p", {}, ["contain 'google'"]),
    ("bucket-from-env", "", {"CHECKPOINT_BUCKET": "runs/x"}, ["CHECKPOINT_BUCKET from the environment"]),
    ("env-secret-name", "--env HF_TOKEN=x", {}, ["--env HF_TOKEN looks like a secret", "--secret HF_TOKEN"]),
    ("env-bad-name", "--env 1BAD=x", {}, ["--env: the name '1BAD' is not a variable", "value is not shown"]),
    ("env-launcher-name", "--env NPROC_PER_NODE=4", {}, ["would override NPROC_PER_NODE", "use --nproc"]),
    ("env-unset", "--env HFGPU_LT_UNSET", {}, ["HFGPU_LT_UNSET is not set in your environment"]),
    ("env-file-folder", "--env-file {workdir}", {}, ["(--env-file): it is a folder"]),
    ("env-file-missing", "--env-file {workdir}/none.env", {}, ["(--env-file): no readable file there"]),
    ("secret-bad-name", "--secret bad-name", {}, ["--secret 'bad-name' is not a variable name"]),
    (
        "restart-policy",
        "--docker-arg=--restart=always",
        {},
        ["docker's --restart", "use --restart-on-preemption"],
    ),
    ("outside-volume-switch", "--allow-outside-volume=yes", {}, ["--allow-outside-volume is an on/off flag"]),
    ("output-outside-volume", "-- --output_dir /tmp/out", {}, ["--output_dir /tmp/out is outside /volume"]),
    ("logging-outside-volume", "-- --logging_dir=/app/logs", {}, ["pass --allow-outside-volume"]),
    ("symlink-escape", "escape.py", {}, ["outside the volume", "copy it there"]),
    ("image-ref", "--image Bad/Ref:Tag", {}, ["invalid image reference 'Bad/Ref:Tag' (--image)"]),
    ("image-from-env", "-image", {"CONTAINER_NAME": "my container"}, ["CONTAINER_NAME from the environment"]),
    (
        "volume-from-env",
        "-volume",
        {"VOLUME": "{workdir}/run.env"},
        ["VOLUME from the environment", "not a folder"],
    ),
    ("build-registry-ref", "--build --image 127.0.0.1:5000/p/r/i:t", {}, ["never tags it with a registry"]),
    (
        "stray-image-absent",
        "-image",
        {"CONTAINER_NAME": "hfgpu-lt-absent:1"},
        ["'hfgpu-lt-absent:1' (CONTAINER_NAME from the environment) is not on this machine", "--no-push"],
    ),
    ("image-typo-never-built", "--image hfgpu-lt-nope:1", {}, ["build it", "--build), or pull it"]),
    ("two-scripts", "a.py b.py", {}, ["its own arguments go after --"]),
    ("unknown-option", "--frobnicate", {}, ["unknown option '--frobnicate'"]),
    ("missing-value", "--secret", {}, ["--secret needs a value"]),
    ("value-is-an-option", "--container-name --detach", {}, ["needs a value but got the option"]),
    ("free-gb-from-env", "", {"HFGPU_MIN_FREE_GB": "lots"}, ["HFGPU_MIN_FREE_GB from the environment"]),
    # Empty values are errors, never the default.
    ("volume-empty", "--volume=", {}, ["--volume is empty"]),
    ("image-empty", "--image=", {}, ["--image is empty"]),
    ("name-empty", "--container-name=", {}, ["--container-name is empty"]),
    ("bucket-empty", "--checkpoint-bucket=", {}, ["--checkpoint-bucket is empty"]),
    ("gpus-empty", "--gpus=", {}, ["--gpus is empty"]),
    ("volume-empty-env", "-volume", {"VOLUME": " "}, ["VOLUME from the environment is blank"]),
    # The launcher's guarantees: no --docker-arg overrides them; the line names the option to use.
    (
        "docker-arg-name",
        "--docker-arg=--name=x",
        {},
        ["'--name=x' would set docker's --name", "use --container-name"],
    ),
    ("docker-arg-owner", "--docker-arg=--label=hfgpu.owner=x", {}, ["the label hfgpu.owner", "drop it"]),
    (
        "docker-arg-owner-2",
        "--docker-arg=-l --docker-arg=hfgpu.owner=x",
        {},
        ["'-l hfgpu.owner=x' would set"],
    ),
    ("docker-arg-user", "--docker-arg=--user=0", {}, ["docker's --user", "the container runs as you"]),
    ("docker-arg-user-short", "--docker-arg=-u0", {}, ["docker's --user"]),
    (
        "docker-arg-volume",
        "--docker-arg=-v --docker-arg={workdir}:/volume",
        {},
        ["mount at /volume", "use --volume DIR"],
    ),
    (
        "docker-arg-mount",
        "--docker-arg=--mount=type=bind,src={workdir},dst=/volume/",
        {},
        ["use --volume DIR"],
    ),
    (
        "docker-arg-secrets",
        "--docker-arg=--volume={workdir}:/run/hfgpu-secrets",
        {},
        ["use --secret NAME or --env-file"],
    ),
    ("docker-arg-env", "--docker-arg=--env=NNODES=2", {}, ["would set NNODES", "use --nnodes"]),
    ("docker-arg-gpus", "--docker-arg=--gpus=all", {}, ["use --gpus"]),
    ("docker-arg-detach", "--docker-arg=-dit", {}, ["docker's --detach", "use --detach"]),
]


@pytest.fixture(scope="module")
def bad_input_volume(workdir: Path) -> Path:
    vol = make_volume(workdir, "vol-bad")
    write_script(vol, "ok.py", "print('ok')\n")
    (workdir / "outside.py").write_text("print('outside')\n")
    (vol / "escape.py").symlink_to(workdir / "outside.py")
    if not (workdir / "run.env").exists():
        (workdir / "run.env").write_text("RUN_NOTE=plain\n")
    return vol


@pytest.mark.parametrize(
    ("args", "env", "expected"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_and_changes_nothing(image, workdir, bad_input_volume, args, env, expected):
    vol = bad_input_volume
    fill = {"image": image.tag, "vol": str(vol), "workdir": str(workdir)}
    words = [w.format(**fill) for w in args.split() if w not in ("-image", "-volume")]
    # "-image", "-volume": the case leaves that setting to the environment; otherwise both are given.
    common = [] if "-image" in args.split() else ["--image", image.tag]
    common += [] if "-volume" in args.split() else ["--volume", str(vol)]
    if not any(w.endswith(".py") for w in words):
        words.insert(0, "ok.py")
    env = {k: v.format(**fill) for k, v in env.items()}
    before = (containers(), tree(vol, workdir / "home"))
    proc = launch(workdir, *common, *words, env=env)
    assert proc.returncode == 1, output(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch_training.sh: error: "), proc.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    assert proc.stdout == ""
    assert (containers(), tree(vol, workdir / "home")) == before
    # HFGPU_BAD_INPUTS_DOC=FILE: append the case as a row of docs/bad-inputs/launch_training.md.
    if os.environ.get("HFGPU_BAD_INPUTS_DOC"):
        shown = (
            " ".join(shlex.quote(w) for w in words).replace(str(workdir), "DIR").replace(image.tag, "IMAGE")
        )
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()).replace(str(workdir), "DIR")
        line = lines[0].replace(str(workdir), "DIR").replace(image.tag, "IMAGE").replace("|", "\\|")
        with open(os.environ["HFGPU_BAD_INPUTS_DOC"], "a") as doc:
            doc.write(f"| `{(envs + ' ' if envs else '') + shown}` | `{line}` |\n")


def test_deprecated_name_and_inline_values_still_work(image, workdir: Path):
    vol = make_volume(workdir, "vol-inline")
    proc = launch(
        workdir, f"--image={image.tag}", f"--volume={vol}", "--dry-run", "--name=old-style", "--nproc=02"
    )
    cmd = dry_cmd(proc)
    assert "--name is deprecated and will be removed in the next release; use --container-name" in proc.stderr
    assert option_values(cmd, "--name") == ["old-style"]
    assert env_values(cmd)["NPROC_PER_NODE"] == "2"  # decimal, not octal


# ------------------------------------------------------ configuration


def test_configuration_precedence_flag_env_file_default(image, workdir: Path):
    vols = {k: make_volume(workdir, f"vol-prec-{k}") for k in ("flag", "env", "file")}
    conf = workdir / "prec.env"
    # The .env parser: comments, `export`, double and single quotes, CRLF line ends, unknown names.
    conf.write_bytes(
        (
            "# VOLUME=/not/this\r\n"
            f'export VOLUME="{vols["file"]}"\r\n'
            f"CONTAINER_NAME='{image.tag}'\r\n"
            "CHECKPOINT_BUCKET=gs://file-bucket/run\r\n"
            "NOT_A_SETTING=ignored\r\n"
            "   \r\n"
        ).encode()
    )
    conf.chmod(0o644)
    base = ["--dry-run", "--gpus", "none"]

    def run(*args: str, **env: str) -> list[str]:
        return dry_cmd(launch(workdir, *base, *args, env={"CONFIG_FILE": str(conf), **env}))

    from_file = run()
    assert mount_source(from_file) == str(vols["file"])
    assert from_file[from_file.index("train") - 1] == image.tag
    assert env_values(from_file)["CHECKPOINT_BUCKET"] == "gs://file-bucket/run"

    from_env = run(VOLUME=str(vols["env"]), CHECKPOINT_BUCKET="gs://env-bucket/run")
    assert mount_source(from_env) == str(vols["env"])
    assert env_values(from_env)["CHECKPOINT_BUCKET"] == "gs://env-bucket/run"

    from_flag = run(
        "--volume", str(vols["flag"]), "--checkpoint-bucket=gs://flag-bucket/x", VOLUME=str(vols["env"])
    )
    assert mount_source(from_flag) == str(vols["flag"])
    assert env_values(from_flag)["CHECKPOINT_BUCKET"] == "gs://flag-bucket/x"

    cwd = make_volume(workdir, "cwd-default")
    default = dry_cmd(launch(workdir, *base, "--image", image.tag, cwd=cwd))  # CONFIG_FILE=/dev/null
    assert mount_source(default) == str(cwd / "volume")
    assert "CHECKPOINT_BUCKET" not in env_values(default)
    assert not (cwd / "volume").exists()

    # A bad value from the file names the file.
    conf.write_text(f"CONTAINER_NAME={image.tag}\nCHECKPOINT_BUCKET=gs://Bad/x\n")
    bad = launch(workdir, *base, env={"CONFIG_FILE": str(conf)})
    assert f"invalid gs:// URL 'gs://Bad/x' (CHECKPOINT_BUCKET in {conf}:2)" in one_error_line(bad)


def test_rdzv_endpoint_env_and_plain_env(image, workdir: Path):
    vol = make_volume(workdir, "vol-rdzv")
    cmd = dry_cmd(
        launch(
            workdir,
            *argv(f"--dry-run --image {image.tag} --volume {vol} --rdzv-endpoint 10.0.0.2:29400 --nproc 2"),
            *argv("--env RUN_MODE=fast --env PLAIN --checkpoint-bucket gs://my-runs/exp1"),
            env={"PLAIN": "from-caller"},
        )
    )
    env = env_values(cmd)
    assert env["RDZV_ENDPOINT"] == "10.0.0.2:29400"
    assert env["NNODES"] == "1" and env["NODE_RANK"] == "0" and env["NPROC_PER_NODE"] == "2"
    assert env["RUN_MODE"] == "fast" and env["PLAIN"] == "from-caller"
    assert env["CHECKPOINT_BUCKET"] == "gs://my-runs/exp1"


def test_rdzv_endpoint_really_rendezvous(image, workdir: Path):
    # One node, two processes, meeting through a c10d rendezvous on the container's own loopback;
    # torchrun's run id is the rendezvous id (--standalone would make a random one).
    vol = make_volume(workdir, "vol-rdzv-run")
    write_script(vol, "rdzv_probe.py", GLOO_PROBE + 'print("run id", os.environ["TORCHELASTIC_RUN_ID"])\n')
    args = f"--image {image.tag} --volume {vol} --nproc 2 --rdzv-endpoint localhost:29411 rdzv_probe.py"
    proc = launch(workdir, *args.split())
    assert proc.returncode == 0, output(proc)[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} of 2 local {rank} sum 2" in proc.stdout
    assert proc.stdout.count("gpu-transformers") == 2, proc.stdout  # the two ranks' lines may interleave


def test_volume_path_with_colon_and_comma_works(image, workdir: Path):
    vol = make_volume(workdir, 'vol:with,odd"chars')
    write_script(
        vol, "hello.py", "open('/volume/made.txt', 'w').write('ok')\nprint('hello from', __file__)\n"
    )
    proc = launch(workdir, "--image", image.tag, "--volume", str(vol), "hello.py")
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "hello from /volume/hello.py" in proc.stdout
    assert (vol / "made.txt").read_text() == "ok"


# ------------------------------------------------------------ privacy

UMASK_PROBE = """
import os, sys
os.makedirs("/volume/out", exist_ok=True)
open("/volume/out/result.txt", "w").write("r")
print("umask", oct(os.umask(0o22)), "HFGPU_UMASK", os.environ.get("HFGPU_UMASK"), flush=True)
"""


@pytest.mark.parametrize(
    ("share", "folder", "file", "mask"), [(False, 0o700, 0o600, "077"), (True, 0o755, 0o644, "022")]
)
def test_outputs_and_logs_private_unless_shared(image, workdir: Path, share, folder, file, mask):
    vol = make_volume(workdir, f"vol-umask-{mask}")
    write_script(vol, "umask_probe.py", UMASK_PROBE)
    args = ["--image", image.tag, "--volume", str(vol), *(["--share"] if share else []), "umask_probe.py"]
    proc = launch(workdir, *args)
    assert proc.returncode == 0, output(proc)[-3000:]
    assert f"umask 0o{mask[1:] if mask != '077' else '77'} HFGPU_UMASK {mask}" in proc.stdout
    assert stat.S_IMODE((vol / "logs").stat().st_mode) == folder
    assert stat.S_IMODE((vol / "out").stat().st_mode) == folder
    assert stat.S_IMODE((vol / "out" / "result.txt").stat().st_mode) == file
    for log in (vol / "logs").glob("*.log"):
        assert stat.S_IMODE(log.stat().st_mode) == file


# ------------------------------------------------------------ restarts

EXIT_SEQUENCE = """
import os, sys
runs = "/volume/runs"
n = len(open(runs).read().splitlines()) if os.path.exists(runs) else 0
open(runs, "a").write("run\\n")
codes = [int(c) for c in sys.argv[1].split(",")]
code = codes[n] if n < len(codes) else 0
print(f"run {n + 1} exits {code}", flush=True)
sys.exit(code)
"""


def test_restarts_after_137_and_143_then_finishes(image, workdir: Path):
    vol = make_volume(workdir, "vol-killed")
    write_script(vol, "seq.py", EXIT_SEQUENCE)
    args = f"--image {image.tag} --volume {vol} --restart-on-preemption seq.py -- 137,143"
    proc = launch(workdir, *args.split())
    assert proc.returncode == 0, output(proc)[-3000:]
    assert (vol / "runs").read_text() == "run\n" * 3
    assert "exited 137; starting it again: seq.py is not known to resume" in proc.stderr
    assert "exited 143; starting it again: seq.py is not known to resume" in proc.stderr
    assert "may overwrite its checkpoints (2/10)" in proc.stderr


def test_gives_up_at_max_restarts(image, workdir: Path):
    vol = make_volume(workdir, "vol-giveup")
    write_script(vol, "seq.py", EXIT_SEQUENCE)
    args = (
        f"--image {image.tag} --volume {vol} --restart-on-preemption --max-restarts 2 seq.py -- 75,75,75,75,0"
    )
    proc = launch(workdir, *args.split())
    assert proc.returncode == 75, output(proc)[-3000:]
    assert (vol / "runs").read_text() == "run\n" * 3
    assert "exited 75; --max-restarts 2 reached, giving up" in proc.stderr


def test_without_restart_flag_a_kill_is_not_restarted(image, workdir: Path):
    vol = make_volume(workdir, "vol-norestart")
    write_script(vol, "seq.py", EXIT_SEQUENCE)
    proc = launch(workdir, *f"--image {image.tag} --volume {vol} seq.py -- 137".split())
    assert proc.returncode == 137, output(proc)[-3000:]
    assert (vol / "runs").read_text() == "run\n"


# ------------------------------------------------------------ secrets

ALL_SECRETS_PROBE = """
import hashlib, json, os, time
names = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "COMET_API_KEY", "NEPTUNE_API_TOKEN",
         "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MY_EXTRA_SECRET")
seen = {n: hashlib.sha256(os.environ[n].encode()).hexdigest() for n in names if n in os.environ}
seen["HFGPU_SECRETS_FILE"] = os.environ.get("HFGPU_SECRETS_FILE")
with open("/volume/seen.json", "w") as f:
    json.dump(seen, f)
print("probe running", flush=True)
for _ in range(600):
    if os.path.exists("/volume/go"):
        break
    time.sleep(0.1)
"""

DEFAULT_SECRETS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "WANDB_API_KEY",
    "COMET_API_KEY",
    "NEPTUNE_API_TOKEN",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
)


def secret_env() -> dict[str, str]:
    return {n: f"{CANARY}-{n}" for n in (*DEFAULT_SECRETS, "MY_EXTRA_SECRET")}


def test_secrets_never_in_dry_run_output(image, workdir: Path):
    vol = make_volume(workdir, "vol-dry-secrets")
    env_file = workdir / "dry.env"
    env_file.write_text(f"EXTRA_FROM_FILE={CANARY}-file\n")
    env_file.chmod(0o644)
    args = f"--dry-run --image {image.tag} --volume {vol} --secret MY_EXTRA_SECRET --env-file {env_file}"
    proc = launch(workdir, *args.split(), env={**secret_env(), "HFGPU_DEBUG": "1"})
    cmd = dry_cmd(proc)
    assert CANARY not in output(proc)
    assert env_values(cmd)["HFGPU_SECRETS_FILE"] == "/run/hfgpu-secrets/env"
    assert not (workdir / "home" / ".cache" / "hfgpu").exists()  # a dry run made no folder


def test_every_secret_reaches_the_foreground_program_and_the_folder_goes(image, workdir: Path):
    vol = make_volume(workdir, "vol-all-secrets")
    write_script(vol, "probe.py", ALL_SECRETS_PROBE)
    name = f"lt-allsecrets-{uuid.uuid4().hex[:6]}"
    log = workdir / f"{name}.log"
    args = argv(
        f"--image {image.tag} --volume {vol} --container-name {name} --secret MY_EXTRA_SECRET probe.py"
    )
    # Foreground, with HFGPU_DEBUG=1 tracing every command: no secret value may show in the trace,
    # not even one sitting in the .env file the configuration layer reads.
    dotenv = workdir / "secret.env"
    dotenv.write_text(f"HF_TOKEN={CANARY}-dotenv\nTAG=x\n")
    dotenv.chmod(0o644)
    env = {**secret_env(), "HFGPU_DEBUG": "1", "CONFIG_FILE": str(dotenv)}
    proc = launch_bg(workdir, *args, log=log, env=env)
    wait_for(lambda: (vol / "seen.json").exists(), "the probe to start")
    mounts = json.loads(docker("container", "inspect", name).stdout)[0]["Mounts"]
    secret_dir = Path(next(m["Source"] for m in mounts if m["Destination"] == "/run/hfgpu-secrets"))
    private = workdir / "home" / ".cache" / "hfgpu"  # no XDG_RUNTIME_DIR: ~/.cache/hfgpu, never /dev/shm
    assert secret_dir.parent == private, secret_dir
    assert stat.S_IMODE(private.stat().st_mode) == 0o700 and private.stat().st_uid == UID
    assert stat.S_IMODE(secret_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((secret_dir / "env").stat().st_mode) == 0o600
    (vol / "go").touch()
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert not secret_dir.exists(), "the foreground launcher left its secrets folder behind"
    seen = json.loads((vol / "seen.json").read_text())
    for n, value in secret_env().items():
        assert seen.get(n) == hashlib.sha256(value.encode()).hexdigest(), n
    assert seen["HFGPU_SECRETS_FILE"] is None  # the entrypoint unsets it
    text = log.read_text()
    assert "+ launch_training.sh:" in text  # the trace is on ...
    assert CANARY not in text  # ... and shows no secret
    assert not [str(p) for p in vol.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]


# ------------------------------------------------------------ images and registries


@pytest.fixture(scope="module")
def registry(session_registry: Registry) -> Registry:
    return session_registry


def test_pull_not_found_is_an_error_and_never_a_build(image, workdir: Path, registry: Registry):
    vol = make_volume(workdir, "vol-pull-missing")
    ref = f"{registry.host}/proj/repo/gpu_transformers:missing-{uuid.uuid4().hex[:6]}"
    before = containers()
    line = one_error_line(launch(workdir, "--image", ref, "--volume", str(vol), "--gpus", "none"))
    assert f"cannot pull {ref}: not found in {registry.host}" in line and "push the image" in line
    assert not image_exists(ref) and containers() == before


def test_pull_without_network_says_so(image, workdir: Path):
    ref = "127.0.0.1:9/proj/repo/gpu_transformers:1"  # the discard port: nothing listens
    vol = make_volume(workdir, "vol-pull-nonet")
    line = one_error_line(launch(workdir, "--image", ref, "--volume", str(vol), "--gpus", "none"))
    # Nothing listens there: the hint is the host and port, not the VM's route (Cloud NAT).
    assert f"cannot pull {ref}: nothing listens at 127.0.0.1:9" in line and "connection refused" in line
    assert "check the host and port" in line and "Cloud NAT" not in line


def registry_answers(host: str) -> bool:
    """The registry's /v2/ answers (401 without credentials counts: it is up)."""
    try:
        urllib.request.urlopen(f"http://{host}/v2/", timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def test_pull_without_access_says_so(image, workdir: Path, tmp_path: Path):
    # The same registry, with htpasswd auth (Distribution's documented `auth.htpasswd`): bcrypt via crypt(3)
    # (Python's crypt module: 3.11 on Debian 12, as here; it is gone from 3.13).
    pw = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            "import crypt; print(crypt.crypt('pw', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    reg = Registry()
    (reg.root / "htpasswd").write_text(f"someone:{pw}\n")
    exe = shutil.which("docker-registry")
    assert exe
    config = reg.root / "auth.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n"
        f"  filesystem:\n    rootdirectory: {reg.root / 'data'}\n"
        f"auth:\n  htpasswd:\n    realm: test\n    path: {reg.root / 'htpasswd'}\n"
        f"http:\n  addr: {reg.host}\n"
    )
    server = subprocess.Popen(
        [exe, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: registry_answers(reg.host), "the auth registry", 30)
        ref = f"{reg.host}/proj/repo/gpu_transformers:1"
        vol = make_volume(workdir, "vol-pull-noauth")
        line = one_error_line(launch(workdir, "--image", ref, "--volume", str(vol), "--gpus", "none"))
        assert f"cannot pull {ref}: no access" in line and "Artifact Registry Reader" in line
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(reg.root, ignore_errors=True)


def test_vm_flow_pulls_the_digest_and_runs_from_the_copied_files(
    image, workdir: Path, registry: Registry, full_push_lock
):
    # What create_instance.sh tells users: scp `launch_training.sh lib VERSION` to the VM, then
    # run the pushed image by digest. The copy has no build_image/: it can only pull.
    repo = f"{registry.host}/proj/repo/gpu_transformers"
    pushed_tag = f"{repo}:vmflow"
    docker("tag", image.tag, pushed_tag)
    try:
        with full_push_lock():
            docker("push", pushed_tag, timeout=3600)
        digest = docker("image", "inspect", "--format", "{{json .RepoDigests}}", pushed_tag).stdout
        ref = next(d for d in json.loads(digest) if d.startswith(repo + "@sha256:"))
    finally:
        docker("image", "rm", pushed_tag, check=False)  # untag: the digest must be pulled
    assert not image_exists(ref)
    copy = workdir / "vm-copy"
    copy.mkdir()
    shutil.copy2(LAUNCHER, copy / "launch_training.sh")
    shutil.copytree(ROOT / "lib", copy / "lib")
    shutil.copy2(ROOT / "VERSION", copy / "VERSION")
    vol = make_volume(workdir, "vol-vmflow")
    write_script(vol, "hello.py", "print('hello from the pulled image')\n")
    try:
        proc = launch(
            workdir, "--image", ref, "--volume", str(vol), "hello.py", launcher=copy / "launch_training.sh"
        )
        assert proc.returncode == 0, output(proc)[-3000:]
        assert f"pulling {ref}" in proc.stderr
        assert "hello from the pulled image" in proc.stdout
        assert image_exists(ref)
        # The project's own local name, absent, cannot be built from this copy: one line says what
        # to do (any other absent local name is refused before that, as anywhere).
        line = one_error_line(
            launch(
                workdir,
                "--image",
                "hfgpu-lt-nowhere:1",
                "--volume",
                str(vol),
                "--gpus",
                "none",
                "hello.py",
                launcher=copy / "launch_training.sh",
                env={"IMAGE_NAME": "hfgpu-lt-nowhere", "TAG": "1"},
            )
        )
        assert "has no build_image/ to build it" in line
    finally:
        docker("image", "rm", ref, check=False)


# ------------------------------------------------------------ two users


@pytest.fixture(scope="module")
def two_users(workdir: Path) -> Iterator[list[tuple[str, int]]]:
    """Two real users (with names, so the default container names differ by user)."""
    users = []
    for name, uid in (("hfgpu-lt-alice", 4301), ("hfgpu-lt-bob", 4302)):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--uid", str(uid), "--no-create-home", "--shell", "/bin/sh", name], check=True
            )
        uid = pwd.getpwnam(name).pw_uid
        home = workdir / f"home-{name}"
        home.mkdir(exist_ok=True)
        os.chown(home, uid, uid)
        users.append((name, uid))
    yield users
    for name, _ in users:
        subprocess.run(["userdel", name], check=False)


WAIT_PROBE = """
import os, time
print("waiting", flush=True)
for _ in range(1200):
    if os.path.exists("/volume/go"):
        break
    time.sleep(0.1)
"""


def test_two_users_never_clobber_each_other(image, workdir: Path, two_users):
    (alice, alice_uid), (bob, bob_uid) = two_users
    vols = {u: make_volume(workdir, f"vol-{u}", uid=uid) for u, uid in two_users}
    for u, uid in two_users:
        write_script(vols[u], "wait.py", WAIT_PROBE, uid=uid)

    def run_as(user: str, uid: int, *args: str) -> subprocess.CompletedProcess:
        return launch(
            workdir,
            "--image",
            image.tag,
            "--volume",
            str(vols[user]),
            *args,
            "wait.py",
            env={"HOME": str(workdir / f"home-{user}")},
            uid=uid,
        )

    names = {u: f"hfgpu-{u}-wait" for u, _ in two_users}
    stale = f"lt-stale-{uuid.uuid4().hex[:6]}"
    try:
        for u, uid in two_users:
            proc = run_as(u, uid, "--detach")
            assert proc.returncode == 0, output(proc)
        ids = {u: docker("inspect", "-f", "{{.Id}}", names[u]).stdout.strip() for u in names}
        labels = {
            u: docker("inspect", "-f", '{{index .Config.Labels "hfgpu.owner"}}', names[u]).stdout.strip()
            for u in names
        }
        assert labels == {alice: alice, bob: bob}
        # Bob asks for Alice's container name: refused, hers untouched.
        line = one_error_line(run_as(bob, bob_uid, "--container-name", names[alice]))
        assert f"belongs to {alice}" in line and "--container-name NEW" in line
        # Alice again with her own running name: refused too, not stopped.
        assert "is already running" in one_error_line(run_as(alice, alice_uid))
        assert {
            u: docker("inspect", "-f", "{{.Id}} {{.State.Status}}", names[u]).stdout.split() for u in names
        } == {u: [ids[u], "running"] for u in names}
        # A stopped container of Alice's: Bob may not remove it; Alice's launcher does.
        docker("create", "--name", stale, "--label", f"hfgpu.owner={alice}", image.tag, "true")
        assert f"belongs to {alice}" in one_error_line(
            run_as(bob, bob_uid, "--container-name", stale, "--detach")
        )
        assert not container_gone(stale)
        (vols[alice] / "go").touch()
        proc = run_as(alice, alice_uid, "--container-name", stale)
        assert proc.returncode == 0, output(proc)
        assert f"removing your stopped container {stale}" in proc.stderr
    finally:
        for u in names:
            (vols[u] / "go").touch()
        for name in names.values():
            wait_for(lambda name=name: container_gone(name), f"{name} to end", 120)
        docker("rm", "--force", stale, check=False)


# ------------------------------------------------------------ restart only what was preempted


@pytest.mark.parametrize("code", [1, 2, 75, 137, 143])
def test_restart_on_preemption_reruns_only_after_75_137_143(image, workdir: Path, code: int):
    """A bug (1) or bad input (2) runs once and the launcher exits with it; a preemption (75) or a
    stop or kill (143, 137) runs again (the second run exits 0)."""
    vol = make_volume(workdir, f"vol-exit-{code}")
    write_script(vol, "seq.py", EXIT_SEQUENCE)
    proc = launch(
        workdir, *f"--image {image.tag} --volume {vol} --restart-on-preemption seq.py -- {code},0".split()
    )
    runs = (vol / "runs").read_text().count("run\n")
    if code in (75, 137, 143):
        assert (proc.returncode, runs) == (0, 2), output(proc)[-3000:]
        assert f"exited {code}; starting it again" in proc.stderr
    else:
        assert (proc.returncode, runs) == (code, 1), output(proc)[-3000:]
        assert "starting it again" not in proc.stderr


# ------------------------------------------------- issue 19: each class, one test


def test_an_absent_image_that_is_not_ours_is_refused_and_never_built(image, workdir: Path):
    # `--image bi-nope:1` (a typo) used to start a full build. Refused now, in a dry run too, with
    # the line to build or pull it; --build still builds it on purpose (dry run: the command only).
    vol = make_volume(workdir, "vol-typo")
    write_script(vol, "hello.py", "print('hi')\n")
    before = containers()
    proc = launch(workdir, "--dry-run", "--image", "hfgpu-lt-nope:1", "--volume", str(vol), "hello.py")
    line = one_error_line(proc)
    assert "image 'hfgpu-lt-nope:1' (--image) is not on this machine" in line
    assert "IMAGE_NAME=hfgpu-lt-nope TAG=1 ./build_and_push.sh --no-push" in line and "--build" in line
    assert "docker pull" in line and proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert not image_exists("hfgpu-lt-nope:1") and containers() == before
    built = launch(
        workdir, "--dry-run", "--build", "--image", "hfgpu-lt-nope:1", "--volume", str(vol), "hello.py"
    )
    assert built.returncode == 0 and "IMAGE_NAME=hfgpu-lt-nope TAG=1" in built.stdout, output(built)


def test_a_newline_inside_an_env_value_is_one_line(image, workdir: Path):
    vol = make_volume(workdir, "vol-env-newline")
    write_script(vol, "hello.py", "print('hi')\n")
    for args, env in (
        (["--env", "NOTE=first\nsecond"], {}),
        (["--env", "NOTE"], {"NOTE": "first\nsecond"}),
    ):
        proc = launch(
            workdir, "--dry-run", "--image", image.tag, "--volume", str(vol), *args, "hello.py", env=env
        )
        assert proc.returncode == 1 and proc.stdout == "", output(proc)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("launch_training.sh: error: --env"), proc.stderr
        assert "newline" in lines[0], lines[0]


def test_volume_tilde_expands_and_a_symlink_loop_is_named(image, workdir: Path):
    # `--volume=~/vol`: the shell leaves ~ alone after '='; the launcher expands it as the shell
    # would after a space, and creates no folder named '~'.
    home = workdir / "home"
    cwd = make_volume(workdir, "cwd-tilde")
    cmd = dry_cmd(
        launch(workdir, "--dry-run", "--image", image.tag, "--gpus", "none", "--volume=~/vol", cwd=cwd)
    )
    assert mount_source(cmd) == str(home / "vol")
    assert not (cwd / "~").exists()
    # A symbolic link loop on the way is said as such, not as "not writable".
    loop = workdir / "vol-loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    for value in (str(loop / "sub"), str(loop)):
        line = one_error_line(launch(workdir, "--image", image.tag, "--volume", value))
        assert "loop" in line and "not writable" not in line, line
        assert not (loop.parent / "sub").exists()


def test_a_failed_start_leaves_no_container_and_only_memlock_is_retried(image, workdir: Path):
    # The memlock retry: an engine that answered "granted" before (the cached answer says 1) and
    # refuses now (this engine refuses --ulimit memlock=-1: runc's "error setting rlimit type 8").
    # The launcher warns, caches the refusal, starts again without it, and the first container,
    # created but never started, is gone: removed by this launch's own label, whatever its name.
    vol = make_volume(workdir, "vol-memlock")
    write_script(vol, "hello.py", "print('hello after the retry')\n")
    cache = workdir / "memlock-cache"
    engine = docker("info", "--format", "{{.ID}}").stdout.strip()
    answer = cache / "hfgpu-engines" / f"memlock-{re.sub('[^A-Za-z0-9]', '_', engine)}"
    answer.parent.mkdir(parents=True, exist_ok=True)
    answer.write_text("1\n")
    for path in (cache, answer.parent, answer):
        os.chown(path, UID, GID)
    env = {"XDG_CACHE_HOME": str(cache)}
    probe = ["run", "--rm", "--network", "none", "--ulimit", "memlock=-1", "--entrypoint", "true", image.tag]
    refused = docker(*probe, check=False).returncode != 0
    before = containers()
    proc = launch(workdir, *argv(f"--image {image.tag} --volume {vol} --gpus none hello.py"), env=env)
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "hello after the retry" in proc.stdout
    assert ("cannot raise the locked-memory limit" in proc.stderr) == refused, proc.stderr
    assert answer.read_text().strip() == ("0" if refused else "1")
    assert containers() == before
    # Another limit the engine refuses (nofile beyond the kernel's nr_open: "error setting rlimit
    # type 7") is the caller's to fix: one line, no memlock retry, nothing left.
    answer.write_text("1\n")
    proc = launch(
        workdir,
        *argv(f"--image {image.tag} --volume {vol} --gpus none hello.py"),
        "--docker-arg=--ulimit=nofile=2000000000:2000000000",
        env=env,
    )
    line = one_error_line(proc)
    assert "docker could not start the container" in line and "error setting rlimit type" in line
    assert containers() == before
