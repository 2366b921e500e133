"""Restore the K3s datastore from a snapshot: the procedure `bin/restore-datastore` runs.

    bin/restore-datastore --stack prod --list                # the snapshots on the first server
    bin/restore-datastore --stack prod --snapshot NAME       # what it would do; changes nothing
    bin/restore-datastore --stack prod --snapshot NAME --yes # does it

It reads the stack's configuration (`pulumi config --json`, no secret values) and, server by
server over SSH, runs `components/scripts/k3s-datastore-restore.sh` (as `sudo bash -s`, its
values on stdin, as the Pulumi steps do):

- SQLite (one server): stop K3s, move state.db aside and put the copy in its place, start K3s.
- Embedded etcd: stop K3s on every server; on the first, `k3s server --cluster-reset
  --cluster-reset-restore-path=<snapshot>` (k3s-io/docs datastore/backup-restore.md); start it;
  then one at a time, every other server's old etcd data moved aside and K3s started, so it
  joins the restored cluster as a new member. Agents are not touched: they reconnect.

Everything is checked before anything is stopped (etcd: the snapshot must be in the first
server's `k3s etcd-snapshot ls`, with S3 the bucket's listing too). When a stop or the restore
itself fails, the servers it stopped are started again with the data they had.

SSH checks each Pi's pinned host key (`nodes[].hostKey`) against a known_hosts file of those keys
only; a node without one is checked against your own known_hosts, and never accepted unseen. The
token never travels: K3s reads its token-file from config.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components import ssh_auth  # noqa: E402
from components.config import SECRET_KEYS, ConfigError, NodeRole, Settings, validate  # noqa: E402
from components.remote_script import parse_summary, steps_payload  # noqa: E402

SCRIPT = "k3s-datastore-restore.sh"
READY_TIMEOUT_SECONDS = 600
COPY_ALLOWANCE_SECONDS = 600
"""The restore's copy of the old etcd data aside (at most etcd's 2 GiB quota, K3s's default, on
an SD card), which `READY_TIMEOUT_SECONDS` does not bound."""
SSH_TIMEOUT_SECONDS = READY_TIMEOUT_SECONDS + COPY_ALLOWANCE_SECONDS + 120
"""How long one step may take over SSH: more than the longest a step runs on the server (the
restore: the copy, then `timeout READY_TIMEOUT k3s server --cluster-reset`)."""


@dataclass(frozen=True, kw_only=True)
class Server:
    """A K3s server, as SSH reaches it."""

    name: str
    host: str
    port: int
    user: str
    host_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a restore does, and where."""

    datastore: str
    """`sqlite` (one server) or `etcd`."""
    first: Server
    others: tuple[Server, ...]
    snapshot: str

    def describe(self) -> str:
        """The steps, in words, before anything runs."""
        names = ", ".join(s.name for s in (*self.others, self.first))
        if self.datastore == "sqlite":
            return (
                f"Restore K3s's SQLite datastore on {self.first.name} from {self.snapshot}:\n"
                f"  1. stop K3s on {self.first.name}\n"
                "  2. move state.db aside (server/db-before-restore-<time>/) and put the copy in "
                "its place\n"
                f"  3. start K3s and wait until {self.first.name} is Ready\n"
                "Everything written to the cluster since the snapshot is lost."
            )
        lines = [
            f"Restore K3s's embedded etcd from {self.snapshot}:",
            f"  1. stop K3s on {names}",
            f"  2. on {self.first.name}: k3s server --cluster-reset "
            f"--cluster-reset-restore-path=<{self.snapshot}> (a new one-member etcd cluster)",
            f"  3. start K3s on {self.first.name} and wait until it is Ready",
        ]
        for i, server in enumerate(self.others, start=4):
            lines.append(
                f"  {i}. on {server.name}: move its old etcd data aside "
                "(server/db-before-restore-<time>/), start K3s, wait until it has rejoined"
            )
        lines.append("Everything written to the cluster since the snapshot is lost.")
        return "\n".join(lines)


def plan(settings: Settings, snapshot: str) -> Plan:
    """The restore plan for the stack's servers (the first listed is the one K3s restores on)."""
    servers = [n for n in settings.nodes if n.role is NodeRole.SERVER]
    if not servers:
        raise ConfigError(["picluster:nodes: lists no server; nothing to restore"])
    ssh = settings.ssh
    assert ssh is not None  # the config requires ssh when nodes are listed
    targets = [
        Server(
            name=n.name,
            host=n.host,
            port=n.port if n.port is not None else ssh.port,
            user=n.user if n.user is not None else ssh.user,
            host_key=n.host_key,
        )
        for n in servers
    ]
    return plan_for(targets[0], targets[1:], snapshot)


