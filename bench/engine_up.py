"""Benchmark of `pulumi up -s prod` with the real engine; prints figures, asserts nothing.

    .venv/bin/python bench/engine_up.py

Needs what tests/engine/test_prod_up.py needs: the engine binaries (tools/engine/build.sh pulumi
kubernetes command), the control plane (tools/cluster/build.sh), Docker for the simulated Pis,
and root. Prints the wall time of the first `up` (three bare simulated Pis to the game and its
monitoring Ready on a real API server), of a second, no-op `up`, and of a preview, with the
remote steps (SSH sessions) each ran.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.engine.conftest import BINARIES, ENGINE_CACHE  # noqa: E402
from tests.engine.prod_lab import missing_cluster_binaries, prod_lab  # noqa: E402


def main() -> None:
    engine_bin = ENGINE_CACHE / "bin"
    missing = [b for b in BINARIES if not (engine_bin / b).exists()] + missing_cluster_binaries()
    if missing:
        sys.exit(
            f"missing binaries: {', '.join(missing)} "
            "(tools/engine/build.sh, tools/cluster/build.sh)"
        )
    with tempfile.TemporaryDirectory(prefix="picluster-bench-") as tmp:
        start = time.monotonic()
        with prod_lab(engine_bin, Path(tmp)) as lab:
            ready = time.monotonic() - start
            first = lab.up()
            second = lab.up()
            preview_start = time.monotonic()
            preview = lab.project.pulumi("preview", "-s", "prod")
            preview_seconds = time.monotonic() - preview_start
    print("pulumi up -s prod with the real engine (3 simulated Pis, real v1.31.4 control plane)")
    print(f"  lab ready (control plane, 3 Pis)   {ready:6.1f} s")
    print(
        f"  first up                           {first.seconds:6.1f} s   "
        f"{first.remote_steps} remote steps, {first.summary}"
    )
    print(
        f"  second up (no change)              {second.seconds:6.1f} s   "
        f"{second.remote_steps} remote steps, {second.summary}"
    )
    print(
        f"  preview (no change)                {preview_seconds:6.1f} s   exit {preview.returncode}"
    )


if __name__ == "__main__":
    main()
