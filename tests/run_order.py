"""The order in which `make test`'s pytest-xdist workers take the test files: longest first.

`--dist loadfile` keeps a file's tests on one worker (its module fixtures are made once) and
hands a free worker the next file in the queue. xdist's own queue puts the files with the most
tests first, whatever they cost: in the 2026-12-06 runs one worker ended minutes after the other.
Here the queue is the files by their measured time, longest first (LPT: the usual rule for
sharing jobs among machines), so the last files to start are short ones and the workers end
together. A test that alone takes minutes is a work unit of its own, so it does not make its
file one long block.

The figures are a warm run's per-file seconds (docs/development.md says how to measure them
again); a file missing here runs after the listed ones, and tests/test_lint.py says to add it.
"""

from __future__ import annotations

from xdist.scheduler import LoadFileScheduling

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
LONGEST_FIRST = tuple(unit for unit, _ in sorted(SECONDS, key=lambda pair: -pair[1]))
RANK = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
OWN_UNITS = frozenset(unit for unit in LONGEST_FIRST if "::" in unit)


def work_unit(nodeid: str) -> str:
    """The work unit of a test: its own for a test listed alone, else its file."""
    return nodeid if nodeid in OWN_UNITS else nodeid.split("::", 1)[0]


def rank(nodeid: str) -> int:
    """Where the test's work unit stands in the queue (unlisted units last)."""
    return RANK.get(work_unit(nodeid), len(LONGEST_FIRST))


class LongestFirst(LoadFileScheduling):
    """`--dist loadfile`, with the work units of work_unit, queued in collection order (which
    pytest_collection_modifyitems has sorted by rank) instead of by number of tests."""

    def __init__(self, config, log=None) -> None:
        super().__init__(config, log)
        config.option.loadscopereorder = False

    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)
