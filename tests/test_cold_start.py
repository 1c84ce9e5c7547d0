"""Issue 23's cold-start pieces, with real parts and tiny images (the big timings live in
bench/cold_start.py):

- build_and_push.sh --compression zstd|gzip, with the real gcloud against tests/fake_gcp.py: this
  machine's Debian client (20.10) has no buildx, so zstd must stop before anything is created;
  --dry-run shows the buildx exporter command.
- launch_training.sh against the real engine and Debian's registry on loopback: a tiny image whose
  one layer is recompressed to zstd (bench/cold_start.py's zstd_copy: the layer's content, config
  and diff_ids unchanged) is refused on an engine older than 23.0 with one line; the line about a
  missing unpigz, and the engine version before a pull.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DOCKER, ROOT, docker
from fake_compute_images import FakeComputeImages
from fake_gcp import FakeGcp
from gcp_env import Registry, script_env
from test_build_and_push import (
    BUILD_FLAGS,
    REPO_PATH,
    bindir,
    checkout,
    error_lines,
    image_exists,
    run_script,
)
from test_launch import launch, make_volume, one_error_line, workdir

sys.path.insert(0, str(ROOT / "bench"))
from cold_start import zstd_copy

FIXTURES = (bindir, checkout, workdir)  # the other modules' fixtures, used here by name


@pytest.fixture
def fake() -> Iterator[FakeGcp]:
    with FakeGcp() as f:
        yield f


def engine_major() -> int:
    return int(docker("version", "--format", "{{.Server.Version}}").stdout.split(".")[0])


# -- build_and_push.sh --compression ------------------------------------------------------------


def test_zstd_without_buildx_stops_before_anything(fake: FakeGcp, bindir: Path, tmp_path: Path):
    tag = f"zstd-{uuid.uuid4().hex[:8]}"
    env = script_env(fake, tmp_path, bindir)
    proc = run_script(
        env, "--compression", "zstd", "--tag", tag, "--registry-host", "127.0.0.1:5999", *BUILD_FLAGS
    )
    assert proc.returncode == 1
    (err,) = error_lines(proc)
    assert "--compression zstd" in err and "no buildx plugin" in err and "--compression gzip" in err, err
    assert proc.stderr.splitlines()[-1] == err, "the error is the last word"
    assert fake.requests == [], "no repository created, nothing asked of Google Cloud"
    assert not image_exists(f"127.0.0.1:5999/{REPO_PATH}:{tag}")
    assert list((tmp_path / "docker-config").iterdir()) == [], "no registry credentials configured"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compression", "lz4"], "--compression must be one of gzip, zstd; got 'lz4'"),
        (["--compression", "zstd", "--no-push"], "--compression and --no-push cannot be given together"),
    ],
    ids=["unknown", "zstd-no-push"],
)
def test_bad_compression_is_one_line(args, message, fake: FakeGcp, bindir: Path, tmp_path: Path):
    proc = run_script(script_env(fake, tmp_path, bindir), *args)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == error_lines(proc) and message in error_lines(proc)[0]
    assert fake.requests == []


def test_zstd_dry_run_shows_the_buildx_exporter_and_latest_last(
    fake: FakeGcp,
    bindir: Path,
    checkout: Path,
    tmp_path: Path,
):
    tag = f"dry-{uuid.uuid4().hex[:8]}"
    host = "127.0.0.1:5999"
    env = script_env(fake, tmp_path, bindir)
    proc = run_script(env, "--dry-run", "--compression", "zstd", "--tag", tag, "--registry-host", host,
                      *BUILD_FLAGS, root=checkout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning: --compression zstd" in proc.stderr, "this client cannot run it: said, not hidden"
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if not line.startswith("#")]
    heads = [" ".join(c[:3]) for c in commands]
    assert heads[2:] == ["gcloud auth configure-docker", "docker buildx build", "docker buildx imagetools"]
    build = commands[3]
    output = build[build.index("--output") + 1]
    ref = f"{host}/{REPO_PATH}"
    sha = output.split(f"{ref}:sha-")[1][:7]
    assert output == (
        f'type=image,"name={ref}:{tag},{ref}:sha-{sha}",push=true,compression=zstd,force-compression=true,'
        "oci-mediatypes=true"
    )
    assert "--metadata-file" in build and "-t" not in build
    assert commands[4][-3:] == ["--tag", f"{ref}:latest", f"{ref}@sha256:<digest>"], "latest moves last"
    assert fake.requests == []


# -- launch_training.sh: zstd on an old engine, unpigz ---------------------------------------------


@dataclass
class TinyImages:
    registry: Registry
    gzip: str
    zstd: str


def tiny_layer_image(tag: str) -> None:
    """A one-layer image whose layer no engine holds yet (a file with a fresh nonce): a pull must
    download and unpack it."""
    data = f"nonce {uuid.uuid4().hex}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("nonce.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run([DOCKER, "import", "-", tag], input=buf.getvalue(), capture_output=True, check=True)


@pytest.fixture(scope="module")
def tiny() -> Iterator[TinyImages]:
    registry = Registry().start()
    repo = f"cold/tiny-{uuid.uuid4().hex[:6]}"
    gzip_ref = f"{registry.host}/{repo}:gzip"
    try:
        tiny_layer_image(gzip_ref)
        docker("push", gzip_ref)
        docker("image", "rm", gzip_ref)
        zstd_copy(registry, repo, "gzip", "zstd")
        yield TinyImages(registry, gzip_ref, f"{registry.host}/{repo}:zstd")
    finally:
        for ref in (gzip_ref, f"{registry.host}/{repo}:zstd"):
            docker("image", "rm", ref, check=False)
        registry.stop()


def test_zstd_copy_holds_zstd_layers_of_the_same_content(tiny: TinyImages):
    repo = tiny.zstd.split("/", 1)[1].rsplit(":", 1)[0]
    status, _, manifest = tiny.registry.get(f"{repo}/manifests/zstd")
    assert status == 200
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+zstd"
    ]
    gzip_digest = tiny.registry.digest(repo, "gzip")
    zstd_digest = tiny.registry.digest(repo, "zstd")
    assert tiny.registry.diff_ids(repo, zstd_digest) == tiny.registry.diff_ids(repo, gzip_digest)


def test_zstd_image_on_an_engine_before_23_is_refused_in_one_line(
    image,
    workdir: Path,
    tiny: TinyImages,
):
    vol = make_volume(workdir, "vol-zstd")
    version = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    proc = launch(workdir, "--image", tiny.zstd, "--volume", str(vol), "--gpus", "none")
    if engine_major() >= 23:  # a newer engine reads zstd: the pull works (the tiny image runs nothing)
        assert "zstd" not in proc.stderr, proc.stderr
        return
    line = one_error_line(proc)
    assert f"cannot pull {tiny.zstd}" in line and "zstd-compressed layers" in line, line
    assert "from 23.0 on" in line and f"this engine is {version}" in line, "both versions named"
    assert (
        "upgrade Docker on this machine (https://docs.docker.com/engine/install/), or push a gzip image"
        " (build_and_push.sh --compression gzip, the default) and pass its reference" in line
    ), "and the fix"
    assert not image_exists(tiny.zstd)


def shadow_path(folder: Path, hide: str) -> str:
    """A PATH whose folders' programs are linked into one folder, less HIDE (rbenv-style)."""
    bare = folder / f"no-{hide}"
    if not bare.exists():
        bare.mkdir()
        (bare / "docker").symlink_to(folder / "bin" / "docker")
        for where in ("/usr/local/bin", "/usr/bin", "/bin"):
            for tool in Path(where).iterdir():
                if tool.name != hide and not (bare / tool.name).exists():
                    (bare / tool.name).symlink_to(tool)
    return str(bare)