def plan_for(first: Server, others: Sequence[Server], snapshot: str) -> Plan:
    """The restore plan for these servers: embedded etcd when there is more than one."""
    return Plan(
        datastore="etcd" if others else "sqlite",
        first=first,
        others=tuple(others),
        snapshot=snapshot,
    )


class RestoreError(RuntimeError):
    """A step failed; the message says where and what the server printed."""

    restarted: tuple[str, ...] = ()
    """The servers started again after a failed restore (nothing was restored on them)."""


class Ssh:
    """Runs the restore script on a server, with pinned host keys."""

    def __init__(
        self,
        identity: Path | None,
        *,
        connect_timeout: int = 10,
        step_timeout: float = SSH_TIMEOUT_SECONDS,
    ) -> None:
        self._identity = identity
        self._timeout = connect_timeout
        self._step_timeout = step_timeout
        self._dir = tempfile.TemporaryDirectory(prefix="picluster-restore-")

    def close(self) -> None:
        self._dir.cleanup()

    def _known_hosts(self, server: Server) -> list[str]:
        if server.host_key is None:
            print(
                f"warning: {server.name} has no pinned hostKey; checking it against your "
                "~/.ssh/known_hosts (an unknown key is refused)",
                file=sys.stderr,
            )
            return ["-o", "StrictHostKeyChecking=yes"]
        entry = server.host if server.port == 22 else f"[{server.host}]:{server.port}"
        path = Path(self._dir.name) / f"known_hosts-{server.name}"
        path.write_text(f"{entry} {server.host_key}\n")
        return ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={path}"]

    def run(self, server: Server, values: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        """The script's step on `server`; RestoreError when it has not answered in time."""
        argv = [
            "ssh",
            # No key file with `ssh.agent` alone: the agent at SSH_AUTH_SOCK signs in.
            *(["-i", str(self._identity)] if self._identity is not None else []),
            "-p",
            str(server.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"ConnectTimeout={self._timeout}",
            *self._known_hosts(server),
            f"{server.user}@{server.host}",
            "sudo",
            "bash",
            "-s",
        ]
        try:
            return subprocess.run(
                argv,
                input=steps_payload([SCRIPT], values),
                capture_output=True,
                text=True,
                timeout=self._step_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RestoreError(
                f"{values['ACTION']} on {server.name} gave no answer in {self._step_timeout}s; "
                f"it may still be running there: look at `systemctl status k3s` and "
                f"`journalctl -u k3s` on {server.name}, and when it is over run the same command "
                "again (every step can be repeated)"
            ) from None


Runner = Callable[[Server, Mapping[str, str]], subprocess.CompletedProcess[str]]


def _step(run: Runner, server: Server, action: str, datastore: str, snapshot: str = "") -> str:
    values = {
        "ACTION": action,
        "DATASTORE": datastore,
        "NODE_NAME": server.name,
        "SNAPSHOT": snapshot,
        "READY_TIMEOUT": str(READY_TIMEOUT_SECONDS),
    }
    result = run(server, values)
    if result.returncode != 0:
        raise RestoreError(
            f"{action} on {server.name} failed (exit {result.returncode}):\n{result.stderr.strip()}"
        )
    if action == "list":  # the listing, without the summary line
        return "".join(
            line
            for line in result.stdout.splitlines(keepends=True)
            if not line.startswith("picluster ")
        )
    line = parse_summary(result.stdout).line
    print(f"{server.name}: {action}: {line}")
    return line


def list_snapshots(run: Runner, target: Plan) -> str:
    """The snapshots on the first server (etcd: K3s's list, with the bucket's)."""
    return _step(run, target.first, "list", target.datastore)


def restore(run: Runner, target: Plan) -> None:
    """Run the plan: check everything first, then stop, restore, start and rejoin.

    When a stop or the restore itself fails, nothing was restored: the servers it stopped are
    started again (with their data as it was) before the error is raised.
    """
    _step(run, target.first, "check", target.datastore, target.snapshot)
    for server in target.others:
        _step(run, server, "check", target.datastore)
    stopped: list[Server] = []
    try:
        for server in (*target.others, target.first):
            if _step(run, server, "stop", target.datastore).endswith("changed: stopped"):
                stopped.append(server)
        _step(run, target.first, "restore", target.datastore, target.snapshot)
    except RestoreError as error:
        _start_again(run, target, stopped, error)
        raise
    _step(run, target.first, "start", target.datastore)
    for server in target.others:
        _step(run, server, "rejoin", target.datastore)
        _step(run, server, "start", target.datastore)


def _start_again(run: Runner, target: Plan, stopped: Sequence[Server], error: RestoreError) -> None:
    """After a failed stop or restore: K3s started on every server it was stopped on, all of them
    before waiting for any (an etcd member alone has no quorum), then each waited for."""
    if not stopped:
        return
    names = ", ".join(s.name for s in stopped)
    print(
        f"bin/restore-datastore: nothing was restored; starting K3s again on {names}",
        file=sys.stderr,
    )
    try:
        for server in stopped:
            _step(run, server, "resume", target.datastore)
        for server in stopped:
            _step(run, server, "start", target.datastore)
    except RestoreError as again:
        error.add_note(f"starting K3s again failed too: {again}")
        return
    error.restarted = tuple(s.name for s in stopped)


def stack_settings(
    stack: str, *, cwd: Path = ROOT, env: Mapping[str, str] | None = None
) -> Settings:
    """The stack's validated settings, from `pulumi config --json` (secret values left out)."""
    result = subprocess.run(
        ["pulumi", "config", "--json", "--stack", stack],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=dict(env) if env is not None else None,
    )
    if result.returncode != 0:
        raise ConfigError([f"pulumi config --stack {stack} failed: {result.stderr.strip()}"])
    out = result.stdout
    raw: dict[str, object] = {}
    for full_key, entry in json.loads(out).items():
        namespace, _, key = full_key.partition(":")
        if namespace != "picluster":
            continue
        if key in SECRET_KEYS:
            raw[key] = None  # set; its value is neither shown nor needed here
        elif "objectValue" in entry:
            raw[key] = entry["objectValue"]
        else:
            value = entry.get("value")
            raw[key] = json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value
    return validate(raw, secret_values=False, stack=stack)


def identity_problem(identity: Path | None) -> str | None:
    """Why `ssh` could not sign in with `identity` without asking (BatchMode: a restore must not
    stop at a prompt half way): a passphrase-protected key that no agent holds."""
    if identity is None or not identity.is_file():
        return None
    try:
        text = identity.read_text(errors="replace")
    except OSError:
        return None
    if ssh_auth.protection(text) is ssh_auth.Protection.PASSPHRASE and not os.environ.get(
        ssh_auth.AGENT_SOCKET_ENV
    ):
        return (
            f"{identity} is protected by a passphrase; load it into ssh-agent first "
            f'(`eval "$(ssh-agent)"` then `ssh-add {identity}`) and run this again'
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bin/restore-datastore", description="Restore the K3s datastore from a snapshot."
    )
    parser.add_argument("--stack", default="prod")
    parser.add_argument("--snapshot", help="the snapshot's file name, as --list prints it")
    parser.add_argument("--list", action="store_true", help="list the snapshots and stop")
    parser.add_argument(
        "--identity", help="SSH private key (default: ssh.privateKeyPath; none with ssh.agent)"
    )
    parser.add_argument("--yes", action="store_true", help="do it (without: only say what)")
    args = parser.parse_args(argv)
    try:
        settings = stack_settings(args.stack)
    except ConfigError as error:
        print(f"bin/restore-datastore: {error}", file=sys.stderr)
        return 2
    auth = ssh_auth.client_auth(settings.ssh, set())
    identity = Path(args.identity).expanduser() if args.identity else auth.identity_file
    if identity is None and not auth.agent:
        print("bin/restore-datastore: give --identity (the SSH key)", file=sys.stderr)
        return 2
    problem = identity_problem(identity)
    if problem:
        print(f"bin/restore-datastore: {problem}", file=sys.stderr)
        return 2
    if not args.list and not args.snapshot:
        print(
            "bin/restore-datastore: name the snapshot to restore (--snapshot NAME, from --list)",
            file=sys.stderr,
        )
        return 2
    target = plan(settings, args.snapshot or "")
    ssh = Ssh(identity)
    try:
        if args.list:
            print(list_snapshots(ssh.run, target), end="")
            return 0
        print(target.describe())
        if not args.yes:
            print("Nothing changed. Run again with --yes to do it.")
            return 1
        restore(ssh.run, target)
    except RestoreError as error:
        print(f"bin/restore-datastore: {error}", file=sys.stderr)
        for note in getattr(error, "__notes__", ()):
            print(f"bin/restore-datastore: {note}", file=sys.stderr)
        if error.restarted:
            print(
                f"bin/restore-datastore: K3s was started again on {', '.join(error.restarted)} "
                "with the data it had; fix the cause and run the same command again",
                file=sys.stderr,
            )
        elif not args.list:
            print(
                "bin/restore-datastore: K3s stays as the steps above left it (stopped on the "
                "servers a `stop` reached); fix the cause and run the same command again: every "
                "step can be repeated, and what a restore replaced is kept under "
                "/var/lib/rancher/k3s/server/db-before-restore-*",
                file=sys.stderr,
            )
        return 1
    finally:
        ssh.close()
    print(f"Restored {args.snapshot}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
