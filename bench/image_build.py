"""Benchmark the image build: code-change rebuilds, cache warmth, size, installer speed.

Usage (from the repository root, as root, with a Docker engine running):
    make bench-image          # or: .venv/bin/python bench/image_build.py [--skip-cold]

Measured in one run, side by side, against the local test base image (no registry
is reachable here; see tests/make-test-base.sh):
  1. rebuild after a one-line change in app/: this Dockerfile against a naive one
     (the same file with the code copied before the dependencies are installed);
     and the size of the layers that changed (what a push after the change uploads);
  2. a clean build (every layer rebuilt) with a warm package cache against a cold one;
  3. the image's size, total and per layer, heaviest layers named;
  4. the dependency layer's install time with uv against plain pip, cold caches.
Prints the tables and writes them into docs/bench-image.md (README.md links there).
The cold runs empty BuildKit's cache mounts (and later builds refill them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ROOT, publish, table

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
BASE = os.environ.get("HFGPU_TEST_BASE", "hfgpu-test-base:bookworm")
CA = Path("/etc/ssl/certs/ca-certificates.crt")
CODE_COPY = "COPY app/ /app/\n"
UV_INSTALL = re.compile(
    r"    /opt/build/with-build-ca uv pip sync --python /opt/venv/bin/python \\\n"
    r"        --require-hashes /opt/build/requirements.lock; \\\n"
)


@dataclass
class Args:
    skip_cold: bool = False


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def make_context(dockerfile_text: str) -> Path:
    """A copy of the build context (build_image/, app/, lib/kv.sh) with DOCKERFILE_TEXT as its Dockerfile."""
    ctx = Path(tempfile.mkdtemp(prefix="hfgpu-bench-"))
    for part in ("build_image", "app"):
        shutil.copytree(ROOT / part, ctx / part, ignore=shutil.ignore_patterns("__pycache__"))
    (ctx / "lib").mkdir()
    shutil.copy(ROOT / "lib" / "kv.sh", ctx / "lib" / "kv.sh")
    shutil.copy(ROOT / ".dockerignore", ctx / ".dockerignore")
    (ctx / "build_image" / "Dockerfile").write_text(dockerfile_text)
    return ctx


def build(ctx: Path, tag: str) -> tuple[float, str]:
    """Build CTX as TAG with BuildKit; return (seconds, plain progress log)."""
    cmd = [DOCKER, "build", "--progress", "plain", "-f", str(ctx / "build_image" / "Dockerfile")]
    cmd += ["--build-arg", f"BASE_IMAGE={BASE}", "-t", tag]
    if CA.exists():
        cmd += ["--secret", f"id=ca_bundle,src={CA}"]
    start = time.perf_counter()
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    proc = subprocess.run([*cmd, str(ctx)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"bench: build of {tag} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stderr


def step_seconds(log: str, marker: str) -> float:
    """Seconds BuildKit reports for the step whose header contains MARKER."""
    for match in re.finditer(r"^#(\d+) \[[^\]]*\] (.*)$", log, re.M):
        if marker in match.group(2):
            done = re.search(rf"^#{match.group(1)} DONE ([\d.]+)s$", log, re.M)
            if done:
                return float(done.group(1))
    raise SystemExit(f"bench: no timed step matching {marker!r} in the build log")


def steps_seconds(log: str, marker: str) -> float:
    """Seconds of every step whose header contains MARKER, added up (the dependency layers' steps)."""
    total, found = 0.0, False
    for match in re.finditer(r"^#(\d+) \[[^\]]*\] (.*)$", log, re.M):
        done = re.search(rf"^#{match.group(1)} DONE ([\d.]+)s$", log, re.M)
        if marker in match.group(2) and done:
            total, found = total + float(done.group(1)), True
    if not found:
        raise SystemExit(f"bench: no timed step matching {marker!r} in the build log")
    return total


def clean(dockerfile_text: str) -> str:
    """The Dockerfile with a first step that changes every run: every layer is rebuilt.

    Not `--no-cache`: BuildKit then also hands out empty cache mounts, which would
    hide exactly what a warm package cache saves.
    """
    first = 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]\n'
    assert first in dockerfile_text
    return dockerfile_text.replace(first, f"{first}RUN echo 'clean build {time.time_ns()}'\n", 1)


