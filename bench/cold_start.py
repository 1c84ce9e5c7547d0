"""Benchmark a cold start: pull the image on a new engine, then `import torch, transformers`.

Usage (from the repository root, as root, with the shared Docker engine running):
    .venv/bin/python bench/cold_start.py [--baseline-rev REV]

Measured side by side in one run, each case on a NEW engine data-root: a second dockerd with its
own --data-root, --exec-root, --pidfile and unix socket, --iptables=false, a bridge of its own
(not --bridge=none: a dockerd started so deletes the host's docker0, the shared engine's bridge,
as moby's daemon_unix.go does when the bridge is disabled) and the containerd it supervises;
stopped and deleted after the case, so the shared engine's state is never touched. Each pulls
from a loopback registry (Debian's docker-registry), with the kernel's page cache dropped before
each pull (`sync; echo 3 > /proc/sys/vm/drop_caches`):

  today       the image built from REV's Dockerfile (one 8 GB dependency layer), gzip, and a
              dockerd without `unpigz` on its PATH (its built-in Go gzip);
  today+pigz  the same with `unpigz` on dockerd's PATH;
  split       the working tree's Dockerfile (five dependency layers), gzip, no `unpigz`;
  split+pigz  the same with `unpigz`;
  zstd        the split image with its layers recompressed to zstd (level 3, as BuildKit's
              exporter writes them), pulled and unpacked by containerd's `ctr` (Debian's
              containerd 1.6 reads zstd; Debian's dockerd 20.10 cannot): the stand-in for Docker >= 23;
  baked       a code-only change of the split image, pulled onto the split+pigz data-root, which
              already holds the dependency layers (a VM booted from a baked disk image).

Each time is the pull plus the first `python3 -c "import torch, transformers"` in a container.
The images are built on the shared engine (BuildKit cache), pushed, and removed from it again;
the registry, data-roots and images are deleted at the end. Prints the table and writes it into
docs/bench-image.md (README.md's benchmark table links there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gcp_env import Registry  # Debian's docker-registry on loopback, as the tests use it
from report import ROOT, publish, table

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
BASE = os.environ.get("HFGPU_TEST_BASE", "hfgpu-test-base:bookworm")
CA = Path("/etc/ssl/certs/ca-certificates.crt")
# The last commit whose Dockerfile installs every dependency in one layer.
BASELINE_REV = "adcb645"
IMPORT = ["python3", "-c", "import torch, transformers"]
WORK = Path(os.environ.get("HFGPU_BENCH_TMP", "/var/tmp"))
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclass
class Args:
    baseline_rev: str = BASELINE_REV
    registry_root: str = ""


@dataclass
class Case:
    name: str
    ref: str
    pull_s: float = 0.0
    import_s: float = 0.0
    note: str = ""

    @property
    def total(self) -> float:
        return self.pull_s + self.import_s


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        raise SystemExit(f"bench: {' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def timed(*cmd: str, env: dict | None = None) -> float:
    start = time.perf_counter()
    sh(*cmd, env=env)
    return time.perf_counter() - start


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def context(rev: str | None, code_change: bool = False) -> Path:
    """A build context: the working tree's (rev None) or REV's build_image/, app/, lib/kv.sh."""
    ctx = Path(tempfile.mkdtemp(prefix="hfgpu-cold-ctx-", dir=WORK))
    parts = ["build_image", "app", "lib/kv.sh", ".dockerignore"]
    if rev:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, *parts], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(ctx)], input=archive.stdout, check=True)
    else:
        for part in parts:
            src, dst = ROOT / part, ctx / part
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, dst)
    if code_change:
        (ctx / "app" / "one_line_change.py").write_text(f"# a code-only change {time.time_ns()}\n")
    return ctx


def build(ctx: Path, tag: str) -> None:
    cmd = [
        DOCKER,
        "build",
        "-q",
        "-f",
        str(ctx / "build_image" / "Dockerfile"),
        "--build-arg",
        f"BASE_IMAGE={BASE}",
    ]
    if CA.exists():
        cmd += ["--secret", f"id=ca_bundle,src={CA}"]
    sh(*cmd, "-t", tag, str(ctx), env={**os.environ, "DOCKER_BUILDKIT": "1"})


def zstd_copy(registry: Registry, repo: str, src_tag: str, dst_tag: str) -> None:
    """Push REPO:DST_TAG, an OCI copy of REPO:SRC_TAG with every layer recompressed to zstd -3.

    Debian's Docker 20.10 cannot write zstd (no buildx); skopeo 1.9 keeps gzip layers as they
    are. The layers' content (diff_ids) and the image config are the same as the source's.
    """
    base = f"http://{registry.host}/v2/{repo}"
    status, _, manifest = registry.get(f"{repo}/manifests/{src_tag}")
    assert status == 200, f"{repo}:{src_tag} -> {status}"
    layers = []
    for layer in manifest["layers"]:
        with tempfile.TemporaryDirectory(dir=WORK) as tmp:
            gz, zst = Path(tmp) / "layer.gz", Path(tmp) / "layer.zst"
            with (
                urllib.request.urlopen(f"{base}/blobs/{layer['digest']}", timeout=600) as src,
                gz.open("wb") as out,
            ):
                shutil.copyfileobj(src, out, 1 << 22)
            pipeline = f"gzip -dc {gz} | zstd -q -3 -T0 -o {zst}"
            subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True)
            gz.unlink()
            layers.append({"mediaType": MEDIA_ZSTD, **upload_blob(base, zst)})
    config_digest = manifest["config"]["digest"]
    new = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": manifest["config"]["size"]},
        "layers": layers,
    }
    req = urllib.request.Request(
        f"{base}/manifests/{dst_tag}", data=json.dumps(new).encode(), method="PUT",
        headers={"Content-Type": OCI_MANIFEST},
    )  # fmt: skip
    urllib.request.urlopen(req, timeout=60).close()


def upload_blob(base: str, path: Path) -> dict:
    """Registry v2 monolithic upload (POST, then PUT ?digest=); returns digest and size."""
    digest = "sha256:" + sh("sha256sum", str(path)).stdout.split()[0]
    with urllib.request.urlopen(
        urllib.request.Request(f"{base}/blobs/uploads/", method="POST"), timeout=60
    ) as r:
        location = r.headers["Location"]
    if location.startswith("/"):
        location = base.split("/v2/")[0] + location
    sep = "&" if "?" in location else "?"
    with open(path, "rb") as data:
        req = urllib.request.Request(
            f"{location}{sep}digest={digest}", data=data, method="PUT",
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)},
        )  # fmt: skip
        urllib.request.urlopen(req, timeout=600).close()
    return {"digest": digest, "size": path.stat().st_size}


def pushed_layers(registry: Registry, repo: str, tag: str) -> tuple[int, int, int]:
    """(layers, layers over 100 MB, compressed bytes) of REPO:TAG as the registry holds it."""
    status, _, manifest = registry.get(f"{repo}/manifests/{tag}")
    assert status == 200, f"{repo}:{tag} -> {status}"
    sizes = [layer["size"] for layer in manifest["layers"]]
    return len(sizes), sum(s > 100e6 for s in sizes), sum(sizes)


@dataclass
class Engine:
    """A second dockerd (and the containerd it supervises) on a data-root of its own."""

    root: Path
    unpigz: bool
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bridge(self) -> str:
        """A bridge of this engine's own (an interface name: at most 15 characters)."""
        return f"hfgcold{self.root.name[-6:]}".replace("_", "x")

    @property
    def sock(self) -> Path:
        return self.root / "x" / "docker.sock"

    @property
    def containerd_sock(self) -> Path:
        return self.root / "x" / "containerd" / "containerd.sock"

    def path(self) -> str:
        """dockerd's PATH: the caller's, or the same folders' programs linked in one folder without unpigz."""
        if self.unpigz:
            if not shutil.which("unpigz"):
                raise SystemExit("bench: unpigz not on PATH; apt-get install pigz")
            return os.environ["PATH"]
        shadow = self.root / "bin"
        shadow.mkdir(parents=True, exist_ok=True)
        for folder in os.environ["PATH"].split(":"):
            if not Path(folder).is_dir():
                continue
            for exe in Path(folder).iterdir():
                if exe.name not in ("unpigz", "pigz") and not (shadow / exe.name).exists():
                    (shadow / exe.name).symlink_to(exe)
        return str(shadow)

    def start(self) -> Engine:
        (self.root / "x").mkdir(parents=True, exist_ok=True)
        (self.root / "daemon.json").write_text("{}\n")
        # The engine's default bridge, link-local and private: containers run with --network none.
        sh("ip", "link", "add", "name", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", "169.254.240.1/30", "dev", self.bridge)
        cmd = [
            "dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "x"),
            "--pidfile", str(self.root / "dockerd.pid"), "-H", f"unix://{self.sock}",
            "--config-file", str(self.root / "daemon.json"), f"--bridge={self.bridge}", "--iptables=false",
            "--ip-masq=false", "--ip-forward=false",
            "--log-level", "debug",  # it then says which gzip it inflates with (checked per case)
        ]  # fmt: skip
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - lives as long as the process
        env = {**os.environ, "PATH": self.path()}
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        for _ in range(300):
            if subprocess.run(self.docker_cmd("version"), capture_output=True).returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit(
            f"bench: the second dockerd did not start:\n{(self.root / 'dockerd.log').read_text()[-2000:]}"
        )

    def docker_cmd(self, *args: str) -> list[str]:
        return [DOCKER, "-H", f"unix://{self.sock}", *args]

    def ctr_cmd(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.containerd_sock), "--namespace", "hfgpu-bench", *args]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def wipe(self) -> None:
        self.stop()
        subprocess.run(["rm", "-rf", str(self.root)], check=False)


