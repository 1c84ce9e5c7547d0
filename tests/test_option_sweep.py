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
import shlex
import subprocess
import tempfile
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
    envs: set[str] = set()  # a configuration name two options share (--location, --region) is tried once
    for o in options:
        if o.type == "switch":
            out.append(Case(f"{o.name}=1", (f"{o.name}=1",), o.name))
            continue
        values = [*GENERIC, *o.bad]
        out += [Case(f"{o.name}={v!r}", (f"{o.name}={v}",), o.name) for v in dict.fromkeys(values)]
        if o.bad:
            out.append(Case(f"{o.name} {o.bad[0]!r}", (o.name, o.bad[0]), o.name))
        if o.env and o.env not in envs:
            envs.add(o.env)
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


# Every docker command the scripts run goes through tool_bin's docker (the real client, logged):
# the sweep must run none that changes something. Read from the log, not from the engine, so
# that other tests' containers and images (tests run side by side) never count.
DOCKER_LOG = Path(tempfile.mkdtemp(prefix="hfgpu-sweep-")) / "docker.log"
DOCKER_CHANGES = {"build", "buildx", "run", "create", "tag", "push", "pull", "rm", "rmi", "start", "stop",
                  "kill", "commit", "load", "import", "login", "exec", "cp", "volume", "network"}  # fmt: skip


def docker_state() -> set[str]:
    """The docker commands that change something, run so far through tool_bin's docker."""
    lines = DOCKER_LOG.read_text().splitlines() if DOCKER_LOG.exists() else []
    return {line for line in lines if line.split(" ", 1)[0] in DOCKER_CHANGES}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGcp]:
    with FakeGcp() as f:
        yield f


