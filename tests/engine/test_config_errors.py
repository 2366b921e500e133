"""Config errors as the real engine shows them, and the commands they suggest, run for real.

A stack with bad config must fail with one error diagnostic that holds every problem, without a
traceback or the Python host's "an unhandled error occurred" line; an empty stack must get the
program's own message (not the CLI's "missing configuration value"), and the `config set`
commands that message suggests must, run as printed, make a configuration the program accepts.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.engine.conftest import Project, errors
from tools.restore_datastore import stack_settings

pytestmark = pytest.mark.engine

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMkz3ZQ9Wm0d7yQ3p2K8Jxq0M1Rf5XzN0o2c9V4hT6bA"
FAKE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nZW5naW5lLXRlc3QtbmV2ZXItZGlhbGxlZA==\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
"""Never dialled: nothing here runs a remote command."""


def _preview_errors(project: Project, stack: str) -> tuple[list[str], str]:
    result = project.pulumi("preview", "-s", stack, "--json")
    assert result.returncode != 0, result.stdout[-3000:]
    found = [e.removeprefix("error: ").rstrip("\n") for e in errors(result.stdout)]
    return found, result.stdout + result.stderr


def _wrapper_stand_in(project: Project) -> None:
    """`bin/pulumi` (the passphrase wrapper, branch `passphrase`) stands in as plain `pulumi`
    with the test's environment, so the suggested commands run exactly as printed."""
    wrapper = project.path / "bin" / "pulumi"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text('#!/bin/sh\nexec pulumi "$@" --non-interactive\n')
    wrapper.chmod(0o755)


def _run_as_printed(project: Project, line: str, home: Path) -> None:
    result = subprocess.run(
        ["bash", "-c", line],
        cwd=project.path,
        env={**project.env, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (line, result.stderr)


def test_an_empty_stack_says_what_to_set_and_the_commands_work(
    project: Project, tmp_path: Path
) -> None:
    assert project.pulumi("stack", "init", "pis").returncode == 0
    _wrapper_stand_in(project)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(FAKE_KEY)

    # No config at all: the program, not the CLI, answers.
    [message], output = _preview_errors(project, "pis")
    assert "missing configuration value" not in output
    assert message.startswith("picluster:target: is required: docker (")
    assert "`bin/pulumi config set target k3s -s pis`" in message
    _run_as_printed(project, "bin/pulumi config set target k3s -s pis", home)

    # target k3s and nothing else: every missing key, each with the commands that set it.
    [message], _ = _preview_errors(project, "pis")
    commands = re.findall(
        r"^\s*(bin/pulumi config set .+)$|`(bin/pulumi config set [^`]+)`", message, re.M
    )
    lines = [a or b for a, b in commands]
    assert len(lines) == 9, message  # nodes: 4, ssh: 2, the secret and the agent, k3s: 1
    for line in lines:
        if "privateKeyPath" in line or "ssh.agent" in line:
            continue  # the file, the secret or the agent: this run takes the secret
        _run_as_printed(project, line.replace("'ssh-ed25519 AAAA...'", f"'{HOST_KEY}'"), home)

    settings = stack_settings("pis", cwd=project.path, env=project.env)
    [node] = settings.nodes
    assert (node.name, node.host, node.role.value, node.host_key) == (
        "pi-1",
        "192.168.1.10",
        "server",
        HOST_KEY,
    )
    assert settings.ssh is not None and settings.ssh.user == "pi"
    assert settings.k3s is not None and settings.k3s.version == "v1.31.4+k3s1"
    secret = project.pulumi("config", "get", "sshPrivateKey", "-s", "pis")
    assert secret.stdout.strip() == FAKE_KEY.strip()  # read from stdin, stored as a secret
    stack_file = (project.path / "Pulumi.pis.yaml").read_text()
    assert "secure:" in stack_file and "BEGIN OPENSSH" not in stack_file


def test_bad_config_is_one_error_without_a_traceback(project: Project) -> None:
    assert project.pulumi("stack", "init", "local").returncode == 0
    for args in (
        ("--path", "app.frontend.replicas", "--type", "string", "2"),  # a quoted number
        ("--path", "monitoring.alerts.ntfy.minSeverity", "warning"),  # needs its secret
        ("colour", "red"),  # an unknown key
    ):
        assert project.pulumi("config", "set", *args, "-s", "local").returncode == 0
    result = project.pulumi("up", "--yes", "-s", "local")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    assert "unhandled error" not in output
    assert "exit code" not in output
    diagnostics = output[output.index("Diagnostics:") :]
    assert diagnostics.count("error:") == 1, diagnostics
    for key in (
        "picluster:colour: unknown key",
        "picluster:app.frontend.replicas: is the text '2'; write the number without quotes: 2",
        "picluster:monitoring.alerts.ntfy: needs the secret picluster:alertsNtfyUrl",
    ):
        assert key in diagnostics, diagnostics
    assert "+ 1 to create" in output  # only the stack itself: no resource was declared
