"""`bin/picluster ssh`: the node's user, port and pinned key, no ~/.ssh/config, no key in argv,
and a refusal when nothing pins the node's host key."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from cli import ssh, stack
from cli.__main__ import main
from components.config import validate

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKc5ZQ7u1fyaKUl1d3KdWFPgOFjd2d6d1a4zLhq8Uz1b"


def prod(tmp_path: Path, **ssh_config: Any) -> stack.Stack:
    config = {
        "target": "k3s",
        "ssh": {"user": "pi", "port": 2222, **ssh_config},
        "k3s": {"version": "v1.31.4+k3s1"},
        "nodes": [
            {"name": "pi-1", "host": "10.0.0.1", "role": "server", "hostKey": f"{KEY} pi@pi-1"},
            {"name": "pi-2", "host": "pi-2.lan", "role": "agent", "user": "admin", "port": 22},
        ],
    }
    return stack.Stack("prod", validate(config, secret_values=False, project_dir=tmp_path))


def test_a_pinned_node_is_checked_against_its_key_alone(tmp_path: Path) -> None:
    stack_ = prod(tmp_path)
    _, node = ssh.find_node(stack_, "pi-1")
    argv = ssh.ssh_argv(
        stack_,
        node,
        known_hosts=Path("/k"),
        auth=["-i", "/id", "-o", "IdentitiesOnly=yes"],
        agent=None,
        command=["uptime"],
    )
    assert argv == [
        "ssh", "-F", "/dev/null", "-p", "2222",
        "-o", "UserKnownHostsFile=/k", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "HostKeyAlias=picluster-pi-1", "-o", "StrictHostKeyChecking=yes",
        "-i", "/id", "-o", "IdentitiesOnly=yes",
        "pi@10.0.0.1", "uptime",
    ]  # fmt: skip


def test_a_node_of_its_own_user_and_port_without_a_key_uses_the_users_known_hosts(
    tmp_path: Path,
) -> None:
    stack_ = prod(tmp_path)
    _, node = ssh.find_node(stack_, "pi-2")
    argv = ssh.ssh_argv(stack_, node, known_hosts=None, auth=[], agent=Path("/a.sock"))
    assert argv == [
        "ssh", "-F", "/dev/null", "-p", "22", "-o", "StrictHostKeyChecking=accept-new",
        "-o", "IdentityAgent=/a.sock", "admin@pi-2.lan",
    ]  # fmt: skip


def test_an_unknown_node_gets_the_names(tmp_path: Path) -> None:
    with pytest.raises(stack.StackError, match="has no node 'pi-9'; its nodes: pi-1, pi-2"):
        ssh.find_node(prod(tmp_path), "pi-9")


def test_a_node_without_a_host_key_is_refused_without_accept_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack_ = prod(tmp_path)
    monkeypatch.setattr(ssh, "load", lambda name: stack_)
    ran: list[list[str]] = []
    monkeypatch.setattr(ssh.subprocess, "run", lambda argv, **_: ran.append(argv))
    args = argparse.Namespace(stack="prod", node="pi-2", accept_new=False, rest=[])
    assert ssh.run(args) == 2
    assert not ran
    message = capsys.readouterr().err
    assert "pi-2 has no pinned host key (picluster:nodes[1].hostKey)" in message
    assert "--accept-new" in message


def test_the_secret_key_goes_to_a_private_agent_not_to_a_file_or_argv(tmp_path: Path) -> None:
    key = tmp_path / "id"
    ssh_keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", str(key)]
    ssh.subprocess.run(ssh_keygen, check=True)
    secret = key.read_text()
    key.unlink()
    with ssh.agent_with(secret) as socket:
        listed = ssh.subprocess.run(
            ["ssh-add", "-L"],
            env={"SSH_AUTH_SOCK": str(socket), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert listed.stdout.split()[:2] == (tmp_path / "id.pub").read_text().split()[:2]
        assert {p.name for p in socket.parent.iterdir()} == {"agent.sock"}
    assert not socket.exists()
    with pytest.raises(stack.StackError, match="ssh-add refused"), ssh.agent_with("not a key"):
        pass


def test_the_remote_command_follows_two_dashes_and_options_stay_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(ssh, "run", lambda args: seen.append(args) or 0)
    assert main(["ssh", "pi-1", "-s", "lab", "--", "uname", "-a", "--", "x"]) == 0
    assert main(["ssh", "pi-1"]) == 0
    assert [(a.node, a.stack, a.rest, a.accept_new) for a in seen] == [
        ("pi-1", "lab", ["uname", "-a", "--", "x"], False),
        ("pi-1", "prod", [], False),
    ]
    with pytest.raises(SystemExit):
        main(["status", "--", "x"])


def test_a_secret_key_with_a_passphrase_is_unlocked_without_a_terminal(tmp_path: Path) -> None:
    key = tmp_path / "id"
    ssh_keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret phrase", "-f", str(key)]
    ssh.subprocess.run(ssh_keygen, check=True)
    with ssh.agent_with(key.read_text(), "s3cret phrase\n") as socket:
        # The passphrase's file is gone once the key is in the agent.
        assert {p.name for p in socket.parent.iterdir()} == {"agent.sock", "askpass"}
        listed = ssh.subprocess.run(
            ["ssh-add", "-L"], env={"SSH_AUTH_SOCK": str(socket)}, capture_output=True,
            text=True, check=False,
        )  # fmt: skip
        assert listed.stdout.split()[:2] == (tmp_path / "id.pub").read_text().split()[:2]
    with (
        pytest.raises(stack.StackError, match="ssh-add refused"),
        ssh.agent_with(key.read_text(), "wrong"),
    ):
        pass
