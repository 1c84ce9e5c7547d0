"""Shared fixtures: a real Docker engine, the project's image built once per run.

The image is built from build_image/Dockerfile against a base image made locally
(tests/make-test-base.sh: debootstrap + docker import), because no registry can be
reached here. Set HFGPU_TEST_IMAGE to reuse an image you already built, or
HFGPU_KEEP_IMAGES=1 to keep the test images after the run.

`make test` runs the files on two pytest-xdist workers (`-n 2 --dist loadfile`: a file's tests
stay on one worker, so its module fixtures are made once), in tests/run_order.py's order.
What a run makes once for every worker (the image, the tiny models) is made under a file lock in
the folder the workers share (`shared_root`): the first worker to need it makes it, the other
reuses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import run_order
from gcp_env import Registry
from xdist.scheduler import LoadFileScheduling

ROOT = Path(__file__).resolve().parent.parent
TEST_BASE_IMAGE = os.environ.get("HFGPU_TEST_BASE", "hfgpu-test-base:bookworm")
# A fixed canary: the build is given it inside its CA bundle secret; it must end up
# in no layer. Fixed, so that cached layers were built with the same secret.
CANARY = "hfgpu-canary-7f3a9c2e-not-a-real-secret"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The session image's label arguments (a rebuild with the same ones differs only where it must).
SESSION_BUILD_ARGS = ("VERSION=9.9.9-test", "REVISION=testrev", "CREATED=2026-01-01T00:00:00Z")


def docker_bin() -> str:
    """The Docker client to use: one that builds with BuildKit.

    Debian's client (/usr/bin/docker, 20.10) builds with DOCKER_BUILDKIT=1; a newer
    client without the buildx plugin refuses to. HFGPU_DOCKER overrides.
    """
    if os.environ.get("HFGPU_DOCKER"):
        return os.environ["HFGPU_DOCKER"]
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if not found:
        pytest.exit("docker not found: install Docker (Debian: apt-get install docker.io)", 2)
    return found


DOCKER = docker_bin()


def docker(*args: str, check: bool = True, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    """Run the docker client and capture its output as text."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1", **kw.pop("env", {})}
    return subprocess.run(
        [DOCKER, *args], check=check, capture_output=True, text=True, timeout=timeout, env=env, **kw
    )


def tool_path_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder to put first on PATH so project scripts call the BuildKit-capable docker."""
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "docker").symlink_to(DOCKER)
    return bindir


@dataclass
class BuildResult:
    tag: str
    log: str
    layers: list[str] = field(default_factory=list)


def build_image(
    tag: str,
    context: Path = ROOT,
    build_args: Sequence[str] = (),
    secret_file: Path | None = None,
) -> BuildResult:
    """Build build_image/Dockerfile in CONTEXT with BuildKit; return tag, log and layer digests."""
    cmd = [
        "build",
        "-f",
        str(context / "build_image" / "Dockerfile"),
        "--build-arg",
        f"BASE_IMAGE={TEST_BASE_IMAGE}",
        "--progress",
        "plain",
        "-t",
        tag,
    ]
    for arg in build_args:
        cmd += ["--build-arg", arg]
    if secret_file is not None:
        cmd += ["--secret", f"id=ca_bundle,src={secret_file}"]
    proc = docker(*cmd, str(context), check=False, timeout=3600)
    if proc.returncode != 0:
        raise AssertionError(f"docker build failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return BuildResult(tag=tag, log=proc.stderr, layers=image_layers(tag))


def image_layers(ref: str) -> list[str]:
    out = docker("image", "inspect", "--format", "{{range .RootFS.Layers}}{{println .}}{{end}}", ref).stdout
    return [line for line in out.splitlines() if line]


class RunOrderScheduling(LoadFileScheduling):
    """`--dist loadfile` with tests/run_order.py's work units, queued in collection order (which
    pytest_collection_modifyitems sorts) instead of by their number of tests."""

    def __init__(self, config: pytest.Config, log=None) -> None:
        super().__init__(config, log)
        config.option.loadscopereorder = False

    def _split_scope(self, nodeid: str) -> str:
        return run_order.work_unit(nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile` takes the work units in tests/run_order.py's order."""
    return RunOrderScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The work units in tests/run_order.py's queue order, a file's tests in their written order."""
    unit = {item.nodeid: run_order.work_unit(item.nodeid) for item in items}
    uses_image = {unit[item.nodeid] for item in items if "image" in item.fixturenames}
    items.sort(key=lambda item: run_order.queue_key(unit[item.nodeid], unit[item.nodeid] in uses_image))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU; the only tests that may skip under CI=true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI=true, turn a skip into a failure unless the test is marked gpu."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or os.environ.get("CI") != "true":
        return
    if item.get_closest_marker("gpu") is not None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true: {reason}\n"
        "Only tests marked gpu may skip in CI; make .ci/run install what this test needs."
    )


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's folder that every pytest-xdist worker sees (pytest's base temp without xdist:
    each worker's base temp is a folder inside the run's)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def run_lock(root: Path, name: str) -> Iterator[None]:
    """Hold the run's lock NAME (one worker at a time); released when the block ends."""
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# How long the session's image build took: a line per build in this file of the shared folder,
# printed at the end of the run (CI's figure) by the process that prints the summary.
IMAGE_BUILD_SECONDS = "image-build-seconds"