def tool_bin(tmp: Path) -> Path:
    """A folder for the front of PATH: the BuildKit-capable docker, each call logged (docker_state)."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "docker"
    if not wrapper.exists():
        wrapper.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "$*" >>{shlex.quote(str(DOCKER_LOG))}\nexec {DOCKER} "$@"\n'
        )
        wrapper.chmod(0o755)
    return bindir


# How each script is run for the sweep, one function each (the baseline: what a valid run gives).
def sweep_build_and_push(fake: FakeGcp, tmp: Path) -> Sweep:
    env = script_env(fake, tmp, tool_bin(tmp))
    dotenv = "IMAGE_NAME=hfgpu-sweep\nTAG=sweep\n"
    return Sweep("build_and_push", env, dotenv=dotenv, mutations=fake.mutations, snapshot=docker_state)


def sweep_create_instance(fake: FakeGcp, tmp: Path) -> Sweep:
    pytest.fail("create_instance.sh has no option table yet (issue 19)")


def sweep_launch_training(fake: FakeGcp, tmp: Path) -> Sweep:
    pytest.fail("launch_training.sh has no option table yet (issue 19)")


def sweep_submit_vertex_job(fake: FakeGcp, tmp: Path) -> Sweep:
    """A valid run submits a job: gcloud's aiplatform (and logging, storage for the gpt2 upload)
    calls go to a FakeVertex that would accept it; every case must send it nothing that changes
    anything (no job created, no script upload begun). The fake stops with the returned Sweep."""
    import weakref

    from fake_vertex import FakeVertex

    vertex = FakeVertex().start()
    env = script_env(fake, tmp, tool_bin(tmp), HFGPU_POLL_SECONDS="0")
    for api, path in (("AIPLATFORM", "/"), ("LOGGING", "/"), ("STORAGE", "/storage/v1/")):
        env[f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}"] = vertex.url + path

    def mutations() -> list:  # a job created, or any Cloud Storage call (the gpt2 upload starts with a GET)
        changes = ("POST", "PUT", "PATCH", "DELETE")
        sent = [r for r in vertex.calls() if r.method in changes or r.path.startswith("/storage/")]
        return [*fake.mutations(), *sent]

    sweep = Sweep("submit_vertex_job", env, args=("--output", "gs://sweep-bucket/run"), mutations=mutations)
    weakref.finalize(sweep, vertex.stop)
    return sweep


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
    section = doc_section(
        script, options, {c.id: p for c, p in zip(all_cases, procs, strict=True)}, len(all_cases)
    )
    start, end = f"<!-- sweep:{script} -->", f"<!-- /sweep:{script} -->"
    text = DOC.read_text()
    committed = text[text.index(start) : text.index(end) + len(end)] if start in text and end in text else ""
    if os.environ.get("HFGPU_BAD_INPUTS_DOC"):
        text = text.replace(committed, section) if committed else f"{text.rstrip()}\n\n{section}\n"
        DOC.write_text(text)
    else:
        assert committed == section, f"{DOC.relative_to(ROOT)} is out of date; rewrite it: {REWRITE}"


REWRITE = "HFGPU_BAD_INPUTS_DOC=1 .venv/bin/pytest tests/test_option_sweep.py"


def doc_section(
    script: str, options: list[Option], procs: dict[str, subprocess.CompletedProcess], count: int
) -> str:
    """The doc's part for SCRIPT: each option, its type and env name, how many hostile values it was
    given, and the line one of them gives (the first of its type's traps, else an empty value)."""
    rows = [
        start := f"<!-- sweep:{script} -->",
        f"## {script}.sh: {count} cases, all refused in one line",
        "",
        "| option | type | env | values tried | the line one of them gives |",
        "|---|---|---|---|---|",
    ]
    for o in options:
        tried = sum(
            1
            for k in procs
            if k.startswith((f"{o.name}=", f"{o.name} ")) or (o.env and k.startswith(f"{o.env}="))
        )
        example = f"{o.name}=1" if o.type == "switch" else f"{o.name}={(o.bad or ('',))[0]!r}"
        line = procs[example].stderr.strip().removeprefix(f"{script}.sh: error: ")
        shown = f"`{example}`: {line}".replace("|", "\\|")
        rows.append(f"| `{o.name}` | {o.type.replace('|', ',')} | {o.env or ''} | {tried} | {shown} |")
    for k, proc in procs.items():
        if " with " in k or " without " in k:
            rows.append(
                f"| {k} | conflict | | 1 | {proc.stderr.strip().removeprefix(f'{script}.sh: error: ')} |"
            )
    rows.append(f"<!-- /sweep:{script} -->")
    assert start
    return "\n".join(rows)


CANARY = "hf_canary_c4n4ry_do_not_print"


@pytest.mark.parametrize("script", SWEEPS)
def test_no_secret_in_any_trace(script, fake, tmp_path):
    """HFGPU_DEBUG=1 traces every command, never a secret: a token in .env, in the environment and in
    --env-file (where the script has one) shows in no output, on a run that goes past its checks."""
    sweep = SWEEPS[script](fake, tmp_path)
    names = {o.name for o in table(script)}
    work = tmp_path / "work"
    work.mkdir()
    (work / "sweep.env").write_text(
        f"{sweep.dotenv}HF_TOKEN={CANARY}-dotenv\nexport WANDB_API_KEY={CANARY}-wandb\n"
    )
    (work / "secrets.env").write_text(f"HF_TOKEN={CANARY}-file\n")
    args = [*sweep.args, *(["--dry-run"] if "--dry-run" in names else [])]
    if "--env-file" in names:
        args += ["--env-file", str(work / "secrets.env")]
    env = {**sweep.env, "HOME": str(work), "CONFIG_FILE": str(work / "sweep.env"), "HFGPU_DEBUG": "1"}
    env["HF_TOKEN"] = f"{CANARY}-env"
    proc = subprocess.run(
        [str(ROOT / f"{script}.sh"), *args], env=env, cwd=work, capture_output=True, text=True, timeout=300
    )
    assert "opt_check_config" in proc.stderr, f"the run did not get past its checks: {proc.stderr[-2000:]}"
    assert CANARY not in proc.stdout + proc.stderr, "a secret's value is in the trace"


@pytest.mark.parametrize("form", ["--ca-bundle=~/ca.pem", "CA_BUNDLE=~/ca.pem"])
def test_a_leading_tilde_is_home_after_equals_too(form, fake, tmp_path):
    """`--opt=~/x` (where the shell leaves ~ alone) and `NAME=~/x` in .env mean HOME/x, as
    `--opt ~/x` does: never a folder literally named ~."""
    sweep = sweep_build_and_push(fake, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "ca.pem").write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text())
    (tmp_path / "sweep.env").write_text(sweep.dotenv + (form + "\n" if form.startswith("CA_") else ""))
    env = {**sweep.env, "HOME": str(home), "CONFIG_FILE": str(tmp_path / "sweep.env")}
    args = ["--no-push", "--dry-run", *([form] if form.startswith("--") else [])]
    proc = subprocess.run(
        [str(ROOT / "build_and_push.sh"), *args], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    build = next(shlex.split(line) for line in proc.stdout.splitlines() if " docker build " in line)
    assert f"id=ca_bundle,src={home}/ca.pem" in build


@pytest.mark.parametrize("script", ["launch_training", "submit_vertex_job"])
def test_a_refused_env_value_is_never_echoed(script, fake, tmp_path):
    """`--env 'BAD NAME=TOKEN'` (a typo in the name of a variable that holds a token) is refused
    without printing the value: it may be a secret."""
    sweep = SWEEPS[script](fake, tmp_path)
    assert "--env" in {o.name for o in table(script)}
    for bad in (f"BAD NAME={CANARY}", f"1X={CANARY}", f"NAME{CANARY}"):
        proc = run_case(sweep, Case(f"--env {bad}", ("--env", bad), "--env"), tmp_path)
        assert proc.returncode == 1 and "--env" in proc.stderr, proc.stderr
        assert CANARY not in proc.stdout + proc.stderr, f"--env {bad!r} echoed the value"
