"""Benchmark of the change matrix: how many remote steps (SSH sessions on the Pis) each routine
change runs, and how many objects it touches; prints figures, asserts nothing.

    .venv/bin/python bench/change_steps.py

Each row runs the program under mocks before and after the change and applies the engine's rules
(`tests/change_matrix.py`). "remote steps" counts the commands the engine would run on the Pis
(created, updated or replaced), "deletes" the `delete` commands it would run (drain, uninstall),
"objects" the Kubernetes or Docker resources created, updated, replaced or deleted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.change_matrix import CHANGES, outcome  # noqa: E402
from tests.engine_rules import COMMAND  # noqa: E402


def main() -> None:
    print(f"{'stack':6} {'change':50} {'remote steps':>12} {'deletes':>8} {'objects':>8}")
    start = time.perf_counter()
    total = 0
    for change in CHANGES:
        result = outcome(change)
        remote = len(result.plan.remote_steps)
        objects = sum(1 for s in result.plan.steps if s.type != COMMAND)
        total += remote
        print(
            f"{change.stack:6} {change.title:50} {remote:>12} "
            f"{len(result.plan.delete_commands):>8} {objects:>8}"
        )
    seconds = time.perf_counter() - start
    print(f"\n{len(CHANGES)} changes, {total} remote steps in all; planned in {seconds:.1f} s")


if __name__ == "__main__":
    main()