@pytest.mark.parametrize("unpigz", [True, False], ids=["with-unpigz", "without-unpigz"])
def test_a_pull_names_the_engine_and_notes_a_missing_unpigz(
    unpigz: bool,
    image,
    workdir: Path,
    tiny: TinyImages,
):
    vol = make_volume(workdir, "vol-unpigz")
    env = {} if unpigz else {"PATH": shadow_path(workdir, "unpigz")}
    proc = launch(workdir, "--dry-run", "--image", tiny.gzip, "--volume", str(vol), "--gpus", "none", env=env)
    assert proc.returncode == 0, proc.stderr
    version = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    assert f"pulling {tiny.gzip} (Docker engine {version})" in proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "unpigz is not on PATH" in line]
    assert len(notes) == (0 if unpigz else 1), proc.stderr
    if notes:
        assert "apt-get install -y pigz" in notes[0]


# -- baked VM images: bake_vm_image.sh, create_instance.sh's lookup, the startup script ------------

BAKE = ROOT / "bake_vm_image.sh"
STARTUP = ROOT / "deploy" / "vm-startup.sh"
PROJECT_IMAGE = "us-east4-docker.pkg.dev/my-project/gpu-transformers/gpu_transformers"
REPO = "projects/my-project/locations/us-east4/repositories/gpu-transformers"


