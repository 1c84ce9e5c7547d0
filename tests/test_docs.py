"""The docs stay true: the README is short and shows the two commands first; every version they
name matches the lock; every `--flag` they show for a script is in that script's --help; every
relative link resolves; CI runs exactly the README's test command; benchmark blocks are filled.

The link test runs on the merged tree: the README links pages that other branches add.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
# The bad-input tables show wrong options on purpose: their flags are not checked against --help.
FLAG_PAGES = [p for p in PAGES if "bad-inputs" not in p.parts]
SCRIPTS = ("build_and_push.sh", "create_instance.sh", "launch_training.sh", "submit_vertex_job.sh")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def locked() -> dict[str, str]:
    text = (ROOT / "build_image" / "requirements.lock").read_text()
    return {m[1]: m[2] for m in re.finditer(r"^([a-z0-9-]+)==(\S+)", text, re.M)}


def version_table() -> dict[str, str]:
    page = (ROOT / "docs" / "image.md").read_text()
    block = page.split("<!-- versions:", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 2:
            rows[cells[0]] = cells[1]
    return rows


def test_readme_is_at_most_300_lines():
    assert len(README.splitlines()) <= 300


def test_first_screen_shows_the_two_commands():
    first_screen = "\n".join(README.splitlines()[:25])
    assert "./launch_training.sh\n" in first_screen
    assert "make test\n" in first_screen


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*make test\b", ci, re.M)


def test_version_table_matches_the_lock():
    pins, table = locked(), version_table()
    names = ("torch", "transformers", "datasets", "accelerate", "evaluate", "scikit-learn", "tensorboard")
    for name in names:
        assert table[name].split()[0] == pins[name], name
    combo = table["tokenizers / safetensors / huggingface-hub"].split(" / ")
    assert combo == [pins["tokenizers"], pins["safetensors"], pins["huggingface-hub"]]
    assert table["triton"] == pins["triton"]


def test_version_table_matches_the_dockerfile():
    dockerfile = (ROOT / "build_image" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=([^@\s]+)", dockerfile, re.M)[1]
    assert f"`{base}`" in version_table()["base image"]
    driver = re.search(r"^ARG MIN_NVIDIA_DRIVER=(\S+)", dockerfile, re.M)[1]
    assert version_table()["minimum NVIDIA driver"].startswith(driver)
    cuda = re.search(r"^ARG CUDA_RUNTIME_VERSION=(\S+)", dockerfile, re.M)[1]
    assert version_table()["CUDA runtime"].startswith(cuda)


def test_requirements_pins_agree_with_the_lock():
    """requirements.txt's `NAME==X.Y.*` ranges hold the locked version."""
    pins = locked()
    text = (ROOT / "build_image" / "requirements.txt").read_text()
    for name, prefix in re.findall(r"^([a-z0-9-]+)(?:\[[^\]]*\])?==([0-9.]+)\.\*", text, re.M):
        assert (pins[name] + ".").startswith(prefix + "."), (
            f"{name}: lock {pins[name]}, requirements {prefix}.*"
        )


def test_versions_named_in_the_readme_match_the_lock():
    """'torch 2.10', 'transformers 5.20' and the like name the locked release."""
    pins = locked()
    named = re.findall(r"\b(torch|transformers|datasets|accelerate) (\d+\.\d+(?:\.\d+)?)\b", README)
    assert named, "the page names the stack's versions"
    for name, version in named:
        assert (pins[name] + ".").startswith(version + "."), f"{name} {version}: the lock has {pins[name]}"


def code_snippets(text: str) -> list[str]:
    """Shell lines from fenced blocks (backslash continuations joined) and inline code spans."""
    snippets = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S):
        snippets += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    snippets += re.findall(r"`([^`\n]+)`", prose)
    return snippets


def shown_flags(text: str) -> set[tuple[str, str]]:
    """(script, --flag) for each flag written after a script's name in a command."""
    found = set()
    for snippet in code_snippets(text):
        for script in SCRIPTS:
            for part in snippet.split(script)[1:]:
                # The script's own arguments end at `--` (the program's), a comment, a pipe or `)`.
                part = re.split(r" -- | --$|#|\||;|&&|\)", part)[0]
                found |= {(script, flag) for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", part)}
    return found


@cache
def help_flags(script: str) -> frozenset[str]:
    """The options SCRIPT's --help names; empty when there is no such script."""
    path = ROOT / script
    if not path.exists():
        return frozenset()
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return frozenset(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))


@pytest.mark.parametrize("page", FLAG_PAGES, ids=rel)
def test_every_flag_shown_exists_in_the_scripts_help(page: Path):
    missing = sorted(f"{s} {f}" for s, f in shown_flags(page.read_text()) if f not in help_flags(s))
    # (every script's --help names --help: a script that does not exist shows up as "SCRIPT --help")
    assert missing == [], f"{rel(page)} shows options that --help does not list"


def test_the_flag_check_can_fail():
    assert ("build_and_push.sh", "--no-such") in shown_flags("```bash\n./build_and_push.sh --no-such x\n```")
    assert ("launch_training.sh", "--gpus") in shown_flags(
        "run `./launch_training.sh --gpus 2 bert -- --lr 1`"
    )
    assert ("launch_training.sh", "--lr") not in shown_flags("`./launch_training.sh bert -- --lr 1`")
    assert "--no-such" not in help_flags("build_and_push.sh")


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    heads = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_resolves(page: Path):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    assert broken == [], f"{rel(page)}: links that lead nowhere: {broken}"


@pytest.mark.parametrize("page", DOCS, ids=rel)
def test_benchmark_blocks_are_filled(page: Path):
    text = page.read_text()
    for name in re.findall(r"<!-- bench:([a-z-]+) -->", text):
        body = text.split(f"<!-- bench:{name} -->", 1)[1].split(f"<!-- /bench:{name} -->", 1)[0]
        assert "not measured yet" not in body, f"run the benchmark that fills bench:{name}"


def test_benchmark_numbers_live_once():
    """The README summarizes and links; the generated blocks live only under docs/."""
    assert "<!-- bench:" not in README
    assert "(docs/bench-image.md)" in README and "(docs/bench-training.md)" in README
