"""The real engine signs in to a simulated Pi with a passphrase-protected key (`sshKeyPassphrase`)
and with ssh-agent alone (`ssh.agent`), from the stack's configuration as the program loads it.

A small program (written below, run by the real CLI) loads the stack's configuration with
`components.config.load()` and gives each node's `SshTarget` from `stack_args.pi_node_args`, the
wiring `__main__.py` uses, to one remote command (`id -un`) on a simulated Pi. The Pi authorises
only a key encrypted with a passphrase. The remote command runs through
`pulumi-resource-command`, the double of the real plugin whose SSH sign-in mirrors
pulumi-command v1.2.1's `connectionBase.SSHConfig` (tools/engine/command/ssh.go); the agent is a
real `ssh-agent`.

- the key file and `sshKeyPassphrase` (no agent in the environment): the command runs;
- `ssh.agent: true`, no key: the command runs with the agent's key; a new login (another agent,
  at another socket path) changes nothing: the next `up` is all `same`;
- the encrypted key alone: one clear error, before any resource, naming the two fixes.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.engine import sim_nodes
from tests.engine.conftest import ROOT, Project, engine_env, errors, program_project
from tests.integration import simpi

pytestmark = [pytest.mark.engine, pytest.mark.integration]

PASSPHRASE = "engine-ssh-passphrase-51d2"

PROGRAM = textwrap.dedent(
    '''
    """One remote command per node, connected as the project's program connects."""
    import sys

    sys.path.insert(0, {root!r})

    import pulumi
    from pulumi_command import Provider, remote

    from components import config as stack_config
    from components.stack_args import pi_node_args

    config = stack_config.load()
    provider = Provider("command")
    for node, args in pi_node_args(config):
        whoami = remote.Command(
            f"{{node.name}}-whoami",
            connection=args.ssh.connection(),
            create="id -un",
            opts=pulumi.ResourceOptions(provider=provider),
        )
        pulumi.export(node.name, whoami.stdout)
    '''
)


@dataclass
class Lab:
    project: Project
    pi: simpi.SimPi
    key: Path
    tmp: Path

    def stack(self, name: str, ssh: dict[str, Any], secrets: dict[str, str]) -> None:
        """A new stack `name` with the Pi as its one server, `ssh` and the secrets."""
        assert self.project.pulumi("stack", "init", name).returncode == 0
        stack_file = self.project.path / f"Pulumi.{name}.yaml"
        content = yaml.safe_load(stack_file.read_text()) or {}
        content["config"] = {
            "picluster:target": "k3s",
            "picluster:k3s": {"version": "v1.31.4+k3s1"},
            "picluster:ssh": ssh,
            "picluster:nodes": [
                {"name": "e2e-pi", "host": "127.0.0.1", "port": self.pi.port, "role": "server"}
            ],
        }
        stack_file.write_text(yaml.safe_dump(content))
        for key, value in secrets.items():
            self.project.set_secret(name, key, value)  # on stdin, never on a command line

    def with_env(self, **env: str | None) -> Project:
        """The project run with these environment variables set (None: removed)."""
        changed = {**self.project.env}
        for key, value in env.items():
            if value is None:
                changed.pop(key, None)
            else:
                changed[key] = value
        return Project(self.project.path, changed)


def up_outputs(project: Project, stack: str) -> tuple[dict[str, int], dict[str, Any]]:
    summary = project.up(stack, timeout=300).summary
    out = project.pulumi("stack", "output", "--json", "-s", stack)
    assert out.returncode == 0, out.stderr
    return summary, json.loads(out.stdout)


@pytest.fixture(scope="module")
def lab(engine_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    image = sim_nodes.image()
    tmp = tmp_path_factory.mktemp("ssh-auth")
    env = engine_env(engine_bin, tmp)
    env.pop("SSH_AUTH_SOCK", None)  # only the agents this test starts
    project = program_project(engine_bin, tmp, "picluster", PROGRAM.format(root=str(ROOT)), env)
    key = simpi.generate_protected_key(tmp / "key", PASSPHRASE)
    with simpi.SimPiLab(image) as sim:
        pi = sim.start_pi("ssh-auth")
        # Only the protected key signs in: the lab's own key is taken away.
        keys = f"/home/{pi.user}/.ssh/authorized_keys"
        pi.put(keys, key.with_suffix(".pub").read_bytes(), mode="0600")
        pi.exec("chown", f"{pi.user}:{pi.user}", keys)
        yield Lab(project, pi, key, tmp)


def test_a_key_with_its_passphrase_signs_in(lab: Lab) -> None:
    lab.stack(
        "passphrase",
        {"user": "pi", "privateKeyPath": str(lab.key)},
        {"sshKeyPassphrase": PASSPHRASE},
    )
    summary, outputs = up_outputs(lab.project, "passphrase")
    assert summary.get("create") == 3, summary  # stack, provider, command
    assert outputs["e2e-pi"] == "pi"
    state = lab.project.pulumi("stack", "export", "-s", "passphrase")
    assert state.returncode == 0
    assert PASSPHRASE not in state.stdout  # a secret in the state, encrypted


def test_the_agent_alone_signs_in_and_a_new_login_changes_nothing(lab: Lab) -> None:
    lab.stack("agent", {"user": "pi", "agent": True}, {})
    with simpi.SshAgent(lab.tmp / "login-1") as first:
        first.add(lab.key, PASSPHRASE)
        summary, outputs = up_outputs(lab.with_env(SSH_AUTH_SOCK=str(first.socket)), "agent")
    assert summary.get("create") == 3, summary
    assert outputs["e2e-pi"] == "pi"
    with simpi.SshAgent(lab.tmp / "login-2") as second:
        second.add(lab.key, PASSPHRASE)
        summary, _ = up_outputs(lab.with_env(SSH_AUTH_SOCK=str(second.socket)), "agent")
    assert set(summary) == {"same"}, summary


def test_an_encrypted_key_alone_is_one_error_before_any_resource(lab: Lab) -> None:
    lab.stack("locked", {"user": "pi", "privateKeyPath": str(lab.key)}, {})
    result = lab.project.pulumi("up", "--yes", "--json", "-s", "locked", timeout=300)
    assert result.returncode != 0
    found = errors(result.stdout)
    assert any(
        "is protected by a passphrase" in e and "sshKeyPassphrase" in e and "ssh.agent" in e
        for e in found
    ), [*found, result.stderr[-2000:]]
    assert not any("Traceback" in e for e in found)
    listed = lab.project.pulumi("stack", "--show-urns", "-s", "locked")
    assert "command:remote:Command" not in listed.stdout
