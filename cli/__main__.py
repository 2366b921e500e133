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
    "status",
    "logs",
    "ssh",
    "forward",
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
    given = list(sys.argv[1:] if argv is None else argv)
    # What follows `--` is a command for elsewhere (`ssh NODE -- uname -a`), kept from argparse,
    # which would read its options as ours.
    rest: list[str] = []
    if "--" in given:
        at = given.index("--")
        given, rest = given[:at], given[at + 1 :]
    top = parser()
    args = top.parse_args(given)
    if rest and not getattr(args, "takes_command", False):
        top.error(f"{args.command} takes nothing after --")
    args.rest = rest
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
