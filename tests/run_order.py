"""The order in which `make test`'s pytest-xdist workers take the test files.

`--dist loadfile` keeps a file's tests on one worker (its module fixtures are made once) and
hands a free worker the next work unit in the queue. xdist's own queue puts the files with the
most tests first, whatever they cost: in the 2026-12-06 runs one worker ended minutes after the
other. Here the queue is:

1. FIRST, the one full push of the image (and its pull by digest). Its worker builds the image
   (the first test that needs it does) and then pushes it: the run's longest chain, and the
   engine's busiest minutes.
2. The work units that need no image (no test asks for the `image` fixture): the other worker
   runs them meanwhile, without waiting for the build and without the engine.
3. The rest, longest first (LPT, the usual rule for sharing jobs among machines), so the last
   units to start are short and the workers end together.

A test that alone takes minutes can be a work unit of its own (an entry with `::`), so it does
not make its file one long block. The seconds are a run's, per work unit: `.ci/run` prints them
at the end of every run (`python3 tests/run_order.py JUNIT_XML`, from pytest's JUnit report) in
the form SECONDS takes. tests/test_lint.py asks for every test file here. The scheduler itself
(a subclass of xdist's) and the sort are in tests/conftest.py: this file needs only Python.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

# Work units and their seconds in the run of 2026-12-06 at 2d524a5 (warm engine, two workers; the
# queue is sorted from these). An entry with `::` is one test that is a unit of its own.
SECONDS: tuple[tuple[str, int], ...] = (
    ("tests/test_create_instance.py", 396),
    ("tests/test_byo_script.py", 264),
    # The one full push of the image to the run's registry, and its pull by digest.
    ("tests/test_launch.py::test_vm_flow_pulls_the_digest_and_runs_from_the_copied_files", 254),
    ("tests/test_training.py", 251),
    ("tests/test_launch.py", 178),
    ("tests/test_cold_start.py", 152),
    ("tests/test_build_and_push.py", 128),
    ("tests/test_bucket.py", 103),
    ("tests/test_image.py", 79),
    ("tests/test_vertex.py", 76),
    ("tests/test_option_sweep.py", 45),
    ("tests/test_bench.py", 35),
    ("tests/test_lint.py", 16),
    ("tests/test_docs.py", 0),
    ("tests/test_systemd_unit.py", 0),
)
FIRST = "tests/test_launch.py::test_vm_flow_pulls_the_digest_and_runs_from_the_copied_files"
UNIT_SECONDS = dict(SECONDS)
OWN_UNITS = frozenset(unit for unit in UNIT_SECONDS if "::" in unit)


def work_unit(nodeid: str) -> str:
    """The work unit of a test: its own for a test listed alone, else its file."""
    return nodeid if nodeid in OWN_UNITS else nodeid.split("::", 1)[0]


def queue_key(unit: str, uses_image: bool) -> tuple[bool, bool, int]:
    """Where a work unit stands in the queue: FIRST, then those without the image, then the
    rest; longest first within each (an unlisted unit counts as 0 s)."""
    return (unit != FIRST, uses_image, -UNIT_SECONDS.get(unit, 0))


def junit_seconds(path: str) -> dict[str, float]:
    """Seconds per work unit in a pytest JUnit report (a test's setup, call and teardown)."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(path).getroot().iter("testcase"):
        parts = case.get("classname", "").split(".")  # tests.test_x, then a class if any
        module = next(i for i, part in enumerate(parts) if part.startswith("test_"))
        file = "/".join(parts[: module + 1]) + ".py"
        seconds[work_unit(f"{file}::{case.get('name', '').split('[')[0]}")] += float(case.get("time", 0))
    return dict(seconds)


def main() -> None:
    """Print a JUnit report's seconds per work unit, longest first, as SECONDS lists them."""
    for unit, total in sorted(junit_seconds(sys.argv[1]).items(), key=lambda pair: -pair[1]):
        print(f'    ("{unit}", {total:.0f}),')


if __name__ == "__main__":
    main()
