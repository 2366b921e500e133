"""PiNode: one Raspberry Pi taken from a fresh Raspberry Pi OS Lite to a host ready for K3s.

Two remote steps, each one SSH session running idempotent scripts from `components/scripts/`:

- `prepare`: `facts.sh` (architecture, OS, Pi model, memory, page size; refuses an unsupported
  OS), `prepare.sh` (apt-get update/upgrade, hostname, cgroup flags in the right cmdline.txt,
  swap off for good, kernel settings, modules), `reboot.sh` (reboots only when the boot command
  line changed, closing SSH first so the next step waits for the node to come back);
- `gate`: `cgroup-gate.sh` refuses to go on unless the memory cgroup controller is active, then
  `docker.sh` when the node asks for Docker.

Values reach the scripts on stdin (`sudo bash -s`), never on a command line.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.remote_script import run_marker, steps_payload

# A rebooting Pi refuses connections for about a minute. The provider waits between failed dials
# (growing to a few seconds), so 120 dials wait several minutes without hammering the Pi.
DIAL_ERROR_LIMIT = 120
PER_DIAL_TIMEOUT = 10


@dataclass(frozen=True, kw_only=True)
class SshTarget:
    """How to reach a Pi over SSH."""

    host: pulumi.Input[str]
    """IPv4 address or DNS name."""
    port: int
    """SSH port."""
    user: str
    """SSH user with passwordless sudo (Raspberry Pi OS's first user has it)."""
    private_key: pulumi.Input[str] | None
    """The private key's content, a secret; None when the agent alone signs in."""
    host_key: str | None = None
    """The Pi's SSH host key (`ssh-ed25519 AAAA...`); pinned when given."""
    private_key_password: pulumi.Input[str] | None = None
    """The private key's passphrase (`sshKeyPassphrase`), a secret; None for a key without one."""
    agent: bool = False
    """Sign in with the ssh-agent at `$SSH_AUTH_SOCK` (`ssh.agent`). The remote commands need
    nothing for it: pulumi-command reads `$SSH_AUTH_SOCK` itself at each run (never stored, so a
    new login changes no command); the image push's tunnel uses it only when this is set."""

    def connection(self) -> remote.ConnectionArgs:
        """Connection arguments for a remote command on this Pi."""
        return remote.ConnectionArgs(
            host=self.host,
            port=self.port,
            user=self.user,
            private_key=self.private_key,
            private_key_password=self.private_key_password,
            host_key=self.host_key,
            dial_error_limit=DIAL_ERROR_LIMIT,
            per_dial_timeout=PER_DIAL_TIMEOUT,
        )


@dataclass(frozen=True, kw_only=True)
class PiNodeArgs:
    """Inputs of a PiNode."""

    node_name: str
    """Hostname to set, and the node's Kubernetes name."""
    ssh: SshTarget
    """How to reach the Pi."""
    upgrade: bool = True
    """Run `apt-get upgrade` (the seed's `apt-get update && upgrade`)."""
    docker: bool = False
    """Install Docker, for the Docker target on this Pi."""
    expected_arch: str = "arm64"
    """The architecture a warning is printed against (64-bit Raspberry Pi OS)."""


class PiNode(pulumi.ComponentResource):
    """A Raspberry Pi prepared for K3s: facts checked, OS prepared, memory cgroup active."""

    facts: pulumi.Output[str]
    """The prepare step's output: facts and what changed."""
    ready: pulumi.Output[str]
    """The gate's output; resolves once the node passed the memory-cgroup gate."""
    ssh: SshTarget
    """How to reach the Pi, for the steps that follow (K3s install)."""

    def __init__(
        self, name: str, args: PiNodeArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("picluster:index:PiNode", name, None, opts)
        self.ssh = args.ssh
        if args.ssh.host_key is None:
            pulumi.warn(
                f"node {args.node_name}: no hostKey configured, so its SSH host key is not "
                "verified; pin it with picluster:nodes[].hostKey (README: Preparing the Pis)",
                resource=self,
            )
        connection = args.ssh.connection()
        child = pulumi.ResourceOptions(parent=self)

        prepare_stdin = steps_payload(
            ["facts.sh", "prepare.sh", "reboot.sh"],
            {
                "NODE_NAME": args.node_name,
                "EXPECTED_ARCH": args.expected_arch,
                "UPGRADE": "1" if args.upgrade else "0",
            },
        )
        prepare = remote.Command(
            f"{name}-prepare",
            connection=connection,
            create="sudo bash -s",
            update="sudo bash -s",
            stdin=prepare_stdin,
            add_previous_output_in_env=False,
            opts=child,
        )

        gate_scripts = ["cgroup-gate.sh"] + (["docker.sh"] if args.docker else [])
        gate_values = {"DOCKER_USER": args.ssh.user} if args.docker else {}
        gate = remote.Command(
            f"{name}-gate",
            connection=connection,
            create="sudo bash -s",
            update="sudo bash -s",
            # Runs again after every prepare, which may have rebooted the node: each run of
            # prepare changes this stdin, an in-place update (never `triggers`, which replace).
            stdin=prepare.stdout.apply(
                lambda out: steps_payload(
                    gate_scripts, {**gate_values, "AFTER_RUN": run_marker(out)}
                )
            ),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[prepare])),
        )

        self.facts = prepare.stdout
        self.ready = gate.stdout
        self.register_outputs({"facts": self.facts, "ready": self.ready})
