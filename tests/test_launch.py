"""launch_training.sh against the real Docker engine and the built image, on CPU.

The launcher runs as a non-root user (uid/gid 4242, given the docker socket's group
with `setpriv`), with a `docker` symlink to the BuildKit-capable client first on PATH.
Training runs are the real programs (app/test_training_bert_base.py and
volume/test_training_distillgpt2.py) on tiny models made by tests/assets/make_tiny_models.py;
a few launcher mechanics (secrets, the restart loop, torchrun with 2 processes) use tiny
scripts written below, so that they cost seconds, not minutes.
Only `nvidia-smi` is faked (for the old-driver check): no NVIDIA driver exists here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DOCKER, ROOT, docker

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


def as_caller(args: list[str], gid: int | None = None) -> list[str]:
    groups = str(docker_gid() if gid is None else gid)
    return ["setpriv", f"--reuid={UID}", f"--regid={GID}", f"--groups={groups}", *args]


def launch(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run launch_training.sh as uid 4242; capture stdout and stderr."""
    return subprocess.run(
        as_caller([str(LAUNCHER), *args]),
        env=caller_env(workdir, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=workdir,
    )


def launch_bg(workdir: Path, *args: str, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            as_caller([str(LAUNCHER), *args]),
            env=caller_env(workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=workdir,
        )


def make_volume(workdir: Path, name: str, assets: Path | None = None) -> Path:
    vol = workdir / name
    if assets is not None:
        shutil.copytree(assets, vol / "assets")
    vol.mkdir(exist_ok=True)
    for path in [vol, *vol.rglob("*")]:
        os.chown(path, UID, GID, follow_symlinks=False)
    return vol


def write_script(vol: Path, name: str, text: str) -> Path:
    path = vol / name
    path.write_text(textwrap.dedent(text))
    os.chown(path, UID, GID)
    return path


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


@pytest.fixture(scope="module")
def assets(image, workdir: Path) -> Path:
    """Tiny BERT/GPT-2 models (random weights, local tokenizers) and a tiny labelled csv."""
    out = make_volume(workdir, "asset-build")
    rng = random.Random(0)
    good, bad = ["good", "great", "fine", "superb"], ["bad", "awful", "poor", "dull"]
    filler = ["the", "a", "movie", "film", "plot", "actor", "scene", "story", "was", "is", "very"]
    rows = []
    for _ in range(128):
        label = rng.choice(["pos", "neg"])
        words = [*rng.sample(filler, 5), rng.choice(good if label == "pos" else bad)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    with (out / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    (out / "text.txt").write_text("\n".join(text for text, _ in rows) + "\n")
    shutil.copy(ROOT / "tests" / "assets" / "make_tiny_models.py", out)
    make_volume(workdir, "asset-build")
    proc = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        f"{UID}:{GID}",
        "-v",
        f"{out}:/volume",
        image.tag,
        "python3",
        "/volume/make_tiny_models.py",
        "/volume/text.txt",
        "/volume",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(out / ".cache", ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def bert_reference(image, workdir: Path, assets: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted run of the bundled BERT program through the launcher."""
    vol = make_volume(workdir, "vol-bert", assets)
    name = f"lt-bert-{uuid.uuid4().hex[:6]}"
    proc = launch(workdir, *argv(f"--image {image.tag} --volume {vol} --name {name} bert --"), *BERT_ARGS)
    return vol, proc


# -------------------------------------------------------------------- tests


def test_help_prints_the_header():
    proc = subprocess.run([str(LAUNCHER), "--help"], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("Summary: run a training script")
    assert "--restart-on-preemption" in proc.stdout


def test_dry_run_prints_the_command_and_starts_nothing(image, workdir: Path):
    vol = make_volume(workdir, "vol-dry")
    before = docker("ps", "-aq").stdout.split()
    flags = "--nnodes 2 --node-rank 1 --master-addr 10.0.0.2 --nproc 4"
    proc = launch(
        workdir, *f"--dry-run --image {image.tag} --volume {vol} {flags} bert -- --learning_rate 3e-5".split()
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("docker run ")
    for part in (
        f"--user {UID}:{GID}",
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
    assert docker("ps", "-aq").stdout.split() == before
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
    assert f"script {outside} is outside the volume {vol}: copy it there" in line


def test_an_image_found_nowhere_is_built_from_build_image(image, workdir: Path):
    # The layers are the `image` fixture's, cached: only the tag is new.
    tag = f"gpu_transformers:lt-autobuild-{uuid.uuid4().hex[:6]}"
    vol = make_volume(workdir, "vol-autobuild")
    write_script(vol, "hello.py", "print('hello from the built image')\n")
    env = {"BASE_IMAGE": "hfgpu-test-base:bookworm", "CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}
    try:
        proc = launch(workdir, "--image", tag, "--volume", str(vol), "hello.py", env=env, timeout=1800)
        assert proc.returncode == 0, output(proc)[-4000:]
        assert (
            f"image {tag} is not on this machine nor in a registry it can reach: building it" in proc.stderr
        )
        assert "hello from the built image" in proc.stdout
    finally:
        docker("image", "rm", "--force", tag, check=False)


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
    args = ["--image", image.tag, "--volume", str(vol), "--name", name, "bert", "--", *BERT_ARGS]
    # The tiny model finishes all 32 steps in a fraction of a second: slow each step (a test-only
    # hook of trainkit), so that `docker stop` lands mid-training, not after the last step.
    slow = ["--docker-arg=--env=TRAINKIT_TEST_STEP_DELAY=0.2"]
    first = launch_bg(workdir, *slow, *args, log=workdir / f"{name}.1.log")
    wait_for(lambda: list((vol / "out").glob("checkpoint-*/checkpoint-complete.json")), "a first checkpoint")
    docker("stop", name)
    assert first.wait(timeout=180) == 75, (workdir / f"{name}.1.log").read_text()[-3000:]
    saved = max(int(p.name.split("-")[1]) for p in (vol / "out").glob("checkpoint-*") if p.is_dir())
    first_log = (workdir / f"{name}.1.log").read_text()
    assert 0 < saved < global_step(ref_vol / "out"), first_log[-3000:]
    assert not (vol / "out" / "all_results.json").exists(), first_log[-3000:]

    second = launch(workdir, *args)
    assert second.returncode == 0, output(second)[-4000:]
    assert "resuming from" in output(second), output(second)[-4000:]
    assert f"checkpoint-{saved}" in output(second), output(second)[-4000:]
    assert global_step(vol / "out") == global_step(ref_vol / "out")


def test_restart_on_preemption_runs_again_until_done(image, workdir: Path):
    vol = make_volume(workdir, "vol-restart")
    write_script(vol, "preemptible.py", PREEMPTIBLE)
    name = f"lt-restart-{uuid.uuid4().hex[:6]}"
    log = workdir / f"{name}.log"
    args = f"--image {image.tag} --volume {vol} --name {name} --restart-on-preemption preemptible.py"
    proc = launch_bg(workdir, *args.split(), "--", "/volume/p", "60", log=log)
    step = vol / "p" / "step"
    wait_for(lambda: step.exists() and int(step.read_text() or 0) >= 5, "5 steps")
    docker("stop", name)  # what a VM shutdown or a daemon restart does to the container
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "preempted at step" in text
    assert "starting it again to resume (1/10)" in text
    restarted_at = int(text.split("start at step ")[2].split()[0])
    assert restarted_at >= 5
    assert "done at step 60" in text
    assert container_gone(name)


def test_stopping_the_launcher_stops_without_restarting(image, workdir: Path):
    vol = make_volume(workdir, "vol-sigterm")
    write_script(vol, "preemptible.py", PREEMPTIBLE)
    name = f"lt-sigterm-{uuid.uuid4().hex[:6]}"
    log = workdir / f"{name}.log"
    args = f"--image {image.tag} --volume {vol} --name {name} --restart-on-preemption preemptible.py"
    proc = launch_bg(workdir, *args.split(), "--", "/volume/p", "600", log=log)
    step = vol / "p" / "step"
    wait_for(lambda: step.exists(), "the first step")
    proc.send_signal(signal.SIGTERM)  # what systemd does on `systemctl stop`
    assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    assert "starting it again" not in log.read_text()
    assert container_gone(name)


def test_docker_restart_policy_alternative(image, workdir: Path):
    vol = make_volume(workdir, "vol-policy")
    # Exits 75 on its first run, 0 on the next: Docker's policy, not the launcher, reruns it.
    write_script(
        vol,
        "once.py",
        "import os, sys\nfirst = not os.path.exists('/volume/ran')\n"
        "open('/volume/ran', 'a').write('run\\n')\nsys.exit(75 if first else 0)\n",
    )
    name = f"lt-policy-{uuid.uuid4().hex[:6]}"
    args = argv(
        f"--image {image.tag} --volume {vol} --name {name} --detach --docker-arg=--restart=on-failure:3"
    )
    try:
        refused = launch(workdir, *args, "once.py", env={"HF_TOKEN": CANARY})
        assert "secrets cannot outlive a reboot" in one_error_line(refused)
        proc = launch(workdir, *args, "once.py")
        assert proc.returncode == 0, output(proc)
        state = "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}"
        wait_for(
            lambda: docker("inspect", "-f", state, name).stdout.split() == ["exited", "0", "1"], "one rerun"
        )
        assert (vol / "ran").read_text() == "run\nrun\n"
    finally:
        docker("rm", "--force", name, check=False)


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
                "--name",
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
    args = argv(f"--image {image.tag} --volume {vol} --name {name} --detach --env-file {env_file} probe.py")
    proc = launch(workdir, *args, env={"HF_TOKEN": CANARY})
    assert proc.returncode == 0, output(proc)
    assert CANARY not in output(proc)
    wait_for(lambda: (vol / "seen.json").exists(), "the probe to start")
    inspect = docker("container", "inspect", name).stdout
    running_logs = docker("logs", name)
    assert CANARY not in inspect
    assert CANARY not in running_logs.stdout + running_logs.stderr
    mounts = json.loads(inspect)[0]["Mounts"]
    secret_dirs = [m["Source"] for m in mounts if m["Destination"] == "/run/hfgpu-secrets"]
    assert len(secret_dirs) == 1 and not secret_dirs[0].startswith(str(vol))
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


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 1, output(proc)
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_gpus_without_the_nvidia_runtime_is_one_line_with_the_fix(image, workdir: Path):
    vol = make_volume(workdir, "vol-nogpu")
    before = docker("ps", "-aq").stdout.split()
    line = one_error_line(launch(workdir, "--image", image.tag, "--volume", str(vol), "--gpus", "all"))
    assert 'could not select device driver "" with capabilities: [[gpu]]' in line
    assert "nvidia-ctk runtime configure" in line and "--gpus none" in line
    assert docker("ps", "-aq").stdout.split() == before


def test_default_gpus_without_runtime_warns_and_uses_cpu(image, workdir: Path):
    proc = launch(
        workdir, "--dry-run", "--image", image.tag, "--volume", str(make_volume(workdir, "vol-cpu"))
    )
    assert proc.returncode == 0, proc.stderr
    assert "running on CPU" in proc.stderr
    assert "--gpus" not in proc.stdout


def test_old_host_driver_is_refused(image, workdir: Path):
    # A fake nvidia-smi (no NVIDIA driver exists on this machine): it reports driver 470.
    fake = workdir / "fake-nvidia"
    fake.mkdir(exist_ok=True)
    smi = fake / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\ncase \"$*\" in *driver_version*) echo 470.57.02 ;; *) echo 'GPU 0: Fake' ;; esac\n"
    )
    smi.chmod(0o755)
    env = caller_env(workdir)
    path = f"{fake}:{env['PATH']}"
    vol = make_volume(workdir, "vol-driver")
    proc = launch(workdir, *argv(f"--image {image.tag} --volume {vol} --gpus all"), env={"PATH": path})
    line = one_error_line(proc)
    assert "NVIDIA driver 470.57.02 is older than the 525.60.13" in line
    assert "upgrade the host driver" in line


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
    assert f"volume {vol} is not writable by uid {UID}" in line and "chown" in line


def test_docker_daemon_down_and_docker_missing(workdir: Path):
    down = launch(workdir, "--dry-run", env={"DOCKER_HOST": f"unix://{workdir}/no.sock"})
    assert "Docker daemon is not reachable (Cannot connect" in one_error_line(down)
    no_group = subprocess.run(
        as_caller([str(LAUNCHER), "--dry-run"], gid=GID),
        env=caller_env(workdir),
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
    missing = launch(workdir, "--dry-run", env={"PATH": str(bare)})
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


def test_bad_flags_are_one_line(workdir: Path):
    for args, expected in (
        (["--nnodes", "2"], "needs --master-addr"),
        (["--nnodes", "2", "--node-rank", "2", "--master-addr", "h"], "--node-rank must be in 0..1"),
        (["--gpus", "many"], "--gpus must be"),
        (["a.py", "b.py"], "its own arguments go after --"),
    ):
        assert expected in one_error_line(launch(workdir, *args))
