"""after_import(NAME, PATCH): run PATCH(module) right after module NAME is first imported.

A meta-path finder that wraps the module's loader. The image's checkpoint-bucket hook
(sitecustomize.py beside this file) uses it to patch transformers' Trainer, and the tests'
probes (tests/probes/sitecustomize.py, importing it as hfgpu_hooks.hfgpu_after_import from /app)
to hook trainkit and bucket_checkpoints: one finder for both.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def after_import(name: str, patch) -> None:
    """Run PATCH(module) right after module NAME is imported."""

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            original = spec.loader.exec_module

            def exec_module(module):
                original(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())
