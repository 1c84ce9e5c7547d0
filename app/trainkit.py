"""What the training programs share: arguments, speed defaults, safe resume, preemption.

The image puts /app on PYTHONPATH, so any script can `import trainkit`, including one
dropped into the mounted volume. A script run outside the image needs a copy of this
file beside it (or on its PYTHONPATH).

What a program gets from here:
- `parse(...)`: HfArgumentParser over its dataclasses plus TrainingArguments; a single
  .json/.yaml argument is a config file. Our defaults differ from Trainer's: do_train and
  do_eval are on, output_dir is $OUTPUT_ROOT/<model name>, and the speed defaults below.
- Speed defaults, each a normal flag to switch off: bf16 on GPUs that support it (fp16
  otherwise), TF32, fused AdamW, data-loader workers with pinned memory; fp32 on CPU.
- `resume_checkpoint(...)`: the newest *complete* checkpoint in output_dir. A checkpoint
  is complete when its marker file (COMPLETE_MARKER) exists; the marker is written last,
  after every rank has finished its part of the save. Incomplete ones (a kill mid-save)
  are skipped and deleted before training starts. Nothing is ever renamed, so the same
  protocol works on a bucket mount (/gcs), where a folder rename is a non-atomic copy.
  Rotation (--save_total_limit) counts complete checkpoints only.
- Where things go: checkpoints in output_dir; the final model and its results in
  --model_dir (default: output_dir); TensorBoard logs in TENSORBOARD_LOGGING_DIR (default:
  output_dir/runs). On Vertex AI, AIP_CHECKPOINT_DIR, AIP_MODEL_DIR and
  AIP_TENSORBOARD_LOG_DIR (gs://B/P, read as /gcs/B/P) are the defaults for these three.
- Checkpoints by wall time: --save_every_minutes M (default 15 on a GPU when neither
  --save_steps nor --save_strategy is given; step-based saving works as in Trainer).
- A finished run stays finished: a rerun trains 0 steps and rewrites nothing (it only
  redoes a missing final part, e.g. the evaluation).
- `Preemption` (a TrainerCallback): SIGTERM/SIGINT during training saves a checkpoint at
  the end of the current step, stops, and the program exits EXIT_PREEMPTED (75) without
  writing final results. Outside training a signal exits 75 at once (nothing to save).
  Once the results are written, stop signals are ignored: the run exits 0.
- `UserError` + `cli(...)`: a user mistake ends as one line `error: ...` on stderr, exit 2.
- Hook points for extensions (modules that import trainkit; trainkit knows only their names
  and calls only their `plug_in()`): `CALLBACKS`, extra TrainerCallback classes (or factories
  taking the trainer) that `train_and_evaluate` adds to every Trainer, after the preemption
  callback; `ON_FINISH`, callables given the trainer once the final model and results are
  written; `save_total_limit(trainer)`; `COMPLETE_MARKER`. `EXTENSIONS` names the modules
  that `cli` imports (calling their `plug_in()`) when their environment variable is set, e.g.
  app/bucket_checkpoints.py for CHECKPOINT_BUCKET.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.distributed as dist
import transformers
from transformers import HfArgumentParser, TrainerCallback, TrainerState, TrainingArguments

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75
COMPLETE_MARKER = "checkpoint-complete.json"
# Written in model_dir after the final model, train results and state: training is over.
FINISHED_MARKER = "training-complete.json"
# Vertex AI's output locations, gs://BUCKET/PATH, which Cloud Storage FUSE mounts at /gcs/BUCKET/PATH
# (https://cloud.google.com/vertex-ai/docs/training/code-requirements#environment-variables).
VERTEX_DIRS = {
    "checkpoints": "AIP_CHECKPOINT_DIR",
    "model": "AIP_MODEL_DIR",
    "logs": "AIP_TENSORBOARD_LOG_DIR",
}
# Set by a launcher (e.g. the image's `train` under torchrun) to learn that the run was
# preempted even when torchrun's own exit status hides the workers' 75.
STATUS_FILE_ENV = "TRAINKIT_STATUS_FILE"

log = logging.getLogger("trainkit")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class UserError(Exception):
    """A mistake the user can fix: printed as one line, no traceback."""


class Preempted(Exception):
    """A stop signal arrived outside the training loop."""


@dataclasses.dataclass
class ModelArguments:
    """Model options both programs share; each program sets its default model and adds its own."""

    model_name_or_path: str = dataclasses.field(
        default="", metadata={"help": "Hub model id or a local folder."}
    )
    tokenizer_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Tokenizer, if not the model's."}
    )
    attn_implementation: str = dataclasses.field(
        default="sdpa", metadata={"help": "sdpa (default), eager, ..."}
    )


@dataclasses.dataclass
class DataArguments:
    """Data options both programs share; each program adds its own and sets the defaults."""

    dataset_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub dataset id. Ignored when --train_file is given."}
    )
    dataset_config_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub dataset config."}
    )
    train_file: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Training data: .csv, .json, .jsonl, .parquet (or .txt: one text per line)."},
    )
    validation_file: str | None = dataclasses.field(
        default=None, metadata={"help": "Validation data, same format as --train_file."}
    )
    text_column: str = dataclasses.field(default="text", metadata={"help": "Column holding the text."})
    validation_split_percentage: int = dataclasses.field(
        default=5,
        metadata={"help": "Percent of train held out for validation when there is no validation split."},
    )
    max_train_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "Use only this many training examples (quick runs)."}
    )
    max_eval_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "Use only this many validation examples."}
    )
    preprocessing_num_workers: int | None = dataclasses.field(
        default=None, metadata={"help": "Processes for tokenization (default: one)."}
    )


@dataclasses.dataclass
class RunArguments:
    """trainkit's own options, added to every program's parser (kept on training_args.trainkit)."""

    model_dir: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "The final model and its results (default: output_dir; on Vertex AI: AIP_MODEL_DIR)."
        },
    )
    save_every_minutes: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Save a checkpoint every M minutes of training (default: 15 on a GPU unless --save_steps "
            "or --save_strategy is given; 0 = off: Trainer's step-based saving)."
        },
    )


# ---------------------------------------------------------------- arguments


def speed_defaults() -> dict[str, Any]:
    """Our TrainingArguments defaults for this machine: fast on GPU, plain fp32 on CPU."""
    # use_cpu on a machine without GPUs: accelerate runs DDP over CPU (gloo) only when asked.
    defaults: dict[str, Any] = {"bf16": False, "fp16": False, "dataloader_pin_memory": False, "use_cpu": True}
    # Trainer's default (True) checks every step's loss for nan/inf, which reads the loss back to
    # the host: one GPU sync per step (transformers issue #33693). Off: the logged loss then
    # includes a nan/inf step instead of skipping it, which is what a user wants to see anyway.
    defaults["logging_nan_inf_filter"] = False
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        defaults.update(
            use_cpu=False,
            bf16=bf16,
            fp16=not bf16,
            tf32=torch.cuda.get_device_capability()[0] >= 8,
            optim="adamw_torch_fused",
            dataloader_num_workers=max(1, min(4, (os.cpu_count() or 2) // procs - 1)),
            dataloader_pin_memory=True,
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Trainer's default (True) costs an extra autograd pass per step; our models use every parameter.
        defaults["ddp_find_unused_parameters"] = False
    return defaults


def parse(
    dataclass_types: Sequence[type],
    argv: Sequence[str],
    gpu_defaults: dict[str, Any] | None = None,
    **program_defaults: Any,
) -> tuple:
    """Parse ARGV (or a single .json/.yaml config file) into the dataclasses + TrainingArguments.

    PROGRAM_DEFAULTS (e.g. train_sampling_strategy), GPU_DEFAULTS (on a GPU machine only, e.g.
    a larger per-device batch) and the speed defaults apply only where the user said nothing:
    naming --bf16 or --fp16 turns off our choice of both. trainkit's RunArguments are parsed
    too and kept on the returned TrainingArguments as `.trainkit`.
    """
    defaults: dict[str, Any] = {"do_train": True, "do_eval": True, "output_dir": ""}
    defaults.update(speed_defaults())
    if torch.cuda.is_available():
        defaults.update(gpu_defaults or {})
    defaults.update(program_defaults)
    try:
        import tensorboard  # noqa: F401

        defaults["report_to"] = ["tensorboard"]
    except ImportError:
        pass
    parser = HfArgumentParser([*dataclass_types, RunArguments, TrainingArguments])
    argv = list(argv)
    config = (
        _read_config(argv[0]) if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")) else None
    )
    given = set(config) if config is not None else {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    if given & {"bf16", "fp16"}:
        defaults.pop("bf16", None)
        defaults.pop("fp16", None)
    # A checkpoint every 500 steps is seconds of work for BERT on an H100-class GPU: on a GPU,
    # save by wall time instead (Preemption's timer), unless the user asked for step-based saving.
    minutes = _given_value(argv, config, "save_every_minutes")
    timed = _positive(minutes) if minutes is not None else torch.cuda.is_available()
    if timed and not given & {"save_steps", "save_strategy"}:
        defaults["save_strategy"] = "no"  # the timer saves on time and at the end
        defaults["save_every_minutes"] = 15.0
    try:
        if config is not None:
            parsed = parser.parse_dict({**defaults, **config})
        else:
            parser.set_defaults(**defaults)
            parsed = parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, TypeError) as err:  # raised by the dataclasses' own checks
        raise UserError(str(err).strip().splitlines()[0]) from None
    run_args = parsed[-2]
    parsed = (*parsed[:-2], parsed[-1])
    model_args, training_args = parsed[0], parsed[-1]
    training_args.trainkit = run_args
    if run_args.save_every_minutes is not None and run_args.save_every_minutes < 0:
        raise UserError(f"--save_every_minutes must be 0 (off) or more, got {run_args.save_every_minutes}")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise UserError(
            f"started as one of {launched} processes (WORLD_SIZE) "
            f"but Trainer sees {training_args.world_size}; "
            "on a machine without GPUs keep --use_cpu True"
        )
    if not training_args.output_dir:
        root = os.environ.get("OUTPUT_ROOT", "/volume")
        default = os.path.join(root, model_dir_name(model_args.model_name_or_path))
        training_args.output_dir = vertex_dir("checkpoints") or default
    run_args.model_dir = run_args.model_dir or vertex_dir("model") or training_args.output_dir
    logs = vertex_dir("logs")
    if logs and not os.environ.get("TENSORBOARD_LOGGING_DIR"):
        os.environ["TENSORBOARD_LOGGING_DIR"] = logs  # read by transformers' TensorBoardCallback
    return parsed


def _given_value(argv: list[str], config: dict | None, name: str) -> Any:
    """The value the user gave for --NAME (flag or config file), None when not given."""
    if config is not None:
        return config.get(name)
    for i, arg in enumerate(argv):
        if arg == f"--{name}":
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False  # the parser reports a bad number


def vertex_dir(kind: str) -> str | None:
    """The folder Vertex AI gives for KIND (checkpoints, model, logs), as its /gcs path; None if unset."""
    value = os.environ.get(VERTEX_DIRS[kind], "").rstrip("/")
    if not value:
        return None
    return "/gcs/" + value[len("gs://") :] if value.startswith("gs://") else value


def _read_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise UserError(f"config file {path} does not exist")
    text = Path(path).read_text(encoding="utf-8")
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:
        raise UserError(f"config file {path} is not valid: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of argument names to values")
    return data


def model_dir_name(model_name_or_path: str) -> str:
    """'google-bert/bert-base-uncased' -> 'bert-base-uncased' (the output folder's name)."""
    return os.path.basename(os.path.normpath(model_name_or_path)) or "model"


def cli(main: Callable[..., int], parse_args: Callable[[Sequence[str]], tuple], argv: Sequence[str]) -> int:
    """Run MAIN on the parsed ARGV; user mistakes and stop signals become exit codes."""
    install_signal_handlers()
    try:
        plug_in_extensions()  # e.g. CHECKPOINT_BUCKET: one line if bad or unreachable; then mirrored
        return main(*parse_args(argv))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as err:
        log.warning("%s; exiting %d (rerun to continue)", err, EXIT_PREEMPTED)
        _write_status("preempted")
        return EXIT_PREEMPTED
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Destroy the process group before the interpreter exits (as torch.distributed asks): left to
    exit-time teardown, a gloo worker thread still joinable aborts the rank ("terminate called
    without an active exception", SIGABRT) now and then, under torchrun on a loaded CPU machine."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def setup_logging(training_args) -> None:
    """INFO logs on the main process, warnings only on the others."""
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    transformers.utils.logging.set_verbosity_warning()  # INFO would print every config it loads
    transformers.utils.logging.get_logger("transformers.trainer").setLevel(level)
    datasets.utils.logging.set_verbosity_warning()


# ---------------------------------------------------------------- inputs


def check_output_dir(path: str) -> None:
    """Fail early, in one line, when the output folder cannot be written.

    The probe's name is unique across machines: replicas in other containers may probe the same
    shared folder (a /gcs bucket mount) at once, and their processes often have the same pid.
    """
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(
            f"output_dir {path} is not writable by uid {os.getuid()} ({err.strerror}); "
            "mount a volume this user can write or pass --output_dir DIR"
        ) from None


def load_raw_datasets(data_args, seed: int, need_validation: bool):
    """Train/validation DatasetDict from local files or the Hub, validation carved when missing."""
    if data_args.train_file:
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        builders = set()
        for split, file in files.items():
            if not os.path.isfile(file):
                raise UserError(f"--{split}_file {file} does not exist")
            builders.add(_builder_for(file))
        if len(builders) > 1:
            raise UserError("--train_file and --validation_file must have the same format")
        what = ", ".join(files.values())
        load = lambda: datasets.load_dataset(builders.pop(), data_files=files)  # noqa: E731
    elif data_args.dataset_name:
        what = data_args.dataset_name + (
            f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else ""
        )
        load = lambda: datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)  # noqa: E731
    else:
        raise UserError("no data: pass --train_file FILE or --dataset_name NAME")
    try:
        raw = load()
    except Exception as err:
        if "corresponds to no data" in str(err):  # datasets' words for a file without rows
            raise UserError(f"dataset {what} has no training rows") from None
        hint = "" if data_args.train_file else _offline_hint()
        raise UserError(f"cannot load dataset {what}: {_first_line(err)}{hint}") from None
    if "train" not in raw or raw["train"].num_rows == 0:
        raise UserError(f"dataset {what} has no training rows")
    if "validation" not in raw and need_validation:
        pct = data_args.validation_split_percentage
        if not 0 < pct < 100 or raw["train"].num_rows < 2:
            raise UserError(
                "no validation data: pass --validation_file or --validation_split_percentage 1..99"
            )
        split = raw["train"].train_test_split(test_size=pct / 100, seed=seed)
        raw = datasets.DatasetDict(train=split["train"], validation=split["test"])
    if "validation" in raw and raw["validation"].num_rows == 0 and need_validation:
        raise UserError(f"dataset {what} has no validation rows")
    if data_args.max_train_samples:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, raw["train"].num_rows)))
    if data_args.max_eval_samples and "validation" in raw:
        raw["validation"] = raw["validation"].select(
            range(min(data_args.max_eval_samples, raw["validation"].num_rows))
        )
    return raw


