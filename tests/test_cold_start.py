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

import io
import shlex
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DOCKER, ROOT, docker
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
        (["--compression", "lz4"], "invalid --compression 'lz4': give gzip (the default) or zstd"),
        (["--compression", "zstd", "--no-push"], "--compression zstd compresses the pushed layers"),
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
    assert "--compression gzip" in line and "upgrade Docker" in line, "and the fix"
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
