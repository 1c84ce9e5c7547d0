"""The image, built for real from build_image/Dockerfile and probed in containers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import CANARY, ROOT, SESSION_BUILD_ARGS, TEST_BASE_IMAGE, build_image, docker, run_in_image

PROBES = ROOT / "tests" / "probes"
LOCK = ROOT / "build_image" / "requirements.lock"


def inspect(ref: str) -> dict:
    return json.loads(docker("image", "inspect", ref).stdout)[0]


def test_every_locked_package_imports_at_its_locked_version(image):
    proc = run_in_image(
        image.tag,
        "python3",
        "/probes/locked_imports.py",
        "/lock",
        extra=["-v", f"{PROBES}:/probes:ro", "-v", f"{LOCK}:/lock:ro"],
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, report["problems"]
    assert report["checked"] == report["locked"] > 50


def test_pip_check_is_clean(image):
    proc = run_in_image(image.tag, "python3", "-m", "pip", "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No broken requirements found" in proc.stdout


def test_python3_is_the_environment_and_stack_is_importable(image):
    proc = run_in_image(
        image.tag,
        "python3",
        "-c",
        "import sys, torch, transformers; print(sys.prefix, torch.version.cuda, transformers.__version__)",
        check=True,
    )
    prefix, cuda, _ = proc.stdout.split()
    assert prefix == "/opt/venv"
    assert cuda.startswith("12."), "torch must carry a CUDA 12 runtime (runs on CUDA 12 drivers)"


def test_runs_as_non_root_by_default(image):
    assert inspect(image.tag)["Config"]["User"] == "1000:1000"
    proc = run_in_image(image.tag, "id", "-u", check=True)
    assert proc.stdout.strip() == "1000"


def test_caches_and_outputs_live_in_the_volume(image):
    env = dict(e.split("=", 1) for e in inspect(image.tag)["Config"]["Env"])
    for name in ("HF_HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "OUTPUT_ROOT"):
        assert env[name].startswith("/volume"), name
    assert env["PYTHONUNBUFFERED"] == "1"
    proc = run_in_image(
        image.tag, "python3", "-c", "import huggingface_hub.constants as c; print(c.HF_HOME)", check=True
    )
    assert proc.stdout.strip() == "/volume/.cache/huggingface"


@pytest.mark.parametrize("uid", [4242, 123456])
def test_files_written_under_user_belong_to_that_user(image, tmp_path, uid):
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)
    proc = run_in_image(
        image.tag,
        "bash",
        "-c",
        'echo hi > /volume/out.txt && echo "$HOME" && touch "$HOME/.probe" && '
        "python3 -c \"import pathlib; (pathlib.Path.home() / '.py-probe').write_text('ok')\"",
        user=f"{uid}:{uid + 1}",
        volume=volume,
    )
    # A user with no passwd entry still gets a HOME it can write (tools write to ~), and it
    # persists: it lives in the volume, private to that uid.
    assert proc.returncode == 0, proc.stderr
    home = proc.stdout.strip().splitlines()[-1]
    assert home == f"/volume/.home/{uid}", home
    home_stat = (volume / ".home" / str(uid)).stat()
    assert home_stat.st_uid == uid and home_stat.st_mode & 0o777 == 0o700
    assert (volume / ".home" / str(uid) / ".py-probe").read_text() == "ok"
    stat = (volume / "out.txt").stat()
    assert (stat.st_uid, stat.st_gid) == (uid, uid + 1)
    # The HF cache folder the entrypoint made belongs to the caller too.
    assert (volume / ".cache" / "huggingface").stat().st_uid == uid


def test_labels_and_entrypoint(image):
    config = inspect(image.tag)["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == "9.9.9-test"
    assert labels["org.opencontainers.image.revision"] == "testrev"
    assert labels["org.opencontainers.image.created"] == "2026-01-01T00:00:00Z"
    assert "org.opencontainers.image.source" in labels
    assert labels["hfgpu.min-nvidia-driver"]
    assert config["Entrypoint"][:2] == ["/usr/bin/tini", "--"], "exec-form entrypoint with an init"


def test_docker_stop_lets_the_program_finish_saving(image, tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)
    name = f"hfgpu-sigterm-{uuid.uuid4().hex[:8]}"
    docker(
        "run", "-d", "--name", name, "--network", "none",
        "-v", f"{volume}:/volume", "-v", f"{PROBES}:/probes:ro",
        image.tag, "python3", "/probes/sigterm_probe.py",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "ready" not in docker("logs", name).stdout:
            assert time.monotonic() < deadline, "probe never became ready"
            time.sleep(0.2)
        docker("stop", "--time", "30", name)
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 75, "SIGTERM must reach the program; 137 means it was killed"
        assert (volume / "saved").exists()
    finally:
        docker("rm", "--force", name, check=False)


def test_pip_constraints_guard_locked_versions(image):
    proc = run_in_image(image.tag, "python3", "-m", "pip", "install", "--no-index", "transformers==5.19.0")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "constraint" in out and "transformers==5.20.2" in out, out[-2000:]


def instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, one logical line each (continuations joined, comments out)."""
    out: list[str] = []
    current = ""
    for line in dockerfile.splitlines():
        if line.lstrip().startswith("#") or (not current and not line.strip()):
            continue
        current += line[:-1] if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(current)
            current = ""
    return out