def one_line_change(ctx: Path) -> None:
    target = sorted((ctx / "app").glob("*.py"))[0]
    target.write_text(target.read_text() + f"# one-line change {time.time_ns()}\n")


def layers(tag: str) -> list[tuple[str, int, str]]:
    """(digest, bytes, step) per layer, oldest first, from overlay2's diff folders.

    The step that made each layer comes from the image config's history (the
    entries without empty_layer), read from the engine's image store.
    """
    info = json.loads(sh(DOCKER, "image", "inspect", tag).stdout)[0]
    digests = info["RootFS"]["Layers"]
    data = info["GraphDriver"]["Data"]
    dirs = [d for d in [data["UpperDir"], *data.get("LowerDir", "").split(":")] if d][::-1]
    if len(dirs) != len(digests):
        raise SystemExit("bench: cannot map layers to overlay2 folders")
    config = Path("/var/lib/docker/image/overlay2/imagedb/content/sha256") / info["Id"].split(":")[1]
    history = [h for h in json.loads(config.read_text())["history"] if not h.get("empty_layer")]
    shell = "/bin/bash -o pipefail -c "
    steps = [h.get("created_by", "").replace(shell, "") or "(base image)" for h in history]
    if len(steps) != len(digests):
        steps = [""] * len(digests)
    sizes = [int(sh("du", "-sb", d).stdout.split()[0]) for d in dirs]
    return list(zip(digests, sizes, steps, strict=True))


def downloads(log: str) -> str:
    """What uv or pip reported fetching in a build log (uv: 'Prepared N packages in T')."""
    match = re.search(r"Prepared (\d+) packages? in ([\d.]+m?s)", log)
    return f"{match.group(1)} packages prepared in {match.group(2)}" if match else "no uv report"


def rebuild_pair(dockerfile_text: str, tag: str) -> tuple[float, int]:
    """Build, make a one-line change in app/, rebuild: (rebuild seconds, bytes of changed layers)."""
    ctx = make_context(dockerfile_text)
    try:
        build(ctx, tag)
        before = layers(tag)
        one_line_change(ctx)
        seconds, _ = build(ctx, tag + "-changed")
        after = layers(tag + "-changed")
        changed = sum(size for (d1, _, _), (d2, size, _) in zip(before, after, strict=True) if d1 != d2)
        return seconds, changed
    finally:
        shutil.rmtree(ctx)


def prune(kind: str) -> None:
    """Drop unused BuildKit records of KIND: "regular" (layers) or "exec.cachemount"."""
    sh(DOCKER, "builder", "prune", "--force", "--filter", f"type={kind}")