def _builder_for(file: str) -> str:
    suffixes = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
    ext = Path(file).suffix.lower()
    if ext not in suffixes:
        raise UserError(f"{file}: unsupported format '{ext}'; use .csv, .json, .jsonl, .parquet or .txt")
    return suffixes[ext]


def require_columns(dataset, *columns: str) -> None:
    """One-line error naming the missing column and the ones that exist."""
    for column in columns:
        if column not in dataset.column_names:
            raise UserError(
                f"column '{column}' not found in the data; columns: {', '.join(dataset.column_names)} "
                "(choose with --text_column / --label_column)"
            )


def from_pretrained(loader, name: str, **kwargs):
    """LOADER.from_pretrained(NAME) with a one-line error for a missing path or an uncached Hub id."""
    if not os.path.exists(name) and (name.startswith(("/", ".", "~")) or name.count("/") > 1):
        raise UserError(f"model path {name} does not exist; pass --model_name_or_path DIR or a Hub model id")
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load {name}: {_first_line(err)}{_offline_hint()}") from None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        return (
            f" (HF_HUB_OFFLINE is set and it is not in the cache {home}: "
            "download it once with network, or use local files)"
        )
    return ""


# ---------------------------------------------------------------- outputs


def write_run_info(output_dir: str, *arg_objects: Any) -> None:
    """The resolved arguments (run_args.json) and exact versions (environment.json)."""
    resolved: dict[str, Any] = {"argv": sys.argv}
    for obj in arg_objects:
        resolved[type(obj).__name__] = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    packages = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "image_env": {k: os.environ.get(k) for k in ("CUDA_RUNTIME_VERSION", "MIN_NVIDIA_DRIVER")},
        "packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower())),
    }
    for name, data in (("run_args.json", resolved), ("environment.json", env)):
        Path(output_dir, name).write_text(json.dumps(data, indent=2, default=str) + "\n")