@pytest.fixture
def compute() -> Iterator[FakeComputeImages]:
    with FakeComputeImages() as f:
        f.repositories[REPO] = {"name": REPO, "format": "DOCKER"}
        f.add_service_account("hfgpu-vm@my-project.iam.gserviceaccount.com")  # create_instance.sh made it
        yield f


@pytest.fixture
def local_ref(image) -> Iterator[str]:
    """The session's image, tagged here as the project's registry image (build_and_push.sh leaves it so)."""
    ref = f"{PROJECT_IMAGE}:cold-{uuid.uuid4().hex[:8]}"
    docker("tag", image.tag, ref)
    yield ref
    docker("image", "rm", ref, check=False)


def family_of(ref: str) -> str:
    proc = subprocess.run(
        ["bash", "-c", 'source lib/baked.sh && baked_family "$1"', "-", ref],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HFGPU_ROOT": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def run(script: Path, fake: FakeGcp, tmp: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = script_env(fake, tmp, tmp, **env_vars)
    return subprocess.run(
        [str(script), *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def code_layers() -> int:
    proc = subprocess.run(["bash", "-c", "source lib/baked.sh && code_layer_count"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "HFGPU_ROOT": str(ROOT)})  # fmt: skip
    return int(proc.stdout)


def deps_family(diff_ids: list[str], keep: int) -> str:
    """lib/baked.sh's family name, computed here from the diff_ids."""
    return (
        "hfgpu-deps-" + hashlib.sha256("".join(f"{d}\n" for d in diff_ids[:keep]).encode()).hexdigest()[:16]
    )


def test_baked_family_covers_the_layers_up_to_the_final_sync(image):
    """The family is named after the layers up to the `uv pip sync` step, not the code above it."""
    above = code_layers()
    layers = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image.tag).stdout.splitlines()
    code = [by for by in layers if by.startswith(("COPY", "RUN"))]
    newest = code[:above]
    assert any("app/" in by for by in newest) and not any("uv pip" in by for by in newest)
    assert "uv pip sync" in code[above], "the layer just below the code is the final sync's"


def test_bake_makes_an_image_in_the_dependency_family_and_deletes_the_vm(
    compute: FakeComputeImages, local_ref: str, tmp_path: Path
):
    family = family_of(local_ref)
    proc = run(BAKE, compute, tmp_path, "--image", local_ref, "--poll-seconds", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == family and re.fullmatch(r"hfgpu-deps-[0-9a-f]{16}", family)
    vm = f"hfgpu-bake-{family.removeprefix('hfgpu-deps-')}"
    (insert,) = compute.calls("POST", r"/zones/us-east4-a/instances$")
    body = insert.body
    assert body["name"] == vm and body["machineType"].endswith("/machineTypes/e2-standard-4")
    assert "guestAccelerators" not in body, "a CPU VM: it only pulls"
    assert body["disks"][0]["initializeParams"]["sourceImage"].endswith(
        "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"
    )
    items = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    script = items["startup-script"]
    layers = docker("image", "inspect", "--format", "{{len .RootFS.Layers}}", local_ref).stdout.strip()
    keep = int(layers) - code_layers()
    assert (
        f"export HFGPU_BAKE_IMAGE={local_ref} HFGPU_BAKE_FAMILY={family} HFGPU_BAKE_LAYERS={keep}\n" in script
    )
    assert STARTUP.read_text() in script
    assert f"{local_ref} has no registry digest on this machine" in proc.stderr, "never pushed: the tag, said"
    # The image is made from the VM's disk only once the VM powered itself off, then the VM goes.
    order = [
        (r.method, r.path.rsplit("/", 1)[-1])
        for r in compute.requests
        if r.method in ("POST", "DELETE", "GET")
    ]
    (image_insert,) = compute.calls("POST", r"/global/images$")
    assert image_insert.body["family"] == family
    assert image_insert.body["sourceDisk"].endswith(f"/zones/us-east4-a/disks/{vm}")
    assert image_insert.status == 200, "refused while the disk was in use: the VM was not TERMINATED yet"
    assert order.index(("POST", "images")) < order.index(("DELETE", vm))
    assert compute.instances == {}, "the bake VM is deleted"
    assert [i["family"] for i in compute.images["my-project"].values()] == [family]
    assert compute.unhandled() == []
    # A second run finds the family and changes nothing.
    compute.clear()
    again = run(BAKE, compute, tmp_path, "--image", local_ref)
    assert again.returncode == 0 and again.stdout.strip() == family
    assert compute.mutations() == [] and "nothing to bake" in again.stderr


def test_bake_vm_that_never_powers_off_is_deleted_and_named(
    compute: FakeComputeImages, local_ref: str, tmp_path: Path
):
    """Also in a region without a zone -a (LOCATION=us-east1: b, c, d): the VM goes to the region's
    first zone, and --dry-run, which reads the zones too, prints the commands with that zone."""
    compute.gets_until_terminated = None  # its pull failed: the startup script leaves it up
    args = ("--image", local_ref, "--poll-seconds", "1", "--timeout", "3")
    dry = run(BAKE, compute, tmp_path, *args, "--dry-run", LOCATION="us-east1")
    assert dry.returncode == 0, dry.stderr
    create = next(shlex.split(line) for line in dry.stdout.splitlines() if " instances create " in line)
    assert create[create.index("--zone") + 1] == "us-east1-b"
    assert compute.mutations() == []
    proc = run(BAKE, compute, tmp_path, *args, LOCATION="us-east1")
    assert proc.returncode == 1
    (err,) = [line for line in proc.stderr.splitlines() if line.startswith("bake_vm_image.sh: error:")]
    assert "did not power off within 3s" in err and "get-serial-port-output" in err
    assert "--zone us-east1-b" in err, err
    assert len(compute.calls("POST", r"/zones/us-east1-b/instances$")) == 1
    assert len(compute.calls("DELETE", r"/zones/us-east1-b/instances/hfgpu-bake-")) == 1
    assert compute.calls("POST", r"/global/images$") == [], "no image of a half-baked disk"
    assert compute.instances == {}, "the bake VM is deleted all the same"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"LOCATION": "us-east99"},
         "LOCATION 'us-east99' (LOCATION from the environment) is not a Compute Engine region: it has no"
         " zones; pick a region from: gcloud compute regions list"),
        (["--zone", "us-east1-a"], {},
         "unknown zone 'us-east1-a' (--zone); pick one from: gcloud compute zones list --filter"
         " region:us-east1"),
        (["--location", "us"], {},
         "LOCATION 'us' (--location) is a multi-region: the bake VM needs a zone; pass --zone ZONE, or"
         " --location REGION"),
    ],
    ids=["location-without-zones", "unknown-zone", "multi-region"],
)  # fmt: skip
def test_bake_zone_that_does_not_exist_is_one_line_and_creates_nothing(
    args: list[str],
    env: dict[str, str],
    expected: str,
    compute: FakeComputeImages,
    local_ref: str,
    tmp_path: Path,
):
    """The zone is read (zones.list, read-only) before anything is made; a multi-region before any call."""
    proc = run(BAKE, compute, tmp_path, "--image", local_ref, *args, **env)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("bake_vm_image.sh: error:")]
    assert errors == [f"bake_vm_image.sh: error: {expected}"], proc.stderr
    assert proc.stderr.splitlines()[-1] == errors[0], "the error is the last word"
    assert compute.mutations() == [] and compute.instances == {}
    if "multi-region" in expected:
        assert compute.requests == [], "refused before any gcloud call"


