"""deploy/gpu-training.service: systemd's own checker accepts it, and its stop timing fits the launcher's.

`systemd-analyze verify` (Debian package `systemd`) parses the unit as systemd would. It exits 0
even for unknown keys or unparsable values and only prints a warning, so the tests require that
it prints nothing at all. The unit's install paths (/opt/gpu-transformers) are replaced with
this checkout's, as its header tells users to do, so that ExecStart= names a real executable.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

UNIT = ROOT / "deploy" / "gpu-training.service"
INSTALL_DIR = "/opt/gpu-transformers"


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze not found; install it: apt-get install systemd")
    return exe


def installed_copy(tmp_path: Path, text: str | None = None) -> Path:
    text = UNIT.read_text() if text is None else text
    assert INSTALL_DIR in text, "the unit names its install folder"
    path = tmp_path / "gpu-training.service"
    path.write_text(text.replace(INSTALL_DIR, str(ROOT)))
    return path


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [analyze(), "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=120
    )


def service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def test_systemd_analyze_verify_prints_nothing(tmp_path: Path):
    proc = verify(installed_copy(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == "", proc.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path):
    """The check above can fail: a misspelt key and a bad value each give a warning."""
    broken = (
        UNIT.read_text()
        .replace("KillMode=mixed", "KillMod=mixed")
        .replace("Restart=on-failure", "Restart=sometimes")
    )
    proc = verify(installed_copy(tmp_path, broken))
    assert "Unknown key 'KillMod'" in proc.stderr
    assert "Failed to parse service restart specifier" in proc.stderr


def test_stop_timing_and_exit_codes_fit_the_launcher():
    service = service_section()
    launcher = (ROOT / "launch_training.sh").read_text()
    m = re.search(r"--stop-timeout[^\n]*?default (\d+)", launcher)
    assert m, "launch_training.sh --help names the default --stop-timeout"
    # systemd must wait longer than `docker stop` waits for the checkpoint.
    assert int(service["TimeoutStopSec"]) > int(m.group(1))
    # SIGTERM to the launcher only (it stops the container itself); 75 is a clean stop.
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert "75" in service["SuccessExitStatus"].split()
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"].startswith(f"{INSTALL_DIR}/launch_training.sh ")