def final_stage_runs(dockerfile: str) -> list[tuple[bool, str]]:
    """(mounts a secret, shell command with whitespace collapsed) of each RUN of the last stage."""
    runs: list[tuple[bool, str]] = []
    for instr in instructions(dockerfile):
        words = instr.split()
        if words[0].upper() == "FROM":
            runs = []
        elif words[0].upper() == "RUN":
            flags = [w for w in words[1:] if w.startswith("--")]
            command = words[1 + len(flags) :]
            runs.append((any(f.startswith("--mount=type=secret") for f in flags), " ".join(command)))
    return runs


def layer_dirs(ref: str) -> list[Path]:
    """The engine's folder of each layer of REF, oldest first (overlay2: LowerDir, then UpperDir)."""
    data = inspect(ref)
    assert data["GraphDriver"]["Name"] == "overlay2", "the layer scan reads overlay2's layer folders"
    assert os.geteuid() == 0, "the layer scan reads the engine's folders: run the tests as root (CI does)"
    graph = data["GraphDriver"]["Data"]
    dirs = [graph["UpperDir"], *filter(None, (graph.get("LowerDir") or "").split(":"))]
    assert len(dirs) == len(data["RootFS"]["Layers"]), dirs
    return [Path(d) for d in reversed(dirs)]


def secret_step_layers(ref: str, dockerfile: str, base: str = TEST_BASE_IMAGE) -> list[Path]:
    """The layer folders written by the last stage's secret-mounting RUN steps.

    The last stage's RUN steps and the image's RUN history entries after the base pair up in
    order (several part steps run the same command with another mount, so order, not text, pairs
    them); each pair's command is checked, so a mapping that drifts fails here instead of
    scanning the wrong folder."""
    made = layer_history(ref)  # one per layer, oldest first
    dirs = layer_dirs(ref)
    assert len(made) == len(dirs), (made, dirs)
    base_layers = len(inspect(base)["RootFS"]["Layers"])
    ran = [(i, " ".join(by.split()).removesuffix(" # buildkit")) for i, (_, by) in enumerate(made)]
    ran = [(i, by) for i, by in ran[base_layers:] if by.startswith("RUN ")]
    runs = final_stage_runs(dockerfile)
    assert len(ran) == len(runs), f"{len(runs)} RUN steps in the Dockerfile, {len(ran)} in the history"
    found = []
    for (i, by), (secret, command) in zip(ran, runs, strict=True):
        assert by.endswith(command), f"history {by[:80]!r} is not the Dockerfile's {command[:80]!r}"
        if secret:
            found.append(dirs[i])
    assert found, "the Dockerfile has no RUN that mounts a secret"
    return found


