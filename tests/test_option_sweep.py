"""Every option of every script, given every hostile value its type admits (issue 19).

The cases are generated from the option tables (lib/options/SCRIPT.sh, printed by
`bash lib/options.sh SCRIPT`), so a new option gets this coverage by being declared:
- each value option: empty, blank, a newline (inside, and after a valid value), a Unicode line
  separator in the C locale, too long, and its type's own traps (a `$(...)`, a leading dash,
  capitals, out of range...), as `--opt=VALUE`; the first trap also as `--opt VALUE` and through
  each old spelling (whose deprecation warning must not add a line); an on/off flag given a value;
  a path type's `~/x` with HOME unset;
- each option backed by a configuration name: the same traps from the environment and from .env,
  and an empty `NAME=` line in .env;
- each declared conflict (both options with valid values) and need (the option alone), whose line
  must be the pair's, with the reason and fix the table declares (conflicts-why=, needs-why=);
- `--=x` and `-h=x`, never taken for `--` or `-h`; DRY_RUN=true, never a real run.
Each case must end with exit status 1 and one stderr line `SCRIPT: error: ...` that names where the
value came from (the flag, `NAME from the environment`, `NAME in FILE:LINE` with the case's own file
and line) right after `error: ` or in parentheses, and a fix; print nothing on stdout (where a
script's result goes); and change nothing: no mutating request to the fake API, no file in the
working folder, HOME, TMPDIR or the repository, no image tag, no container, no docker or gcloud
configuration written (build_and_push: no gcloud call at all).
All checks come before any gcloud or docker call, so the cases are quick.

docs/bad-inputs/options.md lists, per script, every option with its type and one line it gives;
`HFGPU_BAD_INPUTS_DOC=1 .venv/bin/pytest tests/test_option_sweep.py` rewrites it.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
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
    old: tuple[str, ...] = ()
    path: bool = False
    conflicts_why: str = ""
    needs_why: str = ""


def table(script: str) -> list[Option]:
    proc = subprocess.run(["bash", str(ROOT / "lib" / "options.sh"), script], capture_output=True, text=True)
    assert proc.returncode == 0, f"lib/options/{script}.sh does not load: {proc.stderr}"
    out = proc.stdout
    options = []
    for line in out.splitlines():
        name, typ, env, var, repeat, conflicts, needs, example, bad, old, path, conflicts_why, needs_why = (
            line.split("\t")
        )
        split = lambda s, sep: tuple(x for x in s.split(sep) if x)  # noqa: E731
        traps = tuple(bad.split("|")) if bad else ()
        options.append(Option(name, typ, env, var, repeat, split(conflicts, ","), split(needs, ","), example,
                              traps, split(old, ","), path == "1", conflicts_why, needs_why))  # fmt: skip
    return options


@dataclass(frozen=True)
class Case:
    """One hostile input: ARGS on the command line, ENV in the environment, DOTENV as .env's text
    (after the baseline's); ORIGIN is what the error line must name (for a .env case, followed by
    the case's file and line); LINE, when given, is the whole message after `error: `."""

    id: str
    args: tuple[str, ...]
    origin: str
    env: tuple[tuple[str, str], ...] = ()
    dotenv: str = ""
    line: str = ""


LINE_SEPARATOR = "x\u2028y"  # a line break to Python (and to JSON logs); not a control byte in C


def cases(options: list[Option]) -> list[Case]:
    envs: set[str] = set()  # a configuration name two options share (--location, --region) is tried once
    out: list[Case] = [
        Case("--=x", ("--=x",), "unknown option '--=x'"),
        Case("-h=x", ("-h=x",), "unknown option '-h=x'"),
        Case("DRY_RUN='true' (env)", (), "DRY_RUN from the environment", env=(("DRY_RUN", "true"),)),
    ]
    for o in options:
        if o.type == "switch":
            out.append(Case(f"{o.name}=1", (f"{o.name}=1",), o.name))
            out += [Case(f"{old}=1", (f"{old}=1",), old) for old in o.old]
            continue
        values = [*GENERIC, f"{o.example}\n", *o.bad]
        out += [Case(f"{o.name}={v!r}", (f"{o.name}={v}",), o.name) for v in dict.fromkeys(values)]
        out.append(Case(f"{o.name}={LINE_SEPARATOR!r} (C locale)", (f"{o.name}={LINE_SEPARATOR}",), o.name,
                        env=(("LC_ALL", "C"),)))  # fmt: skip
        first = (*o.bad, "")[0]
        out += [Case(f"{old}={first!r}", (f"{old}={first}",), old) for old in o.old]
        if o.bad:
            out.append(Case(f"{o.name} {o.bad[0]!r}", (o.name, o.bad[0]), o.name))
        # a separate value that looks like an option, with a newline: the advice must not echo it raw
        out.append(Case(f"{o.name} '--x\\ny'", (o.name, "--x\ny"), o.name))
        if o.path:
            out.append(Case(f"{o.name}='~/x' (HOME unset)", (f"{o.name}=~/x",), o.name, env=(("HOME", ""),)))
        if o.env and o.env not in envs:
            envs.add(o.env)
            from_env = f"{o.env} from the environment"
            for v in dict.fromkeys([" ", "x" * 1100, f"{o.example}\n", *o.bad]):
                out.append(Case(f"{o.env}={v!r} (env)", (), from_env, env=((o.env, v),)))
                if "\n" not in v:
                    out.append(Case(f"{o.env}={v!r} (.env)", (), f"{o.env} in ", dotenv=f"{o.env}={v}\n"))
            out.append(Case(f"{o.env}='' (.env)", (), f"{o.env} in ", dotenv=f"{o.env}=\n"))
            if o.path:
                home_unset = (o.env, "~/x"), ("HOME", "")
                out.append(Case(f"{o.env}='~/x' (env, HOME unset)", (), from_env, env=home_unset))
    by_name = {o.name: o for o in options}
    for o in options:
        for other in o.conflicts:
            both, pair = (*given(o), *given(by_name[other])), f"{o.name} and {other}"
            why = f"{pair} cannot be given together: {o.conflicts_why}"
            out.append(Case(f"{o.name} with {other}", both, pair, line=why))
        for other in o.needs:
            need = f"{o.name} needs {other}"
            out.append(Case(f"{o.name} without {other}", given(o), need, line=f"{need}: {o.needs_why}"))
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

    def snapshot() -> set[str]:
        """docker_state, and what a call that bypasses tool_bin's docker (an absolute path) or gcloud
        would leave: an image named hfgpu-sweep in the engine, a file in the Docker client's config
        (gcloud auth configure-docker), a gcloud log (every gcloud command writes one)."""
        images = subprocess.run([DOCKER, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
                                capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        files = [p for key in ("DOCKER_CONFIG", "CLOUDSDK_CONFIG") for p in Path(env[key]).rglob("*")]
        return docker_state() | {i for i in images if "hfgpu-sweep" in i} | {f"file {p}" for p in files}

    return Sweep("build_and_push", env, dotenv=dotenv, mutations=fake.mutations, snapshot=snapshot)


def sweep_create_instance(fake: FakeGcp, tmp: Path) -> Sweep:
    # PROJECT in .env: no gcloud call before validation. With the repository there, a case that
    # wrongly passed would go on to make the service account: a mutation the sweep sees.
    repo = "projects/my-project/locations/us-east4/repositories/gpu-transformers"
    fake.repositories[repo] = {"name": repo, "format": "DOCKER"}
    env = script_env(fake, tmp, tool_bin(tmp))
    dotenv = "PROJECT=my-project\nVM_NAME=hfgpu-sweep\n"
    return Sweep("create_instance", env, dotenv=dotenv, mutations=fake.mutations)


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


def sweep_bake_vm_image(fake: FakeGcp, tmp: Path) -> Sweep:
    # The image must be on the engine (the family is named after its layers): the test base image.
    # PROJECT in .env: no gcloud call before validation; a case that wrongly passed would create the
    # bake VM: a mutation the sweep sees.
    env = script_env(fake, tmp, tool_bin(tmp))
    dotenv = "PROJECT=my-project\nCONTAINER_NAME=hfgpu-test-base:bookworm\n"
    return Sweep("bake_vm_image", env, dotenv=dotenv, mutations=fake.mutations, snapshot=docker_state)


SWEEPS = {
    "build_and_push": sweep_build_and_push,
    "create_instance": sweep_create_instance,
    "launch_training": sweep_launch_training,
    "submit_vertex_job": sweep_submit_vertex_job,
    "bake_vm_image": sweep_bake_vm_image,
}


def repo_state() -> tuple[str, list[str], list[str]]:
    """The repository's files as git sees them, its top level and ./volume (a script might write
    .env, volume/ or another file git ignores there instead of the working folder)."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    volume = ROOT / "volume"
    top = sorted(n for n in os.listdir(ROOT) if not re.fullmatch(r"\.\w+_cache|__pycache__", n))
    return status, top, sorted(os.listdir(volume)) if volume.is_dir() else []


def run_case(sweep: Sweep, case: Case, tmp: Path) -> subprocess.CompletedProcess:
    work = tmp / "work" / str(abs(hash(case.id)))
    home, tmpdir = work / "home", work / "tmp"
    home.mkdir(parents=True)
    tmpdir.mkdir()
    env = {**sweep.env, "HOME": str(home), "TMPDIR": str(tmpdir), **dict(case.env)}
    baseline = sweep.dotenv if sweep.dotenv.endswith("\n") or not sweep.dotenv else f"{sweep.dotenv}\n"
    (work / "sweep.env").write_text(baseline + case.dotenv)
    env["CONFIG_FILE"] = str(work / "sweep.env")
    proc = subprocess.run(
        [str(ROOT / f"{sweep.script}.sh"), *sweep.args, *case.args],
        env=env, cwd=work, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    kept = {work / "sweep.env", home, tmpdir}
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p not in kept)
    proc.left = left  # type: ignore[attr-defined]
    proc.work = work  # type: ignore[attr-defined]
    return proc


def origin_of(sweep: Sweep, case: Case, proc: subprocess.CompletedProcess) -> str:
    """What the error line must name: a .env case's origin ends with its file and line."""
    if not case.dotenv:
        return case.origin
    return f"{case.origin}{proc.work}/sweep.env:{len(sweep.dotenv.splitlines()) + 1}"  # type: ignore[attr-defined]


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
    origin = origin_of(sweep, case, proc)
    # Where the line says what is wrong: right after "error: ", or in parentheses after the value;
    # not somewhere in the fix ("e.g. --location us-east4").
    if not re.search(rf"(error: |\(){re.escape(origin)}[ ):;,]", line):
        out.append(f"does not name {origin!r}")
    if not FIX_RE.search(line):
        out.append("names no fix")
    if case.line and line != f"{sweep.script}.sh: error: {case.line}":
        out.append(f"is not {case.line!r} (the declared reason and fix)")
    if proc.stdout:
        out.append(f"printed on stdout {proc.stdout[:100]!r}")
    if proc.left:  # type: ignore[attr-defined]
        out.append(f"left files {proc.left}")  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("script", SWEEPS)
def test_every_option_refuses_every_hostile_value_in_one_line_and_changes_nothing(script, fake, tmp_path):
    sweep = SWEEPS[script](fake, tmp_path)
    options = table(script)
    assert options, f"lib/options/{script}.sh declares no option"
    before, mutated, repo = sweep.snapshot(), len(sweep.mutations()), repo_state()
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
    assert sweep.snapshot() == before, "a case made an image tag or a container, or ran docker or gcloud"
    assert repo_state() == repo, "a case left a file in the repository"
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
            kind, line = "need" if " without " in k else "conflict", proc.stderr.strip()
            rows.append(f"| {k} | {kind} | | 1 | {line.removeprefix(f'{script}.sh: error: ')} |")
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


def test_a_leading_tilde_user_is_that_users_home(fake, tmp_path):
    """`--opt=~USER/x` is USER's home folder followed by x, as the shell expands `~USER/x`."""
    sweep = sweep_build_and_push(fake, tmp_path)
    me = pwd.getpwuid(os.getuid())
    bundle = Path(os.path.relpath("/etc/ssl/certs/ca-certificates.crt", me.pw_dir))
    env = {**sweep.env, "HOME": str(tmp_path), "CONFIG_FILE": str(tmp_path / "no.env")}
    args = ["--no-push", "--dry-run", f"--ca-bundle=~{me.pw_name}/{bundle}"]
    proc = subprocess.run(
        [str(ROOT / "build_and_push.sh"), *args], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    build = next(shlex.split(line) for line in proc.stdout.splitlines() if " docker build " in line)
    assert "id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt" in build


@dataclass(frozen=True)
class LinkedBundle:
    """The host's CA bundle copied to FOLDER/ca.pem, a folder whose name BuildKit's --secret cannot
    carry, and TMP/link.pem linking to it; `run` gives build_and_push.sh --dry-run one of them."""

    folder: Path
    env: dict[str, str]

    def run(self, bundle: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(ROOT / "build_and_push.sh"), "--dry-run", f"--ca-bundle={bundle}"],
                              env=self.env, cwd=cwd, capture_output=True, text=True)  # fmt: skip


def linked_bundle(fake: FakeGcp, tmp_path: Path, folder_name: str) -> LinkedBundle:
    sweep = sweep_build_and_push(fake, tmp_path)
    folder = tmp_path / folder_name
    folder.mkdir()
    (folder / "ca.pem").write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text())
    (tmp_path / "link.pem").symlink_to(folder / "ca.pem")
    env = {**sweep.env, "HOME": str(tmp_path), "CONFIG_FILE": str(tmp_path / "no.env")}
    return LinkedBundle(folder, env)


def test_a_ca_bundle_whose_real_path_has_a_comma_is_refused_before_anything(fake, tmp_path):
    """BuildKit's --secret gets the bundle's resolved path: a relative path from a folder whose name
    has a comma (or a link into one) is refused with the checks, not by BuildKit after the
    repository was created."""
    linked = linked_bundle(fake, tmp_path, "certs, corp")
    for cwd, bundle in ((linked.folder, "ca.pem"), (tmp_path, "link.pem")):
        proc = linked.run(bundle, cwd)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        assert proc.stderr.splitlines() == [
            f"build_and_push.sh: error: invalid CA bundle '{bundle}' (--ca-bundle): the path"
            f" ('{linked.folder}/ca.pem') has a comma or a double quote, which BuildKit's --secret cannot"
            " carry; copy the bundle to a path without one"
        ]


def test_a_ca_bundle_whose_real_path_has_a_line_break_is_refused(fake, tmp_path):
    """The same for a link into a folder whose name holds a newline."""
    proc = linked_bundle(fake, tmp_path, "certs\ncorp").run("link.pem", tmp_path)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr.splitlines() == [
        "build_and_push.sh: error: invalid CA bundle 'link.pem' (--ca-bundle): its real path has a line"
        " break; copy the bundle to a plain path"
    ]


VERSIONS = [("1.0.0+local\n", "invalid tag '1.0.0+local' ("), ("\n", "")]


@pytest.mark.parametrize(("version", "problem"), VERSIONS)
def test_the_tag_from_the_version_file_is_checked_like_any_value(version, problem, fake, tmp_path):
    """TAG's default comes from VERSION, a file anyone may edit: a value docker refuses ("+" is
    semver's, not docker's) or an empty file is one line naming the file, before the repository
    is created (it used to fail in docker build, after)."""
    sweep = sweep_build_and_push(fake, tmp_path)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "build_and_push.sh", checkout)
    shutil.copytree(ROOT / "lib", checkout / "lib")
    (checkout / "VERSION").write_text(version)
    env = {**sweep.env, "HOME": str(tmp_path), "CONFIG_FILE": str(tmp_path / "no.env")}
    proc = subprocess.run([str(checkout / "build_and_push.sh"), "--dry-run"],
                          env=env, cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    origin = f"TAG from {checkout}/VERSION"
    line = f"build_and_push.sh: error: {problem}{origin}{')' if problem else ' is empty'}"
    assert (proc.returncode, proc.stdout) == (1, ""), proc.stdout
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(line), proc.stderr


@pytest.mark.parametrize("keep", ["08", "010", "0000"])
def test_a_number_is_stored_as_the_decimal_it_was_checked_as(keep, fake, tmp_path):
    """`--keep=08` is 8 (flags.sh: numbers are decimal): never bash's octal, which fails on 08 and
    takes 010 for 8, and never a JSON number with a leading zero in the cleanup policy."""
    sweep = sweep_build_and_push(fake, tmp_path)
    env = {**sweep.env, "HOME": str(tmp_path), "CONFIG_FILE": str(tmp_path / "no.env")}
    proc = subprocess.run([str(ROOT / "build_and_push.sh"), "--dry-run", f"--keep={keep}"],
                          env=env, cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr
    policy = "set-cleanup-policies" in proc.stdout
    assert policy == (int(keep) > 0), proc.stdout
    if policy:
        assert f'"keepCount": {int(keep)}}}' in proc.stdout, proc.stdout


def test_an_env_backed_number_is_stored_in_decimal_too():
    """The same for a number from the environment (a table with an int option backed by a name)."""
    script = (
        "set -euo pipefail; for f in common flags gcp options; do source lib/$f.sh; done;"
        " opt --n type=int:0:100 var=N; opt --tag type=int:0:100 env=TAG;"
        ' config_init; opt_parse --n=08; opt_check_config; printf "%s %s" "$N" "$TAG"'
    )
    env = {**os.environ, "TAG": "010", "CONFIG_FILE": "/dev/null"}
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "8 10", "")


# A table (lines of `opt`) and its one error line: a conflict or need must say why and what to do.
WHY_DECLARED = "option --a: conflicts=--b needs conflicts-why='REASON; FIX', the reason and the fix its"
TABLES = [
    ("opt --a type=switch var=A conflicts=--b", WHY_DECLARED),
    ("opt --a type=switch var=A needs=--b", WHY_DECLARED.replace("conflicts", "needs")),
    ("opt --a type=switch var=A conflicts=--b conflicts-why=because", "option --a: conflicts-why= must be"),
    ("opt --a type=switch var=A needs=--b needs-why=$'x; y\\nz'", "needs-why= must be 'REASON; FIX' on one"),
    ("opt --a type=switch var=A needs-why='x; y'", "option --a: needs-why= without needs=; drop it"),
    # loads; a conflict names each option as it was given (an old spelling), with the reason and fix
    ("opt --a type=switch var=A old=--aa conflicts=--b conflicts-why='r; f'; opt --b type=switch var=B",
     "--aa and --b cannot be given together: r; f"),
]  # fmt: skip


@pytest.mark.parametrize(("declared", "line"), TABLES, ids=["conflict", "need", "no-fix", "two-lines",
                                                        "why-alone", "old-spelling"])  # fmt: skip
def test_a_conflict_or_need_says_why_or_the_table_does_not_load(declared, line):
    """A table whose conflict or need lacks its 'REASON; FIX' stops the script in one line when it is
    read, so that no error line can lose it; a conflict's line names each option as it was given."""
    script = (
        "set -euo pipefail; for f in common flags gcp options; do source lib/$f.sh; done;"
        f" {declared}; config_init; opt_parse --aa --b; opt_check_config"
    )
    env = {**os.environ, "CONFIG_FILE": "/dev/null"}
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("bash: error: "), proc.stderr
    assert line in proc.stderr, proc.stderr


# .env as dotenv reads it: (the file's text, TAG and its origin, or the start of the one error line).
# F is the file.
EMPTY = "is empty; give a value, or remove the line for the default"
DOTENV_CASES = [
    ("TAG=v1 # the release", "v1 | TAG in F:1"),
    ('TAG="v1"  # the release', "v1 | TAG in F:1"),
    ("TAG='v1'  ", "v1 | TAG in F:1"),
    ("TAG=  v1  ", "v1 | TAG in F:1"),
    ("TAG=v1#x", "v1#x | TAG in F:1"),
    ('TAG="a # b"', "a # b | TAG in F:1"),
    ("\ufeffTAG=v1\r\n", "v1 | TAG in F:1"),
    ("export TAG=v1\r\nTAG=v2\r\n", "v2 | TAG in F:2"),
    ("TAG=\nTAG=v2", "v2 | TAG in F:2"),
    ("TAG=v2\nTAG=", f"error: TAG in F:2 {EMPTY}"),
    ('TAG=""', f"error: TAG in F:1 {EMPTY}"),
    ("HF_TOKEN=", f"{(ROOT / 'VERSION').read_text().strip()} | TAG from {ROOT}/VERSION"),
    ("TAG = v1", "error: F:1: a blank before '='; write NAME=VALUE with nothing between the name and the"),
    ('TAG="v1"x', "error: F:1: the value of TAG has text after its closing quote; put the whole value"),
    ("TAG='v1", "error: F:1: the value of TAG opens a quote it does not close; close it on the same line"),
]
VM_NAME_CASES = [
    ("VM_NAME=new\nINSTANCE_NAME=old", "new | VM_NAME in F:1"),
    ("INSTANCE_NAME=old\nVM_NAME=new", "new | VM_NAME in F:2"),
    ("INSTANCE_NAME=old", "old | INSTANCE_NAME in F:1"),
    ("INSTANCE_NAME=", f"error: INSTANCE_NAME in F:1 {EMPTY}"),
]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [("TAG", t, e) for t, e in DOTENV_CASES] + [("VM_NAME", t, e) for t, e in VM_NAME_CASES],
)
def test_dotenv_reads_as_dotenv(name, text, expected, tmp_path):
    """Blanks and ` # comments` around an unquoted value, blanks and a comment after a closing quote,
    a byte-order mark, CRLF; the last duplicate wins (VM_NAME over INSTANCE_NAME, as in the
    environment) and the origin names the line's own NAME; an empty value is an error, never the
    default; an error names the file and line, and what to write."""
    (tmp_path / "f.env").write_text(text if text.endswith("\n") else f"{text}\n")
    script = f'source lib/common.sh; config_init; printf "%s | %s" "${name}" "$(config_origin {name})"'
    env = {k: v for k, v in os.environ.items() if k not in ("TAG", "VM_NAME", "INSTANCE_NAME")}
    env["CONFIG_FILE"] = str(tmp_path / "f.env")
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    out = (proc.stdout or proc.stderr.removeprefix("bash: ")).strip().replace(str(tmp_path / "f.env"), "F")
    assert out == expected if proc.returncode == 0 else out.startswith(expected), out
    assert len(proc.stderr.splitlines()) == (proc.returncode != 0)
    assert proc.returncode == (1 if expected.startswith("error:") else 0)


@pytest.mark.parametrize("args", [["--help"], ["--dry-run", "-h"], ["--tag", "v1", "--help"]])
def test_help_works_whatever_the_env_file_and_environment_hold(args, fake, tmp_path):
    """--help is read before the configuration: a .env line that does not parse, or a bad value in
    the environment, gives its error on a run, never instead of the help."""
    sweep = sweep_build_and_push(fake, tmp_path)
    (tmp_path / "bad.env").write_text("TAG=\nREPO_NAME = x\n")
    env = {**sweep.env, "HOME": str(tmp_path), "CONFIG_FILE": str(tmp_path / "bad.env"), "LOCATION": "mars"}
    proc = subprocess.run([str(ROOT / "build_and_push.sh"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("Summary: build the training image") and "\nOptions:\n" in proc.stdout


def test_an_env_file_whose_name_has_a_newline_is_named_on_one_line(tmp_path):
    """CONFIG_FILE's name is part of every .env origin: quoted when it would break the line."""
    path = tmp_path / "a\nb.env"
    path.write_text("TAG=\n")
    env = {**os.environ, "CONFIG_FILE": str(path)}
    proc = subprocess.run(["bash", "-c", "source lib/common.sh; config_init"], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"bash: error: TAG in $'{tmp_path}/a\\nb.env':1 {EMPTY}"]


@pytest.mark.parametrize("script", ["launch_training", "submit_vertex_job"])
def test_a_refused_env_value_is_never_echoed(script, fake, tmp_path):
    """`--env 'BAD NAME=TOKEN'` (a typo in the name of a variable that holds a token) is refused
    without printing the value: it may be a secret."""
    sweep = SWEEPS[script](fake, tmp_path)
    assert "--env" in {o.name for o in table(script)}
    for bad in (f"BAD NAME={CANARY}", f"1X={CANARY}", f"A-B={CANARY}"):
        proc = run_case(sweep, Case(f"--env {bad}", ("--env", bad), "--env"), tmp_path)
        assert proc.returncode == 1 and "--env" in proc.stderr, proc.stderr
        assert CANARY not in proc.stdout + proc.stderr, f"--env {bad!r} echoed the value"
