"""build_and_push.sh and cloudbuild.yaml, with real parts.

- The real gcloud CLI talks to tests/fake_gcp.py (Artifact Registry API) through its own
  endpoint-override and access-token-file settings; the fake records what gcloud sent.
- A real Docker engine builds (BuildKit, cached by the session's `image` fixture: same
  base, same Dockerfile, so only the label step is new) and pushes to a real registry
  (Debian's docker-registry) on loopback, standing in for LOCATION-docker.pkg.dev
  through --registry-host. One real push (about 4 GB, a few minutes) serves several tests.
- cloudbuild.yaml cannot run here: its build and push steps are rendered with Cloud Build's
  substitutions and run by bash with `docker` defined as a shell function that prints its
  arguments, so the test compares the exact argv with build_and_push.sh --dry-run.
- Tests that depend on git state (tags, -dirty, labels) run the scripts of a clean git copy of
  the working tree (`checkout`), whose remote URL carries credentials that must never reach a label.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import DOCKER as DOCKER_BIN
from conftest import ROOT, docker, tool_path_dir
from fake_gcp import FakeGcp, Recorded, cleanup_survivors
from gcp_env import Registry, script_env
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SCRIPT = ROOT / "build_and_push.sh"
VERSION = (ROOT / "VERSION").read_text().strip()
CA = "/etc/ssl/certs/ca-certificates.crt"
BUILD_FLAGS = ["--base-image", "hfgpu-test-base:bookworm", "--ca-bundle", CA]
REPO_PATH = "my-project/gpu-transformers/gpu_transformers"
# The remote URL of the `checkout` copy: its credentials must never reach the image's labels.
SECRET_TOKEN = "hfgpu-s3cr3t-token-do-not-label"
REMOTE_URL = f"https://hfgpu-user:{SECRET_TOKEN}@example.com/owner/repo.git"
# Configuration names the developer's environment must not leak into a test run.
LEAKY = ("CA_BUNDLE", "BASE_IMAGE", "VM_NAME", "INSTANCE_NAME", "ZONE", "VOLUME", "CHECKPOINT_BUCKET")


def run_script(
    env: dict[str, str], *args: str, timeout: float = 3600, root: Path = ROOT
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env.items() if k not in LEAKY or k in args_env(env)}
    return subprocess.run(
        [str(root / SCRIPT.name), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=root
    )


def args_env(env: dict[str, str]) -> set[str]:
    """The LEAKY names a test set on purpose (listed in HFGPU_TEST_KEEP)."""
    return set(env.get("HFGPU_TEST_KEEP", "").split())


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("build_and_push.sh: error:")]


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False).returncode == 0


def remove_refs(prefix: str) -> None:
    """Remove the local tags that start with PREFIX (what a test made)."""
    out = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout
    for ref in out.split():
        if ref.startswith(prefix):
            docker("image", "rm", ref, check=False)


@pytest.fixture(scope="module")
def bindir(tmp_path_factory) -> Path:
    return tool_path_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A clean git repository holding the working tree as it is now (tracked and new files,
    not ignored ones), one commit, and a remote URL with credentials in it."""
    dest = tmp_path_factory.mktemp("checkout") / "repo"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "snapshot"],
        ["remote", "add", "origin", REMOTE_URL],
    ):
        subprocess.run(["git", "-C", str(dest), *args], check=True, capture_output=True)
    return dest