def test_bake_needs_the_image_on_this_machine(compute: FakeComputeImages, tmp_path: Path):
    ref = f"{PROJECT_IMAGE}:not-here-{uuid.uuid4().hex[:6]}"
    proc = run(BAKE, compute, tmp_path, "--image", ref)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"bake_vm_image.sh: error: image {ref} is not on this machine: the baked family is named after its"
        f" layers; build it here (./build_and_push.sh) or docker pull {ref} first"
    ]
    assert compute.requests == []


@pytest.mark.parametrize("baked", [True, False], ids=["baked", "not-baked"])
def test_create_instance_boots_from_the_baked_family_when_it_exists(
    baked: bool, compute: FakeComputeImages, local_ref: str, tmp_path: Path
):
    family = family_of(local_ref)
    if baked:
        compute.add_image("my-project", f"{family}-20260101000000", family)
    proc = run(ROOT / "create_instance.sh", compute, tmp_path, "--image", local_ref)
    assert proc.returncode == 0, proc.stderr
    (insert,) = compute.calls("POST", r"/zones/us-east4-a/instances$")
    source = insert.body["disks"][0]["initializeParams"]["sourceImage"]
    items = {i["key"]: i["value"] for i in insert.body["metadata"]["items"]}
    assert items["startup-script"] == STARTUP.read_text() and items["install-nvidia-driver"] == "True"
    if baked:
        assert source.endswith(f"projects/my-project/global/images/family/{family}")
        assert f"boot disk: baked image {family}-20260101000000 (family {family})" in proc.stderr
    else:
        assert source.endswith("projects/deeplearning-platform-release/global/images/family/"
                               "common-cu129-ubuntu-2204-nvidia-580")  # fmt: skip
        assert f"no baked image for this image's dependency layers (family {family})" in proc.stderr
    assert compute.unhandled() == []


