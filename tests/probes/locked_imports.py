"""Probe run inside the image: every locked distribution is installed at its locked
version and its modules import; library-only wheels (CUDA libraries) have all files.

Usage: python3 locked_imports.py LOCKFILE  -> prints a JSON report, exits 1 on problems.
"""

import importlib
import importlib.metadata as md
import json
import re
import sys


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(path: str) -> dict[str, str]:
    pins = {}
    with open(path) as handle:
        for line in handle:
            match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
            if match:
                pins[canonical(match.group(1))] = match.group(2)
    return pins


def main() -> int:
    # setuptools must come first: once another package has imported the standard
    # distutils, setuptools' own distutils shim refuses to load in the same process.
    importlib.import_module("setuptools")
    pins = locked_versions(sys.argv[1])
    modules: dict[str, list[str]] = {}
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            if module.isidentifier() and not module.startswith("_"):
                modules.setdefault(canonical(dist), []).append(module)
    problems: dict[str, str] = {}
    checked = 0
    for name, version in sorted(pins.items()):
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            problems[name] = "not installed"
            continue
        if installed != version and installed.split("+")[0] != version:
            problems[name] = f"installed {installed}, locked {version}"
        for module in sorted(set(modules.get(name, []))):
            try:
                importlib.import_module(module)
            except Exception as exc:  # a probe reports every failure, whatever it is
                problems[f"{name}:{module}"] = repr(exc)[:200]
        if not modules.get(name):
            dist = md.distribution(name)
            missing = [str(f) for f in dist.files or [] if not f.locate().exists()]
            if missing or not dist.files:
                problems[name] = f"files missing: {missing[:3]}"
        checked += 1
    print(json.dumps({"checked": checked, "locked": len(pins), "problems": problems}))
    return 1 if problems or checked != len(pins) else 0


if __name__ == "__main__":
    sys.exit(main())