def docker_case(case: Case, engine: Engine) -> None:
    drop_caches()
    case.pull_s = timed(*engine.docker_cmd("pull", "-q", case.ref))
    case.import_s = timed(*engine.docker_cmd("run", "--rm", "--network", "none", "--entrypoint", IMPORT[0],
                                             case.ref, *IMPORT[1:]))  # fmt: skip
    print(f"bench: {case.name}: pull {case.pull_s:.1f} s + import {case.import_s:.1f} s", flush=True)
    # moby's pkg/archive logs which inflater each gzip layer went through (debug level).
    log = (engine.root / "dockerd.log").read_text(errors="replace")
    used = "Using " in log and "unpigz to decompress" in log
    if used != engine.unpigz and case.name != "baked":
        raise SystemExit(f"bench: {case.name}: dockerd {'did not use' if engine.unpigz else 'used'} unpigz")


def ctr_case(case: Case, engine: Engine) -> None:
    drop_caches()
    case.pull_s = timed(*engine.ctr_cmd("images", "pull", "--plain-http", case.ref))
    case.import_s = timed(*engine.ctr_cmd("run", "--rm", case.ref, "hfgpu-bench-import", *IMPORT))
    print(f"bench: {case.name}: pull {case.pull_s:.1f} s + import {case.import_s:.1f} s", flush=True)
    sh(*engine.ctr_cmd("images", "rm", "--sync", case.ref))