def leaked_files(dirs: list[Path], needle: str) -> list[str]:
    """Files under DIRS that contain NEEDLE (grep: fixed string, no symlinks or devices followed)."""
    proc = subprocess.run(
        ["grep", "-r", "-l", "-F", "-D", "skip", "-e", needle, *map(str, dirs)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.splitlines()


def assert_no_secret(ref: str, dockerfile: str) -> None:
    """The canary is in no history line, no config field and no layer a secret step wrote."""
    assert CANARY not in docker("history", "--no-trunc", ref).stdout
    assert CANARY not in docker("image", "inspect", ref).stdout
    leaks = leaked_files(secret_step_layers(ref, dockerfile), CANARY)
    assert leaks == [], f"the build secret leaked into a layer: {leaks}"


def test_no_build_secret_in_any_layer_history_or_config(image):
    """The CA bundle secret carried a canary; nothing of it may be stored. Only the layers of the
    steps that mount the secret can hold it (the others never saw it): those are read file by
    file, plus the config and the history. The session's image may come from BuildKit's cache
    (its secret steps then never saw this canary): the next test builds a secret step that
    certainly runs, and the one after shows the scan finds a canary planted in a layer."""
    assert_no_secret(image.tag, (ROOT / "build_image" / "Dockerfile").read_text())


def test_build_secret_canary_enters_a_step_that_runs_and_leaves_no_trace(engine, tmp_path, canary_bundle):
    """The real Dockerfile up to its first secret-mounting RUN, with a nonce in the file that step's
    COPY brings in: that step cannot come from the cache, so the canary certainly entered it."""
    context = tmp_path / "context"
    shutil.copytree(ROOT / "build_image", context / "build_image")
    shutil.copy(ROOT / ".dockerignore", context / ".dockerignore")
    dockerfile = (ROOT / "build_image" / "Dockerfile").read_text()
    start = dockerfile.index("RUN --mount=type=secret")
    cut = dockerfile[: dockerfile.index("\n\n", start)] + "\n"
    (context / "build_image" / "Dockerfile").write_text(cut)
    copied = re.findall(r"^COPY (build_image/\S+)", dockerfile[:start], re.M)[-1]
    with open(context / copied, "a") as f:
        f.write(f"# nonce {uuid.uuid4().hex}: this build's secret step must run\n")
    tag = f"hfgpu-canary:{uuid.uuid4().hex[:8]}"
    try:
        result = build_image(tag, context=context, secret_file=canary_bundle)
        steps = re.findall(r"^#(\d+) \[[^\]]*\] RUN --mount=type=secret", result.log, re.M)
        assert steps, result.log[-3000:]
        step = steps[-1]
        assert f"#{step} CACHED" not in result.log, "the secret step came from the cache"
        assert re.search(rf"^#{step} DONE", result.log, re.M), result.log[-3000:]
        assert_no_secret(tag, cut)
    finally:
        docker("image", "rm", "--force", tag, check=False)


def test_the_secret_scan_finds_a_canary_planted_in_a_layer(engine, tmp_path, canary_bundle):
    """A step that copies the secret into its layer, and a later step that deletes the copy: the
    final file system no longer shows it, the secret step's layer still holds it. The scan that
    guards the real image must report it."""
    context = tmp_path / "context"
    (context / "build_image").mkdir(parents=True)
    dockerfile = (
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nENV NOTHING=here\n"
        "RUN --mount=type=secret,id=ca_bundle,required=false \\\n"
        f"    cp /run/secrets/ca_bundle /leak.{uuid.uuid4().hex}\n"
        "RUN rm /leak.*\nWORKDIR /work\n"
    )
    (context / "build_image" / "Dockerfile").write_text(dockerfile)
    tag = f"hfgpu-canary-planted:{uuid.uuid4().hex[:8]}"
    try:
        build_image(tag, context=context, secret_file=canary_bundle)
        (layer,) = secret_step_layers(tag, dockerfile)
        leaks = leaked_files([layer], CANARY)
        assert len(leaks) == 1 and "/leak." in leaks[0], leaks
        with pytest.raises(AssertionError, match="leaked into a layer"):
            assert_no_secret(tag, dockerfile)
    finally:
        docker("image", "rm", "--force", tag, check=False)


def copy_context(tmp_path: Path) -> Path:
    """A copy of what the build reads (build_image/, app/, lib/, .dockerignore), to edit and rebuild."""
    context = tmp_path / "context"
    for part in ("build_image", "app", "lib"):
        shutil.copytree(ROOT / part, context / part)
    shutil.copy(ROOT / ".dockerignore", context / ".dockerignore")
    return context


def test_code_only_change_rebuilds_only_the_code_layer(image, tmp_path, canary_bundle):
    context = copy_context(tmp_path)
    (context / "app" / "one_line_change.py").write_text(f"# a one-line change {uuid.uuid4().hex}\n")
    tag = f"gpu_transformers:rebuild-{uuid.uuid4().hex[:8]}"
    try:
        rebuilt = build_image(tag, context=context, build_args=SESSION_BUILD_ARGS, secret_file=canary_bundle)
        assert len(rebuilt.layers) == len(image.layers)
        assert rebuilt.layers[:-1] == image.layers[:-1], "a dependency layer was rebuilt"
        assert rebuilt.layers[-1] != image.layers[-1], "the code layer must carry the change"
    finally:
        if os.environ.get("HFGPU_KEEP_IMAGES") != "1":
            docker("image", "rm", "--force", tag, check=False)


def test_base_image_is_a_build_argument_pinned_by_digest():
    text = (ROOT / "build_image" / "Dockerfile").read_text()
    # A reference may go on over a backslash continuation (no line over 120 characters).
    joined = text.replace("\\\n", "")
    first = next(line for line in joined.splitlines() if line.startswith(("ARG", "FROM")))
    assert first.startswith("ARG BASE_IMAGE=nvidia/cuda:12.")
    assert "@sha256:" in first
    assert "FROM ${BASE_IMAGE}" in text
    assert Path(ROOT / ".dockerignore").read_text().splitlines()[1] == "*"


# -- the dependency layers (issue 23: layers that pull while the last one unpacks) ------------------

DOCKERFILE = ROOT / "build_image" / "Dockerfile"
LOCK_SUBSETS = ROOT / "build_image" / "lock-subsets.sh"


def layer_parts() -> list[tuple[str, str]]:
    """(NAME, GLOBS) of the lock-subsets stage's command, as the Dockerfile declares them."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (command,) = [line for line in text.splitlines() if line.startswith("RUN ./lock-subsets.sh ")]
    return re.findall(r"([a-z0-9-]+)='([^']*)'", command)


def split_lock(lock: Path, out: Path) -> subprocess.CompletedProcess:
    args = [f"{name}={globs}" for name, globs in layer_parts()]
    return subprocess.run([str(LOCK_SUBSETS), str(lock), str(out), *args], capture_output=True, text=True)


def entries(path: Path) -> dict[str, str]:
    """Package name -> its entry (pin line and hash lines) in a lock or lock part."""
    found: dict[str, str] = {}
    name = ""
    for line in path.read_text().splitlines():
        if re.match(r"[A-Za-z0-9]", line):
            name = line.split("==")[0].lower()
            found[name] = line + "\n"
        elif line.lstrip().startswith("--hash=") and name:
            found[name] += line + "\n"
        else:
            name = ""
    return found


def test_lock_parts_are_verbatim_disjoint_pieces_of_the_lock(tmp_path):
    proc = split_lock(LOCK, tmp_path)
    assert proc.returncode == 0, proc.stderr
    locked = entries(LOCK)
    parts = {name: entries(tmp_path / f"{name}.txt") for name, _ in layer_parts()}
    assert 3 <= len(parts) <= 5, "4-6 dependency layers: these parts plus the final sync"
    seen: set[str] = set()
    for name, part in parts.items():
        assert part, f"part {name} is empty"
        assert not seen & part.keys(), f"a package in two parts: {seen & part.keys()}"
        seen |= part.keys()
        for pkg, entry in part.items():
            assert entry == locked[pkg], f"{pkg}: the part must carry the lock's pin and hashes as written"
    assert {"torch", "triton", "nvidia-cudnn-cu12"} <= seen
    assert {"transformers", "datasets"}.isdisjoint(seen), "what changes often comes with the final sync"


def test_a_pin_change_changes_only_the_part_it_belongs_to(tmp_path):
    split_lock(LOCK, tmp_path / "before")
    text = LOCK.read_text()
    torch_pin = re.search(r"^torch==(\S+)", text, re.M)
    hf_pin = re.search(r"^transformers==(\S+)", text, re.M)
    assert torch_pin and hf_pin
    changed = tmp_path / "changed.lock"
    changed.write_text(
        text.replace(hf_pin.group(0), "transformers==0.0.1").replace(torch_pin.group(0), "torch==0.0.1")
    )
    split_lock(changed, tmp_path / "after")
    differ = sorted(
        f.name
        for f in (tmp_path / "before").iterdir()
        if f.read_text() != (tmp_path / "after" / f.name).read_text()
    )
    assert differ == ["torch.txt"], "transformers is in no part; torch only in its own"


def test_lock_subsets_refuses_a_glob_that_matches_nothing(tmp_path):
    proc = subprocess.run(
        [str(LOCK_SUBSETS), str(LOCK), str(tmp_path), "torch=torch", "gone=no-such-package*"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        'lock-subsets: layer gone: "no-such-package*" matches no locked package'
    ]


def test_every_downloading_step_mounts_the_secret_and_installs_from_the_lock():
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    steps = [line for line in text.splitlines() if line.startswith("RUN ") and "with-build-ca" in line]
    assert len(steps) >= 5, "uv itself, then the dependency layers"
    for step in steps:
        assert "--mount=type=secret,id=ca_bundle" in step, step[:120]
        assert "--require-hashes" in step, step[:120]
    installs = [s for s in steps if "uv pip install" in s]
    assert all("--no-deps" in s and "from=lock-subsets" in s for s in installs), "each part as locked"
    assert "uv pip sync" in steps[-1] and "/opt/build/requirements.lock" in steps[-1], "the whole lock last"


def history(ref: str) -> list[tuple[int, str]]:
    """(bytes, created_by) of each history entry, oldest first."""
    out = docker(
        "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", ref
    ).stdout
    rows = [line.split("\t", 1) for line in out.splitlines() if line]
    return [(int(size), by) for size, by in reversed(rows)]


def test_dependencies_come_in_four_to_six_layers_of_similar_size(image):
    deps = [size for size, by in history(image.tag) if "with-build-ca uv pip" in by]
    assert 4 <= len(deps) <= 6, deps
    assert min(deps) > 0.4e9 and max(deps) <= 2 * min(deps), (
        f"similar sizes: {[f'{s / 1e9:.2f}' for s in deps]}"
    )


def test_dependency_layers_hold_each_file_once(image):
    """The layers together are no bigger than the environment they make (within 1 %): no step
    rewrites an earlier layer's files (e.g. byte-code compiled again, a package reinstalled)."""
    layers = sum(size for size, by in history(image.tag) if "with-build-ca uv pip" in by)
    proc = run_in_image(image.tag, "du", "-sb", "--exclude=constraints.txt", "/opt/venv", check=True)
    venv = int(proc.stdout.split()[0])
    assert layers <= venv * 1.01, f"layers {layers / 1e9:.3f} GB vs the environment {venv / 1e9:.3f} GB"


def test_a_lock_change_outside_the_parts_reuses_every_part_layer(image, tmp_path, canary_bundle):
    """A lock edit that changes no part (here a comment; in life a transformers bump) rebuilds only
    from the final sync on: each part's step mounts only its own file, whose content is unchanged."""
    context = copy_context(tmp_path)
    with open(context / "build_image" / "requirements.lock", "a") as f:
        f.write(f"# an edit outside every part {uuid.uuid4().hex}\n")
    tag = f"gpu_transformers:lockedit-{uuid.uuid4().hex[:8]}"
    try:
        rebuilt = build_image(tag, context=context, build_args=SESSION_BUILD_ARGS, secret_file=canary_bundle)
        parts = [i for i, (_, by) in enumerate(layer_history(image.tag)) if "uv pip install" in by]
        assert len(parts) == len(layer_parts())
        assert rebuilt.layers[: parts[-1] + 1] == image.layers[: parts[-1] + 1], "a part's layer was rebuilt"
        assert rebuilt.layers[parts[-1] + 1] != image.layers[parts[-1] + 1], "the lock's COPY must be new"
    finally:
        docker("image", "rm", "--force", tag, check=False)


def layer_history(ref: str) -> list[tuple[int, str]]:
    """The history entries that made a layer, in the order of RootFS.Layers.

    `docker history` does not say which entries are empty (metadata only); the image config does
    (`empty_layer`), read with `docker save` of the config alone being too slow, so: the entries
    of instructions that never make a layer are dropped."""
    meta = re.compile(r"^(ENV|ARG|LABEL|USER|ENTRYPOINT|CMD|SHELL|EXPOSE|STOPSIGNAL|HEALTHCHECK|VOLUME) ")
    rows = [(size, by) for size, by in history(ref) if not meta.match(by.removeprefix("/bin/sh -c #(nop) "))]
    assert len(rows) == len(image_layers_of(ref)), "history and layers disagree"
    return rows


def image_layers_of(ref: str) -> list[str]:
    return json.loads(docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref).stdout)