def test_create_instance_says_why_when_the_baked_family_cannot_be_read(
    compute: FakeComputeImages, local_ref: str, tmp_path: Path
):
    """Google refusing the lookup is not 'no baked image': the VM boots from the public family (a
    full pull, still correct) and one warning names the refusal."""
    family = family_of(local_ref)
    compute.add_image("my-project", f"{family}-20260101000000", family)
    compute.refuse_own_families = True
    proc = run(ROOT / "create_instance.sh", compute, tmp_path, "--image", local_ref)
    assert proc.returncode == 0, proc.stderr
    (insert,) = compute.calls("POST", r"/zones/us-east4-a/instances$")
    assert insert.body["disks"][0]["initializeParams"]["sourceImage"].endswith(
        "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"
    )
    (line,) = [line for line in proc.stderr.splitlines() if family in line]
    assert line.startswith(f"create_instance.sh: warning: boot disk: cannot read the baked family {family}")
    assert "compute.images.getFromFamily" in line and "pulls the whole image" in line, line
    assert "no baked image" not in proc.stderr


def test_startup_script_installs_pigz_pulls_and_stays_up_without_systemd(image, tiny: TinyImages):
    """deploy/vm-startup.sh itself, as root in a Debian container with the host's Docker client and
    socket and the host's network (the loopback registry): pigz from Debian's archive, the engine's
    version, the bake pull of a tiny image; no systemd there, so it does not power off."""
    version = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    proc = docker(
        "run", "--rm", "--network", "host",
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "-v", f"{Path(DOCKER).resolve()}:/usr/bin/docker:ro",
        "-v", f"{STARTUP}:/startup.sh:ro", "-e", f"HFGPU_BAKE_IMAGE={tiny.gzip}",
        "hfgpu-test-base:bookworm", "bash", "/startup.sh",
        check=False, timeout=600,
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hfgpu-startup:")]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert lines == [
        "hfgpu-startup: installed pigz: the first pull inflates gzip layers with unpigz",
        f"hfgpu-startup: Docker engine {version} (zstd images need 23.0 or newer)",
        f"hfgpu-startup: bake: pulling {tiny.gzip}",
        f"hfgpu-startup: bake: done: 1 layers of {tiny.gzip} on this disk",
        "hfgpu-startup: bake: not booted with systemd: not powering off",
    ]
    assert image_exists(tiny.gzip), "the layers are on the engine's disk"
    docker("image", "rm", tiny.gzip)


