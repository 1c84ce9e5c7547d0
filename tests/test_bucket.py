"""Checkpoints in a bucket (CHECKPOINT_BUCKET, app/bucket_checkpoints.py), against a real client.

The image's own google-cloud-storage client talks to a local Cloud Storage emulator
(`gcp-storage-emulator` from PyPI, on loopback, in memory) through STORAGE_EMULATOR_HOST;
the containers reach it only with `--network host`. The test reads the bucket with the
same official client. Training is the volume's GPT-2 program on a tiny model, on CPU.

How a kill lands in the middle of moving a checkpoint: test-only hooks in tests/probes/sitecustomize.py
(mounted, first on PYTHONPATH; nothing of them is in the image) stop the run right after the first
object of checkpoint-STEP was uploaded (HFGPU_TEST_BUCKET_HANG_AT), downloaded by the restore
(HFGPU_TEST_BUCKET_HANG_AT_DOWNLOAD) or deleted in the bucket (HFGPU_TEST_BUCKET_HANG_AT_DELETE);
the test then `docker kill`s (SIGKILL) the container and reads what the kill left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, docker, run_in_image
from emulator import FailingOnce, free_port, storage_emulator

pytest.importorskip("google.cloud.storage", reason="pip install -r tests/requirements.txt")
from google.cloud import storage

GPT = "/volume/test_training_distillgpt2.py"
OUT = "tiny-gpt2"  # output_dir under /volume: the model folder's name
USER = f"{os.getuid()}:{os.getgid()}" if os.getuid() != 0 else "1234:1234"
MARKER = "checkpoint-complete.json"  # trainkit.COMPLETE_MARKER
BUCKET = "hfgpu-test-checkpoints"
MAX_STEPS = 12
# The test hooks (TRAINKIT_TEST_STEP_DELAY, HFGPU_TEST_BUCKET_HANG_AT...) live in tests/probes, not the image.
PROBES = ["-v", f"{ROOT / 'tests' / 'probes'}:/probes:ro"]
ARGS = [
    "--model_name_or_path=/volume/models/tiny-gpt2",
    "--train_file=/volume/data/lm_train.jsonl",
    "--validation_file=/volume/data/lm_val.jsonl",
    "--block_size=32",
    "--per_device_train_batch_size=4",
    f"--max_steps={MAX_STEPS}",
    "--save_steps=3",
    "--save_total_limit=2",
    "--logging_steps=3",
    "--disable_tqdm=True",
]
SENTENCES = [
    "the quick brown fox jumps over the lazy dog .",
    "a stitch in time saves nine .",
    "all that glitters is not gold .",
]
# The tokenizers of the tiny models (tests/conftest.py tiny_models) learn these words.
TINY_MODEL_TEXT = "\n".join(SENTENCES) + "\n"


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """gcp-storage-emulator on loopback with one bucket; STORAGE_EMULATOR_HOST for this process too."""
    with storage_emulator(BUCKET) as host:
        yield host


def objects(prefix: str) -> list[str]:
    """Object names under gs://BUCKET/PREFIX/, relative to it."""
    blobs = storage.Client().list_blobs(BUCKET, prefix=prefix + "/")
    return sorted(b.name[len(prefix) + 1 :] for b in blobs)


def bucket_checkpoints(prefix: str) -> dict[int, list[str]]:
    """step -> that checkpoint's files, for every checkpoint-N under PREFIX."""
    found: dict[int, list[str]] = {}
    for name in objects(prefix):
        head, _, rest = name.partition("/")
        if head.startswith("checkpoint-") and rest:
            found.setdefault(int(head.split("-")[1]), []).append(rest)
    return found


def complete(prefix: str) -> list[int]:
    return sorted(step for step, files in bucket_checkpoints(prefix).items() if MARKER in files)


def read_object(prefix: str, name: str) -> bytes:
    return storage.Client().bucket(BUCKET).blob(f"{prefix}/{name}").download_as_bytes()


@pytest.fixture(scope="module")
def models(tiny_models) -> Path:
    """The tiny GPT-2 (and friends), made once for the run (tests/conftest.py); only copied from."""
    return tiny_models(TINY_MODEL_TEXT)