def fixed_batches(dataset, training_args):
    """Under --torch_compile, the training set cut to whole global batches.

    A last, smaller batch is one more shape for torch.compile to compile (a recompile every
    epoch end). Cutting the training set (fewer than one global batch of examples) keeps
    every training batch the same size; dataloader_drop_last would drop evaluation examples too.
    """
    if not training_args.torch_compile or dataset is None:
        return dataset
    batch = training_args.per_device_train_batch_size * max(1, training_args.world_size)
    usable = len(dataset) // batch * batch
    return dataset.select(range(usable)) if 0 < usable < len(dataset) else dataset


def tokenize_splits(raw, function, training_args, data_args, desc: str):
    """RAW's splits through FUNCTION (batched), their text columns dropped.

    Rank 0 goes first; the others then read its result from the datasets cache in HF_HOME
    (the volume), so a rerun does not tokenize again.
    """
    with training_args.main_process_first(desc=desc):
        return raw.map(
            function,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=raw["train"].column_names,
        )


def make_trainer(model, training_args, data, tokenizer, collator, **kwargs) -> transformers.Trainer:
    """A Trainer on DATA's train and validation splits (each only when it is asked for)."""
    return transformers.Trainer(
        model=model,
        args=training_args,
        train_dataset=fixed_batches(data["train"], training_args) if training_args.do_train else None,
        eval_dataset=data["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=collator,
        **kwargs,
    )


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def _write_status(status: str) -> None:
    path = os.environ.get(STATUS_FILE_ENV)
    if path and int(os.environ.get("RANK", "0")) == 0:
        try:
            Path(path).write_text(status + "\n")
        except OSError as err:
            log.warning("cannot write %s: %s", path, err)


# ---------------------------------------------------------------- checkpoints


def checkpoints(folder: str | Path) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) of every checkpoint-N folder in FOLDER, oldest first."""
    found = []
    for path in Path(folder).glob("checkpoint-*"):
        if (m := _CHECKPOINT_RE.match(path.name)) and path.is_dir():
            found.append((int(m.group(1)), path, (path / COMPLETE_MARKER).is_file()))
    return sorted(found)


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: --resume_from_checkpoint, else the newest complete one.

    Incomplete checkpoint folders (a save that never wrote its marker) are skipped, and the
    main process deletes them before training starts: nothing writes into them any more,
    and a later save of the same step must not find stale files there. Nothing is renamed.
    """
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not os.path.isdir(explicit):
            raise UserError(f"--resume_from_checkpoint {explicit} is not a folder")
        return explicit
    with training_args.main_process_first(local=not training_args.save_on_each_node, desc="checkpoint scan"):
        found = checkpoints(training_args.output_dir)
        complete = [path for _, path, done in found if done]
        if training_args.should_save:
            for _, path, done in found:
                if not done:
                    why = f"no {COMPLETE_MARKER}: its save was interrupted"
                    log.warning("%s is incomplete (%s); deleting it", path, why)
                    shutil.rmtree(path, ignore_errors=True)
    if not complete:
        return None
    log.info("resuming from %s (the newest complete checkpoint)", complete[-1])
    return str(complete[-1])


