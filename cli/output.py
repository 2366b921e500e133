"""Plain-text output shared by the commands: aligned tables and one-line messages."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """`rows` under `headers`, each column as wide as its widest cell, two spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


def say(command: str, message: str) -> None:
    """A message of `bin/picluster COMMAND` on stderr."""
    print(f"bin/picluster {command}: {message}", file=sys.stderr, flush=True)