def rm(*tags: str) -> None:
    subprocess.run([DOCKER, "image", "rm", "--force", *tags], capture_output=True)


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main(args: Args) -> None:
    ours = (ROOT / "build_image" / "Dockerfile").read_text()
    assert ours.count(CODE_COPY) == 1 and UV_INSTALL.search(ours), "Dockerfile changed: update the bench"
    # The naive file: the same, with the code copied right after FROM, before any install.
    naive = ours.replace(CODE_COPY, "").replace("FROM ${BASE_IMAGE}\n", "FROM ${BASE_IMAGE}\n" + CODE_COPY, 1)
    with_pip = UV_INSTALL.sub(
        "    python3 -m venv --clear /opt/venv; \\\n"
        "    /opt/build/with-build-ca /opt/venv/bin/pip install --no-cache-dir --require-hashes \\\n"
        "        --no-deps -r /opt/build/requirements.lock; \\\n",
        ours,
    ).replace("python3 -m venv --without-pip /opt/venv; \\\n", "")
    tags = [f"hfgpu-bench:{n}" for n in ("ours", "ours-changed", "naive", "naive-changed", "clean", "pip")]
    rows, results = [], {}
    try:
        print("bench: rebuild after a one-line change in app/ ...", flush=True)
        ours_s, ours_bytes = rebuild_pair(ours, tags[0])
        rm(tags[1])
        naive_s, naive_bytes = rebuild_pair(naive, tags[2])
        rm(tags[2], tags[3])
        prune("regular")  # each full build leaves 8 GB of cache behind
        results["rebuild"] = (ours_s, ours_bytes, naive_s, naive_bytes)

        print("bench: size per layer ...", flush=True)
        per_layer = layers(tags[0])
        total = sum(size for _, size, _ in per_layer)

        print("bench: clean build, warm package cache ...", flush=True)
        ctx = make_context(clean(ours))
        warm_s, warm_log = build(ctx, tags[4])
        uv_warm = steps_seconds(warm_log, "with-build-ca uv pip")  # the dependency layers' steps
        print(f"bench: warm: uv {downloads(warm_log)}", flush=True)
        rm(tags[4])
        prune("regular")
        if not args.skip_cold:
            print("bench: clean build, cold package cache ...", flush=True)
            prune("exec.cachemount")
            (ctx / "build_image" / "Dockerfile").write_text(clean(ours))
            cold_s, cold_log = build(ctx, tags[4])
            uv_cold = steps_seconds(cold_log, "with-build-ca uv pip")  # the dependency layers' steps
            print(f"bench: cold: uv {downloads(cold_log)}", flush=True)
            rm(tags[4])
            prune("regular")
            print("bench: dependency layer with plain pip, cold ...", flush=True)
            prune("exec.cachemount")
            pctx = make_context(clean(with_pip))
            _, pip_log = build(pctx, tags[5])
            pip_cold = step_seconds(pip_log, "pip install --no-cache-dir")
            shutil.rmtree(pctx)
            rm(tags[5])
            prune("regular")
        shutil.rmtree(ctx)
    finally:
        rm(*tags)

    rows.append(["rebuild after a one-line app/ change", f"{ours_s:.1f} s", f"{naive_s:.1f} s",
                 f"{naive_s / ours_s:.0f}x faster"])  # fmt: skip
    rows.append(["layers changed by it (the push)", f"{ours_bytes / 1e3:.1f} kB", gb(naive_bytes), ""])
    if not args.skip_cold:
        rows.append(["clean build (every layer), warm / cold cache", f"{warm_s:.0f} s", f"{cold_s:.0f} s",
                     f"{cold_s - warm_s:.0f} s saved"])  # fmt: skip
        rows.append(["dependency step, warm / cold cache", f"{uv_warm:.0f} s", f"{uv_cold:.0f} s", ""])
        rows.append(["dependency install, cold: uv / plain pip", f"{uv_cold:.0f} s", f"{pip_cold:.0f} s",
                     f"{pip_cold / uv_cold:.1f}x faster"])  # fmt: skip
    heavy = sorted(per_layer, key=lambda layer: -layer[1])[:4]
    size_rows = [[gb(size), f"`{step[:80]}`".replace("|", "/")] for _, size, step in heavy]
    stamp = f"{time.strftime('%Y-%m-%d')}, {platform.node() or 'host'}: {os.cpu_count()} cores, base {BASE}"
    body = "\n".join(
        [
            f"Measured {stamp} with `make bench-image`:",
            "",
            table(["what", "this Dockerfile", "naive / cold / pip", "gain"], rows),
            "",
            f"Image size, uncompressed: **{gb(total)}** in {len(per_layer)} layers; the heaviest:",
            "",
            table(["size", "layer"], size_rows),
        ]
    )
    # The numbers live once, in docs/bench-image.md; README.md links there.
    publish("bench-image.md", "image", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold-cache and pip builds")
    main(Args(**vars(parser.parse_args())))
