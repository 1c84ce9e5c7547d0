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
        .replace("Restart=on-abnormal", "Restart=sometimes")
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
    assert service["ExecStart"].startswith(f"{INSTALL_DIR}/launch_training.sh ")


# systemd.service(5), Restart=, "Table 2. Exit causes and the effect of the Restart= settings": which
# causes each setting restarts on. "Clean" is exit code 0, a SuccessExitStatus= entry, or one of the
# signals SIGHUP, SIGINT, SIGTERM, SIGPIPE; RestartPreventExitStatus= and RestartForceExitStatus=
# (same page) override the table for the codes and signals they list.
CLEAN_SIGNALS = {"SIGHUP", "SIGINT", "SIGTERM", "SIGPIPE"}
RESTARTS_ON = {
    "no": set(),
    "always": {"clean", "unclean-code", "unclean-signal", "timeout", "watchdog"},
    "on-success": {"clean"},
    "on-failure": {"unclean-code", "unclean-signal", "timeout", "watchdog"},
    "on-abnormal": {"unclean-signal", "timeout", "watchdog"},
    "on-abort": {"unclean-signal"},
    "on-watchdog": {"watchdog"},
}


def systemd_restarts(service: dict[str, str], code: int | None = None, signal: str | None = None) -> bool:
    """Whether systemd restarts the service after its main process exits CODE or dies of SIGNAL."""
    token = str(code) if code is not None else signal
    if token in service.get("RestartPreventExitStatus", "").split():
        return False
    if token in service.get("RestartForceExitStatus", "").split():
        return True
    clean = service.get("SuccessExitStatus", "").split()
    if code is not None:
        cause = "clean" if code == 0 or token in clean else "unclean-code"
    else:
        cause = "clean" if signal in CLEAN_SIGNALS or token in clean else "unclean-signal"
    return cause in RESTARTS_ON[service.get("Restart", "no")]


def test_systemd_restarts_only_a_killed_launcher_never_a_failed_program():
    """The launcher's rule, one level up: it reruns the program after 75, 137 or 143 (up to
    --max-restarts) and exits with the program's status otherwise. systemd must not run it again
    after any exit code: a bug (1) or bad input (2) would otherwise run again on a paid GPU, and
    75/137/143 reach systemd only once --max-restarts is spent (or on a stop). A launcher killed
    by a signal (the OOM killer) is restarted."""
    service = service_section()
    assert "--restart-on-preemption" in service["ExecStart"].split()
    for code in (0, 1, 2, 75, 137, 143):
        assert not systemd_restarts(service, code=code), f"systemd would rerun the launcher after exit {code}"
    for signal in ("SIGTERM", "SIGINT"):  # systemctl stop, a shutdown: a clean stop
        assert not systemd_restarts(service, signal=signal), signal
    assert systemd_restarts(service, signal="SIGKILL"), "a killed launcher is not restarted"
