"""A K3s version bump on a running cluster of simulated Pis, as the engine would run it.

K3sCluster (the real component) is evaluated under mocks for the old and the new version; the
engine's rules (`tests/engine_rules.py`) turn the two runs into a plan, and `replay.py` runs the
plan's remote steps over SSH on three servers and an agent, in the engine's dependency order. The
K3s installer download is the test double of `test_k3s_scripts.py`; everything else is real.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import pulumi
import pytest
from pulumi_command import Provider as CommandProvider

from components import k3s_cluster
from components.config import NodeRole
from components.k3s_cluster import ClusterNode, K3sCluster, K3sClusterArgs
from components.pi_node import SshTarget
from components.remote_script import parse_summaries
from tests.engine_rules import Action
from tests.harness import Run, run
from tests.integration import simpi
from tests.integration.replay import Evaluate, State, Update, depends_on, replay
from tests.integration.test_k3s_scripts import DOUBLE, DOUBLE_LOG, DOUBLE_ON_PI

pytestmark = pytest.mark.integration

OLD, NEW = "v1.31.4+k3s1", "v1.31.5+k3s1"
TOKEN = f"K10picluster-replay-{secrets.token_hex(16)}"
SERVERS = ("replay-server-1", "replay-server-2", "replay-server-3")
AGENT = "replay-agent-1"
AGENT_DATA = "/var/lib/rancher/k3s/agent/picluster-replay-marker"
"""A file in the agent's K3s data directory, which its uninstall would delete."""


@dataclass(frozen=True)
class Lab:
    pis: dict[str, simpi.SimPi]
    addresses: dict[str, str]

    def program(self, version: str, without: tuple[str, ...] = ()) -> Callable[[], None]:
        def body() -> None:
            provider = CommandProvider("command")
            nodes = [
                ClusterNode(
                    name=name,
                    role=NodeRole.AGENT if name == AGENT else NodeRole.SERVER,
                    ssh=SshTarget(host=pi.host, port=pi.port, user=pi.user, private_key="unused"),
                    address=self.addresses[name],
                    # PiNode's steps are proven in test_node_scripts; here the Pis come prepared.
                    ready=pulumi.ComponentResource("test:index:PreparedPi", name),
                )
                for name, pi in self.pis.items()
                if name not in without
            ]
            K3sCluster(
                "cluster",
                K3sClusterArgs(
                    nodes=nodes,
                    version=version,
                    token=TOKEN,
                    cluster_name="picluster-replay",
                    install_url=f"file://{DOUBLE_ON_PI}",
                ),
                pulumi.ResourceOptions(providers=[provider]),
            )

        return body

    def evaluate(self, version: str, without: tuple[str, ...] = ()) -> Evaluate:
        def evaluate(stdouts: Mapping[str, str]) -> Run:
            with pytest.MonkeyPatch.context() as patch:
                # The double is Ready within a second; 60 s bounds a hang.
                patch.setattr(k3s_cluster, "READY_TIMEOUT_SECONDS", 60)
                return run(self.program(version, without), {}, stdouts=stdouts)

        return evaluate


@pytest.fixture(scope="module")
def lab(sim_lab: simpi.SimPiLab) -> Iterator[Lab]:
    pis = {name: sim_lab.start_pi(name) for name in (*SERVERS, AGENT)}
    for pi in pis.values():
        pi.put(DOUBLE_ON_PI, DOUBLE.read_bytes())
    addresses = {n: pi.exec("hostname", "-I").stdout.split()[0] for n, pi in pis.items()}
    yield Lab(pis, addresses)
    for pi in pis.values():
        sim_lab.remove(pi)


@dataclass(frozen=True)
class Bump:
    installed: Update
    upgraded: Update


def _ok(update: Update) -> None:
    failed = update.failed()
    assert failed is None, f"{failed.name} exit {failed.rc}\n{failed.stdout}\n{failed.stderr}"


@pytest.fixture(scope="module")
def bump(lab: Lab) -> Bump:
    pis = list(lab.pis.values())
    installed = replay(lab.evaluate(OLD), State(), pis)
    _ok(installed)
    lab.pis[AGENT].exec(
        "sh", "-c", f"mkdir -p {AGENT_DATA.rsplit('/', 1)[0]} && date >{AGENT_DATA}"
    )
    upgraded = replay(lab.evaluate(NEW), installed.state, pis)
    return Bump(installed, upgraded)


def _installs(update: Update) -> list[str]:
    return [r.name for r in update.ran if r.name.endswith("-k3s")]


def test_the_first_up_installs_servers_in_order_then_the_agent(bump: Bump) -> None:
    assert _installs(bump.installed) == [f"cluster-{n}-k3s" for n in (*SERVERS, AGENT)]
    assert {r.action for r in bump.installed.ran} == {Action.CREATE}