def test_bake_of_a_pushed_image_pulls_its_registry_digest(compute: FakeComputeImages, tmp_path: Path):
    """A tag can move (another push) between naming the family here and the VM's pull: the VM pulls
    the digest the registry gave this machine's image, so the family holds what it is named after."""
    (tmp_path / "ctx").mkdir()
    lines = ["FROM scratch"]
    for i in range(code_layers() + 2):  # two "dependency" layers below the code layers
        (tmp_path / "ctx" / f"f{i}").write_text(f"{i} {uuid.uuid4().hex}\n")
        lines.append(f"COPY f{i} /f{i}")
    (tmp_path / "ctx" / "Dockerfile").write_text("\n".join(lines) + "\n")
    registry = Registry().start()
    ref = f"{registry.host}/cold/bake-{uuid.uuid4().hex[:6]}:v1"
    try:
        subprocess.run([DOCKER, "build", "-q", "-t", ref, str(tmp_path / "ctx")], check=True,
                       capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})  # fmt: skip
        docker("push", ref)
        (digest,) = docker("image", "inspect", "--format", '{{join .RepoDigests " "}}', ref).stdout.split()
        proc = run(BAKE, compute, tmp_path, "--image", ref, "--poll-seconds", "1")
        assert proc.returncode == 0, proc.stderr
        (insert,) = compute.calls("POST", r"/zones/us-east4-a/instances$")
        items = {i["key"]: i["value"] for i in insert.body["metadata"]["items"]}
        family = proc.stdout.splitlines()[-1]
        repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
        diff_ids = registry.diff_ids(repo, digest.split("@")[1])
        assert family == deps_family(diff_ids, 2), "lib/baked.sh and the VM's check name it alike"
        assert (
            f"export HFGPU_BAKE_IMAGE={digest} HFGPU_BAKE_FAMILY={family} HFGPU_BAKE_LAYERS=2\n"
            in items["startup-script"]
        )
        assert "no registry digest" not in proc.stderr
    finally:
        docker("image", "rm", ref, check=False)
        registry.stop()


