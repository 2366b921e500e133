"""The README's "A failed run" and "An interrupted run", with the real CLI on a file backend: a
step that fails is not recorded as done, so the next `up` runs it again (created or updated); a
`pulumi up` killed while a step runs leaves the stack's lock and a pending create; `cancel`
deletes the lock, `refresh --clear-pending-creates` clears the pending operation, and the next
`up` runs the step again. A local command (which shares pulumi-command's engine path with the
remote ones) stands in for a step on a Pi; `pulumi-resource-command` is the double of the real
plugin (tools/engine/README.md)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.engine.conftest import ROOT, Project, engine_env

pytestmark = pytest.mark.engine

STACK = "interrupted"
README = (ROOT / "README.md").read_text()

PROGRAM = textwrap.dedent(
    """
    import pulumi
    from pulumi_command import Provider, local

    provider = Provider("command")
    first = local.Command(
        "first", create="echo first", opts=pulumi.ResourceOptions(provider=provider)
    )
    # Records each run, then takes long enough to be interrupted.
    local.Command(
        "slow",
        create="echo run >> runs.log; sleep 30; echo done",
        opts=pulumi.ResourceOptions(provider=provider, depends_on=[first]),
    )
    # Fails until the file `fixed` exists; its input is the config value `release`.
    release = pulumi.Config().get("release") or "1"
    local.Command(
        "flaky",
        create=f"echo {{release}} >> flaky.log; test -f fixed",
        update=f"echo {{release}} >> flaky.log; test -f fixed",
        opts=pulumi.ResourceOptions(provider=provider),
    )
    """
)


def _recipe() -> list[list[str]]:
    """The README's commands, in order, as `pulumi` argv (bin/pulumi picks the stack's passphrase,
    which the test's environment holds)."""
    section = README[README.index("\n### An interrupted run\n") :]
    [block] = re.findall(r"```text\n(.*?)```", section[: section.index("\n### ", 1)], re.S)
    commands = []
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "bin/pulumi", line
        commands.append([a if a != "prod" else STACK for a in argv[1:]])
    return commands


def _pending(project: Project) -> list[dict[str, Any]]:
    result = project.pulumi("stack", "export", "-s", STACK)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["deployment"].get("pending_operations") or []


@pytest.fixture
def project(engine_bin: Path, tmp_path: Path) -> Project:
    path = tmp_path / "project"
    path.mkdir()
    (path / "Pulumi.yaml").write_text(
        "name: picluster-interrupted\nruntime:\n  name: python\n  options:\n"
        f"    toolchain: pip\n    virtualenv: {ROOT / '.venv'}\n"
        "backend:\n  url: file://./.state\n"
    )
    (path / "__main__.py").write_text(PROGRAM.replace("{{", "{").replace("}}", "}"))
    (path / ".state").mkdir()
    project = Project(path, engine_env(engine_bin, tmp_path))
    assert project.pulumi("stack", "init", STACK).returncode == 0
    return project


def test_the_readme_recipe_recovers_a_killed_up(project: Project) -> None:
    runs = project.path / "runs.log"
    (project.path / "fixed").touch()  # the failing step is the other test's
    killed = subprocess.Popen(
        ["pulumi", "up", "--yes", "--non-interactive", "-s", STACK],
        cwd=project.path,
        env=dict(project.env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not runs.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert runs.exists(), "the slow step never started"
    os.killpg(killed.pid, signal.SIGKILL)  # as a closed terminal or a second Ctrl-C would
    killed.wait(timeout=60)

    locked = project.pulumi("up", "--yes", "-s", STACK)
    assert locked.returncode != 0
    assert "the stack is currently locked by 1 lock(s)" in locked.stdout + locked.stderr
    assert [op["type"] for op in _pending(project)] == ["creating"]

    export_file = None
    for argv in _recipe():
        if argv[:2] == ["up", "-s"]:
            assert "--yes" in argv
        result = project.pulumi(*argv, timeout=300)
        assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-2000:])
        if argv[:2] == ["stack", "export"]:
            export_file = project.path / argv[argv.index("--file") + 1]
        if argv[0] == "refresh":
            assert _pending(project) == []

    assert export_file is not None and json.loads(export_file.read_text())["deployment"]
    assert runs.read_text().splitlines() == ["run", "run"]  # the interrupted step ran again
    assert project.up(STACK).summary == {"same": 5}


def test_a_failed_step_runs_again_on_the_next_up(project: Project) -> None:
    flaky = project.path / "flaky.log"
    (project.path / "runs.log").touch()  # the slow step is not what this test is about
    assert project.pulumi("up", "--yes", "-s", STACK, timeout=300).returncode != 0
    (project.path / "fixed").touch()
    project.up(STACK)  # created this time
    assert flaky.read_text().splitlines() == ["1", "1"]

    (project.path / "fixed").unlink()
    assert project.pulumi("config", "set", "release", "2", "-s", STACK).returncode == 0
    assert project.pulumi("up", "--yes", "-s", STACK, timeout=300).returncode != 0
    (project.path / "fixed").touch()
    assert project.up(STACK).summary.get("update") == 1  # the failed update is not recorded
    assert flaky.read_text().splitlines() == ["1", "1", "2", "2"]
    assert project.up(STACK).summary.get("update") is None
