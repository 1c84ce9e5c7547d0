"""Checkpoints to CHECKPOINT_BUCKET for any transformers Trainer (the image's hook; see sitecustomize.py).

For a script that does not import trainkit: on every Trainer.train() call
- the bucket is checked first (one line and exit 2 when it is bad or unreachable);
- when output_dir holds no complete checkpoint as new as the bucket's newest, that one is
  downloaded (its marker last) and, unless the script asked for a checkpoint itself, training
  resumes from it;
- each save gets trainkit's completion marker (checkpoint-complete.json), written after the save,
  and is then uploaded in the background, marker last (the same protocol and code as our programs);
- the end of training waits for the uploads; a finished run's final files follow at exit.
A script whose runs never train a Trainer gets one warning line at exit: nothing was uploaded.

Everything this hook takes from app/bucket_checkpoints.py is in `_bucket_api` below.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import sys
from pathlib import Path

ENV = "CHECKPOINT_BUCKET"
RESTORED_NOTE = ".hfgpu-bucket-restored"  # in output_dir: the step local rank 0 restored
log = logging.getLogger("hfgpu.bucket")
_state = {"trained": False, "trainer": None}


def _bucket_api():
    """The one place that names bucket_checkpoints (and trainkit's marker)."""
    import bucket_checkpoints
    from trainkit import COMPLETE_MARKER, UserError

    return bucket_checkpoints, COMPLETE_MARKER, UserError


def _say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"hfgpu bucket hook: {message}", file=sys.stderr, flush=True)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def marker_callback(complete_marker: str):
    from transformers import TrainerCallback

    class CompletionMarker(TrainerCallback):
        """trainkit's rule: a checkpoint is complete once its marker exists, written after the save."""

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save and args.should_save:  # a save over an old folder: unmark it first
                folder = Path(args.output_dir, f"checkpoint-{state.global_step}")
                (folder / complete_marker).unlink(missing_ok=True)

        def on_save(self, args, state, control, **kwargs):
            _barrier()  # every rank has written its part
            folder = Path(args.output_dir, f"checkpoint-{state.global_step}")
            if args.should_save and folder.is_dir():
                now = datetime.datetime.now(datetime.timezone.utc).isoformat()
                (folder / complete_marker).write_text(
                    json.dumps({"global_step": state.global_step, "time": now}) + "\n"
                )

    return CompletionMarker()


def attach(trainer, resume):
    """Check the bucket, restore into output_dir, add the marker and upload callbacks; the resume to use."""
    api, complete_marker, user_error = _bucket_api()
    try:
        bucket = api.check_environment()
    except user_error as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if bucket is None:
        return resume
    args = trainer.args
    out = Path(args.output_dir)
    note = out / RESTORED_NOTE
    explicit = isinstance(resume, str) and resume
    if not explicit:
        with args.main_process_first(local=True, desc="checkpoint download"):
            if args.local_process_index == 0:
                note.unlink(missing_ok=True)
                step = api.restore(bucket, out)
                if step is not None:
                    note.write_text(f"{step}\n")
    trainer.add_callback(marker_callback(complete_marker))
    trainer.add_callback(api.BucketSync(bucket, args.save_total_limit))
    _say(f"mirroring the checkpoints of {out} to {bucket.url} (marker last)")
    if not explicit and note.is_file():
        step = int(note.read_text())
        resume = str(out / f"checkpoint-{step}")
        _say(f"resuming from checkpoint-{step}, downloaded from {bucket.url}")
    return resume


def patch_trainer(trainer_class) -> None:
    """Wrap trainer_class.train (once): bucket first, then the script's own train()."""
    original = trainer_class.train
    if getattr(original, "_hfgpu_bucket", False):
        return

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        api, _, _ = _bucket_api()
        if not any(isinstance(cb, api.BucketSync) for cb in self.callback_handler.callbacks):
            resume_from_checkpoint = attach(self, resume_from_checkpoint)  # (our programs attach themselves)
        _state["trained"], _state["trainer"] = True, self
        return original(self, resume_from_checkpoint, *args, **kwargs)

    train._hfgpu_bucket = True
    trainer_class.train = train


def _at_exit() -> None:
    trainer = _state["trainer"]
    if trainer is not None:
        state = trainer.state
        if state.max_steps and state.global_step >= state.max_steps:
            api, _, user_error = _bucket_api()
            try:
                api.finish(trainer)  # waits for checkpoint uploads, then the final files
            except user_error as err:
                print(f"error: {err}", file=sys.stderr, flush=True)
        return
    script = sys.argv[0] if sys.argv else ""
    if not _state["trained"] and script.endswith(".py") and "LOCAL_RANK" not in os.environ:
        _say(
            f"warning: {ENV}={os.environ.get(ENV)} is set but {os.path.basename(script)} trained no "
            "transformers Trainer: nothing was uploaded (from your own loop, use bucket_checkpoints)"
        )


def watch_exit() -> None:
    atexit.register(_at_exit)