def main(args: Args) -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it drops the page cache and starts a second dockerd)")
    for tool in ("dockerd", "ctr", "docker-registry", "zstd"):
        if not shutil.which(tool):
            raise SystemExit(
                f"bench: {tool} not found; apt-get install docker.io containerd docker-registry zstd"
            )
    tags = {
        "today": "hfgpu-cold-bench:today",
        "split": "hfgpu-cold-bench:split",
        "code": "hfgpu-cold-bench:code",
    }
    # A registry folder given is reused (a push skips the layers it holds already) and kept.
    root = (
        Path(args.registry_root)
        if args.registry_root
        else Path(tempfile.mkdtemp(prefix="hfgpu-cold-reg-", dir=WORK))
    )
    registry = Registry(root=root).start()
    repo = "hfgpu-bench/image"
    ref = {k: f"{registry.host}/{repo}:{k}" for k in ("today", "split", "code", "zstd")}
    engines: list[Engine] = []

    def engine(unpigz: bool) -> Engine:
        e = Engine(Path(tempfile.mkdtemp(prefix="hfgpu-cold-", dir=WORK)), unpigz).start()
        engines.append(e)
        return e

    cases: dict[str, Case] = {}
    try:
        for name, rev, change in (
            ("today", args.baseline_rev, False),
            ("split", None, False),
            ("code", None, True),
        ):
            print(f"bench: build {name} and push it to the loopback registry ...", flush=True)
            ctx = context(rev, change)
            try:
                build(ctx, tags[name])
            finally:
                shutil.rmtree(ctx)
            sh(DOCKER, "tag", tags[name], ref[name])
            sh(DOCKER, "push", ref[name])
            sh(DOCKER, "image", "rm", ref[name])
            if name != "split":  # the split image is the base of the code change: removed after it
                sh(DOCKER, "image", "rm", tags[name])
        sh(DOCKER, "image", "rm", tags["split"])
        print("bench: recompress the split image's layers to zstd ...", flush=True)
        zstd_copy(registry, repo, "split", "zstd")

        for name, tag, unpigz in (("today", "today", False), ("today+pigz", "today", True),
                                  ("split", "split", False), ("split+pigz", "split", True)):  # fmt: skip
            e = engine(unpigz)
            cases[name] = Case(name, ref[tag])
            docker_case(cases[name], e)
            if name == "split+pigz":  # the baked case: the dependency layers are on this data-root already
                cases["baked"] = Case("baked", ref["code"], note="dependency layers present")
                docker_case(cases["baked"], e)
            e.wipe()
        e = engine(True)
        cases["zstd"] = Case("zstd", ref["zstd"], note="containerd 1.6 `ctr`")
        ctr_case(cases["zstd"], e)
        e.wipe()
        shape = {name: pushed_layers(registry, repo, name) for name in ("today", "split", "zstd")}
    finally:
        for e in engines:
            e.wipe()
        for tag in [*tags.values(), *ref.values()]:
            subprocess.run([DOCKER, "image", "rm", tag], capture_output=True)
        if args.registry_root:
            registry._root_kept = True
            registry.root = Path(
                tempfile.mkdtemp(prefix="hfgpu-cold-none-", dir=WORK)
            )  # stop() removes this one
        registry.stop()

    base = cases["today"].total
    layout = {
        "today": f"1 dependency layer, gzip, {shape['today'][2] / 1e9:.2f} GB",
        "split": f"{shape['split'][1]} layers over 100 MB, gzip, {shape['split'][2] / 1e9:.2f} GB",
        "zstd": f"{shape['zstd'][1]} layers over 100 MB, zstd -3, {shape['zstd'][2] / 1e9:.2f} GB",
    }
    engine_of = {"today": "dockerd 20.10, Go gzip", "today+pigz": "dockerd 20.10, unpigz",
                 "split": "dockerd 20.10, Go gzip", "split+pigz": "dockerd 20.10, unpigz",
                 "baked": "dockerd 20.10, unpigz", "zstd": "containerd 1.6 ctr"}  # fmt: skip
    rows = []
    for name in ("today", "today+pigz", "split", "split+pigz", "zstd", "baked"):
        c = cases[name]
        what = layout.get(name.split("+")[0], "code layer only (dependency layers present)")
        rows.append([f"**{name}**", what, engine_of[name], f"{c.pull_s:.1f} s", f"{c.import_s:.1f} s",
                     f"{c.total:.1f} s", f"{base / c.total:.2f}x" if name != "baked" else
                     f"{100 * c.total / base:.1f} % of today"])  # fmt: skip
    stamp = f"{time.strftime('%Y-%m-%d')}, {platform.node() or 'host'}: {os.cpu_count()} cores (shared)"
    body = "\n".join(
        [
            f"Measured {stamp} with `.venv/bin/python bench/cold_start.py`, one run, side by side:",
            "",
            table(["case", "image", "engine", "pull", "import", "total", "vs today"], rows),
        ]
    )
    publish("bench-image.md", "cold", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="git revision of today's one-layer Dockerfile"
    )
    parser.add_argument("--registry-root", default="", help="a loopback registry folder to reuse and keep")
    main(Args(**vars(parser.parse_args())))
