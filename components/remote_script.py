"""Build what a remote shell script receives on stdin, and read the one summary line it prints.

A node step runs as `sudo bash -s` with its stdin set to `script_payload(...)`: a header of
`NAME='value'` assignments (quoted with `shlex.quote`), then the script file itself. Values travel
on stdin rather than in `environment=` (sshd needs `AcceptEnv` for that, and sudo strips it) or on
the command line (which would show up in a failed command's error text).

Everything here is a pure function of strings, so it can run inside `Output.apply`.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SCRIPT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.sh\Z")
_SUMMARY = re.compile(r"picluster (?P<step>[a-z0-9-]+): (?P<rest>.*)\Z")


def script_path(script: str) -> Path:
    """Path of `components/scripts/<script>`; `script` is a bare file name such as `prepare.sh`."""
    if not _SCRIPT_NAME.match(script):
        raise ValueError(f"not a script file name in components/scripts: {script!r}")
    path = SCRIPTS_DIR / script
    if not path.is_file():
        raise ValueError(f"no such script: {path}")
    return path


def script_payload(script: str, values: Mapping[str, str]) -> str:
    """The stdin for `sudo bash -s`: one `NAME='value'` line per value, then the script's text.

    Raises ValueError for a name that is not a shell identifier or a value containing a NUL byte
    (bash cannot hold one in a variable).
    """
    return _header(values) + script_path(script).read_text(encoding="utf-8")


def _header(values: Mapping[str, str]) -> str:
    """`NAME='value'` lines, checked: shell identifiers only, no NUL bytes."""
    header: list[str] = []
    for name, value in values.items():
        if not _SHELL_NAME.match(name):
            raise ValueError(f"{name!r} is not a shell variable name")
        if not isinstance(value, str):
            raise ValueError(f"value of {name} must be a string, got {type(value).__name__}")
        if "\0" in value:
            raise ValueError(f"value of {name} contains a NUL byte")
        header.append(f"{name}={shlex.quote(value)}\n")
    return "".join(header)


@dataclass(frozen=True)
class Summary:
    """The summary line a script prints last: `picluster <step>: no changes` or `changed: a, b`."""

    step: str
    """The step name, e.g. `prepare`."""
    changed: tuple[str, ...]
    """What changed, in the script's order; empty when the script changed nothing."""
    facts: dict[str, str] = field(default_factory=dict)
    """`key=value` facts (facts.sh only)."""
    line: str = ""
    """The whole line as printed."""


def parse_summary(stdout: str) -> Summary:
    """Parse the last `picluster <step>: ...` line of a script's stdout.

    Raises ValueError when stdout has no summary line.
    """
    for raw in reversed(stdout.splitlines()):
        line = raw.strip()
        match = _SUMMARY.match(line)
        if not match:
            continue
        step, rest = match["step"], match["rest"]
        if rest.startswith("changed: "):
            items = tuple(item.strip() for item in rest.removeprefix("changed: ").split(","))
            return Summary(step, tuple(item for item in items if item), line=line)
        if rest.startswith("no changes"):
            return Summary(step, (), line=line)
        # facts.sh: `key=value` pairs, values with spaces in double quotes (shlex-splittable)
        facts = dict(pair.split("=", 1) for pair in shlex.split(rest) if "=" in pair)
        return Summary(step, (), facts=facts, line=line)
    raise ValueError("no 'picluster <step>: ...' summary line in the script's output")


def steps_payload(scripts: Sequence[str], values: Mapping[str, str]) -> str:
    """The stdin for `sudo bash -s` running several scripts in one SSH session, in order.

    Each script runs in its own subshell (its `readonly` names and traps stay its own) and
    `set -e` stops the session at the first script that fails. bash reads a whole `( ... )` block
    before running it, so nothing a script runs can swallow the scripts after it from stdin.
    """
    blocks = [f"(\n{script_path(s).read_text(encoding='utf-8')}\n)\n" for s in scripts]
    return "set -euo pipefail\n" + _header(values) + "".join(blocks)


def parse_summaries(stdout: str) -> list[Summary]:
    """Every summary line on stdout, in order: one per script of a `steps_payload` session."""
    summaries: list[Summary] = []
    for line in stdout.splitlines():
        if _SUMMARY.match(line.strip()):
            summaries.append(parse_summary(line))
    return summaries


def run_marker(stdout: str) -> str:
    """A short digest of a step's stdout, for the stdin of the step that must follow each run.

    A step that has to run again whenever another one ran (the gate after prepare, a node's check
    after its install) gets `AFTER_RUN=<marker>` in its stdin header: a new run prints new output,
    so the follower's stdin changes and the provider updates it in place. (`triggers` would do the
    same by replacing the command, and a replaced command runs its `delete`.) In a preview the
    follower's stdin is then unknown: nothing that configures a provider may follow this way.
    """
    return hashlib.sha256(stdout.encode()).hexdigest()[:16]
