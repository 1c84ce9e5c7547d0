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
"""

from __future__ import annotations

import json
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
from conftest import ROOT, docker, tool_path_dir
from fake_gcp import FakeGcp, Recorded
from gcp_env import Registry, script_env

SCRIPT = ROOT / "build_and_push.sh"
VERSION = (ROOT / "VERSION").read_text().strip()
CA = "/etc/ssl/certs/ca-certificates.crt"
BUILD_FLAGS = ["--base-image", "hfgpu-test-base:bookworm", "--ca-cert", CA]
REPO_PATH = "my-project/gpu-transformers/gpu_transformers"


def run_script(env: dict[str, str], *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


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
    heads: tuple[str, str]  # git HEAD when each run started (others may commit meanwhile)


@pytest.fixture(scope="module")
def pushed(image, bindir: Path, tmp_path_factory) -> Iterator[PushRuns]:
    """The one real push: run the script twice against a fresh registry and a fake API."""
    tmp = tmp_path_factory.mktemp("push")
    registry = Registry().start()
    try:
        with FakeGcp() as fake:
            env = script_env(fake, tmp, bindir)
            head1 = git("rev-parse", "HEAD")
            first = run_script(env, "--registry-host", registry.host, *BUILD_FLAGS)
            first_requests = list(fake.requests)
            fake.clear()
            head2 = git("rev-parse", "HEAD")
            second = run_script(env, "--registry-host", registry.host, *BUILD_FLAGS)
            second_requests = list(fake.requests)
            yield PushRuns(registry, fake, first, first_requests, second, second_requests, (head1, head2))
    finally:
        registry.stop()
        remove_refs(f"{registry.host}/")


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
        assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == pushed.heads[0]
        probe = "import transformers; print('ok', transformers.__version__)"
        run = docker("run", "--rm", "--network", "none", ref, "python3", "-c", probe, check=False)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("ok ")
    finally:
        docker("image", "rm", ref, check=False)


def test_registry_holds_the_three_tags_with_the_printed_digest(pushed: PushRuns):
    digest = printed_digest_ref(pushed.first).split("@", 1)[1]
    tags = pushed.registry.tags(REPO_PATH)
    sha_tags = {t.removesuffix("-dirty") for t in tags if t.startswith("sha-")}
    assert VERSION in tags and "latest" in tags
    assert sha_tags == {f"sha-{head[:7]}" for head in pushed.heads}
    # The second run pushed the same tags again (a rebuild of a dirty tree has a new
    # creation date, so its digest may differ); all three tags agree with what it printed.
    second = printed_digest_ref(pushed.second).split("@", 1)[1]
    second_sha = re.search(r"push: \S+:(sha-\S+)$", pushed.second.stderr, flags=re.M).group(1)
    for tag in (VERSION, second_sha, "latest"):
        assert pushed.registry.digest(REPO_PATH, tag) == second
    assert digest.startswith("sha256:")


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
    assert "repository: gpu-transformers not found; creating it" in pushed.first.stderr


def test_second_run_creates_nothing(pushed: PushRuns):
    printed_digest_ref(pushed.second)
    assert [(r.method, r.path) for r in pushed.second_requests] == [
        ("GET", "/v1/projects/my-project/locations/us-east4/repositories/gpu-transformers")
    ]
    assert "gpu-transformers exists; not created" in pushed.second.stderr
    # The second push uploaded no layer the first had pushed. (Layers differ only when the
    # image's inputs changed between the runs: others may edit app/ on a shared checkout.)
    first = printed_digest_ref(pushed.first).split("@", 1)[1]
    second = printed_digest_ref(pushed.second).split("@", 1)[1]
    before = {d.split(":")[1][:12] for d in pushed.registry.diff_ids(REPO_PATH, first)}
    after = {d.split(":")[1][:12] for d in pushed.registry.diff_ids(REPO_PATH, second)}
    uploaded = set(re.findall(r"^([0-9a-f]{12}): Pushed", pushed.second.stderr, flags=re.M))
    assert "Layer already exists" in pushed.second.stderr
    assert uploaded <= after - before, "the second run uploaded a layer the registry already had"


def test_steps_are_named_and_latest_is_pushed_last(pushed: PushRuns):
    steps = re.findall(r"^build_and_push\.sh: (\w+):", pushed.first.stderr, flags=re.M)
    order = list(dict.fromkeys(steps))
    assert order == ["preflight", "build", "repository", "auth", "push"]
    pushes = re.findall(r"^build_and_push\.sh: push: (\S+:\S+)$", pushed.first.stderr, flags=re.M)
    assert pushes[0].rsplit(":", 1)[1] == VERSION
    assert pushes[-1].endswith(":latest") and len(pushes) == 3
    # configure-docker was asked for exactly the one registry host.
    assert f"Adding credentials for: {pushed.registry.host}\n" in pushed.first.stderr


def test_dry_run_prints_every_command_and_changes_nothing(image, fake: FakeGcp, bindir: Path, tmp_path: Path):
    tag = f"dry-{uuid.uuid4().hex[:8]}"
    env = script_env(fake, tmp_path, bindir)
    proc = run_script(env, "--dry-run", "--tag", tag, "--registry-host", "127.0.0.1:5999", *BUILD_FLAGS)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    sha = git("rev-parse", "HEAD")[:7]
    assert [" ".join(c[:4]) for c in commands[:4]] == [
        "env DOCKER_BUILDKIT=1 docker build",
        "gcloud artifacts repositories describe",
        "gcloud artifacts repositories create",
        "gcloud auth configure-docker 127.0.0.1:5999",
    ]
    pushes = [c[2].removeprefix(f"127.0.0.1:5999/{REPO_PATH}:") for c in commands[4:]]
    assert [c[:2] for c in commands[4:]] == [["docker", "push"]] * 3
    assert pushes[0] == tag and re.fullmatch(rf"sha-{sha}(-dirty)?", pushes[1]) and pushes[2] == "latest"
    assert commands[2][commands[2].index("--repository-format") + 1] == "docker"
    assert commands[2][commands[2].index("--location") + 1] == "us-east4"
    assert "--secret" in commands[0] and f"id=ca_bundle,src={CA}" in commands[0]
    # Nothing happened: no API request, no image, no docker credential change.
    assert fake.requests == []
    assert not image_exists(f"127.0.0.1:5999/{REPO_PATH}:{tag}")
    assert list((tmp_path / "docker-config").iterdir()) == []


def test_no_push_labels_the_version_from_the_version_file(image, bindir: Path, fake: FakeGcp, tmp_path: Path):
    """The image fixture was built with VERSION=9.9.9-test: the script's build must not reuse that label."""
    name = f"hfgpu-bap-{uuid.uuid4().hex[:8]}"
    env = script_env(fake, tmp_path, bindir, project=None)
    head = git("rev-parse", "HEAD")
    proc = run_script(env, "--no-push", "--image", name, *BUILD_FLAGS)
    try:
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert proc.stdout.strip() == f"{name}:{VERSION}"
        labels = json.loads(
            docker("image", "inspect", "--format", "{{json .Config.Labels}}", proc.stdout.strip()).stdout
        )
        assert labels["org.opencontainers.image.version"] == VERSION != "9.9.9-test"
        assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == head
        assert image_exists(f"{name}:latest")
        assert fake.requests == [], "--no-push asks nothing of Google Cloud"
    finally:
        remove_refs(f"{name}:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--project", "My_Project"], "invalid project id 'My_Project'"),
        (["--project", "ab"], "invalid project id 'ab'"),
        (["--location", "us-east4-a"], "invalid location 'us-east4-a': that is a zone"),
        (["--location", "moon"], "invalid location 'moon'"),
        (["--repo", "Gpu_Repo"], "invalid repository name 'Gpu_Repo'"),
        (["--repo", "repo-"], "invalid repository name 'repo-'"),
        (["--image", "Bad Image"], "invalid image name 'Bad Image'"),
        (["--tag", ".hidden"], "invalid tag '.hidden'"),
        (["--tag", "x" * 129], "invalid tag"),
        (["--ca-cert", "/no/such/bundle.pem"], "--ca-cert: cannot read"),
        (["--frobnicate"], "unknown argument '--frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_nothing_runs(args, message, fake: FakeGcp, bindir: Path, tmp_path: Path):
    proc = run_script(script_env(fake, tmp_path, bindir), *args)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == error_lines(proc), "only the error line"
    assert len(error_lines(proc)) == 1 and message in error_lines(proc)[0]
    assert proc.stdout == "" and fake.requests == []


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


def test_client_without_buildkit_is_refused_with_the_fix(fake: FakeGcp, tmp_path: Path):
    """The preinstalled Docker 28 client has no buildx plugin: it cannot build with BuildKit."""
    new_client = Path("/usr/local/bin/docker")
    if (
        not new_client.exists()
        or subprocess.run([new_client, "buildx", "version"], capture_output=True).returncode == 0
    ):
        pytest.skip("needs a Docker 23+ client without buildx at /usr/local/bin/docker")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").symlink_to(new_client)
    proc = run_script(script_env(fake, tmp_path, bindir))
    assert proc.returncode == 1
    (err,) = error_lines(proc)
    assert "preflight: BuildKit unavailable" in err and "buildx" in err
    assert fake.requests == []


def test_existing_repository_of_another_format_is_refused(image, bindir: Path, tmp_path: Path):
    with FakeGcp() as fake:
        name = "projects/my-project/locations/us-east4/repositories/gpu-transformers"
        fake.repositories[name] = {"name": name, "format": "PYTHON"}
        tag = f"fmt-{uuid.uuid4().hex[:8]}"
        proc = run_script(
            script_env(fake, tmp_path, bindir),
            "--tag",
            tag,
            "--registry-host",
            "127.0.0.1:5998",
            *BUILD_FLAGS,
        )
        try:
            assert proc.returncode == 1
            (err,) = error_lines(proc)
            assert "repository: gpu-transformers in us-east4 exists but holds PYTHON artifacts" in err
            assert fake.calls("POST") == []
        finally:
            remove_refs("127.0.0.1:5998/")


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
        registry.stop()
        remove_refs(f"{registry.host}/")


def test_help_prints_the_header():
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("Summary: build the training image")
    for flag in ("--project", "--location", "--repo", "--image", "--tag", "--base-image", "--ca-cert",
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


def cloudbuild_substitutions(project: str, tag_name: str) -> dict[str, str]:
    doc = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    subs = {
        "PROJECT_ID": project,
        "TAG_NAME": tag_name,
        "COMMIT_SHA": git("rev-parse", "HEAD"),
        "SHORT_SHA": git("rev-parse", "HEAD")[:7],
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
    capture = 'docker() { python3 -c "import json,sys; print(json.dumps(sys.argv[1:]))" "$@"; }\n'
    proc = subprocess.run(
        ["bash", *step["args"][:-2], "-c", capture + script],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
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


def test_cloudbuild_uses_the_same_build_args_and_tags_as_the_script(image, fake: FakeGcp, bindir, tmp_path):
    proc = run_script(script_env(fake, tmp_path, bindir), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = [shlex.split(line) for line in proc.stdout.splitlines() if not line.startswith("#")]
    script_build = lines[0][lines[0].index("build") :]
    script_pushes = [argv[2] for argv in lines if argv[:2] == ["docker", "push"]]

    subs = cloudbuild_substitutions("my-project", f"v{VERSION}")
    rc, argvs, err = step_argvs("build", subs)
    assert rc == 0, err
    (cb_build,) = argvs
    ours, theirs = build_args(script_build), build_args(cb_build)
    assert set(ours) == set(theirs) == {"VERSION", "REVISION", "CREATED", "SOURCE", "BUILDKIT_INLINE_CACHE"}
    assert ours["VERSION"] == theirs["VERSION"] == VERSION
    assert ours["REVISION"].removesuffix("-dirty") == theirs["REVISION"] == git("rev-parse", "HEAD")
    assert ours["BUILDKIT_INLINE_CACHE"] == theirs["BUILDKIT_INLINE_CACHE"] == "1"
    for created in (ours["CREATED"], theirs["CREATED"]):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)
    # Same tags (the script marks a dirty tree; Cloud Build builds a clean commit).
    assert [t.replace("-dirty", "") for t in tags_of(script_build)] == tags_of(cb_build)
    assert script_build[script_build.index("-f") + 1].endswith("build_image/Dockerfile")
    assert cb_build[cb_build.index("-f") + 1] == "build_image/Dockerfile"
    image_repo = f"us-east4-docker.pkg.dev/{REPO_PATH}"
    assert cb_build[cb_build.index("--cache-from") + 1] == f"{image_repo}:latest"
    # Pushes: same refs, same order, latest last.
    rc, pushes, err = step_argvs("push", subs)
    assert rc == 0, err
    assert [p[1] for p in pushes] == [t.replace("-dirty", "") for t in script_pushes]
    assert pushes[-1] == ["push", f"{image_repo}:latest"]


def test_cloudbuild_refuses_a_git_tag_that_disagrees_with_version():
    rc, _, _ = step_argvs("version", cloudbuild_substitutions("my-project", f"v{VERSION}"))
    assert rc == 0
    rc, _, err = step_argvs("version", cloudbuild_substitutions("my-project", "v9.9.9"))
    assert rc == 1
    assert f"git tag v9.9.9 does not match VERSION ({VERSION})" in err


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
