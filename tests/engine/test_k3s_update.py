"""The real engine runs K3sCluster on simulated Pis: `pulumi up`, a K3s version bump as an in-place
update (a rolling upgrade: every node drained, upgraded and uncordoned in turn, the agent keeping
its data), a no-op `up`, and a `destroy` the engine refuses for the protected server.

A small Pulumi program (written below, run by the real CLI) builds the project's own K3sCluster
on three simulated Pis, one server and two agents as in the committed prod stack. The K3s
installer download is the test double of the sim-Pi tests; the remote commands run through
`pulumi-resource-command`, a double of the real plugin, which the module proxy does not serve
(tools/engine/README.md); the engine, its diff, replace and protect rules are the real ones.
"""

from __future__ import annotations

import json
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

OLD, NEW = "v1.31.4+k3s1", "v1.31.5+k3s1"
NODES = (("e2e-server", "server"), ("e2e-agent-1", "agent"), ("e2e-agent-2", "agent"))
AGENT_DATA = "/var/lib/rancher/k3s/agent/picluster-e2e-marker"

PROGRAM = textwrap.dedent(
    '''
    """K3sCluster on simulated Pis, for tests/engine/test_k3s_update.py."""
    import json
    import sys

    sys.path.insert(0, {root!r})

    import pulumi
    from pulumi_command import Provider

    from components import k3s_cluster
    from components.config import NodeRole
    from components.k3s_cluster import ClusterNode, K3sCluster, K3sClusterArgs
    from components.pi_node import SshTarget

    k3s_cluster.READY_TIMEOUT_SECONDS = 60  # the double is Ready in a second; bounds a hang
    config = pulumi.Config()
    pis = json.loads(config.require("pis"))
    key = config.require_secret("sshPrivateKey")
    nodes = [
        ClusterNode(
            name=pi["name"],
            role=NodeRole(pi["role"]),
            ssh=SshTarget(host="127.0.0.1", port=pi["port"], user="pi", private_key=key),
            address=pi["address"],
            ready=pulumi.ComponentResource("e2e:index:PreparedPi", pi["name"]),
        )
        for pi in pis
    ]
    cluster = K3sCluster(
        "cluster",
        K3sClusterArgs(
            nodes=nodes,
            version=config.require("version"),
            token=config.require_secret("k3sToken"),
            cluster_name="picluster-e2e",
            install_url="file://{double}",
        ),
        pulumi.ResourceOptions(providers=[Provider("command")]),
    )
    pulumi.export("kubeconfig", cluster.kubeconfig)
    '''
)


@dataclass
class Lab:
    project: Project
    pis: dict[str, simpi.SimPi]

    def up(self) -> dict[str, Any]:
        """`pulumi up`; its summary: `{"changeSummary": {op: count}}`, as a preview's."""
        return {"changeSummary": self.project.up("e2e", timeout=900).summary}