def rotate(output_dir: str, limit: int | None, keep: str | None = None) -> None:
    """Delete the oldest complete checkpoints beyond LIMIT; incomplete ones neither count nor go.

    KEEP (the best model's checkpoint) is never deleted. Deleting is not renaming: a
    checkpoint half-deleted by a kill has lost its marker first, so it reads as incomplete.
    """
    if not limit or limit < 1:
        return
    complete = [path for _, path, done in checkpoints(output_dir) if done]
    keep_path = Path(keep).resolve() if keep else None
    for path in complete[: max(0, len(complete) - limit)]:
        if keep_path is not None and path.resolve() == keep_path:
            continue
        (path / COMPLETE_MARKER).unlink(missing_ok=True)  # incomplete from here on
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- a finished run


def planned_steps(trainer) -> int:
    """The optimizer steps this run is set to take (Trainer's own arithmetic)."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    return trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]


def read_finished(model_dir: str) -> dict | None:
    try:
        return json.loads(Path(model_dir, FINISHED_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_step(path: str) -> int:
    try:
        return json.loads(Path(path, "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return -1


# ---------------------------------------------------------------- preemption

_stop = {"signal": None, "training": False}


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)


def ignore_stop_signals() -> None:
    """After the results are written a stop has nothing left to save: ignore it, exit 0.

    SIG_IGN, not a Python handler: at interpreter shutdown Python puts back the default
    action of every signal that has a Python handler (a SIGTERM during torch's teardown
    would then end the process with 143), but it leaves ignored signals ignored.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _on_signal(signum, _frame) -> None:
    name = signal.Signals(signum).name
    if _stop["signal"] is not None:
        log.warning("%s again: already stopping", name)
        return
    _stop["signal"] = name
    if not _stop["training"]:
        raise Preempted(f"{name} received outside training")
    log.warning(
        "%s received: saving a checkpoint at the end of this step, then exiting %d", name, EXIT_PREEMPTED
    )


