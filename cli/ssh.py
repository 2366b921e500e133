"""`bin/picluster ssh NODE [-s STACK] [--accept-new] [-- COMMAND ...]`: a shell (or one command)
on a configured Pi, reached exactly as `pulumi up` reaches it.

As `ssh.user` (or the node's `user`) on the node's port, the host key checked against the
pinned `nodes[].hostKey` alone: a known_hosts file of that one key under a private alias
(`StrictHostKeyChecking yes`, the global and user known_hosts not read), and `-F /dev/null` so
no `~/.ssh/config` entry (another user, a ProxyJump, another key) changes the connection, as
components/scripts/image-build.sh's tunnel does. The key is chosen as the stack's remote commands
choose it (components/ssh_auth.py `client_auth`): `ssh.privateKeyPath` (ssh asks for its
passphrase, or your agent has it), your ssh-agent with `ssh.agent`, or the secret
`sshPrivateKey`, which goes from `pulumi config get` into a private ssh-agent of this command
(never an argv; its passphrase `sshKeyPassphrase`, when set, reaches ssh-add through a 0600
file removed as soon as the key is added), stopped when ssh exits.

A node without a pinned hostKey is refused, unless `--accept-new`: then its key is checked
against your own ~/.ssh/known_hosts and remembered there the first time (trust on first use).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cli.output import say
from cli.stack import PULUMI_SECONDS, Stack, StackError, add_stack_option, load, raw_settings
from components import ssh_auth
from components.config import SECRET_KEYS, ConfigError, NodeConfig

AGENT_SECONDS = 10.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ssh",
        help="ssh to a configured Pi, with its pinned host key",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("node", metavar="NODE", help="a name of picluster:nodes")
    add_stack_option(parser, "prod")
    parser.add_argument(
        "--accept-new",
        action="store_true",
        help="for a node without hostKey: trust its key the first time (~/.ssh/known_hosts)",
    )
    parser.set_defaults(func=run, takes_command=True)


def find_node(stack: Stack, name: str) -> tuple[int, NodeConfig]:
    """The node `name` of picluster:nodes and its index; StackError listing the names."""
    nodes = stack.settings.nodes
    for index, node in enumerate(nodes):
        if node.name == name:
            return index, node
    names = ", ".join(n.name for n in nodes) or "none (picluster:nodes is empty)"
    raise StackError(f"stack {stack.name} has no node {name!r}; its nodes: {names}")


def host_alias(node: NodeConfig) -> str:
    return f"picluster-{node.name}"


def ssh_argv(
    stack: Stack,
    node: NodeConfig,
    *,
    known_hosts: Path | None,
    auth: Sequence[str],
    agent: Path | None,
    command: Sequence[str] = (),
) -> list[str]:
    """The ssh command line: the pinned key checked when `known_hosts` is given (else the
    user's known_hosts, first use accepted), `auth` options for the key (`-i`), and `agent`:
    the private agent holding the secret key."""
    ssh = stack.settings.ssh
    user = node.user or (ssh.user if ssh else "pi")
    port = node.port if node.port is not None else (ssh.port if ssh else 22)
    argv = ["ssh", "-F", "/dev/null", "-p", str(port)]
    if known_hosts is not None:
        argv += [
            "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlias={host_alias(node)}",
            "-o", "StrictHostKeyChecking=yes",
        ]  # fmt: skip
    else:
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
    argv += auth
    if agent is not None:
        argv += ["-o", f"IdentityAgent={agent}"]
    argv.append(f"{user}@{node.host}")
    return [*argv, *command]


def secret(stack: Stack, key: str) -> str:
    """The secret `key` of the stack (`pulumi config get`, which decrypts it with the stack's
    passphrase)."""
    argv = stack.pulumi_argv("config", "get", key, "--stack", stack.name)
    try:
        result = subprocess.run(
            argv, cwd=stack.root, capture_output=True, text=True, timeout=PULUMI_SECONDS,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        raise StackError(f"`{' '.join(argv)}` could not run: {error}") from None
    if result.returncode != 0:
        raise StackError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result.stdout


ASKPASS = '#!/bin/sh\nf="$PICLUSTER_KEY_PASSPHRASE_FILE"\ncat "$f" && rm -f "$f"\n'
"""ssh-add's SSH_ASKPASS for `sshKeyPassphrase`: prints the 0600 file the passphrase is in, once
(ssh-add asks again after a wrong one, and gives up on an empty answer)."""


@contextmanager
def agent_with(key: str, passphrase: str | None = None) -> Iterator[Path]:
    """A private ssh-agent holding `key` (given on ssh-add's stdin, unlocked with `passphrase`
    when it has one); its socket. Stopped, and its directory removed, when the block ends."""
    with tempfile.TemporaryDirectory(prefix="picluster-agent-") as directory:
        socket = Path(directory) / "agent.sock"
        agent = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(socket)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + AGENT_SECONDS
            while not socket.exists():
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise StackError("ssh-agent did not start")
                time.sleep(0.05)
            env = {**os.environ, "SSH_AUTH_SOCK": str(socket)}
            if passphrase is not None:
                askpass = Path(directory) / "askpass"
                askpass.write_text(ASKPASS)
                askpass.chmod(0o700)
                secret_file = Path(directory) / "passphrase"
                fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as file:
                    file.write(passphrase.rstrip("\n"))
                env |= {
                    "SSH_ASKPASS": str(askpass),
                    "SSH_ASKPASS_REQUIRE": "force",
                    "PICLUSTER_KEY_PASSPHRASE_FILE": str(secret_file),
                }
            try:
                added = subprocess.run(
                    ["ssh-add", "-q", "-"],
                    input=key if key.endswith("\n") else key + "\n",
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    start_new_session=True,  # no terminal: ssh-add asks SSH_ASKPASS, not a tty
                )
            finally:
                (Path(directory) / "passphrase").unlink(missing_ok=True)
            if added.returncode != 0:
                raise StackError(
                    f"ssh-add refused the secret picluster:sshPrivateKey: {added.stderr.strip()}"
                )
            yield socket
        finally:
            agent.terminate()
            agent.wait(timeout=10)


def run(args: argparse.Namespace) -> int:
    command = list(args.rest)  # after `--` (cli/__main__.py)
    try:
        stack = load(args.stack)
        index, node = find_node(stack, args.node)
        if node.host_key is None and not args.accept_new:
            raise StackError(
                f"{node.name} has no pinned host key (picluster:nodes[{index}].hostKey), so "
                "nothing proves the machine that answers is that Pi. Pin it: on the Pi, "
                "`cat /etc/ssh/ssh_host_ed25519_key.pub`, and set hostKey to that line; or "
                "run again with --accept-new to trust it the first time (in ~/.ssh/known_hosts)"
            )
        secrets_set = set(raw_settings(stack.name, stack.root)) & set(SECRET_KEYS)
        auth = ssh_auth.client_auth(stack.settings.ssh, secrets_set)
        key = secret(stack, "sshPrivateKey") if auth.key_in_secret else None
        passphrase = None
        if key is not None and "sshKeyPassphrase" in secrets_set:
            passphrase = secret(stack, "sshKeyPassphrase")
        with tempfile.TemporaryDirectory(prefix="picluster-ssh-") as directory:
            known_hosts = None
            if node.host_key is not None:
                known_hosts = Path(directory) / "known_hosts"
                known_hosts.write_text(f"{host_alias(node)} {node.host_key}\n")
            with agent_with(key, passphrase) if key is not None else _no_agent() as agent:
                argv = ssh_argv(
                    stack, node, known_hosts=known_hosts, auth=auth.ssh_options(), agent=agent,
                    command=command,
                )  # fmt: skip
                code = subprocess.run(argv, check=False).returncode
    except (ConfigError, StackError) as error:
        say("ssh", str(error))
        return 2
    except KeyboardInterrupt:
        return 130
    if code == 255 and node.host_key is not None:
        say(
            "ssh",
            f"ssh could not connect to {node.name} (exit 255). If it said 'Host key "
            f"verification failed', the Pi's key is not picluster:nodes[{index}].hostKey: a "
            "re-flashed Pi has a new one (README: A re-flashed Pi)",
        )
    return code


@contextmanager
def _no_agent() -> Iterator[None]:
    yield None
