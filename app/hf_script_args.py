"""Read a training script's arguments the way Hugging Face's HfArgumentParser reads them.

launch_training.sh runs this in the image (where transformers is) to learn what an
unmodified Trainer script will do with its arguments: where its outputs go, how it saves,
whether it was told to resume. It builds `HfArgumentParser(TrainingArguments)` and reads:
- a single `.json`, `.yaml` or `.yml` argument as a config file (the form the examples
  accept: `run_clm.py args.json`), keys being TrainingArguments' field names;
- otherwise the command line, with `parse_known_args`: dash and underscore spellings
  (`--output-dir`, `--output_dir`), `--flag=value`, and the script's own extra flags.
Nothing here constructs TrainingArguments (its __post_init__ looks at devices), so any
argument list can be read on any machine.

Usage:
  python3 hf_script_args.py [--format json|lines] -- SCRIPT_ARGS...
      What the script will read: a JSON object (or KEY=VALUE lines), exit 0; an
      argument list HfArgumentParser would refuse is reported in "problem".
  python3 hf_script_args.py --resume-config DEST --checkpoint DIR -- CONFIG
      Write a private copy (0600) of the JSON/YAML file CONFIG at DEST with
      resume_from_checkpoint set to DIR, in CONFIG's own format.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
# The TrainingArguments fields the launcher needs (output folder, saving, resuming).
FIELDS = (
    "output_dir",
    "logging_dir",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "resume_from_checkpoint",
    "enable_jit_checkpoint",
    "max_steps",
)
# The FIELDS that hold where outputs go.
PATH_FIELDS = ("output_dir", "logging_dir")
# The parser's default for the FIELDS while reading a command line: a value still UNSET was not given.
UNSET = object()
# TrainingArguments turns output_dir=None into this folder (transformers 5.x).
DEFAULT_OUTPUT_DIR = "trainer_output"


@dataclass
class Options:
    format: str = "json"
    resume_config: str | None = None
    checkpoint: str | None = None
    args: list[str] = field(default_factory=list)


class ParseError(Exception):
    """HfArgumentParser would stop the script with this message."""


def training_fields() -> dict[str, dataclasses.Field]:
    from transformers import TrainingArguments

    return {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_form(args: list[str]) -> str | None:
    """'json' or 'yaml' when ARGS is one config file, as the examples test it (len(sys.argv) == 2)."""
    if len(args) != 1:
        return None
    return CONFIG_SUFFIXES.get(Path(args[0]).suffix.lower())


def load_config(path: str, form: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if form == "json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ParseError(f"{path} must hold a mapping of argument names to values")
    return data


def read_config(path: str, form: str) -> tuple[dict[str, Any], str | None]:
    """The TrainingArguments values in config file PATH, and a problem HfArgumentParser would stop on."""
    fields = training_fields()
    try:
        data = load_config(path, form)
    except FileNotFoundError:
        return {}, f"config file {path} does not exist in the container"
    except ParseError as err:
        return {}, str(err)
    except Exception as err:  # OSError, json's ValueError, yaml.YAMLError
        return {}, f"config file {path} cannot be read as {form.upper()}: {one_line(err)}"
    problem = None
    dashed = sorted(k for k in data if isinstance(k, str) and "-" in k and k.replace("-", "_") in fields)
    if dashed:
        key = dashed[0]
        problem = (
            f"{path}: key '{key}' is not read by HfArgumentParser (a config file uses field names); "
            f"write {key.replace('-', '_')}"
        )
    values = {name: data[name] for name in FIELDS if name in data}
    return values, problem


def read_command_line(args: list[str]) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """TrainingArguments values on the command line (parse_known_args), a problem, and the style used."""
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser(TrainingArguments, add_help=False)  # the script's --help is not ours

    def error(message: str):
        raise ParseError(message)

    parser.error = error  # argparse would print usage and exit 2
    known = set(training_fields())
    given: set[str] = set()
    dashes = underscores = equals = 0
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            continue
        name, eq, _ = arg[2:].partition("=")
        flat = name.replace("-", "_")
        if flat not in known:
            continue
        given.add(flat)
        equals += bool(eq)
        if "-" in name:
            dashes += 1
        elif "_" in name:
            underscores += 1
    style = {"spelling": "dash" if dashes > underscores else "underscore", "equals": equals > 0}
    # What was given is what no longer holds the placeholder: argparse also takes an unambiguous
    # abbreviation (--output_d /tmp/x sets output_dir), which no list of exact names would see.
    parser.set_defaults(**{name: UNSET for name in FIELDS if name in known})
    try:
        namespace, _extra = parser.parse_known_args(args)
    except ParseError as err:
        return {}, f"HfArgumentParser refuses these arguments: {one_line(err)}", style
    # An abbreviation counts for the output folders only (checked, so better seen than missed): the
    # script's own parser may hold an exact --resume_from of its own, which the helper alone would
    # read as --resume_from_checkpoint.
    values = {
        name: value
        for name in FIELDS
        if (value := getattr(namespace, name, UNSET)) is not UNSET and (name in given or name in PATH_FIELDS)
    }
    return values, None, style


def effective(values: dict[str, Any]) -> dict[str, Any]:
    """VALUES completed with TrainingArguments' defaults (output_dir None -> trainer_output)."""
    fields = training_fields()
    out = {}
    for name in FIELDS:
        value = values[name] if name in values else default_of(fields[name]) if name in fields else None
        if hasattr(value, "value"):  # an Enum (IntervalStrategy.STEPS)
            value = value.value
        out[name] = value
    out["output_dir_given"] = values.get("output_dir") is not None
    if out["output_dir"] is None:
        out["output_dir"] = DEFAULT_OUTPUT_DIR
    # Where the script's files really land: symlinks followed, from the run's workdir (/volume).
    out["output_dir_real"] = os.path.realpath(os.path.join(os.getcwd(), str(out["output_dir"])))
    return out