# ---------------------------------------------------------------- hook points for extensions

# Extra callbacks for every Trainer that train_and_evaluate runs: TrainerCallback classes (or
# callables taking the trainer and returning a callback). Append to extend.
CALLBACKS: list[Callable[..., TrainerCallback]] = []
# Called with the trainer once train_and_evaluate has written the final model and results.
ON_FINISH: list[Callable[[Any], None]] = []
# Modules that extend every program, each switched on by an environment variable: cli() imports
# the module when its variable is set and calls its plug_in(), which appends to the hook points
# above (a UserError there ends the run as one line, before anything is written). The module
# imports trainkit; trainkit knows only its name.
EXTENSIONS = {"CHECKPOINT_BUCKET": "bucket_checkpoints"}


def plug_in_extensions() -> None:
    """Import the EXTENSIONS whose variable is set and call their plug_in()."""
    for variable, module in EXTENSIONS.items():
        if os.environ.get(variable, "").strip():
            importlib.import_module(module).plug_in()


def save_total_limit(trainer) -> int | None:
    """The run's --save_total_limit (make_resilient moves it from Trainer into Preemption)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, Preemption):
            return callback.save_total_limit
    return trainer.args.save_total_limit


def train_and_evaluate(
    trainer, args: Sequence[Any], eval_extras: Callable[[dict], dict] | None = None
) -> int:
    """Train (resuming), save model + results, evaluate; EXIT_PREEMPTED when stopped by a signal.

    Writes what the transformers examples write: the model and tokenizer, train_results.json,
    eval_results.json, all_results.json and trainer_state.json, in model_dir (rank 0 only);
    checkpoints go to output_dir. ARGS are the parsed argument objects (TrainingArguments
    last), recorded in run_args.json. A rerun of a finished run trains nothing and rewrites
    nothing; it only redoes a missing evaluation.
    """
    training_args = args[-1]
    run_args = getattr(training_args, "trainkit", None) or RunArguments(model_dir=training_args.output_dir)
    model_dir = run_args.model_dir or training_args.output_dir
    if model_dir != training_args.output_dir:
        check_output_dir(model_dir)
    finished = read_finished(model_dir) if training_args.do_train else None
    if finished and finished.get("global_step", -1) < planned_steps(trainer):
        log.info(
            "%s: the last run ended at %s; this one plans more steps: training on", FINISHED_MARKER, finished
        )
        finished = None
    if trainer.is_world_process_zero() and not finished:
        write_run_info(model_dir, *args, run_args)
    make_resilient(trainer)  # after run_args.json: it moves save_total_limit into the callback
    if finished:
        log.info(
            "training already finished at step %d (%s): nothing to train; delete it to train again",
            finished["global_step"],
            Path(model_dir, FINISHED_MARKER),
        )
    elif training_args.do_train:
        resume = resume_checkpoint(training_args)
        if resume and _checkpoint_step(resume) >= planned_steps(trainer):
            # Trainer would take one more step from a checkpoint at the last step (it checks
            # max_steps only after a step): load it instead and redo only the final part.
            log.info("%s is at the planned last step: saving the final model from it, no training", resume)
            trainer._load_from_checkpoint(resume)
            trainer.state = TrainerState.load_from_json(os.path.join(resume, "trainer_state.json"))
            metrics = {"epoch": trainer.state.epoch}
        else:
            result = trainer.train(resume_from_checkpoint=resume)
            if was_preempted(trainer):
                return EXIT_PREEMPTED
            metrics = dict(result.metrics)
        trainer.save_model(model_dir)  # rank 0 only, tokenizer included
        metrics["train_samples"] = len(trainer.train_dataset)
        trainer.log_metrics("train", metrics)
        if trainer.is_world_process_zero():
            save_metrics(model_dir, "train", metrics)
            trainer.state.save_to_json(os.path.join(model_dir, "trainer_state.json"))
            mark = {"global_step": trainer.state.global_step, "max_steps": trainer.state.max_steps}
            Path(model_dir, FINISHED_MARKER).write_text(json.dumps(mark) + "\n")
    if training_args.do_eval and not (finished and Path(model_dir, "eval_results.json").is_file()):
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(trainer.eval_dataset)
        if eval_extras:
            metrics.update(eval_extras(metrics))
        trainer.log_metrics("eval", metrics)
        if trainer.is_world_process_zero():
            save_metrics(model_dir, "eval", metrics)
    for finish in ON_FINISH:
        finish(trainer)  # e.g. the final model and results to CHECKPOINT_BUCKET
    _write_status("finished")
    ignore_stop_signals()
    return 0


def save_metrics(folder: str, split: str, metrics: dict) -> None:
    """SPLIT_results.json and all_results.json in FOLDER, as Trainer.save_metrics writes them."""
    Path(folder, f"{split}_results.json").write_text(json.dumps(metrics, indent=4, sort_keys=True))
    path = Path(folder, "all_results.json")
    combined = json.loads(path.read_text()) if path.is_file() else {}
    combined.update(metrics)
    path.write_text(json.dumps(combined, indent=4, sort_keys=True))


def was_preempted(trainer) -> bool:
    """True when training stopped early because of a stop signal (the checkpoint is saved)."""
    state = trainer.state
    stopped = _stop["signal"] is not None and state.global_step < state.max_steps
    if stopped:
        log.warning(
            "preempted at step %d of %d; checkpoint saved; exiting %d",
            state.global_step,
            state.max_steps,
            EXIT_PREEMPTED,
        )
        _write_status("preempted")
    return stopped


def make_resilient(trainer) -> None:
    """Add the preemption/marker callback and CALLBACKS; take checkpoint rotation over from Trainer.

    Trainer rotates old checkpoints inside its save, before our marker exists, so a kill at
    that moment could leave no complete checkpoint; we rotate after the marker instead.
    """
    run_args = getattr(trainer.args, "trainkit", None)
    minutes = (run_args.save_every_minutes if run_args else None) or 0
    trainer.add_callback(Preemption(trainer.args.save_total_limit, minutes))
    trainer.args.save_total_limit = None
    for make in CALLBACKS:
        trainer.add_callback(make(trainer) if not isinstance(make, type) else make())


class Preemption(TrainerCallback):
    """Stop-and-save on signal; saves by wall time; completion marker and rotation after each save."""

    def __init__(self, save_total_limit: int | None, save_every_minutes: float = 0):
        self.save_total_limit = save_total_limit
        self.save_every = save_every_minutes * 60
        self.last_save = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        _stop["training"] = True
        self.last_save = time.monotonic()  # a resumed run waits a full period before its first save
        if self.save_every and args.should_save:
            log.info("saving a checkpoint every %g minutes and at the end", self.save_every / 60)

    def on_train_end(self, args, state, control, **kwargs):
        _stop["training"] = False

    def on_step_end(self, args, state, control, **kwargs):
        stop, due = self._agreed(args)
        if stop:
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True
        elif due or (self.save_every and state.global_step >= state.max_steps):
            control.should_save = True
        self._unmark_if_resaving(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if _stop["signal"] is not None and control.should_training_stop:
            control.should_save = False  # already saved at this step by on_step_end
            control.should_evaluate = False
        self._unmark_if_resaving(args, state, control)

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        self.last_save = time.monotonic()
        if args.should_save:
            folder = Path(args.output_dir, f"checkpoint-{state.global_step}")
            now = datetime.datetime.now(datetime.timezone.utc).isoformat()
            (folder / COMPLETE_MARKER).write_text(
                json.dumps({"global_step": state.global_step, "time": now}) + "\n"
            )
            rotate(args.output_dir, self.save_total_limit, state.best_model_checkpoint)

    def _agreed(self, args) -> tuple[bool, bool]:
        """(stop, save due): the same answer on every rank, so that all stop or save at one step."""
        stop = _stop["signal"] is not None
        due = bool(self.save_every) and time.monotonic() - self.last_save >= self.save_every
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([float(stop), float(due)], device=args.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            agreed_stop, due = (bool(v) for v in t.tolist())  # one device-to-host copy
            if agreed_stop and not stop:
                _stop["signal"] = "SIGTERM (another rank)"
            stop = agreed_stop
        return stop, due

    @staticmethod
    def _unmark_if_resaving(args, state, control) -> None:
        """A save over an existing checkpoint folder must not leave its old marker in place."""
        if control.should_save and args.should_save:
            Path(args.output_dir, f"checkpoint-{state.global_step}", COMPLETE_MARKER).unlink(missing_ok=True)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
