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
  are moved aside into output_dir/incomplete-checkpoints/ with a warning.
- `Preemption` (a TrainerCallback): SIGTERM/SIGINT during training saves a checkpoint at
  the end of the current step, stops, and the program exits EXIT_PREEMPTED (75) without
  writing final results. Outside training a signal exits 75 at once (nothing to save).
- `UserError` + `cli(...)`: a user mistake ends as one line `error: ...` on stderr, exit 2.

Test-only hooks (environment): TRAINKIT_TEST_STEP_DELAY=SECONDS sleeps at each step end;
TRAINKIT_TEST_HANG_AT_SAVE=STEP hangs inside the save of checkpoint-STEP before its marker.
"""

from __future__ import annotations

import dataclasses
import datetime
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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.distributed as dist
import transformers
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments
from transformers.trainer_utils import rotate_checkpoints

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75
COMPLETE_MARKER = "checkpoint-complete.json"
INCOMPLETE_DIR = "incomplete-checkpoints"
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


# ---------------------------------------------------------------- arguments


def speed_defaults() -> dict[str, Any]:
    """Our TrainingArguments defaults for this machine: fast on GPU, plain fp32 on CPU."""
    # use_cpu on a machine without GPUs: accelerate runs DDP over CPU (gloo) only when asked.
    defaults: dict[str, Any] = {"bf16": False, "fp16": False, "dataloader_pin_memory": False, "use_cpu": True}
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


def parse(dataclass_types: Sequence[type], argv: Sequence[str], **program_defaults: Any) -> tuple:
    """Parse ARGV (or a single .json/.yaml config file) into the dataclasses + TrainingArguments.

    PROGRAM_DEFAULTS (e.g. train_sampling_strategy) and the speed defaults apply only where
    the user said nothing: naming --bf16 or --fp16 turns off our choice of both.
    """
    defaults: dict[str, Any] = {"do_train": True, "do_eval": True, "output_dir": ""}
    defaults.update(speed_defaults())
    defaults.update(program_defaults)
    try:
        import tensorboard  # noqa: F401

        defaults["report_to"] = ["tensorboard"]
    except ImportError:
        pass
    parser = HfArgumentParser([*dataclass_types, TrainingArguments])
    argv = list(argv)
    config = (
        _read_config(argv[0]) if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")) else None
    )
    given = set(config) if config is not None else {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    if given & {"bf16", "fp16"}:
        defaults.pop("bf16", None)
        defaults.pop("fp16", None)
    try:
        if config is not None:
            parsed = parser.parse_dict({**defaults, **config})
        else:
            parser.set_defaults(**defaults)
            parsed = parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, TypeError) as err:  # raised by the dataclasses' own checks
        raise UserError(str(err).strip().splitlines()[0]) from None
    model_args, training_args = parsed[0], parsed[-1]
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise UserError(
            f"started as one of {launched} processes (WORLD_SIZE) "
            f"but Trainer sees {training_args.world_size}; "
            "on a machine without GPUs keep --use_cpu True"
        )
    if not training_args.output_dir:
        root = os.environ.get("OUTPUT_ROOT", "/volume")
        training_args.output_dir = os.path.join(root, model_dir_name(model_args.model_name_or_path))
    return parsed


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
        if bucket := _bucket():  # CHECKPOINT_BUCKET: a bad name or unreachable bucket ends here
            bucket.check_environment()
        return main(*parse_args(argv))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as err:
        log.warning("%s; exiting %d (rerun to continue)", err, EXIT_PREEMPTED)
        _write_status("preempted")
        return EXIT_PREEMPTED


def setup_logging(training_args) -> None:
    """INFO logs on the main process, warnings only on the others."""
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    transformers.utils.logging.set_verbosity_warning()  # INFO would print every config it loads
    transformers.utils.logging.get_logger("transformers.trainer").setLevel(level)
    datasets.utils.logging.set_verbosity_warning()


# ---------------------------------------------------------------- inputs


def check_output_dir(path: str) -> None:
    """Fail early, in one line, when the output folder cannot be written."""
    probe = Path(path) / f".write-test-{os.getpid()}"
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
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


# ---------------------------------------------------------------- resume


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: --resume_from_checkpoint, else the newest complete one.

    Incomplete checkpoint folders are moved (by the main process, before the others look)
    into output_dir/incomplete-checkpoints/, so neither resume nor rotation trips on them.
    """
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not os.path.isdir(explicit):
            raise UserError(f"--resume_from_checkpoint {explicit} is not a folder")
        return explicit
    out = Path(training_args.output_dir)
    with training_args.main_process_first(local=not training_args.save_on_each_node, desc="checkpoint scan"):
        steps = sorted(
            (int(m.group(1)), p)
            for p in out.glob("checkpoint-*")
            if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
        )
        complete = [p for _, p in steps if (p / COMPLETE_MARKER).is_file()]
        if training_args.should_save:
            for _, path in steps:
                if not (path / COMPLETE_MARKER).is_file():
                    _move_aside(path)
    if not complete:
        return None
    log.info("resuming from %s (the newest complete checkpoint)", complete[-1])
    return str(complete[-1])