def checkout_head(checkout: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def dry_run_build(proc: subprocess.CompletedProcess) -> list[str]:
    """The `docker build` argv that --dry-run printed."""
    assert proc.returncode == 0, proc.stderr
    (build,) = [shlex.split(line) for line in proc.stdout.splitlines() if " docker build " in f" {line} "]
    return build


@pytest.fixture
def fake() -> Iterator[FakeGcp]:
    with FakeGcp() as f:
        yield f


@dataclass
class PushRuns:
    registry: Registry
    fake: FakeGcp
    first: subprocess.CompletedProcess
    first_requests: list[Recorded]
    second: subprocess.CompletedProcess
    second_requests: list[Recorded]
    head: str  # the commit of the clean checkout both runs pushed


@pytest.fixture(scope="module")
def pushed(
    image, session_registry: Registry, full_push_lock, bindir: Path, checkout: Path, tmp_path_factory
) -> Iterator[PushRuns]:
    """The one real push of the full image: the clean checkout's script, run twice against the
    run's registry (tests/conftest.py session_registry) and a fake API."""
    tmp = tmp_path_factory.mktemp("push")
    registry = session_registry
    try:
        with FakeGcp() as fake:
            env = script_env(fake, tmp, bindir)
            with full_push_lock():
                first = run_script(env, "--registry-host", registry.host, *BUILD_FLAGS, root=checkout)
            first_requests = list(fake.requests)
            fake.clear()
            second = run_script(env, "--registry-host", registry.host, *BUILD_FLAGS, root=checkout)
            second_requests = list(fake.requests)
            yield PushRuns(
                registry, fake, first, first_requests, second, second_requests, checkout_head(checkout)
            )
    finally:
        remove_refs(f"{registry.host}/{REPO_PATH}")


def printed_digest_ref(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    return last


def test_push_prints_a_digest_reference_that_pulls_and_runs(pushed: PushRuns):
    ref = printed_digest_ref(pushed.first)
    assert re.fullmatch(rf"{re.escape(pushed.registry.host)}/{REPO_PATH}@sha256:[0-9a-f]{{64}}", ref)
    assert pushed.first.stdout.strip() == ref, "stdout carries only the reference"
    # Pull it back by digest into an engine that no longer has the tags, and run it.
    for tag in pushed.registry.tags(REPO_PATH):
        docker("image", "rm", f"{pushed.registry.host}/{REPO_PATH}:{tag}", check=False)
    docker("image", "rm", ref, check=False)
    pull = docker("pull", ref, check=False, timeout=1800)
    assert pull.returncode == 0, pull.stderr
    try:
        labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", ref).stdout)
        assert labels["org.opencontainers.image.version"] == VERSION
        assert labels["org.opencontainers.image.revision"] == pushed.head, "a clean checkout: no -dirty"
        # The source label is the remote URL without its credentials, and no label holds them.
        assert labels["org.opencontainers.image.source"] == "https://example.com/owner/repo.git"
        assert SECRET_TOKEN not in json.dumps(labels) and "hfgpu-user" not in json.dumps(labels)
        assert SECRET_TOKEN not in pushed.first.stderr + pushed.first.stdout
        assert labels["hfgpu.min-nvidia-driver"] and labels["hfgpu.cuda-runtime"]
        probe = "import transformers; print('ok', transformers.__version__)"
        run = docker("run", "--rm", "--network", "none", ref, "python3", "-c", probe, check=False)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("ok ")
    finally:
        docker("image", "rm", ref, check=False)


def test_registry_holds_the_three_tags_with_the_printed_digest(pushed: PushRuns):
    digest = printed_digest_ref(pushed.first).split("@", 1)[1]
    sha_tag = f"sha-{pushed.head[:7]}"
    assert pushed.registry.tags(REPO_PATH) == sorted([VERSION, sha_tag, "latest"])
    # A clean commit rebuilds to the same image (its creation date is the commit's), so the
    # second run printed the same digest, and all three tags point at it.
    assert printed_digest_ref(pushed.second).split("@", 1)[1] == digest
    for tag in (VERSION, sha_tag, "latest"):
        assert pushed.registry.digest(REPO_PATH, tag) == digest


def test_first_run_describes_then_creates_the_repository(pushed: PushRuns):
    calls = [(r.method, r.path) for r in pushed.first_requests]
    repo = "/v1/projects/my-project/locations/us-east4/repositories"
    assert calls[0] == ("GET", f"{repo}/gpu-transformers")
    creates = [r for r in pushed.first_requests if r.method == "POST"]
    assert len(creates) == 1
    assert creates[0].path == repo
    assert creates[0].query["repositoryId"] == ["gpu-transformers"]
    assert creates[0].body["format"] == "DOCKER"
    assert not [r for r in pushed.first_requests if r.unhandled]
    assert "repository: gpu-transformers in us-east4 not found; creating it" in pushed.first.stderr
    assert "repository: gpu-transformers created (Docker format, us-east4)" in pushed.first.stderr


def test_second_run_creates_nothing(pushed: PushRuns):
    printed_digest_ref(pushed.second)
    assert [(r.method, r.path) for r in pushed.second_requests] == [
        ("GET", "/v1/projects/my-project/locations/us-east4/repositories/gpu-transformers")
    ]
    assert "gpu-transformers exists; not created" in pushed.second.stderr
    # The second push uploaded no layer: docker push reports every layer of the image, each
    # "Layer already exists". Every layer must be accounted for, so a change in docker's
    # progress format (no line recognised) fails here rather than passing with nothing checked.
    second = printed_digest_ref(pushed.second).split("@", 1)[1]
    layers = {d.split(":")[1][:12] for d in pushed.registry.diff_ids(REPO_PATH, second)}
    status: dict[str, set[str]] = {}
    for layer, what in re.findall(
        r"^([0-9a-f]{12}): (Pushed|Layer already exists|Mounted from \S+)$", pushed.second.stderr, flags=re.M
    ):
        status.setdefault(layer, set()).add(what)
    assert set(status) == layers, f"push output names {sorted(status)}, the image has {sorted(layers)}"
    assert all(seen == {"Layer already exists"} for seen in status.values()), status


def test_steps_are_named_and_latest_is_pushed_last(pushed: PushRuns):
    steps = re.findall(r"^build_and_push\.sh: (\w+):", pushed.first.stderr, flags=re.M)
    order = list(dict.fromkeys(steps))
    assert order == ["preflight", "repository", "build", "auth", "push"]
    pushes = re.findall(r"^build_and_push\.sh: push: (\S+:\S+)$", pushed.first.stderr, flags=re.M)
    assert pushes[0].rsplit(":", 1)[1] == VERSION
    assert pushes[-1].endswith(":latest") and len(pushes) == 3
    # configure-docker was asked for exactly the one registry host.
    assert f"Adding credentials for: {pushed.registry.host}\n" in pushed.first.stderr


def test_dry_run_prints_every_command_and_changes_nothing(
    image, fake: FakeGcp, bindir: Path, checkout: Path, tmp_path: Path
):
    tag = f"dry-{uuid.uuid4().hex[:8]}"
    env = script_env(fake, tmp_path, bindir)
    proc = run_script(
        env, "--dry-run", "--tag", tag, "--registry-host", "127.0.0.1:5999", *BUILD_FLAGS, root=checkout
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    sha = checkout_head(checkout)[:7]
    assert [" ".join(c[:4]) for c in commands[:4]] == [
        "gcloud artifacts repositories describe",
        "gcloud artifacts repositories create",
        "env DOCKER_BUILDKIT=1 docker build",
        "gcloud auth configure-docker 127.0.0.1:5999",
    ]
    pushes = [c[2].removeprefix(f"127.0.0.1:5999/{REPO_PATH}:") for c in commands[4:]]
    assert [c[:2] for c in commands[4:]] == [["docker", "push"]] * 3
    assert pushes == [tag, f"sha-{sha}", "latest"], "a clean checkout moves latest, last"
    assert commands[1][commands[1].index("--repository-format") + 1] == "docker"
    assert commands[1][commands[1].index("--location") + 1] == "us-east4"
    assert "--secret" in commands[2] and f"id=ca_bundle,src={CA}" in commands[2]
    args = build_args(commands[2])
    assert args["SOURCE"] == "https://example.com/owner/repo.git" and SECRET_TOKEN not in proc.stdout
    assert args["REVISION"] == checkout_head(checkout)
    # Nothing happened: no API request, no image, no docker credential change.
    assert fake.requests == []
    assert not image_exists(f"127.0.0.1:5999/{REPO_PATH}:{tag}")
    assert list((tmp_path / "docker-config").iterdir()) == []


@pytest.mark.parametrize("change", ["untracked", "modified"])
def test_a_dirty_context_is_tagged_dirty_and_never_moves_latest(
    change: str, fake: FakeGcp, bindir: Path, checkout: Path, tmp_path: Path
):
    """An untracked file in app/ is dirty as much as an edit: it would go into the image."""
    target = checkout / "app" / ("notes-untracked.txt" if change == "untracked" else "trainkit.py")
    before = target.read_bytes() if target.exists() else None
    target.write_text((before or b"").decode() + "\n# a local change\n")
    try:
        env = script_env(fake, tmp_path, bindir)
        proc = run_script(env, "--dry-run", "--registry-host", "127.0.0.1:5999", *BUILD_FLAGS, root=checkout)
        build = dry_run_build(proc)
        sha = checkout_head(checkout)[:7]
        assert tags_of(build) == [
            f"127.0.0.1:5999/{REPO_PATH}:{VERSION}",
            f"127.0.0.1:5999/{REPO_PATH}:sha-{sha}-dirty",
        ]
        assert "latest" not in proc.stdout
        assert build_args(build)["REVISION"].endswith("-dirty")
        assert "latest is not moved" in proc.stderr
    finally:
        if before is None:
            target.unlink()
        else:
            target.write_bytes(before)


def test_git_ignored_secrets_never_reach_the_image(
    image, fake: FakeGcp, bindir: Path, checkout: Path, tmp_path
):
    """.env files and keys that git ignores, under app/ and build_image/, stay out of the build context."""
    planted = [
        checkout / "app" / ".env",
        checkout / "app" / "service-key.pem",
        checkout / "app" / "deploy.key",
        checkout / "build_image" / "bin" / ".env",
    ]
    for path in planted:
        path.write_text(f"TOKEN={SECRET_TOKEN}\n")
    name = f"hfgpu-bap-{uuid.uuid4().hex[:8]}"
    try:
        status = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout
        assert status == "", f"git ignores the planted files: {status!r}"
        env = script_env(fake, tmp_path, bindir, project=None)
        proc = run_script(env, "--no-push", "--image-name", name, *BUILD_FLAGS, root=checkout)
        assert proc.returncode == 0, proc.stderr[-4000:]
        ref = proc.stdout.strip().splitlines()[-1]
        assert ref == f"{name}:{VERSION}"
        found = docker(
            "run", "--rm", "--network", "none", "--entrypoint", "grep", ref, "-rl", SECRET_TOKEN, "/app",
            "/usr/local/bin", check=False,
        )  # fmt: skip
        assert found.returncode == 1 and found.stdout == "", f"secrets in the image: {found.stdout}"
        listing = docker("run", "--rm", "--network", "none", "--entrypoint", "ls", ref, "-A", "/app").stdout
        assert "trainkit.py" in listing and ".env" not in listing and ".pem" not in listing
    finally:
        for path in planted:
            path.unlink()
        remove_refs(f"{name}:")


# Each: (arguments, environment, the error line's key words). {tmp} is the test's folder.
# docs/bad-inputs/build_and_push.md lists the same inputs with the line each gives.
BAD_INPUTS = [
    (["--project", "My_Project"], {}, "invalid project id 'My_Project' (--project)"),
    (["--project", "ab"], {}, "invalid project id 'ab' (--project)"),
    (["--location", "us-east4-a"], {}, "invalid location 'us-east4-a' (--location): that is a zone"),
    ([], {"LOCATION": "moon"}, "invalid location 'moon' (LOCATION from the environment)"),
    (["--repo", "Gpu_Repo"], {}, "invalid repository name 'Gpu_Repo' (--repo)"),
    ([], {".env": "REPO_NAME=repo-"}, "invalid repository name 'repo-' (REPO_NAME in {tmp}/bad.env:1)"),
    (["--image-name", "Bad Image"], {}, "invalid image name 'Bad Image' (--image-name)"),
    (["--tag", ".hidden"], {}, "invalid tag '.hidden' (--tag)"),
    (["--tag", "x" * 129], {}, "invalid tag"),
    (["--tag"], {}, "--tag needs a value"),
    (["--tag", "--dry-run"], {}, "--tag needs a value but got the option '--dry-run'"),
    (["--registry-host", "http://host"], {}, "invalid registry host 'http://host' (--registry-host)"),
    (["--base-image", "ubuntu 22.04"], {}, "invalid image reference 'ubuntu 22.04' (--base-image)"),
    (
        ["--ca-bundle", "/no/such/bundle.pem"],
        {},
        "invalid file '/no/such/bundle.pem' (--ca-bundle): no readable file there",
    ),
    (["--ca-bundle", "{tmp}"], {}, "invalid file '{tmp}' (--ca-bundle): it is a folder"),
    (["--ca-bundle", "{tmp}/a,b.pem"], {}, "the path has a comma or a double quote"),
    ([], {"CA_BUNDLE": "/no/such.pem"}, "invalid file '/no/such.pem' (CA_BUNDLE from the environment)"),
    (["--dry-run=1"], {}, "--dry-run is an on/off flag and takes no value"),
    (["--no-push=yes"], {}, "--no-push is an on/off flag and takes no value"),
    (["--frobnicate"], {}, "unknown option '--frobnicate'"),
    (["stray"], {}, "unexpected argument 'stray': build_and_push.sh takes options only"),
    (["--keep", "many"], {}, "--keep must be a whole number from 0 to 10000; got 'many'"),
    (["--keep="], {}, "--keep is empty; give N, or leave it out for the default"),
    (["--keep", "-1"], {}, "--keep must be a whole number from 0 to 10000; got '-1'"),
    (["--keep", "99999"], {}, "--keep must be from 0 to 10000; got '99999'"),
    (["--keep", "1e3"], {}, "--keep must be a whole number from 0 to 10000; got '1e3'"),
]


@pytest.mark.parametrize(
    ("args", "env", "message"), BAD_INPUTS, ids=[" ".join(a) or next(iter(e)) for a, e, _ in BAD_INPUTS]
)
def test_bad_input_is_one_line_and_nothing_runs(
    args, env, message, fake: FakeGcp, bindir: Path, tmp_path: Path
):
    (tmp_path / "a,b.pem").write_text("x")
    tag = f"bad-{uuid.uuid4().hex[:8]}"
    extra = {k: v.format(tmp=tmp_path) for k, v in env.items() if k != ".env"}
    if ".env" in env:
        (tmp_path / "bad.env").write_text(env[".env"] + "\n")
        extra["CONFIG_FILE"] = str(tmp_path / "bad.env")
    run_env = script_env(fake, tmp_path, bindir, TAG=tag, HFGPU_TEST_KEEP=" ".join(extra), **extra)
    proc = run_script(run_env, *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == error_lines(proc), "only the error line"
    assert len(error_lines(proc)) == 1 and message.format(tmp=tmp_path) in error_lines(proc)[0]
    assert proc.stdout == "" and fake.requests == [], "nothing asked of Google Cloud, nothing pushed"
    out = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout
    assert f":{tag}" not in out, "no tag created"


def test_old_flag_names_still_work_with_a_deprecation_line(fake: FakeGcp, bindir: Path, tmp_path: Path):
    env = script_env(fake, tmp_path, bindir)
    proc = run_script(env, "--dry-run", "--no-push", "--image", "old-name", "--ca-cert", CA)
    build = dry_run_build(proc)
    assert tags_of(build)[0] == f"old-name:{VERSION}"
    assert f"id=ca_bundle,src={CA}" in build
    warnings = [line for line in proc.stderr.splitlines() if "deprecated" in line]
    deprecation = (
        "build_and_push.sh: warning: {} is deprecated and will be removed in the next release; use {}"
    )
    assert warnings == [
        deprecation.format("--image", "--image-name"),
        deprecation.format("--ca-cert", "--ca-bundle"),
    ]


def test_settings_come_from_the_environment_and_env_file(fake: FakeGcp, bindir: Path, tmp_path: Path):
    """BASE_IMAGE and CA_BUNDLE go through the configuration layer: flags, environment, .env."""
    # The .env parser (lib/kv.sh, read as dotenv): quotes dropped, `export` allowed, CRLF endings,
    # comments skipped, never executed; a line that is no NAME=VALUE is an error naming FILE:LINE.
    cfg = tmp_path / "cfg.env"
    text = (
        f'# IMAGE_NAME=commented-out\r\nBASE_IMAGE="from-file:1"\r\nexport CA_BUNDLE={CA}\r\n'
        f"IMAGE_NAME='from-file'\r\nTAG=`touch {tmp_path}/ran2`x\r\n"
    )
    cfg.write_text(text)
    env = script_env(fake, tmp_path, bindir, CONFIG_FILE=str(cfg), BASE_IMAGE="from-env:2",
                     HFGPU_TEST_KEEP="BASE_IMAGE")  # fmt: skip
    proc = run_script(env, "--dry-run", "--no-push", "--tag", "t1")
    build = dry_run_build(proc)
    assert build_args(build)["BASE_IMAGE"] == "from-env:2", "the environment wins over the file"
    assert f"id=ca_bundle,src={CA}" in build and tags_of(build)[0] == "from-file:t1"
    proc = run_script(env, "--dry-run", "--no-push")
    assert (
        proc.returncode == 1 and "invalid tag '`touch" in proc.stderr and f"(TAG in {cfg}:5)" in proc.stderr
    )
    cfg.write_text(f"{text}$(touch {tmp_path}/ran)\r\n")
    proc = run_script(env, "--dry-run", "--no-push", "--tag", "t1")
    assert proc.returncode == 1 and f"{cfg}:6: not a NAME=VALUE line" in proc.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "ran2").exists()
    cfg.write_text(text)
    build = dry_run_build(run_script(env, "--dry-run", "--no-push", "--tag=t2", "--base-image=from-flag:3"))
    assert build_args(build)["BASE_IMAGE"] == "from-flag:3", "a flag wins over everything"


def test_docker_daemon_down(fake: FakeGcp, bindir: Path, tmp_path: Path):
    env = script_env(fake, tmp_path, bindir, DOCKER_HOST=f"unix://{tmp_path}/dead.sock")
    proc = run_script(env)
    assert proc.returncode == 1
    (err,) = error_lines(proc)
    assert "preflight: the Docker daemon is not reachable" in err and "start it" in err
    assert fake.requests == [] and "build:" not in proc.stderr


def test_gcloud_not_authenticated(fake: FakeGcp, bindir: Path, tmp_path: Path):
    proc = run_script(script_env(fake, tmp_path, bindir, token=None))
    assert proc.returncode == 1
    (err,) = error_lines(proc)
    assert "preflight: gcloud is not authenticated; run: gcloud auth login" in err
    assert fake.requests == [] and "build:" not in proc.stderr


def test_no_project_anywhere(fake: FakeGcp, bindir: Path, tmp_path: Path):
    proc = run_script(script_env(fake, tmp_path, bindir, project=None))
    assert proc.returncode == 1
    (err,) = error_lines(proc)
    assert "no project set; pass --project ID or run: gcloud config set project ID" in err


def client_without_buildx(bindir: Path) -> None:
    """Put a Docker 23+ client without the buildx plugin at BINDIR/docker.

    The real one where it exists: this machine kind preinstalls Docker's 28.x client at
    /usr/local/bin/docker, and Debian packages no buildx. Elsewhere a wrapper around the real
    client answers `docker version` and `docker buildx` exactly as that 28.x client does (seen
    here: "docker: unknown command: docker buildx", exit 1), so the test never skips.
    """
    new_client = Path("/usr/local/bin/docker")
    if (
        new_client.exists()
        and subprocess.run([new_client, "buildx", "version"], capture_output=True).returncode
    ):
        (bindir / "docker").symlink_to(new_client)
        return
    wrapper = bindir / "docker"
    wrapper.write_text(
        "#!/bin/bash\n"
        "case $1 in\n"
        '  buildx) echo "docker: unknown command: docker buildx" >&2; exit 1 ;;\n'
        "  version) echo 28.2.2; exit 0 ;;\n"
        "esac\n"
        f'exec {shlex.quote(str(Path(DOCKER_BIN).resolve()))} "$@"\n'
    )
    wrapper.chmod(0o755)


def test_client_without_buildkit_is_refused_with_the_fix(fake: FakeGcp, tmp_path: Path):
    """A Docker 23+ client without the buildx plugin cannot build with BuildKit."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    client_without_buildx(bindir)
    proc = run_script(script_env(fake, tmp_path, bindir))
    assert proc.returncode == 1
    (err,) = error_lines(proc)
    assert "preflight: BuildKit unavailable" in err and "buildx" in err
    assert fake.requests == []


def test_existing_repository_of_another_format_is_refused(fake: FakeGcp, bindir: Path, tmp_path: Path):
    """The repository step comes before the build (as in cloudbuild.yaml): nothing is built."""
    name = "projects/my-project/locations/us-east4/repositories/gpu-transformers"
    fake.repositories[name] = {"name": name, "format": "PYTHON"}
    proc = run_script(script_env(fake, tmp_path, bindir), "--registry-host", "127.0.0.1:5998", *BUILD_FLAGS)
    assert proc.returncode == 1
    (err,) = error_lines(proc)
    assert "repository: gpu-transformers in us-east4 exists but holds PYTHON artifacts" in err
    assert fake.calls("POST") == [] and "build:" not in proc.stderr


# Google refusing the repository step: one line naming the fix, before any build.
@pytest.mark.parametrize(
    ("knob", "expected"),
    [
        (
            "disabled_apis",
            "enable the API: gcloud services enable artifactregistry.googleapis.com --project my-project",
        ),
        ("denied_apis", "ask a project owner for roles/artifactregistry.admin"),
    ],
)
def test_repository_refused_is_one_line_naming_the_fix(
    knob: str, expected: str, fake: FakeGcp, bindir: Path, tmp_path: Path
):
    getattr(fake, knob).add("artifactregistry")
    proc = run_script(script_env(fake, tmp_path, bindir), "--registry-host", "127.0.0.1:5998", *BUILD_FLAGS)
    assert proc.returncode == 1
    (err,) = error_lines(proc)
    assert err.startswith("build_and_push.sh: error: repository: cannot read gpu-transformers in us-east4: ")
    assert expected in err
    assert proc.stderr.rstrip().splitlines()[-1] == err, "the error is the last line"
    assert fake.mutations() == [] and "build:" not in proc.stderr and proc.stdout == ""


def test_repository_created_meanwhile_counts_as_existing(image, fake: FakeGcp, bindir: Path, tmp_path: Path):
    """Someone creates the repository between our describe and our create: the create's 409
    ALREADY_EXISTS means it exists; the script goes on to build and push (to a port where no
    registry listens, so the push fails fast: this test is about the repository step)."""
    fake.race_create = {"repository"}
    host = "127.0.0.1:5996"
    try:
        proc = run_script(script_env(fake, tmp_path, bindir), "--registry-host", host, *BUILD_FLAGS)
        assert "repository: gpu-transformers in us-east4 was created meanwhile; using it" in proc.stderr
        assert "repository: gpu-transformers exists; not created" in proc.stderr
        assert [r.status for r in fake.calls("POST")] == [409]
        (err,) = error_lines(proc)
        assert err.startswith(
            f"build_and_push.sh: error: push: pushing {host}/{REPO_PATH}:{VERSION} failed"
        ), err
    finally:
        remove_refs(f"{host}/")


def test_registry_refusing_the_push_pushes_nothing(image, bindir: Path, tmp_path: Path):
    registry = Registry(readonly=True).start()
    try:
        with FakeGcp() as fake:
            proc = run_script(
                script_env(fake, tmp_path, bindir), "--registry-host", registry.host, *BUILD_FLAGS
            )
        assert proc.returncode == 1
        (err,) = error_lines(proc)
        assert err.startswith(
            f"build_and_push.sh: error: push: pushing {registry.host}/{REPO_PATH}:{VERSION} failed"
        )
        assert "already pushed: none" in err and "latest untouched" in err
        assert proc.stderr.rstrip().splitlines()[-1] == err, "the error is the last line"
        assert proc.stdout == ""
        assert registry.catalog() == [] and registry.tags(REPO_PATH) == []
    finally:
        remove_refs(f"{registry.host}/{REPO_PATH}")


def test_help_prints_the_header():
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("Summary: build the training image")
    for flag in ("--project", "--location", "--repo", "--image-name", "--tag", "--base-image", "--ca-bundle",
                 "--registry-host", "--no-push", "--dry-run"):  # fmt: skip
        assert flag in proc.stdout


# -- cloudbuild.yaml -------------------------------------------------------------------------


def render(text: str, subs: dict[str, str]) -> str:
    """Cloud Build's substitution: ${NAME}, ${NAME#prefix}, $NAME; $$ is a literal $."""

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        value = subs.get(name, "")
        if m.group(3) is not None:
            value = value.removeprefix(m.group(3))
        return value

    out = re.sub(r"\$\{(\w+)(#([^}]*))?\}|\$(?!\$)(\w+)", one, text.replace("$$", "\0"))
    return out.replace("\0", "$")


def cloudbuild_substitutions(project: str, tag_name: str, commit: str | None = None) -> dict[str, str]:
    doc = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    commit = commit or git("rev-parse", "HEAD")
    subs = {
        "PROJECT_ID": project,
        "TAG_NAME": tag_name,
        "COMMIT_SHA": commit,
        "SHORT_SHA": commit[:7],
        "REPO_FULL_NAME": "owner/repo",
    }
    for key, value in doc["substitutions"].items():  # dynamic substitutions, in order
        subs[key] = render(str(value), subs)
    return subs


def step_argvs(step_id: str, subs: dict[str, str]) -> tuple[int, list[list[str]], str]:
    """Run a step's bash script with `docker` printing its argv (one JSON line per call)."""
    doc = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    (step,) = [s for s in doc["steps"] if s.get("id") == step_id]
    assert step["entrypoint"] == "bash"
    script = render(step["args"][-1], subs)
    assert script == step["args"][-1].replace("$$", "$"), "no substitution is pasted into the script"
    env = dict(os.environ, **dict(render(e, subs).split("=", 1) for e in step.get("env", [])))
    capture = 'docker() { python3 -c "import json,sys; print(json.dumps(sys.argv[1:]))" "$@"; }\n'
    proc = subprocess.run(
        ["bash", *step["args"][:-2], "-c", capture + script],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    argvs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    return proc.returncode, argvs, proc.stderr


def build_args(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--build-arg")


def tags_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-t"]


def test_cloudbuild_parses_and_has_the_four_steps():
    doc = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert [s["id"] for s in doc["steps"]] == ["version", "repository", "build", "push"]
    assert doc["options"]["dynamicSubstitutions"] is True
    assert "DOCKER_BUILDKIT=1" in doc["options"]["env"]
    for step in doc["steps"]:
        assert re.fullmatch(r"[a-z0-9./-]+(:[a-z0-9.-]+)?@sha256:[0-9a-f]{64}", step["name"]), "pin by digest"


def test_cloudbuild_uses_the_same_build_args_and_tags_as_the_script(
    image, fake: FakeGcp, bindir, checkout: Path, tmp_path
):
    proc = run_script(script_env(fake, tmp_path, bindir), "--dry-run", root=checkout)
    assert proc.returncode == 0, proc.stderr
    lines = [shlex.split(line) for line in proc.stdout.splitlines() if not line.startswith("#")]
    (build_line,) = [argv for argv in lines if argv[2:4] == ["docker", "build"]]
    script_build = build_line[build_line.index("build") :]
    script_pushes = [argv[2] for argv in lines if argv[:2] == ["docker", "push"]]

    head = checkout_head(checkout)
    subs = cloudbuild_substitutions("my-project", f"v{VERSION}", head)
    rc, argvs, err = step_argvs("build", subs)
    assert rc == 0, err
    image_repo = f"us-east4-docker.pkg.dev/{REPO_PATH}"
    pull, cb_build, retag = argvs
    # The cache comes from the pipeline's own tag, never from latest (which anyone may push).
    assert pull == ["pull", f"{image_repo}:buildcache"]
    assert cb_build[cb_build.index("--cache-from") + 1] == f"{image_repo}:buildcache"
    assert retag == ["tag", f"{image_repo}:{VERSION}", f"{image_repo}:buildcache"]
    ours, theirs = build_args(script_build), build_args(cb_build)
    # Cloud Build alone writes the inline cache its --cache-from reads; a local build must
    # not (it would make the digest of a clean commit's rebuild vary: build_and_push.sh says why).
    assert set(ours) == {"VERSION", "REVISION", "CREATED", "SOURCE"}
    assert set(theirs) == {*ours, "BUILDKIT_INLINE_CACHE"} and theirs["BUILDKIT_INLINE_CACHE"] == "1"
    assert ours["VERSION"] == theirs["VERSION"] == VERSION
    assert ours["REVISION"] == theirs["REVISION"] == head
    for created in (ours["CREATED"], theirs["CREATED"]):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)
    assert tags_of(script_build) == tags_of(cb_build), "same tags, in the same order"
    assert script_build[script_build.index("-f") + 1].endswith("build_image/Dockerfile")
    assert cb_build[cb_build.index("-f") + 1] == "build_image/Dockerfile"
    # Pushes: same refs, same order, latest last of the release tags; then the cache tag.
    rc, pushes, err = step_argvs("push", subs)
    assert rc == 0, err
    assert [p[1] for p in pushes] == [*script_pushes, f"{image_repo}:buildcache"]
    assert pushes[-2] == ["push", f"{image_repo}:latest"]


def test_cloudbuild_substitutions_stay_data(tmp_path: Path):
    """A hostile substitution value reaches docker as one argument and runs nothing."""
    subs = cloudbuild_substitutions("my-project", f"v{VERSION}")
    subs["_IMAGE"] = f"x$(touch {tmp_path}/pwned); touch {tmp_path}/pwned2 #"
    rc, argvs, err = step_argvs("push", subs)
    assert rc == 0, err
    assert argvs[0] == ["push", f"{subs['_IMAGE']}:{VERSION}"]
    assert list(tmp_path.iterdir()) == []


def test_cloudbuild_refuses_a_git_tag_that_disagrees_with_version():
    rc, _, _ = step_argvs("version", cloudbuild_substitutions("my-project", f"v{VERSION}"))
    assert rc == 0
    rc, _, err = step_argvs("version", cloudbuild_substitutions("my-project", "v9.9.9"))
    assert rc == 1
    assert f"git tag v9.9.9 does not match VERSION ({VERSION})" in err


LOCKS = {"requirements.lock": "requirements.txt", "tools.lock": "tools.in"}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]
    via: tuple[str, ...]  # what asked for it: a locked name, or "-r FILE"


def locked_pins(lock: Path) -> dict[str, Pin]:
    """NAME -> Pin for every `name[extras]==version \\ --hash=...` entry of a uv/pip-compile lock."""
    pins: dict[str, Pin] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        head = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)", entry)
        assert head, f"{lock.name}: not a pinned entry: {entry[:80]!r}"
        name = canonicalize_name(head[1])
        hashes = tuple(re.findall(r"--hash=(sha256:[0-9a-f]{64})", entry))
        via = re.findall(r"^\s*#\s+(?:via\s+)?(-r \S+|[A-Za-z0-9][A-Za-z0-9._-]*)\s*$", entry, re.M)
        parents = tuple(v if v.startswith("-r") else canonicalize_name(v) for v in via)
        pins[name] = Pin(name, head[3], hashes, parents)
    return pins


def direct_requirements(source: Path) -> list[Requirement]:
    return [
        Requirement(line.split("#", 1)[0].strip())
        for line in source.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]


@pytest.mark.parametrize("lock_name", sorted(LOCKS))
def test_lock_satisfies_its_requirements_and_hashes_every_pin(lock_name: str):
    """What the project controls, on any day: each direct requirement is pinned at a version it
    allows, every pin is there because of a requirement or another pin, and every pin carries
    sha256 hashes."""
    lock = ROOT / "build_image" / lock_name
    pins = locked_pins(lock)
    assert pins, f"{lock_name} pins nothing"
    for req in direct_requirements(ROOT / "build_image" / LOCKS[lock_name]):
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{lock_name}: {req.name} from {LOCKS[lock_name]} is not locked"
        assert req.specifier.contains(pin.version, prereleases=True), f"{lock_name}: {req} but {pin.version}"
    source = f"-r build_image/{LOCKS[lock_name]}"
    strays = sorted(p.name for p in pins.values() if not set(p.via) & (set(pins) | {source}))
    assert strays == [], f"{lock_name}: pinned for no requirement: {strays}"
    unhashed = sorted(p.name for p in pins.values() if not p.hashes)
    assert unhashed == [], f"{lock_name}: pins without --hash: {unhashed}"


def test_make_lock_keeps_every_pin(tmp_path: Path):
    """`make lock` started from the committed locks changes nothing: uv keeps the versions it finds
    in the output file, so this holds whatever the package index shows that day (a relock from
    nothing does not: docs/development.md says why, and how to check one by hand). Needs PyPI."""
    for name in LOCKS:
        shutil.copy2(ROOT / "build_image" / name, tmp_path / name)
    proc = subprocess.run(
        ["make", "-s", "lock", f"LOCK_DIR={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in LOCKS:
        assert (tmp_path / name).read_text() == (ROOT / "build_image" / name).read_text(), f"{name} drifted"


def test_make_image_is_build_and_push_no_push():
    """One build path: `make image` runs build_and_push.sh --no-push, and no other script of the
    project runs `docker build` (tests/ and the image benchmark build variants on purpose)."""
    dry = subprocess.run(["make", "-n", "image"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "./build_and_push.sh --no-push" in dry and "docker build" not in dry
    listed = git("ls-files", "-co", "--exclude-standard").splitlines()
    builders = []
    for rel in listed:
        path = ROOT / rel
        if (
            rel.startswith(("tests/", "docs/", "bench/image_build.py"))
            or path.suffix == ".md"
            or not path.is_file()
        ):
            continue
        code = [
            line
            for line in path.read_text(errors="replace").splitlines()
            if not line.lstrip().startswith("#")
        ]
        if rel not in ("build_and_push.sh", "cloudbuild.yaml") and any(
            re.search(r"\bdocker\s+(buildx\s+)?build\b", line) for line in code
        ):
            builders.append(rel)
    assert builders == [], f"docker build outside build_and_push.sh: {builders}"


def test_version_file_is_semver():
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)


def test_flow_picture_is_rendered_from_its_source(tmp_path: Path):
    """images/flow.svg is generated from images/flow.dot (`make images`), not drawn by hand."""
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("Graphviz not installed (apt-get install graphviz)")
    subprocess.run(
        [dot, "-Tsvg", str(ROOT / "images/flow.dot"), "-o", str(tmp_path / "flow.svg")], check=True
    )
    assert (tmp_path / "flow.svg").read_text() == (ROOT / "images/flow.svg").read_text()


# -- the repository's cleanup policy (--keep) and Google's create operation --------------------------
# The build fails at once (its base image is on a port where nothing listens): these tests are about
# the repository step, which comes before it.
NO_BUILD = ["--registry-host", "127.0.0.1:5994", "--base-image", "127.0.0.1:1/hfgpu-none:0"]
REPO_NAME = "projects/my-project/locations/us-east4/repositories/gpu-transformers"


def version(n: int, *tags: str) -> dict:
    return {"package": "gpu_transformers", "tags": list(tags), "createTime": n}


def test_keep_sets_a_cleanup_policy_that_keeps_the_newest_and_every_named_tag(
    fake: FakeGcp, bindir: Path, tmp_path: Path
):
    fake.ar_create_polls = 3  # the create is still an unfinished operation when first read
    env = script_env(fake, tmp_path, bindir)
    proc = run_script(env, "--keep", "3", *NO_BUILD)
    assert "build: docker build failed" in proc.stderr, proc.stderr
    waited = r"gpu-transformers created \(Docker format, us-east4\); waited \d+s for Google's create"
    assert re.search(waited, proc.stderr)
    polls = [r for r in fake.calls("GET", "/operations/") if r.status == 200]
    assert len(polls) == 3, "gcloud read the operation until it was done"
    (patch,) = fake.calls("PATCH", f"^/v1/{REPO_NAME}$")
    assert patch.status == 200 and patch.query["updateMask"] == ["cleanupPolicies,cleanupPolicyDryRun"]
    policies = patch.body["cleanupPolicies"]
    assert sorted(policies) == ["hfgpu-delete-sha", "hfgpu-keep-named", "hfgpu-keep-newest"]
    assert patch.body["cleanupPolicyDryRun"] is False
    assert "cleanup policy set: the newest 3 sha-* versions are kept" in proc.stderr
    # What Artifact Registry's cleanup then keeps, by its documented rules (fake_gcp.cleanup_survivors):
    # the newest 3, latest and every tag that is not sha-*; an old sha-only version goes.
    versions = [version(n, f"sha-{n:07x}") for n in range(25)]
    versions[24]["tags"] += ["0.2.0", "latest"]
    versions[5]["tags"] += ["0.1.0"]
    versions[2]["tags"] += ["sharp-experiment"]  # starts with "sha", not "sha-"
    versions[1]["tags"] = ["shaky"]  # and one that is not sha- at all
    kept = sorted(v["createTime"] for v in cleanup_survivors(policies, versions))
    assert kept == [1, 2, 5, 22, 23, 24]

    # The next run finds the policy and changes nothing.
    fake.clear()
    proc = run_script(env, "--keep", "3", *NO_BUILD)
    assert "repository: the cleanup policy keeps the newest 3 sha-* versions (set already)" in proc.stderr
    assert fake.mutations() == []


def test_a_refused_cleanup_policy_is_one_warning_and_the_build_goes_on(
    fake: FakeGcp, bindir: Path, tmp_path: Path
):
    """Whatever Google says to the policy (here a 400, e.g. a limit it does not document), pushing
    does not depend on it: one warning line, then the build (which NO_BUILD makes fail at once)."""
    fake.fail_cleanup_policy = True
    proc = run_script(script_env(fake, tmp_path, bindir), "--keep", "5", *NO_BUILD)
    (patch,) = fake.calls("PATCH", f"^/v1/{REPO_NAME}$")
    assert patch.status == 400
    (line,) = [x for x in proc.stderr.splitlines() if "cleanup policy" in x]
    assert line.startswith("build_and_push.sh: warning: repository: setting the cleanup policy failed:")
    assert "old sha-* versions stay" in line
    assert "build: docker build failed" in proc.stderr, proc.stderr


@pytest.mark.parametrize("case", ["own-policy", "keep-0"])
def test_keep_leaves_a_repository_with_its_own_policies_alone(
    case: str, fake: FakeGcp, bindir: Path, tmp_path: Path
):
    own = {"mine": {"id": "mine", "action": "DELETE", "condition": {"tagState": "UNTAGGED"}}}
    fake.repositories[REPO_NAME] = {"name": REPO_NAME, "format": "DOCKER", "cleanupPolicies": own}
    args = ["--keep", "0"] if case == "keep-0" else []
    proc = run_script(script_env(fake, tmp_path, bindir), *args, *NO_BUILD)
    assert "build: docker build failed" in proc.stderr, proc.stderr
    assert fake.calls("PATCH") == []
    warning = "repository: gpu-transformers has cleanup policies of its own (mine); --keep 20 not applied"
    assert (warning in proc.stderr) == (case == "own-policy")