def run_root(config: pytest.Config) -> Path | None:
    """shared_root, seen from the process that ends the run (None in a worker, or if nothing was made)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    made = getattr(config._tmp_path_factory, "_basetemp", None)  # getbasetemp() would make one
    return Path(made) if made else None


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    root = run_root(config)
    record = root / IMAGE_BUILD_SECONDS if root else None
    for seconds in record.read_text().split() if record and record.exists() else []:
        terminalreporter.write_line(f"image build (build_image/Dockerfile, this run): {float(seconds):.0f} s")


@pytest.fixture(scope="session")
def engine() -> str:
    """A reachable Docker engine and the test base image, or a one-line reason to stop."""
    proc = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=60)
    if proc.returncode != 0:
        pytest.exit(f"Docker engine not reachable ({proc.stderr.strip()[:200]}); start dockerd first", 2)
    if docker("image", "inspect", TEST_BASE_IMAGE, check=False).returncode != 0:
        pytest.exit(f"test base image {TEST_BASE_IMAGE} missing; run tests/make-test-base.sh", 2)
    return proc.stdout.strip()


@pytest.fixture(scope="session")
def canary_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host's CA bundle (this machine reaches PyPI through a TLS proxy) plus the canary."""
    path = tmp_path_factory.mktemp("secret") / "ca_bundle.pem"
    roots = HOST_CA_BUNDLE.read_text() if HOST_CA_BUNDLE.exists() else ""
    path.write_text(f"{roots}\n# {CANARY}\n")
    return path