def _move_aside(path: Path) -> None:
    target = path.parent / INCOMPLETE_DIR / path.name
    target.parent.mkdir(exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    path.rename(target)
    log.warning(
        "%s is incomplete (no %s: its save was interrupted); moved it to %s", path, COMPLETE_MARKER, target
    )


# ---------------------------------------------------------------- preemption

_stop = {"signal": None, "training": False}


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)


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


def train_and_evaluate(
    trainer, args: Sequence[Any], eval_extras: Callable[[dict], dict] | None = None
) -> int:
    """Train (resuming), save model + results, evaluate; EXIT_PREEMPTED when stopped by a signal.

    Writes what the transformers examples write: the model and tokenizer, train_results.json,
    eval_results.json, all_results.json and trainer_state.json, all in output_dir (rank 0 only).
    ARGS are the parsed argument objects (TrainingArguments last), recorded in run_args.json.
    """
    training_args = args[-1]
    if trainer.is_world_process_zero():
        write_run_info(training_args.output_dir, *args)
    make_resilient(trainer)  # after run_args.json: it moves save_total_limit into the callback
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
        if was_preempted(trainer):
            return EXIT_PREEMPTED
        trainer.save_model()  # rank 0 only, tokenizer included
        metrics = {**result.metrics, "train_samples": len(trainer.train_dataset)}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(trainer.eval_dataset)
        if eval_extras:
            metrics.update(eval_extras(metrics))
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if bucket := _bucket():
        bucket.finish(trainer)  # the final model and results to CHECKPOINT_BUCKET
    _write_status("finished")
    return 0


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
    """Add the preemption/marker callback; take checkpoint rotation over from Trainer.

    Trainer rotates old checkpoints inside its save, before our marker exists, so a kill at
    that moment could leave no complete checkpoint; we rotate after the marker instead.
    """
    trainer.add_callback(Preemption(trainer.args.save_total_limit))
    if bucket := _bucket():  # after Preemption: it uploads what Preemption marked complete
        bucket.attach(trainer, trainer.args.save_total_limit)
    trainer.args.save_total_limit = None


def _bucket():
    """app/bucket_checkpoints.py when CHECKPOINT_BUCKET is set (checkpoints mirrored to Cloud Storage)."""
    if not os.environ.get("CHECKPOINT_BUCKET"):
        return None
    import bucket_checkpoints

    return bucket_checkpoints


class Preemption(TrainerCallback):
    """Stop-and-save on signal; completion marker and rotation after each save."""

    def __init__(self, save_total_limit: int | None):
        self.save_total_limit = save_total_limit
        self.step_delay = float(os.environ.get("TRAINKIT_TEST_STEP_DELAY", "0"))
        self.hang_at_save = int(os.environ.get("TRAINKIT_TEST_HANG_AT_SAVE", "-1"))

    def on_train_begin(self, args, state, control, **kwargs):
        _stop["training"] = True

    def on_train_end(self, args, state, control, **kwargs):
        _stop["training"] = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_delay:
            time.sleep(self.step_delay)
        if self._stop_requested(args):
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True
        self._unmark_if_resaving(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if _stop["signal"] is not None and control.should_training_stop:
            control.should_save = False  # already saved at this step by on_step_end
            control.should_evaluate = False
        self._unmark_if_resaving(args, state, control)

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if state.global_step == self.hang_at_save:
            log.warning("TRAINKIT_TEST_HANG_AT_SAVE: hanging before the marker of step %d", state.global_step)
            time.sleep(3600)
        if args.should_save:
            folder = Path(args.output_dir, f"checkpoint-{state.global_step}")
            now = datetime.datetime.now(datetime.timezone.utc).isoformat()
            (folder / COMPLETE_MARKER).write_text(
                json.dumps({"global_step": state.global_step, "time": now}) + "\n"
            )
            rotate_checkpoints(args.output_dir, self.save_total_limit, state.best_model_checkpoint)

    @staticmethod
    def _stop_requested(args) -> bool:
        flag = _stop["signal"] is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=args.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # every rank stops at the same step
            if t.item() and not flag:
                _stop["signal"] = "SIGTERM (another rank)"
            return bool(t.item())
        return flag

    @staticmethod
    def _unmark_if_resaving(args, state, control) -> None:
        """A save over an existing checkpoint folder must not leave its old marker in place."""
        if control.should_save and args.should_save:
            Path(args.output_dir, f"checkpoint-{state.global_step}", COMPLETE_MARKER).unlink(missing_ok=True)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
