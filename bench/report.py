"""Write a benchmark's table into a Markdown file between markers.

The pages under docs/ (docs/bench-*.md) hold blocks like

    <!-- bench:NAME -->
    ...generated...
    <!-- /bench:NAME -->

that the benchmarks in bench/ rewrite, so every number shown comes from the
command written beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def update_block(path: Path, name: str, body: str) -> bool:
    """Replace the block NAME in PATH with BODY; return False if PATH has no such block."""
    text = path.read_text()
    pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        return False
    path.write_text(pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text))
    return True


def publish(page: str, name: str, body: str) -> None:
    """Print BODY and write it into the block NAME of docs/PAGE; stop if the page has no such block."""
    print(body)
    path = ROOT / "docs" / page
    if not update_block(path, name, body):
        raise SystemExit(f"bench: docs/{page} has no <!-- bench:{name} --> block")
    print(f"bench: wrote docs/{page}")


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