def test_a_version_bump_is_an_in_place_update_of_every_install(bump: Bump) -> None:
    changes = bump.upgraded.plan
    assert not changes.refusals and not changes.delete_commands, changes.summary()
    assert not changes.names(Action.REPLACE) and not changes.names(Action.DELETE)
    installs = {f"cluster-{n}-k3s" for n in (*SERVERS, AGENT)}
    drains = {f"cluster-{n}-drain" for n in (*SERVERS, AGENT)}
    checks = {f"cluster-{n}-join" for n in (*SERVERS, AGENT)}
    # What changed in the program's inputs: each node's drain, install and check (all three
    # carry the new version).
    assert changes.names(Action.UPDATE) == installs | drains | checks
    # What ran: exactly those, every one an update; not the kubeconfig read, which the
    # Kubernetes provider is built from.
    assert {r.name for r in bump.upgraded.ran} == installs | drains | checks
    assert {r.action for r in bump.upgraded.ran} == {Action.UPDATE}


def test_servers_upgrade_one_at_a_time_then_the_agent(bump: Bump) -> None:
    _ok(bump.upgraded)
    order = [f"cluster-{n}-k3s" for n in (*SERVERS, AGENT)]
    assert _installs(bump.upgraded) == order
    # The order comes from the dependency graph the engine schedules by, not from replay's luck.
    after = bump.upgraded.state.registrations
    for earlier, later in itertools.pairwise(order):
        assert depends_on(after, later, earlier), f"{later} does not wait for {earlier}"
    timed = {r.name: r for r in bump.upgraded.ran}
    for earlier, later in itertools.pairwise(order):
        assert timed[earlier].ended <= timed[later].started


def test_every_node_runs_the_new_version_and_keeps_its_data(bump: Bump, lab: Lab) -> None:
    for name, pi in lab.pis.items():
        assert pi.exec("k3s", "--version").stdout.startswith(f"k3s version {NEW} "), name
        log = pi.read(DOUBLE_LOG).splitlines()
        assert not [line for line in log if line.startswith("uninstall")], (name, log)
        assert [line for line in log if f"version={NEW}" in line], (name, log)
    step = next(r for r in bump.upgraded.ran if r.name == f"cluster-{AGENT}-k3s")
    assert parse_summaries(step.stdout)[-1].changed == (f"k3s {NEW}",)
    assert lab.pis[AGENT].exists(AGENT_DATA)
    assert lab.pis[AGENT].exec("systemctl", "is-active", "k3s-agent").stdout.strip() == "active"


def test_joiners_pinned_the_ca_the_first_server_created(bump: Bump, lab: Lab) -> None:
    first = lab.pis[SERVERS[0]]
    ca = first.exec("sha256sum", "/var/lib/rancher/k3s/server/tls/server-ca.crt").stdout.split()[0]
    for name in (*SERVERS[1:], AGENT):
        token = lab.pis[name].read("/etc/rancher/k3s/picluster-token")
        assert token.startswith(f"K10{ca}::server:") and token.endswith(f"{TOKEN}\n"), name


def test_a_second_up_runs_no_remote_step(bump: Bump, lab: Lab) -> None:
    again = replay(lab.evaluate(NEW), bump.upgraded.state, list(lab.pis.values()))
    assert not again.plan.steps and not again.ran


@pytest.fixture(scope="module")
def shrink(bump: Bump, lab: Lab) -> Update:
    """Back from three servers to one (after the tests above used the three)."""
    removed = SERVERS[1:]
    update = replay(lab.evaluate(NEW, without=removed), bump.upgraded.state, list(lab.pis.values()))
    _ok(update)
    return update


def test_removed_servers_are_drained_then_leave_before_their_uninstall(
    shrink: Update, lab: Lab
) -> None:
    first = lab.pis[SERVERS[0]]
    deletes = [(r.name, r.action) for r in shrink.ran if r.action is Action.DELETE]
    # The first server's check drains each one; then each server stops K3s, deletes its own Node
    # through the first server and uninstalls (reverse dependency order: the checks go first).
    assert {name for name, _ in deletes} == {
        f"cluster-{n}-{step}" for n in SERVERS[1:] for step in ("join", "k3s")
    }
    names = [name for name, _ in deletes]
    for node in SERVERS[1:]:
        assert names.index(f"cluster-{node}-join") < names.index(f"cluster-{node}-k3s")
        uninstall = next(r for r in shrink.ran if r.name == f"cluster-{node}-k3s")
        assert "left the cluster" in parse_summaries(uninstall.stdout)[-1].changed
        assert not lab.pis[node].exists("/usr/local/bin/k3s")
        log = first.read(DOUBLE_LOG)
        assert f"kubectl drain {node}" in log
        assert f"kubectl delete node {node} (from another server)" in log
        gone = first.exec("k3s", "kubectl", "get", "node", node, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr
    assert first.exec("systemctl", "is-active", "k3s").stdout.strip() == "active"
    assert lab.pis[AGENT].exec("systemctl", "is-active", "k3s-agent").stdout.strip() == "active"