def new_volume(models: Path, root: Path) -> Path:
    """An empty volume, as on a new VM: the program, its data and the model, no outputs."""
    vol = root / f"volume-{uuid.uuid4().hex[:6]}"
    (vol / "data").mkdir(parents=True)
    lines = [" ".join(SENTENCES[(i + j) % 3] for j in range(3)) for i in range(300)]
    (vol / "data" / "lm_train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[:240]))
    (vol / "data" / "lm_val.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[240:]))
    shutil.copy(ROOT / "volume" / "test_training_distillgpt2.py", vol)
    shutil.copytree(models, vol / "models")
    for path in [vol, *vol.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return vol


def docker_run_args(vol: Path, env: dict[str, str], detach_name: str | None = None) -> list[str]:
    """docker run on the host's network (the emulator is on loopback), with the test hooks of tests/probes."""
    args = ["run", "--network", "host", "--user", USER, "-v", f"{vol}:/volume", *PROBES]
    args += ["-d", "--name", detach_name] if detach_name else ["--rm"]
    for key, value in {"HF_HUB_OFFLINE": "1", "PYTHONPATH": "/probes:/app", **env}.items():
        args += ["-e", f"{key}={value}"]
    return args


def bucket_env(emulator: str, prefix: str, **extra: str) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": emulator, "CHECKPOINT_BUCKET": f"gs://{BUCKET}/{prefix}", **extra}


def train(image, vol: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return docker(*docker_run_args(vol, env), image.tag, "train", GPT, *ARGS, *args, check=False, timeout=600)


def wait_for(predicate, what: str, name: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            logs = docker("logs", name, check=False)
            raise AssertionError(f"timed out waiting for {what}:\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(0.3)


def local_complete(vol: Path) -> list[int]:
    out = vol / OUT
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / MARKER).is_file())


def final_step(prefix: str) -> int:
    """global_step of the run's final trainer_state.json, read from the bucket."""
    return json.loads(read_object(prefix, "trainer_state.json"))["global_step"]


@pytest.fixture(scope="module")
def uninterrupted(image, emulator, models, tmp_path_factory) -> str:
    """One run from start to end with the bucket: the reference for resume and rotation."""
    prefix = "uninterrupted"
    proc = train(image, new_volume(models, tmp_path_factory.mktemp("ref")), bucket_env(emulator, prefix))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return prefix


def test_rotation_keeps_the_newest_n_complete_checkpoints(uninterrupted):
    """--save_total_limit 2 with saves at 3, 6, 9, 12: the bucket holds exactly 9 and 12, each complete."""
    found = bucket_checkpoints(uninterrupted)
    assert sorted(found) == [MAX_STEPS - 3, MAX_STEPS], found
    assert complete(uninterrupted) == [MAX_STEPS - 3, MAX_STEPS]
    for files in found.values():
        assert {"model.safetensors", "trainer_state.json", "optimizer.pt"} <= set(files), files
    # The final model and results went up at the end, outside the checkpoints.
    names = objects(uninterrupted)
    assert {"all_results.json", "model.safetensors", "trainer_state.json", "run_args.json"} <= set(names)
    assert final_step(uninterrupted) == MAX_STEPS


def test_stop_delete_the_volume_and_resume_from_the_bucket(image, emulator, models, uninterrupted, tmp_path):
    """docker stop mid-run, the volume gone, a new empty volume: the run resumes from the bucket."""
    prefix = "stopped"
    vol = new_volume(models, tmp_path)
    name = f"hfgpu-bucket-test-{uuid.uuid4().hex[:8]}"
    # A tiny model trains faster than a signal arrives: slow each step (tests/probes' hook).
    env = bucket_env(emulator, prefix, TRAINKIT_TEST_STEP_DELAY="0.6")
    try:
        docker(*docker_run_args(vol, env, detach_name=name), image.tag, "train", GPT, *ARGS)
        wait_for(lambda: complete(prefix), "a complete checkpoint in the bucket", name)
        docker("stop", "-t", "120", name, timeout=180)
        code = int(docker("wait", name).stdout.strip())
        logs = docker("logs", name).stderr
    finally:
        docker("rm", "-f", name, check=False)
    assert code == 75, logs[-3000:]
    saved = complete(prefix)[-1]
    assert saved < MAX_STEPS, "the stop came after the last step: nothing left to resume"
    assert saved == local_complete(vol)[-1], "the checkpoint saved on SIGTERM was not uploaded before exit"

    shutil.rmtree(vol)  # the VM is gone
    again = train(image, new_volume(models, tmp_path), bucket_env(emulator, prefix))
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"downloading checkpoint-{saved} from gs://{BUCKET}/{prefix}" in again.stderr, again.stderr[-3000:]
    assert f"resuming from /volume/{OUT}/checkpoint-{saved} " in again.stderr, again.stderr[-3000:]
    assert final_step(prefix) == final_step(uninterrupted) == MAX_STEPS
    assert complete(prefix) == [MAX_STEPS - 3, MAX_STEPS]


def test_kill_mid_upload_leaves_the_previous_checkpoint_usable(image, emulator, models, tmp_path):
    """SIGKILL while checkpoint-6 is half uploaded: checkpoint-3 stays the complete one, and resumes."""
    prefix = "killed"
    vol = new_volume(models, tmp_path)
    name = f"hfgpu-bucket-test-{uuid.uuid4().hex[:8]}"
    env = bucket_env(emulator, prefix, HFGPU_TEST_BUCKET_HANG_AT="6")
    try:
        docker(*docker_run_args(vol, env, detach_name=name), image.tag, "train", GPT, *ARGS)
        # Uploads never block the steps: training saves 9 and 12 while checkpoint-6 hangs mid-upload.
        wait_for(lambda: MAX_STEPS in local_complete(vol), "the last local checkpoint", name)
        assert 6 in bucket_checkpoints(prefix), "the upload of checkpoint-6 never started"
        docker("kill", name)  # SIGKILL: no handler runs, the upload stops where it is
        docker("wait", name)
    finally:
        docker("rm", "-f", name, check=False)
    found = bucket_checkpoints(prefix)
    assert found[6] and MARKER not in found[6], found
    assert complete(prefix) == [3], found

    shutil.rmtree(vol)
    again = train(image, new_volume(models, tmp_path), bucket_env(emulator, prefix))
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"downloading checkpoint-3 from gs://{BUCKET}/{prefix}" in again.stderr, again.stderr[-3000:]
    assert final_step(prefix) == MAX_STEPS
    # The half-uploaded checkpoint-6 was cleaned away by rotation; exactly the newest two remain.
    assert sorted(bucket_checkpoints(prefix)) == [MAX_STEPS - 3, MAX_STEPS]


def logs(name: str) -> str:
    proc = docker("logs", name, check=False)
    return proc.stdout + proc.stderr


def kill_when_logged(image, vol: Path, env: dict[str, str], line: str) -> None:
    """Start training in the background, wait for LINE in its output, then SIGKILL it (no handler runs)."""
    name = f"hfgpu-bucket-test-{uuid.uuid4().hex[:8]}"
    try:
        docker(*docker_run_args(vol, env, detach_name=name), image.tag, "train", GPT, *ARGS)
        wait_for(lambda: line in logs(name), repr(line), name)
        docker("kill", name)
        docker("wait", name)
    finally:
        docker("rm", "-f", name, check=False)


def copy_checkpoint(src: str, step: int, dst: str) -> None:
    """checkpoint-STEP of prefix SRC into prefix DST, object by object (its marker last)."""
    bucket = storage.Client().bucket(BUCKET)
    names = sorted(bucket_checkpoints(src)[step], key=lambda n: n == MARKER)
    for name in names:
        data = read_object(src, f"checkpoint-{step}/{name}")
        bucket.blob(f"{dst}/checkpoint-{step}/{name}").upload_from_string(data)


def test_kill_mid_download_then_the_next_start_downloads_again_and_resumes(
    image, emulator, models, uninterrupted, tmp_path
):
    """SIGKILL while the restore downloads checkpoint-9: the local copy has no marker; the next start
    (same volume, as after a reboot) downloads it again and resumes at step 9."""
    prefix = "download-killed"
    step = MAX_STEPS - 3
    copy_checkpoint(uninterrupted, step, prefix)  # the bucket holds checkpoint-9, complete; nothing else
    vol = new_volume(models, tmp_path)
    env = bucket_env(emulator, prefix, HFGPU_TEST_BUCKET_HANG_AT_DOWNLOAD=str(step))
    kill_when_logged(image, vol, env, f"test hook: hanging inside the download of checkpoint-{step}")
    partial = vol / OUT / f"checkpoint-{step}"
    assert [p.name for p in partial.iterdir()], "the download had not started"
    assert not (partial / MARKER).exists(), "the marker was downloaded before the checkpoint's files"

    again = train(image, vol, bucket_env(emulator, prefix))
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"downloading checkpoint-{step} from gs://{BUCKET}/{prefix}" in again.stderr, again.stderr[-3000:]
    assert f"resuming from /volume/{OUT}/checkpoint-{step} " in again.stderr, again.stderr[-3000:]
    assert final_step(prefix) == MAX_STEPS


def test_kill_mid_rotation_never_leaves_a_complete_checkpoint_with_files_missing(
    image, emulator, models, uninterrupted, tmp_path
):
    """SIGKILL while rotation deletes checkpoint-3 (after checkpoint-9's upload): 3 has lost its
    marker, and every checkpoint the bucket still offers as complete has all its files."""
    prefix = "rotation-killed"
    env = bucket_env(emulator, prefix, HFGPU_TEST_BUCKET_HANG_AT_DELETE="3")
    line = "test hook: hanging inside the delete of checkpoint-3"
    kill_when_logged(image, new_volume(models, tmp_path), env, line)
    every_file = set(bucket_checkpoints(uninterrupted)[MAX_STEPS])  # what a complete checkpoint holds
    found = bucket_checkpoints(prefix)
    assert 3 in found and set(found[3]) < every_file, found.get(3)  # the delete had begun
    offered = complete(prefix)
    assert offered == [6, 9], found
    for step in offered:
        assert set(found[step]) == every_file, (step, found[step])


def test_an_upload_answered_503_is_retried(image, emulator, tmp_path):
    """Cloud Storage may answer 503 to an upload; Google says retry it (a proxy in front of the
    emulator answers the first upload so): the checkpoint still arrives whole, marker last."""
    proxy = FailingOnce(emulator)
    vol = tmp_path / "vol"
    folder = vol / "checkpoint-1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / MARKER).write_text("{}\n")
    for path in [vol, *vol.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    probe = (
        "import sys, pathlib, bucket_checkpoints as b\n"
        "bucket = b.checked(sys.argv[1])\n"
        "bucket.upload_tree(pathlib.Path('/volume/checkpoint-1'), 'checkpoint-1')\n"
    )
    env = {"STORAGE_EMULATOR_HOST": proxy.host, "HFGPU_BUCKET_TIMEOUT": "30"}
    try:
        proc = docker(
            *docker_run_args(vol, env), image.tag, "python3", "-c", probe, f"gs://{BUCKET}/retried",
            check=False, timeout=300,
        )  # fmt: skip
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proxy.failed == 1, "the proxy never saw an upload"
    assert bucket_checkpoints("retried") == {1: sorted([MARKER, "model.safetensors"])}


BAD = [
    ("gs://My-Bucket/run", "has uppercase letters"),
    ("gs://ab/run", "must be 3-63 characters long"),
    ("gs://" + "a" * 64 + "/run", "must be 3-63 characters long"),
    ("gs://-bucket/run", "must start and end with a letter or digit"),
    ("gs://my bucket/run", "may only hold lowercase letters"),
    ("gs://google-ckpt/run", "may not start with 'goog' or contain 'google'"),
    ("gs://192.168.5.4/run", "may not be an IP address"),
    ("s3://my-bucket/run", "is not a Cloud Storage URL"),
    ("my-bucket/run", "is not a Cloud Storage URL"),
    ("gs://my-bucket/../run", "may not hold '.' or '..' segments"),
]


def test_bad_bucket_names_are_refused_by_the_naming_rules(image):
    """Every rule in one container run: bucket_checkpoints.parse_url's one-line reasons."""
    probe = (
        "import json, sys, trainkit, bucket_checkpoints as b\n"
        "for url in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        b.parse_url(url); print('accepted')\n"
        "    except trainkit.UserError as e:\n"
        "        print(e)\n"
    )
    urls = [url for url, _ in BAD] + ["gs://my-bucket", "gs://my.bucket_1/a/b/", "gs://" + "a" * 63]
    proc = run_in_image(image.tag, "python3", "-c", probe, json.dumps(urls), timeout=120, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(urls), proc.stdout
    for (url, why), line in zip(BAD, lines, strict=False):
        assert why in line, (url, line)
    assert lines[len(BAD) :] == ["accepted"] * 3


@pytest.mark.parametrize(
    "case",
    ["bad-name", "not-a-url", "no-such-bucket", "unreachable"],
)
def test_bad_bucket_gives_one_line_and_writes_nothing(image, emulator, models, tmp_path, case):
    """Each bad CHECKPOINT_BUCKET: exit 2, one line on stderr, no output folder, nothing in the bucket."""
    url, why, env = {
        "bad-name": (f"gs://{BUCKET.upper()}/bad", "has uppercase letters", {}),
        "not-a-url": (f"{BUCKET}/bad", "is not a Cloud Storage URL", {}),
        "no-such-bucket": ("gs://hfgpu-no-such-bucket/bad", "does not exist", {}),
        # A port nothing listens on: connection refused until the (shortened) wait runs out.
        "unreachable": (
            f"gs://{BUCKET}/bad",
            "cannot reach the bucket",
            {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}", "HFGPU_BUCKET_TIMEOUT": "3"},
        ),
    }[case]
    vol = new_volume(models, tmp_path)

    # The image's entrypoint makes HF_HOME's cache folders (/volume/.cache) and the caller's
    # persistent HOME (/volume/.home/UID) before the program starts: not the program's writes.
    def files() -> list[Path]:
        made_by_entrypoint = {".cache", ".home"}
        return sorted(
            p.relative_to(vol)
            for p in vol.rglob("*")
            if not made_by_entrypoint & set(p.relative_to(vol).parts)
        )

    before = files()
    proc = train(image, vol, {"STORAGE_EMULATOR_HOST": emulator, "CHECKPOINT_BUCKET": url, **env})
    # The image's `train` launcher says how it starts the program (its one line); then the program's.
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("train: ")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: CHECKPOINT_BUCKET"), proc.stderr[-3000:]
    assert why in lines[0], lines[0]
    assert files() == before, "the run wrote into the volume"
    assert not (vol / OUT).exists()
    assert objects("bad") == []
