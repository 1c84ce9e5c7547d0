"""Test-only hooks for the training programs, loaded only by the tests.

The tests mount tests/probes at /probes and put it first on PYTHONPATH
(PYTHONPATH=/probes:/app); Python's `site` then imports this module at start-up, in
every process (torchrun's workers too). Nothing here is in the image. Each hook is off
unless its environment variable is set:

TRAINKIT_TEST_STEP_DELAY=SECONDS   sleep at each step end (a tiny model trains faster than
                                   a signal arrives).
TRAINKIT_TEST_HANG_AT_SAVE=STEP    hang inside the save of checkpoint-STEP, after Trainer has
                                   written it and before trainkit writes its completion marker.
TRAINKIT_TEST_WAIT_BEFORE_TRAIN=S  sleep S seconds just before training starts (outside the
                                   training loop), after logging "waiting before training".
TRAINKIT_TEST_LINGER_AT_EXIT=S     at exit, do what Python's finalization does to signal
                                   handlers (a Python-level handler goes back to SIG_DFL; an
                                   ignored signal stays ignored), log "lingering at exit", then
                                   sleep S seconds: the window in which torch's teardown runs.
TRAINKIT_TEST_FAIL_RENAMES_UNDER=DIR  os.rename, os.replace, os.renames and shutil.move raise
                                   OSError(EXDEV) for any path under DIR, as a bucket mount may.

app/bucket_checkpoints.py (CHECKPOINT_BUCKET) moves one object at a time; these hang right after
the first object of checkpoint-STEP was moved, logging "test hook: hanging inside the WHAT of
checkpoint-STEP", so that a test can SIGKILL the run exactly there:
HFGPU_TEST_BUCKET_HANG_AT=STEP           the upload (its first file is in the bucket, the marker not).
HFGPU_TEST_BUCKET_HANG_AT_DOWNLOAD=STEP  the restore's download (the first file is on local disk).
HFGPU_TEST_BUCKET_HANG_AT_DELETE=STEP    the deletion in the bucket (rotation or a re-upload).
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import shutil
import signal
import sys
import time

# The image's one after-import finder (PYTHONPATH=/probes:/app: /app/hfgpu_hooks, a namespace package).
from hfgpu_hooks.hfgpu_after_import import after_import as _after_import


def _patch_trainkit(trainkit) -> None:
    from transformers import TrainerCallback

    delay = float(os.environ.get("TRAINKIT_TEST_STEP_DELAY", "0"))
    hang_at = int(os.environ.get("TRAINKIT_TEST_HANG_AT_SAVE", "-1"))
    wait = float(os.environ.get("TRAINKIT_TEST_WAIT_BEFORE_TRAIN", "0"))

    class TestHooks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if delay:
                time.sleep(delay)

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == hang_at:
                trainkit.log.warning("test hook: hanging before the marker of step %d", state.global_step)
                time.sleep(3600)

    make_resilient = trainkit.make_resilient
    resume_checkpoint = trainkit.resume_checkpoint

    def with_hooks(trainer):
        trainer.add_callback(TestHooks())  # before trainkit's: its on_save runs before the marker
        make_resilient(trainer)

    def waiting(training_args):
        trainkit.log.warning("test hook: waiting before training (%g s)", wait)
        time.sleep(wait)
        return resume_checkpoint(training_args)

    trainkit.make_resilient = with_hooks
    if wait:
        trainkit.resume_checkpoint = waiting


def _patch_bucket(bucket_checkpoints) -> None:
    Bucket = bucket_checkpoints.Bucket
    step_of = re.compile(r"(?:^|/)checkpoint-(\d+)/")

    def hang_after(method: str, what: str, variable: str, name_of) -> None:
        step = int(os.environ.get(variable, "-1"))
        if step < 0:
            return
        original = getattr(Bucket, method)

        def moved_one(self, *args):
            original(self, *args)
            m = step_of.search(name_of(*args))
            if m and int(m.group(1)) == step:
                log = bucket_checkpoints.log
                log.warning("test hook: hanging inside the %s of checkpoint-%d", what, step)
                time.sleep(3600)

        setattr(Bucket, method, moved_one)

    variable = "HFGPU_TEST_BUCKET_HANG_AT"
    hang_after("upload_file", "upload", variable, lambda path, key: key)
    hang_after("download_file", "download", variable + "_DOWNLOAD", lambda blob, path: blob.name)
    hang_after("delete_object", "delete", variable + "_DELETE", lambda blob: blob.name)


def _linger_at_exit(seconds: float) -> None:
    def linger():
        for sig in (signal.SIGTERM, signal.SIGINT):
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        print("test hook: lingering at exit", file=sys.stderr, flush=True)
        time.sleep(seconds)

    atexit.register(linger)  # registered first: runs last, after the program's own handlers


def _fail_renames(root: str) -> None:
    root = os.path.realpath(root)

    def under(path) -> bool:
        real = os.path.realpath(os.fspath(path))
        return real == root or real.startswith(root + os.sep)

    def guard(original):
        def renamer(src, dst, *args, **kwargs):
            if under(src) or under(dst):
                raise OSError(errno.EXDEV, "test hook: renames fail under " + root, os.fspath(src))
            return original(src, dst, *args, **kwargs)

        return renamer

    os.rename, os.replace, os.renames = guard(os.rename), guard(os.replace), guard(os.renames)
    shutil.move = guard(shutil.move)


if os.environ.get("TRAINKIT_TEST_FAIL_RENAMES_UNDER"):
    _fail_renames(os.environ["TRAINKIT_TEST_FAIL_RENAMES_UNDER"])
if float(os.environ.get("TRAINKIT_TEST_LINGER_AT_EXIT", "0")):
    _linger_at_exit(float(os.environ["TRAINKIT_TEST_LINGER_AT_EXIT"]))
_after_import("trainkit", _patch_trainkit)
_after_import("bucket_checkpoints", _patch_bucket)
