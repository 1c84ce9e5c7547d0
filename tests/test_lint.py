"""Lint as tests: shellcheck on every shell script, hadolint on the Dockerfile, ruff on Python.

Each tool comes from .venv (tests/requirements.txt); a finding fails the run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BIN = Path(sys.executable).parent


def tracked(*patterns: str) -> list[str]:
    """Files git knows (tracked or new, not ignored) matching PATTERNS."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "--", *patterns],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted({line for line in out.splitlines() if (ROOT / line).is_file()})


# Python programs in build_image/bin/ (ruff checks them, see pyproject.toml's extend-include).
PYTHON_IN_BIN = {"build_image/bin/fetch-secrets"}


def shell_scripts() -> list[str]:
    """Every *.sh, every file in build_image/bin/, .ci/run, and any file with a bash shebang."""
    found = set(tracked("*.sh", "build_image/bin/*", ".ci/run")) - PYTHON_IN_BIN
    for path in tracked("*"):
        if "." not in Path(path).name:
            with open(ROOT / path, "rb") as handle:
                if handle.read(64).startswith((b"#!/usr/bin/env bash", b"#!/bin/bash")):
                    found.add(path)
    return sorted(found)


def run_tool(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_there_are_shell_scripts_to_check():
    scripts = shell_scripts()
    assert "build_image/bin/entrypoint" in scripts
    assert "lib/common.sh" in scripts


def test_shellcheck():
    proc = run_tool(str(BIN / "shellcheck"), "--external-sources", *shell_scripts())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint():
    proc = run_tool(str(BIN / "hadolint"), *tracked("*Dockerfile*"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["ruff-check", "ruff-format"])
def test_ruff(args):
    proc = run_tool(str(BIN / "ruff"), *args, ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_test_file_has_a_place_in_the_run_order():
    """tests/run_order.py queues the work units by their seconds: a new file needs its measured
    seconds there, and a test named there must still exist under that name."""
    import run_order

    files = {unit.split("::")[0] for unit in run_order.UNIT_SECONDS}
    missing = sorted(set(tracked("tests/test_*.py")) - files)
    assert not missing, f"add to tests/run_order.py SECONDS, with their seconds in a run: {missing}"
    assert run_order.FIRST in run_order.OWN_UNITS, "tests/run_order.py: FIRST must be listed in SECONDS"
    for unit in run_order.OWN_UNITS:
        path, name = unit.split("::")
        assert f"\ndef {name}(" in (ROOT / path).read_text(), f"tests/run_order.py names {unit}: not found"
