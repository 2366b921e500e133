"""script_payload: what `sudo bash -s` reads, values quoted so bash gets them back exactly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.remote_script import (
    parse_summaries,
    parse_summary,
    script_path,
    script_payload,
    steps_payload,
)

AWKWARD = {
    "SPACES": "two words  and  more",
    "QUOTES": 'it\'s "quoted"',
    "DOLLAR": "$HOME $(id -u) `id` ${X:-y}",
    "NEWLINE": "line one\nline two",
    "EMPTY": "",
    "GLOB": "* ? [a-z]",
    "BACKSLASH": "a\\b\\",
}


def _header(payload: str, script: str) -> str:
    body = script_path(script).read_text(encoding="utf-8")
    assert payload.endswith(body)
    return payload.removesuffix(body)


def test_payload_is_assignments_then_script() -> None:
    payload = script_payload("reboot.sh", {"REBOOT_DELAY_SECONDS": "5", "NODE_NAME": "pi-1"})
    assert _header(payload, "reboot.sh") == "REBOOT_DELAY_SECONDS=5\nNODE_NAME=pi-1\n"
    assert payload.count("#!/usr/bin/env bash") == 1


def test_bash_reads_back_every_value_exactly() -> None:
    header = _header(script_payload("facts.sh", AWKWARD), "facts.sh")
    printer = "".join(f'printf "%s\\0" "${name}"\n' for name in AWKWARD)
    result = subprocess.run(
        ["bash", "-s"], input=header + printer, capture_output=True, text=True, check=True
    )
    assert result.stdout.split("\0")[:-1] == list(AWKWARD.values())


def test_values_are_not_expanded_when_assigned() -> None:
    header = _header(script_payload("facts.sh", {"X": "$(touch /tmp/pwned)"}), "facts.sh")
    assert header == "X='$(touch /tmp/pwned)'\n"


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "", "A=B", "$A", "A\n"])
def test_rejects_names_that_are_not_shell_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match="not a shell variable name"):
        script_payload("facts.sh", {name: "x"})


def test_rejects_a_nul_in_a_value() -> None:
    with pytest.raises(ValueError, match="NUL"):
        script_payload("facts.sh", {"NODE_NAME": "pi\0-1"})


@pytest.mark.parametrize("script", ["../remote_script.py", "nope.sh", "scripts/facts.sh"])
def test_rejects_unknown_scripts(script: str) -> None:
    with pytest.raises(ValueError):
        script_path(script)


def test_parse_summary() -> None:
    assert parse_summary("x\npicluster prepare: no changes\n").changed == ()
    changed = parse_summary("picluster prepare: changed: hostname, cmdline\n")
    assert (changed.step, changed.changed) == ("prepare", ("hostname", "cmdline"))
    facts = parse_summary('picluster facts: arch=arm64 model="Raspberry Pi 5" page_size=16384')
    assert facts.facts == {"arch": "arm64", "model": "Raspberry Pi 5", "page_size": "16384"}
    with pytest.raises(ValueError):
        parse_summary("nothing here\n")


def _bash(payload: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-s"], input=payload, capture_output=True, text=True, check=False
    )


def test_steps_payload_runs_each_script_in_order(tmp_path: Path) -> None:
    # cgroup-gate.sh only reads files, so it can run here. Its `exec </dev/null` must not cut off
    # the scripts after it, nor may its `readonly` clash with the next one's.
    controllers = tmp_path / "cgroup.controllers"
    controllers.write_text("cpu io memory pids\n")
    values = {"CGROUP_CONTROLLERS_FILE": str(controllers)}
    result = _bash(steps_payload(["cgroup-gate.sh", "cgroup-gate.sh", "cgroup-gate.sh"], values))
    assert result.returncode == 0, result.stderr
    assert [s.step for s in parse_summaries(result.stdout)] == ["cgroup-gate"] * 3


def test_steps_payload_stops_at_the_first_failing_script(tmp_path: Path) -> None:
    controllers = tmp_path / "cgroup.controllers"
    controllers.write_text("cpu io pids\n")
    values = {"CGROUP_CONTROLLERS_FILE": str(controllers)}
    # A trailing command proves the session stops: it must never print.
    payload = steps_payload(["cgroup-gate.sh", "cgroup-gate.sh"], values) + "echo AFTER\n"
    result = _bash(payload)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("memory cgroup controller is not active") == 1
