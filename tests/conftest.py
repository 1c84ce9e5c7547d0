"""Shared fixtures: a real Docker engine, the project's image built once per run.

The image is built from build_image/Dockerfile against a base image made locally
(tests/make-test-base.sh: debootstrap + docker import), because no registry can be
reached here. Set HFGPU_TEST_IMAGE to reuse an image you already built, or
HFGPU_KEEP_IMAGES=1 to keep the test images after the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from gcp_env import Registry

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


# How long the session's image build took: printed at the end of the run (CI's figure).
IMAGE_BUILD_SECONDS: list[float] = []


def pytest_terminal_summary(terminalreporter) -> None:
    for seconds in IMAGE_BUILD_SECONDS:
        terminalreporter.write_line(f"image build (build_image/Dockerfile, this run): {seconds:.0f} s")


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
def image(engine: str, canary_bundle: Path) -> Iterator[BuildResult]:
    """The project's image, built once per test run and shared by every test."""
    preset = os.environ.get("HFGPU_TEST_IMAGE")
    if preset:
        yield BuildResult(tag=preset, log="", layers=image_layers(preset))
        return
    tag = f"gpu_transformers:test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    result = build_image(
        tag,
        build_args=SESSION_BUILD_ARGS,
        secret_file=canary_bundle,
    )
    IMAGE_BUILD_SECONDS.append(time.monotonic() - started)
    yield result
    if os.environ.get("HFGPU_KEEP_IMAGES") != "1":
        docker("image", "rm", "--force", tag, check=False)


@pytest.fixture(scope="session")
def session_registry() -> Iterator[Registry]:
    """The run's one registry on loopback. The real image is pushed to it in full once (whichever
    test first pushes it; a later push of the same layers mounts them from the first repository:
    Registry v2 cross-repository blob mount), so CI pays the multi-GB push once."""
    reg = Registry().start()
    yield reg
    reg.stop()


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