def describe(args: list[str]) -> dict[str, Any]:
    form = config_form(args)
    if form:
        values, problem = read_config(args[0], form)
        style = {"spelling": "underscore", "equals": False}
    else:
        values, problem, style = read_command_line(args)
    return {"form": form or "command-line", "config": args[0] if form else None, **effective(values),
            **style, "problem": problem}  # fmt: skip


def write_resume_config(source: str, dest: str, checkpoint: str) -> None:
    form = config_form([source])
    if not form:
        raise ParseError(f"{source} is not a .json or .yaml config file")
    data = load_config(source, form)
    data["resume_from_checkpoint"] = checkpoint
    path = Path(dest)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if form == "json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def as_lines(facts: dict[str, Any]) -> str:
    """KEY=VALUE lines (lib/kv.sh reads them): None is empty, booleans are true/false."""
    lines = []
    for key, value in facts.items():
        if value is None:
            value = ""
        elif isinstance(value, bool):
            value = "true" if value else "false"
        text = str(value).replace("\n", " ")
        lines.append(f"{key}={text}")
    return "\n".join(lines) + "\n"


def parse_options(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="hf_script_args.py", description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=["json", "lines"], default="json")
    parser.add_argument("--resume-config", metavar="DEST")
    parser.add_argument("--checkpoint", metavar="DIR")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    if ns.resume_config and not ns.checkpoint:
        parser.error("--resume-config needs --checkpoint DIR")
    return Options(format=ns.format, resume_config=ns.resume_config, checkpoint=ns.checkpoint, args=args)


def main(argv: list[str]) -> int:
    options = parse_options(argv)
    if options.resume_config:
        try:
            source = options.args[0] if options.args else ""
            write_resume_config(source, options.resume_config, options.checkpoint)
        except (OSError, ValueError, ParseError) as err:
            print(f"hf_script_args.py: error: {one_line(err)}", file=sys.stderr)
            return 2
        return 0
    facts = describe(options.args)
    sys.stdout.write(json.dumps(facts) + "\n" if options.format == "json" else as_lines(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
