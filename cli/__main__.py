"""`bin/picluster COMMAND`: one module per command, each with `register(subparsers)`.

A command module adds its sub-parser and sets `func` (args -> exit status) on it. The modules are
imported only when listed here, so each command stays in its own file.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, in the order `--help` lists them)
COMMANDS: tuple[str, ...] = (
    "manifests",
    "compose",
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="bin/picluster",
        description="Look at and operate what the picluster stacks run.",
    )
    subparsers = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"cli.{name}").register(subparsers)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