@pytest.fixture(scope="session")
def image(
    engine: str, canary_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BuildResult]:
    """The project's image, built once per test run and shared by every test. A second xdist
    worker tags the image the first one built (its own tag: each worker removes its own)."""
    preset = os.environ.get("HFGPU_TEST_IMAGE")
    if preset:
        yield BuildResult(tag=preset, log="", layers=image_layers(preset))
        return
    tag = f"gpu_transformers:test-{uuid.uuid4().hex[:8]}"
    root = shared_root(tmp_path_factory)
    built = root / "image-id"
    with run_lock(root, "image"):
        if built.exists() and docker("tag", built.read_text(), tag, check=False).returncode == 0:
            result = BuildResult(tag=tag, log="", layers=image_layers(tag))
        else:
            started = time.monotonic()
            result = build_image(tag, build_args=SESSION_BUILD_ARGS, secret_file=canary_bundle)
            with open(root / IMAGE_BUILD_SECONDS, "a") as record:
                record.write(f"{time.monotonic() - started:.1f}\n")
            built.write_text(docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip())
    yield result
    if os.environ.get("HFGPU_KEEP_IMAGES") != "1":
        docker("image", "rm", "--force", tag, check=False)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_models(
    request: pytest.FixtureRequest, image: BuildResult, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """TEXT -> a folder with tiny-bert, tiny-bert-2labels and tiny-gpt2 (tests/assets/
    make_tiny_models.py), their tokenizers trained on TEXT. Each test module that needs them
    declares its TEXT as TINY_MODEL_TEXT; the models for every collected module's text are made
    in one container run, once per test run (a module copies them into its own volume)."""
    texts = {}
    for item in request.session.items:
        text = getattr(getattr(item, "module", None), "TINY_MODEL_TEXT", None)
        if text:
            texts[text_key(text)] = text
    root = shared_root(tmp_path_factory) / "tiny-models"
    with run_lock(shared_root(tmp_path_factory), "tiny-models"):
        todo = sorted(key for key in texts if not (root / key / "models").is_dir())
        if todo:
            root.mkdir(exist_ok=True)
            shutil.copy(ROOT / "tests" / "assets" / "make_tiny_models.py", root)
            pairs: list[str] = []
            for key in todo:
                (root / key).mkdir()
                (root / key / "text.txt").write_text(texts[key])
                pairs += [f"/volume/{key}/text.txt", f"/volume/{key}/models"]
            made = run_in_image(
                image.tag,
                *("python3", "/volume/make_tiny_models.py", *pairs),
                user="0:0",
                volume=root,
                env={"HF_HUB_OFFLINE": "1", "HOME": "/tmp"},
                timeout=300,
            )
            assert made.returncode == 0, made.stderr[-3000:]

    def models(text: str) -> Path:
        folder = root / text_key(text) / "models"
        assert folder.is_dir(), "no tiny models for this text: declare it as the module's TINY_MODEL_TEXT"
        return folder

    return models


def copy_tiny_models(models: Path, dest: Path, user: str) -> Path:
    """Copy the tiny models into DEST, owned by USER (uid:gid) as if USER had made them there."""
    shutil.copytree(models, dest)
    uid, gid = (int(n) for n in user.split(":"))
    for path in [dest, *dest.rglob("*")]:
        os.chown(path, uid, gid)
    return dest


# The run's one registry (session_registry): where it listens and who stops it, in the shared folder.
REGISTRY_RECORD = "session-registry.json"


@pytest.fixture(scope="session")
def session_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The run's one registry on loopback. The real image is pushed to it in full once (whichever
    test first pushes it; a later push of the same layers mounts them from the first repository:
    Registry v2 cross-repository blob mount), so CI pays the multi-GB push once. One for the run,
    not one per xdist worker: the first worker starts it, the other uses it, and the process that
    ends the run stops it (pytest_sessionfinish)."""
    root = shared_root(tmp_path_factory)
    record = root / REGISTRY_RECORD
    with run_lock(root, "registry"):
        if record.exists():
            return Registry.from_record(json.loads(record.read_text()))
        reg = Registry().start()
        record.write_text(json.dumps(reg.record()))
        return reg


@pytest.fixture(scope="session")
def full_push_lock(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], AbstractContextManager[None]]:
    """Hold it around a push of the full image to session_registry: with two xdist workers, a second
    push waits for the first, then mounts its layers, instead of uploading them again meanwhile."""
    root = shared_root(tmp_path_factory)
    return lambda: run_lock(root, "full-push")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the run's registry (session_registry), once every worker is done with it."""
    root = run_root(session.config)
    record = root / REGISTRY_RECORD if root else None
    if record and record.exists():
        Registry.from_record(json.loads(record.read_text())).stop()
        record.unlink()


def run_in_image(
    image: str,
    *cmd: str,
    user: str | None = None,
    volume: Path | None = None,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
    timeout: float = 900,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """`docker run --rm` the image with CMD; mount VOLUME at /volume when given."""
    args = ["run", "--rm", "--network", "none"]
    if user:
        args += ["--user", user]
    if volume is not None:
        args += ["-v", f"{volume}:/volume"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    args += [*extra, image, *cmd]
    return docker(*args, check=check, timeout=timeout)
