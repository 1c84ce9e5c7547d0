"""The image's checkpoint-bucket hook for scripts that are not ours (loaded only when enabled).

The entrypoint puts this folder first on PYTHONPATH only when HFGPU_TRAINER_BUCKET=1 and
CHECKPOINT_BUCKET are both set (launch_training.sh --checkpoint-bucket sets them for a script
that trains with a transformers Trainer); Python's `site` then imports this module at start-up
in every process. It does nothing until `transformers.trainer` is imported; from then on every
Trainer's train() mirrors its checkpoints to the bucket (hf_trainer_bucket.py, beside this
file). Runs without a bucket never see this folder.

A `sitecustomize` found later on the path (a user's own, or the tests' probes) still runs:
Python imports only the first one, so this one runs the next.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _patch(module) -> None:
    sys.path.insert(0, _HERE)
    try:
        import hf_trainer_bucket
    finally:
        sys.path.remove(_HERE)
    hf_trainer_bucket.patch_trainer(module.Trainer)


def _run_next_sitecustomize() -> None:
    entries = [os.path.abspath(p or ".") for p in sys.path]
    for entry in entries[entries.index(_HERE) + 1 :] if _HERE in entries else entries:
        path = os.path.join(entry, "sitecustomize.py")
        if entry != _HERE and os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("_hfgpu_next_sitecustomize", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return


if os.environ.get("HFGPU_TRAINER_BUCKET") == "1" and os.environ.get("CHECKPOINT_BUCKET", "").strip():
    sys.path.insert(0, _HERE)
    try:
        import hf_trainer_bucket as _hook
        from hfgpu_after_import import after_import

        after_import("transformers.trainer", _patch)
        _hook.watch_exit()
    finally:
        sys.path.remove(_HERE)
_run_next_sitecustomize()
