"""The README's recipes for a re-flashed Pi and a dead Pi ("Operating and troubleshooting"), run
with the real engine on simulated Pis.

- A re-flashed agent: a new SSH host key in `hostKey` is a change of the connection of every step
  that runs on that Pi, which pulumi-command diffs as an in-place update (only `triggers` replace),
  so exactly the steps on that Pi run again: its prepare and its K3s install (on the fresh Pi);
  nothing is replaced or deleted, no other node's step runs. K3s refuses a known node name with
  another node password until its node-password Secret is deleted; the Node stays, labels and
  all, so the node check on the first server has nothing to redo.
- A dead agent: once its Node is deleted by hand and the node left `nodes`, `pulumi up --exclude`
  of its steps on the dead Pi lets the engine remove its node check (on the first server) without
  dialling the dead Pi; `pulumi state delete` of its install, then `pulumi up`, forget the rest,
  and nothing runs on the dead Pi.

A small program (written below) builds the project's own K3sCluster on three simulated Pis with
pinned host keys; a remote command without a `delete` stands in for each PiNode's steps (PiNode's
prepare and gate have none either), and one command after every node check stands in for the
monitoring, which waits for every node in the prod program. The K3s installer download is the
sim-Pi tests' test double; `pulumi-resource-command` is a double of the real plugin
(tools/engine/README.md); the engine, its diff, exclude and state rules are the real ones.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.engine import sim_nodes
from tests.engine.conftest import ROOT, Project, program_project
from tests.integration import simpi
from tests.integration.test_k3s_scripts import DOUBLE_LOG, DOUBLE_ON_PI

pytestmark = [pytest.mark.engine, pytest.mark.integration]

STACK = "recovery"
NODES = (("rec-server", "server"), ("rec-agent-1", "agent"), ("rec-agent-2", "agent"))
FLASHED, DEAD = "rec-agent-1", "rec-agent-2"
README = (ROOT / "README.md").read_text()

PROGRAM = textwrap.dedent(
    '''
    """K3sCluster on simulated Pis with pinned host keys, for tests/engine/test_node_recovery.py."""
    import json
    import sys

    sys.path.insert(0, {root!r})

    import pulumi
    from pulumi_command import Provider, remote

    from components import k3s_cluster
    from components.config import NodeRole
    from components.k3s_cluster import ClusterNode, K3sCluster, K3sClusterArgs
    from components.pi_node import SshTarget

    k3s_cluster.READY_TIMEOUT_SECONDS = 60  # the double is Ready in a second; bounds a hang
    config = pulumi.Config()
    key = config.require_secret("sshPrivateKey")
    provider = Provider("command")
    nodes = []
    for pi in json.loads(config.require("pis")):
        ssh = SshTarget(
            host="127.0.0.1", port=pi["port"], user="pi", private_key=key, host_key=pi["hostKey"]
        )
        # Stands in for PiNode's prepare and gate: a step on the Pi without a `delete`.
        prepare = remote.Command(
            f"{{pi['name']}}-prepare",
            connection=ssh.connection(),
            create="true",
            update="true",
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(provider=provider),
        )
        nodes.append(
            ClusterNode(
                name=pi["name"], role=NodeRole(pi["role"]), ssh=ssh, address=pi["address"],
                ready=prepare, labels=pi.get("labels", {{}}),
            )
        )
    cluster = K3sCluster(
        "cluster",
        K3sClusterArgs(
            nodes=nodes,
            version="v1.31.4+k3s1",
            token=config.require_secret("k3sToken"),
            cluster_name="picluster-recovery",
            install_url="file://{double}",
        ),
        pulumi.ResourceOptions(providers=[provider]),
    )
    # Stands in for Monitoring, which waits for every node in the prod program.
    remote.Command(
        "after-every-node",
        connection=nodes[0].ssh.connection(),
        create="true",
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions(provider=provider, depends_on=cluster.ready),
    )
    '''
)


def reflash(pi: simpi.SimPi) -> None:
    """What a fresh SD card does to the Pi K3s knows: no K3s, no node password, and new SSH host
    keys (Raspberry Pi OS generates them on a new card's first boot)."""
    pi.exec("/usr/local/bin/k3s-agent-uninstall.sh")
    pi.exec("rm", "-rf", "/etc/rancher", "/var/lib/rancher")
    pi.exec("sh", "-c", "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null")
    pi.exec("systemctl", "restart", "ssh")
    pi.wait_until_up()


def dead_pi_excludes(node: str) -> list[str]:
    """The `--exclude` options of the README's dead-Pi recipe: every step of `node` but its node
    check on the first server (PiNode and its steps, its drain, its K3s install)."""
    patterns = [
        f"**::{node}",
        f"**::{node}-*",
        f"**::cluster-{node}-drain",
        f"**::cluster-{node}-k3s",
    ]
    return [arg for pattern in patterns for arg in ("--exclude", pattern)]


@dataclass
class Lab:
    project: Project
    pis: dict[str, simpi.SimPi]
    sim: simpi.SimPiLab
    described: list[dict[str, Any]]

    def set_pis(self) -> None:
        result = self.project.pulumi(
            "config", "set", "pis", json.dumps(self.described), "-s", STACK
        )
        assert result.returncode == 0, result.stderr

    def preview(self) -> dict[str, str]:
        result = self.project.pulumi("preview", "--diff", "--json", "-s", STACK)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        return {s["urn"].rsplit("::", 1)[-1]: s["op"] for s in json.loads(result.stdout)["steps"]}

    def urn(self, name: str) -> str:
        """The README's look-up: `bin/pulumi stack --show-urns | grep -o 'urn:[^ ]*::NAME'`."""
        result = subprocess.run(
            [
                "bash",
                "-c",
                f"pulumi stack -s {STACK} --show-urns | grep -o 'urn:[^ ]*::{name}'",
            ],
            cwd=self.project.path,
            env=dict(self.project.env),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        [urn] = result.stdout.split()
        return urn

    def kubectl(self, *args: str) -> str:
        return self.pis["rec-server"].exec("k3s", "kubectl", *args).stdout


@pytest.fixture(scope="module")
def lab(engine_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    image = sim_nodes.image()
    tmp = tmp_path_factory.mktemp("recovery")
    project = program_project(
        engine_bin, tmp, "picluster-recovery", PROGRAM.format(root=str(ROOT), double=DOUBLE_ON_PI)
    )
    with simpi.SimPiLab(image) as sim:
        pis = sim_nodes.start(sim, NODES)
        described = [
            {**node, "labels": {"example.com/disk": "ssd"} if node["name"] == FLASHED else {}}
            for node in sim_nodes.describe(pis, NODES, host_keys=True)
        ]
        assert project.pulumi("stack", "init", STACK).returncode == 0
        lab = Lab(project, pis, sim, described)
        lab.set_pis()
        project.set_secret(STACK, "sshPrivateKey", sim.key_path.read_text())
        project.set_secret(STACK, "k3sToken", "recovery-token-0123456789abcdef")
        project.up(STACK, timeout=900)
        yield lab


def test_a_reflashed_pi_runs_its_own_steps_again_once_its_host_key_is_updated(lab: Lab) -> None:
    pi = lab.pis[FLASHED]
    old_key = sim_nodes.host_key(pi)
    reflash(pi)
    new_key = sim_nodes.host_key(pi)
    assert new_key != old_key
    assert not pi.exists("/usr/local/bin/k3s")

    # Nothing changed in the stack: a plain `up` would run nothing (and could not reach the Pi:
    # its pinned key is the old one).
    [entry] = [d for d in lab.described if d["name"] == FLASHED]
    entry["hostKey"] = new_key
    lab.set_pis()
    ops = lab.preview()
    changed = {name: op for name, op in ops.items() if op != "same"}
    assert changed == {
        f"{FLASHED}-prepare": "update",
        f"cluster-{FLASHED}-k3s": "update",
        f"cluster-{FLASHED}-join": "update",
    }, changed

    # The README's order: forget the node's old password (K3s refuses a known node name with
    # another one), then `up`. The Node stays, with its labels: the node check need not run.
    lab.kubectl("-n", "kube-system", "delete", "secret", f"{FLASHED}.node-password.k3s")
    before = {name: len(p.read(DOUBLE_LOG).splitlines()) for name, p in lab.pis.items()}
    up = lab.project.up(STACK, timeout=900)
    assert up.summary == {"same": 16, "update": 2}, up.summary  # its prepare, its K3s install
    assert pi.exec("k3s", "--version").stdout.startswith("k3s version v1.31.4+k3s1 ")
    server_log = lab.pis["rec-server"].read(DOUBLE_LOG).splitlines()[before["rec-server"] :]
    assert f"register {FLASHED} again version=v1.31.4+k3s1" in server_log, server_log
    labels = lab.kubectl(
        "get", "node", FLASHED, "--no-headers", "-o", "go-template={{.metadata.labels}}"
    )
    assert "example.com/disk=ssd" in labels.splitlines(), labels
    for name, other in lab.pis.items():
        log = other.read(DOUBLE_LOG).splitlines()[before[name] :]
        assert not [line for line in log if line.startswith("uninstall")], (name, log)
    assert set(lab.project.up(STACK).summary) == {"same"}


def test_a_dead_pi_leaves_the_stack_without_a_step_on_it(lab: Lab) -> None:
    dead = lab.pis[DEAD]
    simpi._run(["docker", "stop", dead.container], timeout=60)  # pyright: ignore[reportPrivateUsage]

    # The node check's delete (on the first server) cannot drain a node whose kubelet is gone;
    # the README deletes the Node by hand first.
    lab.kubectl("delete", "node", DEAD)
    lab.described = [d for d in lab.described if d["name"] != DEAD]
    lab.set_pis()

    # Its steps depend on each other: its install (on the dead Pi) cannot leave the state while
    # its node check is there, nor the node check while what waits for every node depends on it.
    refused = lab.project.pulumi(
        "state", "delete", "--yes", "-s", STACK, lab.urn(f"cluster-{DEAD}-k3s")
    )
    assert refused.returncode != 0

    # 1. Everything but the dead Pi's own steps: its node check runs its delete on the first server.
    excluded = lab.project.up(STACK, *dead_pi_excludes(DEAD), timeout=600)
    assert excluded.summary.get("delete") == 1, excluded.summary
    # 2. Its install leaves the state without its delete (the uninstall on the dead Pi).
    forget = lab.project.pulumi(
        "state", "delete", "--yes", "-s", STACK, lab.urn(f"cluster-{DEAD}-k3s")
    )
    assert forget.returncode == 0, forget.stdout + forget.stderr
    # 3. The rest has no delete command: nothing dials the dead Pi.
    rest = lab.project.up(STACK, timeout=600)
    assert rest.summary.get("delete") == 2, rest.summary  # its prepare stand-in, its drain
    # A dial of the stopped Pi would retry 120 times before failing: this took seconds.
    assert rest.seconds < 120, rest
    assert f"cluster-{DEAD}" not in lab.project.pulumi("stack", "--show-urns", "-s", STACK).stdout
    assert set(lab.project.up(STACK).summary) == {"same"}


def test_the_readme_gives_these_recipes() -> None:
    flat = " ".join(README.split())
    for option, pattern in zip(*[iter(dead_pi_excludes("pi-agent-2"))] * 2, strict=True):
        assert f"{option} '{pattern}'" in flat
    assert "kubectl delete node pi-agent-2" in flat
    assert (
        'bin/pulumi state delete -s prod --yes "$(bin/pulumi stack -s prod --show-urns | '
        "grep -o 'urn:[^ ]*::cluster-pi-agent-2-k3s')\"" in flat
    )
    assert "kubectl -n kube-system delete secret pi-agent-1.node-password.k3s" in flat
    assert "bin/pulumi config set -s prod --path 'nodes[1].hostKey'" in flat
