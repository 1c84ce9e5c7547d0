"""The README stays true: its version table matches the lock, its first screen shows the
two commands, and CI runs exactly the README's test command."""

from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def locked() -> dict[str, str]:
    text = (ROOT / "build_image" / "requirements.lock").read_text()
    return {m[1]: m[2] for m in re.finditer(r"^([a-z0-9-]+)==(\S+)", text, re.M)}


def version_table() -> dict[str, str]:
    block = README.split("<!-- versions:", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 2:
            rows[cells[0]] = cells[1]
    return rows


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
    driver = re.search(r"MIN_NVIDIA_DRIVER=(\S+)", dockerfile)[1]
    assert version_table()["minimum NVIDIA driver"].startswith(driver)


def test_first_screen_shows_the_two_commands():
    first_screen = "\n".join(README.splitlines()[:25])
    assert "./launch_training.sh\n" in first_screen
    assert "make test\n" in first_screen


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*make test\b", ci, re.M)


def test_benchmark_blocks_are_filled():
    for name in re.findall(r"<!-- bench:([a-z-]+) -->", README):
        body = README.split(f"<!-- bench:{name} -->", 1)[1].split(f"<!-- /bench:{name} -->", 1)[0]
        assert "not measured yet" not in body, f"run the benchmark that fills bench:{name}"