@pytest.mark.parametrize("same", [True, False], ids=["its-family", "another-family"])
def test_startup_script_powers_off_only_for_the_family_it_was_named(same: bool, tiny: TinyImages):
    """The bake VM checks what it pulled against the family's digest (as lib/baked.sh computes it):
    a tag that moved since stays up with one error line, and no image is made of its disk."""
    repo = tiny.gzip.split("/", 1)[1].rsplit(":", 1)[0]
    diff_ids = tiny.registry.diff_ids(repo, tiny.registry.digest(repo, "gzip"))
    family = deps_family(diff_ids, 1) if same else "hfgpu-deps-0123456789abcdef"
    proc = docker(
        "run", "--rm", "--network", "host",
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "-v", f"{Path(DOCKER).resolve()}:/usr/bin/docker:ro",
        "-v", "/usr/bin/unpigz:/usr/bin/unpigz:ro",  # present: no apt run here
        "-v", f"{STARTUP}:/startup.sh:ro", "-e", f"HFGPU_BAKE_IMAGE={tiny.gzip}",
        "-e", f"HFGPU_BAKE_FAMILY={family}", "-e", "HFGPU_BAKE_LAYERS=1",
        "hfgpu-test-base:bookworm", "bash", "/startup.sh",
        check=False, timeout=300,
    )  # fmt: skip
    docker("image", "rm", tiny.gzip, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hfgpu-startup: bake:")]
    if same:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert lines[-2] == f"hfgpu-startup: bake: done: 1 layers of {tiny.gzip} on this disk"
        return
    assert proc.returncode == 1
    pulled = deps_family(diff_ids, 1)
    assert lines == [
        f"hfgpu-startup: bake: pulling {tiny.gzip}",
        f"hfgpu-startup: bake: error: the dependency layers of {tiny.gzip} are {pulled},"
        f" not {family} (the tag points at another image now); not powering off: bake again from a machine"
        " that has the image you deploy",
    ]


def test_startup_script_on_a_vm_without_docker_says_so_at_once():
    """A VM image without Docker (or a broken install): one line, no two minutes of waiting for an
    engine that cannot answer; pigz already there is left as it is."""
    proc = docker(
        "run", "--rm", "--network", "none",
        "-v", "/usr/bin/unpigz:/usr/bin/unpigz:ro",
        "-v", f"{STARTUP}:/startup.sh:ro",
        "hfgpu-test-base:bookworm", "timeout", "60", "bash", "/startup.sh",
        check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "hfgpu-startup: unpigz present: /usr/bin/unpigz",
        "hfgpu-startup: warning: no docker on PATH: this VM pulls no image (a Deep Learning VM image has it)",
    ]


def test_a_bake_on_a_larger_disk_is_used_only_by_vms_with_as_much(
    compute: FakeComputeImages, local_ref: str, tmp_path: Path
):
    """bake_vm_image.sh --boot-disk-size 1TB (read as create_instance.sh reads it) makes a 1024 GB
    image; a VM with the default 200 GB boot disk cannot boot from it, so it uses the public family
    and says how to use the baked one; with --boot-disk-size 1TB it boots from the bake."""
    family = family_of(local_ref)
    proc = run(
        BAKE, compute, tmp_path, "--image", local_ref, "--poll-seconds", "1", "--boot-disk-size", "1TB"
    )
    assert proc.returncode == 0, proc.stderr
    (insert,) = compute.calls("POST", r"/zones/us-east4-a/instances$")
    assert insert.body["disks"][0]["initializeParams"]["diskSizeGb"] == "1024"
    (name,) = compute.images["my-project"]
    compute.clear()
    proc = run(ROOT / "create_instance.sh", compute, tmp_path, "--image", local_ref)
    assert proc.returncode == 0, proc.stderr
    (insert,) = compute.calls("POST", r"/zones/us-east4-a/instances$")
    assert "/deeplearning-platform-release/" in insert.body["disks"][0]["initializeParams"]["sourceImage"]
    assert (
        f"create_instance.sh: warning: boot disk: the baked image {name} is 1024GB, more than this VM's"
        " 200GB: booting from common-cu129-ubuntu-2204-nvidia-580, whose VM pulls the whole image; pass"
        " --boot-disk-size 1024GB to use it"
    ) in proc.stderr.splitlines()
    compute.instances.clear()
    compute.clear()
    proc = run(
        ROOT / "create_instance.sh", compute, tmp_path, "--image", local_ref, "--boot-disk-size", "1TB"
    )
    assert proc.returncode == 0, proc.stderr
    (insert,) = compute.calls("POST", r"/zones/us-east4-a/instances$")
    assert insert.body["disks"][0]["initializeParams"]["sourceImage"].endswith(f"/images/family/{family}")


def test_bake_without_the_vms_service_account_stops_before_any_vm(compute: FakeComputeImages, local_ref: str,
                                                                   tmp_path: Path):  # fmt: skip
    """The bake VM pulls as create_instance.sh's service account: without it, one line saying how to
    make it, and no VM; a malformed --service-account is refused before any request."""

    def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
        return [line for line in proc.stderr.splitlines() if line.startswith("bake_vm_image.sh: error:")]

    compute.service_accounts.clear()
    proc = run(BAKE, compute, tmp_path, "--image", local_ref)
    assert proc.returncode == 1
    assert error_lines(proc) == [
        "bake_vm_image.sh: error: service account hfgpu-vm@my-project.iam.gserviceaccount.com not found: the"
        " bake VM pulls the image as it; run ./create_instance.sh once (it makes it) or pass"
        " --service-account EMAIL"
    ]
    assert compute.mutations() == []
    compute.clear()
    proc = run(BAKE, compute, tmp_path, "--image", local_ref, "--service-account", "not an email")
    assert proc.returncode == 1 and error_lines(proc) == [
        "bake_vm_image.sh: error: invalid service account 'not an email' (--service-account): use its e-mail,"
        " NAME@PROJECT.iam.gserviceaccount.com"
    ]
    assert compute.requests == []


def test_ctrl_c_during_the_bake_vm_create_deletes_the_vm(
    compute: FakeComputeImages, local_ref: str, tmp_path: Path
):
    """A Ctrl-C (SIGINT to the whole foreground group, gcloud included) while gcloud waits for the
    VM's create: the VM exists at Google all the same, and the script deletes it on its way out,
    whether gcloud's exit (it catches the signal) or bash's INT trap comes first."""
    compute.insert_polls = 10_000  # the create never finishes by itself
    proc = subprocess.Popen(
        [str(BAKE), "--image", local_ref, "--poll-seconds", "1"], env=script_env(compute, tmp_path, tmp_path),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(600):
            waiting = compute.calls(pattern=r"/zones/us-east4-a/operations/")
            if compute.calls("POST", r"/zones/us-east4-a/instances$") and waiting:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the bake VM's create never started")
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # gcloud catches the SIGINT and exits 1, or bash's INT trap exits 130 first: either way, not 0.
    assert proc.returncode in (1, 130), err
    assert compute.calls("DELETE", r"/instances/hfgpu-bake-"), f"the bake VM is left at Google: {err}"
    assert compute.instances == {}