@pytest.fixture(scope="module")
def lab(engine_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    image = sim_nodes.image()
    tmp = tmp_path_factory.mktemp("e2e")
    project = program_project(
        engine_bin, tmp, "picluster-e2e", PROGRAM.format(root=str(ROOT), double=DOUBLE_ON_PI)
    )
    with simpi.SimPiLab(image) as sim:
        pis = sim_nodes.start(sim, NODES)
        described = sim_nodes.describe(pis, NODES)
        assert project.pulumi("stack", "init", "e2e").returncode == 0
        for key, value in (("pis", json.dumps(described)), ("version", OLD)):
            assert project.pulumi("config", "set", key, value, "-s", "e2e").returncode == 0
        project.set_secret("e2e", "sshPrivateKey", sim.key_path.read_text())
        project.set_secret("e2e", "k3sToken", "e2e-token-0123456789abcdef")
        yield Lab(project, pis)


@dataclass(frozen=True)
class Runs:
    first: dict[str, Any]
    versions_after_first: dict[str, str]
    preview: dict[str, Any]
    bump: dict[str, Any]
    bump_log: list[str]
    """What the bump added to the K3s double's event log on the server (cordons, drains,
    registrations, uncordons), in order."""
    again: dict[str, Any]


def _ops(preview: dict[str, Any]) -> dict[str, str]:
    return {s["urn"].rsplit("::", 1)[-1]: s["op"] for s in preview["steps"]}


@pytest.fixture(scope="module")
def runs(lab: Lab) -> Runs:
    first = lab.up()
    versions = {n: pi.exec("k3s", "--version").stdout.split()[2] for n, pi in lab.pis.items()}
    agent = lab.pis["e2e-agent-1"]
    agent.exec("sh", "-c", f"mkdir -p {AGENT_DATA.rsplit('/', 1)[0]} && date >{AGENT_DATA}")
    assert lab.project.pulumi("config", "set", "version", NEW, "-s", "e2e").returncode == 0
    preview = lab.project.pulumi("preview", "--diff", "--json", "-s", "e2e")
    assert preview.returncode == 0, preview.stdout[-4000:] + preview.stderr[-2000:]
    server = lab.pis["e2e-server"]
    before = len(server.read(DOUBLE_LOG).splitlines())
    bump = lab.up()
    bump_log = server.read(DOUBLE_LOG).splitlines()[before:]
    again = lab.up()
    return Runs(first, versions, json.loads(preview.stdout), bump, bump_log, again)


def test_the_first_up_creates_the_cluster(runs: Runs, lab: Lab) -> None:
    summary = runs.first["changeSummary"]
    assert summary.get("create", 0) > 0 and set(summary) <= {"create"}
    assert runs.versions_after_first == dict.fromkeys(lab.pis, OLD)


def test_a_version_bump_previews_as_updates_only(runs: Runs) -> None:
    ops = _ops(runs.preview)
    installs = {f"cluster-{name}-k3s" for name, _ in NODES}
    assert {name for name, op in ops.items() if op == "update"} >= installs
    assert not {op for op in ops.values()} - {"same", "update"}, ops


def test_the_bump_upgrades_every_node_in_place_and_keeps_the_agent_data(
    runs: Runs, lab: Lab
) -> None:
    summary = runs.bump["changeSummary"]
    assert set(summary) <= {"same", "update"}, summary
    for name, pi in lab.pis.items():
        assert pi.exec("k3s", "--version").stdout.startswith(f"k3s version {NEW} "), name
        log = pi.read(DOUBLE_LOG).splitlines()
        assert not [line for line in log if line.startswith("uninstall")], (name, log)
    assert lab.pis["e2e-agent-1"].exists(AGENT_DATA)


def test_the_engine_drains_and_upgrades_one_node_at_a_time(runs: Runs) -> None:
    # The real engine's schedule: each node cordoned, drained, back on the new version and
    # uncordoned before the next one is cordoned; the server first.
    events = [
        line.split(" --")[0]
        for line in runs.bump_log
        if line.startswith(("kubectl cordon", "kubectl drain", "kubectl uncordon", "register"))
    ]
    assert events == [
        event
        for name, _ in NODES
        for event in (
            f"kubectl cordon {name}",
            f"kubectl drain {name}",
            f"register {name} again version={NEW}",
            f"kubectl uncordon {name}",
        )
    ], runs.bump_log


def test_a_second_up_changes_nothing(runs: Runs) -> None:
    assert set(runs.again["changeSummary"]) == {"same"}


def test_destroy_is_refused_for_the_protected_server(runs: Runs, lab: Lab) -> None:
    result = lab.project.pulumi("destroy", "--yes", "-s", "e2e", timeout=900)
    assert result.returncode != 0
    assert "protect" in (result.stdout + result.stderr).lower()
    assert lab.pis["e2e-server"].exec("k3s", "--version").stdout.startswith("k3s version ")
