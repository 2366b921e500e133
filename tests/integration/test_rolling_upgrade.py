"""A rolling K3s upgrade on three simulated Pis, as the engine would run it: one node at a time,
servers first, each drained before its K3s restarts and uncordoned once Ready on the new version;
a node that cannot be drained stops the rollout with the rest untouched; a downgrade is refused
before anything changes; a node cordoned for an upgrade whose install failed is schedulable again
once the version is set back; an API server that fails a request never leaves a node cordoned
behind a message that says otherwise.

K3sCluster (the real component) is evaluated under mocks for each version; the engine's rules turn
two runs into a plan and `replay.py` runs its remote steps over SSH in the engine's dependency
order. The K3s installer and binary are the test double (`doubles/k3s-install.sh`), which keeps
each node's kubelet version, its cordon and its pods (evicted by a drain unless a
PodDisruptionBudget holds them) and logs those events in order on the first server.
"""

from __future__ import annotations

import itertools
import secrets
import subprocess
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
from tests.harness import Run, run
from tests.integration import simpi
from tests.integration.replay import Evaluate, Ran, State, Update, depends_on, replay
from tests.integration.test_k3s_scripts import DOUBLE, DOUBLE_LOG, DOUBLE_ON_PI

pytestmark = pytest.mark.integration

OLD, NEW, NEWER, LATEST = "v1.31.4+k3s1", "v1.31.5+k3s1", "v1.31.6+k3s1", "v1.31.7+k3s1"
FUTURE = "v1.32.0+k3s1"
"""Newer than anything the lab runs: a drain run by hand for it is never a downgrade."""
TOKEN = f"K10picluster-rolling-{secrets.token_hex(16)}"
SERVER, AGENT_1, AGENT_2 = "roll-server-1", "roll-agent-1", "roll-agent-2"
NODES = (SERVER, AGENT_1, AGENT_2)
REGISTRY = "/var/lib/rancher/k3s/server/double-nodes"
CORDONED = "picluster.io/cordoned-for-upgrade"


@dataclass(frozen=True)
class Lab:
    pis: dict[str, simpi.SimPi]
    addresses: dict[str, str]

    @property
    def first(self) -> simpi.SimPi:
        return self.pis[SERVER]

    def program(self, version: str) -> Callable[[], None]:
        def body() -> None:
            provider = CommandProvider("command")
            nodes = [
                ClusterNode(
                    name=name,
                    role=NodeRole.SERVER if name == SERVER else NodeRole.AGENT,
                    ssh=SshTarget(host=pi.host, port=pi.port, user=pi.user, private_key="unused"),
                    address=self.addresses[name],
                    ready=pulumi.ComponentResource("test:index:PreparedPi", name),
                )
                for name, pi in self.pis.items()
            ]
            K3sCluster(
                "cluster",
                K3sClusterArgs(
                    nodes=nodes,
                    version=version,
                    token=TOKEN,
                    cluster_name="picluster-rolling",
                    install_url=f"file://{DOUBLE_ON_PI}",
                    drain_timeout=45,
                ),
                pulumi.ResourceOptions(providers=[provider]),
            )

        return body

    def evaluate(self, version: str) -> Evaluate:
        def evaluate(stdouts: Mapping[str, str]) -> Run:
            with pytest.MonkeyPatch.context() as patch:
                # The double is Ready within a second; 60 s bounds a hang.
                patch.setattr(k3s_cluster, "READY_TIMEOUT_SECONDS", 60)
                return run(self.program(version), {}, stdouts=stdouts)

        return evaluate

    def up(self, version: str, state: State) -> Update:
        return replay(self.evaluate(version), state, list(self.pis.values()))

    def log(self) -> list[str]:
        """The double's event log on the first server (cordons, evictions, registrations)."""
        return self.first.read(DOUBLE_LOG).splitlines()

    def kubectl(self, *args: str) -> str:
        return self.first.exec("k3s", "kubectl", *args).stdout

    def node(self, name: str) -> tuple[str, str]:
        """(STATUS, VERSION) of the node, as `kubectl get node` prints them."""
        fields = self.kubectl("get", "node", name, "--no-headers").split()
        return fields[1], fields[-1]

    def mark(self, name: str) -> str:
        """picluster's cordon mark on the node ("" when it has none)."""
        template = f'go-template={{{{index .metadata.annotations "{CORDONED}"}}}}'
        value = self.kubectl("get", "node", name, "-o", template).strip()
        return "" if value == "<no value>" else value

    def pods(self, name: str, *pods: str) -> None:
        """Put pods on the node (the double's stand-in for the scheduler): `NS/NAME [TAG...]`,
        tags `pdb` (its budget allows no eviction) and `emptydir` (it has an emptyDir volume)."""
        lines = "".join(f"{pod}\n" for pod in pods)
        self.first.put(f"{REGISTRY}/{name}/pods", lines.encode(), mode="0644")

    def api_errors(self, name: str, *requests: str) -> None:
        """Make the API server fail these requests about the node (`annotation KEY`, `uncordon`);
        none when no request is given."""
        lines = "".join(f"{request}\n" for request in requests)
        self.first.put(f"{REGISTRY}/{name}/api-errors", lines.encode(), mode="0644")

    def stdin(self, version: str, step: str) -> str:
        """The stdin the engine sends to the step `cluster-<step>` for `version`."""
        registrations = self.evaluate(version)({}).registrations
        return str(next(r for r in registrations if r.name == f"cluster-{step}").value("stdin"))


@pytest.fixture(scope="module")
def lab(sim_lab: simpi.SimPiLab) -> Iterator[Lab]:
    pis = {name: sim_lab.start_pi(name) for name in NODES}
    for pi in pis.values():
        pi.put(DOUBLE_ON_PI, DOUBLE.read_bytes())
    addresses = {n: pi.exec("hostname", "-I").stdout.split()[0] for n, pi in pis.items()}
    yield Lab(pis, addresses)
    for pi in pis.values():
        sim_lab.remove(pi)


def _session(pi: simpi.SimPi, stdin: str) -> tuple[int, str, str]:
    """One `sudo bash -s` session with a step's stdin, as the provider runs it."""
    result = subprocess.run(
        pi.ssh_argv("sudo", "bash", "-s"),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def _ok(update: Update) -> None:
    failed = update.failed()
    assert failed is None, f"{failed.name} exit {failed.rc}\n{failed.stdout}\n{failed.stderr}"


def _last(step: Ran) -> str:
    return parse_summaries(step.stdout)[-1].line


@dataclass(frozen=True)
class Rollout:
    installed: Update
    upgraded: Update
    log: list[str]
    """The first server's event log lines the upgrade added."""


@pytest.fixture(scope="module")
def rollout(lab: Lab) -> Rollout:
    installed = lab.up(OLD, State())
    _ok(installed)
    for name in NODES:
        # Grafana keeps its scratch space in an emptyDir: kubectl drain refuses to evict such a
        # pod without --delete-emptydir-data.
        lab.pods(name, f"game/lobby-{name}", f"monitoring/grafana-{name} emptydir")
    before = len(lab.log())
    upgraded = lab.up(NEW, installed.state)
    _ok(upgraded)
    return Rollout(installed, upgraded, lab.log()[before:])


def test_the_first_up_drains_nothing(rollout: Rollout) -> None:
    drains = [r for r in rollout.installed.ran if r.name.endswith("-drain")]
    assert [r.name for r in drains] == [f"cluster-{n}-drain" for n in NODES]
    assert _last(drains[0]) == (
        "picluster k3s-drain: no changes (K3s is not on this server yet: nothing to drain)"
    )
    for step in drains[1:]:
        assert "has not joined the cluster yet" in _last(step), step.stdout


def test_a_version_bump_runs_drain_install_check_node_by_node_servers_first(
    rollout: Rollout,
) -> None:
    order = [f"cluster-{n}-{step}" for n in NODES for step in ("drain", "k3s", "join")]
    assert [r.name for r in rollout.upgraded.ran] == order
    # The order comes from the dependency graph the engine schedules by, not from replay's luck.
    after = rollout.upgraded.state.registrations
    for earlier, later in itertools.pairwise(order):
        assert depends_on(after, later, earlier), f"{later} does not wait for {earlier}"
    for step in rollout.upgraded.ran:
        if step.name.endswith("-drain"):
            assert _last(step) == "picluster k3s-drain: changed: cordoned, drained", step.stdout
        if step.name.endswith("-join"):
            assert "uncordoned" in parse_summaries(step.stdout)[-1].changed, step.stdout


def test_each_node_is_drained_upgraded_and_uncordoned_before_the_next_is_touched(
    rollout: Rollout,
) -> None:
    events = [
        line.split(" --")[0]
        for line in rollout.log
        if line.startswith(("kubectl cordon", "kubectl drain", "kubectl uncordon", "register"))
    ]
    expected = [
        event
        for name in NODES
        for event in (
            f"kubectl cordon {name}",
            f"kubectl drain {name}",
            f"kubectl drain {name} evicted game/lobby-{name}",
            f"kubectl drain {name} evicted monitoring/grafana-{name}",
            f"register {name} again version={NEW}",
            f"kubectl uncordon {name}",
        )
    ]
    assert events == expected, "\n".join(rollout.log)
    # And the drain respected the timeout it was given, through the eviction API (no --force).
    drains = [line for line in rollout.log if line.startswith("kubectl drain") and " --" in line]
    for line in drains:
        assert "--timeout=45s" in line and "--ignore-daemonsets" in line, line
        assert "--delete-emptydir-data" in line, line
        assert "--force" not in line, line


def test_the_double_refuses_an_emptydir_pod_without_its_flag(rollout: Rollout, lab: Lab) -> None:
    """The rollout above evicted emptyDir pods because the drain passes --delete-emptydir-data:
    without it kubectl (and so the double) refuses, evicting nothing."""
    lab.pods(AGENT_2, f"game/lobby-{AGENT_2}", f"game/cache-{AGENT_2} emptydir")
    try:
        refused = lab.first.exec(
            "k3s", "kubectl", "drain", AGENT_2, "--ignore-daemonsets", "--timeout=5s", check=False
        )
        assert refused.returncode == 1
        assert (
            "cannot delete Pods with local storage (use --delete-emptydir-data to override): "
            f"game/cache-{AGENT_2}"
        ) in refused.stderr
        assert lab.kubectl(
            "get", "pods", "-A", "--field-selector", f"spec.nodeName={AGENT_2}", "-o", "go-template"
        ).split() == [f"game/lobby-{AGENT_2}", f"game/cache-{AGENT_2}"]
        lab.kubectl("drain", AGENT_2, "--ignore-daemonsets", "--delete-emptydir-data")
        assert f"kubectl drain {AGENT_2} evicted game/cache-{AGENT_2}" in lab.log()
    finally:
        lab.pods(AGENT_2)
        lab.kubectl("uncordon", AGENT_2)


def test_every_node_ends_ready_on_the_new_version_schedulable_and_unmarked(
    rollout: Rollout, lab: Lab
) -> None:
    for name, pi in lab.pis.items():
        assert pi.exec("k3s", "--version").stdout.startswith(f"k3s version {NEW} "), name
        assert lab.node(name) == ("Ready", NEW), name
        assert lab.mark(name) == "", name


def test_a_second_up_runs_nothing_and_a_drain_run_again_says_so(rollout: Rollout, lab: Lab) -> None:
    again = lab.up(NEW, rollout.upgraded.state)
    assert not again.plan.steps and not again.ran
    before = len(lab.log())
    for name in NODES:
        stdin = next(
            r for r in rollout.upgraded.state.registrations if r.name == f"cluster-{name}-drain"
        ).value("stdin")
        rc, out, err = _session(lab.first, str(stdin))
        assert rc == 0, err
        assert parse_summaries(out)[-1].line == (
            f"picluster k3s-drain: no changes ({name} already runs {NEW})"
        )
    assert len(lab.log()) == before


@dataclass(frozen=True)
class Blocked:
    update: Update
    log: list[str]
    """The first server's event log lines the failed update added."""
    after: dict[str, tuple[str, str, str]]
    """Each agent after the failure: (`k3s --version` on the Pi, STATUS, picluster's mark)."""
    installs_on_agent_2: list[str]
    """The installer double's calls on agent 2 (its own log) after the failure."""
    retried: Update


@pytest.fixture(scope="module")
def blocked(rollout: Rollout, lab: Lab) -> Blocked:
    """The next version, with a pod on agent 1 whose PodDisruptionBudget allows no eviction;
    then the budget is met and `up` runs again."""
    lab.pods(AGENT_1, f"game/lobby-{AGENT_1}", f"game/scores-{AGENT_1} pdb")
    lab.pods(AGENT_2, f"game/lobby-{AGENT_2}")
    before = len(lab.log())
    update = lab.up(NEWER, rollout.upgraded.state)
    log = lab.log()[before:]
    after = {
        name: (
            lab.pis[name].exec("k3s", "--version").stdout.split()[2],
            lab.node(name)[0],
            lab.mark(name),
        )
        for name in (AGENT_1, AGENT_2)
    }
    installs = [
        line for line in lab.pis[AGENT_2].read(DOUBLE_LOG).splitlines() if "install" in line
    ]
    lab.pods(AGENT_1, f"game/scores-{AGENT_1}")  # its replacement is Ready elsewhere now
    retried = lab.up(NEWER, update.state)
    return Blocked(update, log, after, installs, retried)


def test_a_blocked_drain_stops_the_rollout_at_that_node(blocked: Blocked) -> None:
    failed = blocked.update.failed()
    assert failed is not None and failed.name == f"cluster-{AGENT_1}-drain"
    assert [r.name for r in blocked.update.ran] == [
        f"cluster-{SERVER}-drain",
        f"cluster-{SERVER}-k3s",
        f"cluster-{SERVER}-join",
        f"cluster-{AGENT_1}-drain",
    ]
    assert f"could not drain {AGENT_1} within 45s" in failed.stderr
    assert f"pods that stayed: game/scores-{AGENT_1}" in failed.stderr
    assert "Cannot evict pod as it would violate the pod's disruption budget" in failed.stderr
    # Cordoned for the drain, then uncordoned again when it failed: nothing else on agent 1.
    agent_1 = [line.split(" --")[0] for line in blocked.log if AGENT_1 in line]
    assert agent_1[0] == f"kubectl annotate node {AGENT_1}"
    assert f"kubectl cordon {AGENT_1}" in agent_1
    assert agent_1[-1] == f"kubectl annotate node {AGENT_1} {CORDONED}-"
    assert f"kubectl uncordon {AGENT_1}" in agent_1
    assert not [line for line in agent_1 if line.startswith("register")]


def test_the_failed_node_is_schedulable_again_and_the_rest_untouched(blocked: Blocked) -> None:
    # Agent 1: uncordoned, unmarked, still on the old version. Agent 2: never touched.
    assert blocked.after[AGENT_1] == (NEW, "Ready", "")
    assert blocked.after[AGENT_2] == (NEW, "Ready", "")
    assert not [line for line in blocked.log if AGENT_2 in line], blocked.log
    assert not [line for line in blocked.installs_on_agent_2 if f"version={NEWER}" in line]


def test_once_the_budget_is_met_the_rollout_goes_on(blocked: Blocked, lab: Lab) -> None:
    _ok(blocked.retried)
    ran = {r.name: r for r in blocked.retried.ran}
    # The server is done: its drain says so; the agents are drained and upgraded in turn.
    assert _last(ran[f"cluster-{SERVER}-drain"]) == (
        f"picluster k3s-drain: no changes ({SERVER} already runs {NEWER})"
    )
    for name in (AGENT_1, AGENT_2):
        assert _last(ran[f"cluster-{name}-drain"]).endswith("changed: cordoned, drained")
    for name in NODES:
        assert lab.node(name) == ("Ready", NEWER), name


def test_a_downgrade_is_refused_before_anything_changes(blocked: Blocked, lab: Lab) -> None:
    _ok(blocked.retried)
    before = len(lab.log())
    update = lab.up(NEW, blocked.retried.state)
    failed = update.failed()
    assert failed is not None and [r.name for r in update.ran] == [f"cluster-{SERVER}-drain"]
    assert f"refusing to downgrade K3s to {NEW}" in failed.stderr
    assert f"{SERVER} ({NEWER})" in failed.stderr
    assert lab.log()[before:] == []
    for name, pi in lab.pis.items():
        assert pi.exec("k3s", "--version").stdout.startswith(f"k3s version {NEWER} "), name
        assert lab.node(name) == ("Ready", NEWER), name
    # The install refuses on the node too, should it ever run (a drain step skipped by hand).
    install = next(
        r
        for r in lab.evaluate(NEW)(update.state.stdouts).registrations
        if r.name == f"cluster-{AGENT_2}-k3s"
    )
    rc, _, err = _session(lab.pis[AGENT_2], str(install.value("stdin")))
    assert rc == 1
    assert f"refusing to downgrade K3s on {AGENT_2} from {NEWER} to {NEW}" in err
    assert lab.pis[AGENT_2].exec("k3s", "--version").stdout.startswith(f"k3s version {NEWER} ")


def _engine_state(lab: Lab, version: str, before: State, update: Update) -> State:
    """The state the engine keeps after a failed `up` (replay keeps `before` whole): each step
    that succeeded with its new inputs and stdout, the rest as they were. The failed step keeps
    its old state too, so its node's `-join` step has nothing to re-run once the version is set
    back."""
    succeeded = {r.name: r.stdout.removesuffix("\n") for r in update.ran if r.rc == 0}
    stdouts = {**before.stdouts, **succeeded}
    new = {r.urn: r for r in lab.evaluate(version)(stdouts).registrations}
    registrations = [
        new[r.urn] if r.name in succeeded and r.urn in new else r for r in before.registrations
    ]
    return State(registrations, stdouts)


@dataclass(frozen=True)
class Reverted:
    failed: Update
    """The next version, whose install failed on the first server after its drain."""
    cordoned: tuple[str, str]
    """The server's STATUS and picluster's mark on it after that failure."""
    reverted: Update
    """The version set back."""
    after: tuple[str, str]
    """The server's STATUS and mark after that."""
    again: Update


@pytest.fixture(scope="module")
def reverted(blocked: Blocked, lab: Lab) -> Reverted:
    """`up` to the next version stops at the first server's install (its installer cannot be
    downloaded); the user sets the version back and runs `up` again, twice."""
    _ok(blocked.retried)
    start = blocked.retried.state
    server = lab.pis[SERVER]
    server.exec("mv", DOUBLE_ON_PI, f"{DOUBLE_ON_PI}.away")
    try:
        failed = lab.up(LATEST, start)
    finally:
        server.exec("mv", f"{DOUBLE_ON_PI}.away", DOUBLE_ON_PI)
    cordoned = (lab.node(SERVER)[0], lab.mark(SERVER))
    back = lab.up(NEWER, _engine_state(lab, LATEST, start, failed))
    after = (lab.node(SERVER)[0], lab.mark(SERVER))
    again = lab.up(NEWER, back.state)
    return Reverted(failed, cordoned, back, after, again)


def test_an_install_that_fails_after_the_drain_leaves_the_node_cordoned_and_marked(
    reverted: Reverted,
) -> None:
    failed = reverted.failed.failed()
    assert failed is not None and failed.name == f"cluster-{SERVER}-k3s", reverted.failed.ran
    assert "could not download the K3s installer" in failed.stderr
    assert [r.name for r in reverted.failed.ran] == [f"cluster-{SERVER}-drain", failed.name]
    assert _last(reverted.failed.ran[0]) == "picluster k3s-drain: changed: cordoned, drained"
    assert reverted.cordoned == ("Ready,SchedulingDisabled", LATEST)


def test_setting_the_version_back_uncordons_the_node_its_drain_cordoned(
    reverted: Reverted, lab: Lab
) -> None:
    _ok(reverted.reverted)
    # Only the drain's stdin changed back: the install and its `-join` never ran for the new
    # version, so the drain is the step that must give the node back.
    assert [r.name for r in reverted.reverted.ran] == [f"cluster-{SERVER}-drain"]
    assert _last(reverted.reverted.ran[0]) == (
        f"picluster k3s-drain: changed: uncordoned ({SERVER} already runs {NEWER})"
    )
    assert reverted.after == ("Ready", "")
    assert not reverted.again.ran
    assert lab.node(SERVER) == ("Ready", NEWER)


def test_the_only_schedulable_node_is_not_drained_and_a_hand_cordon_stays(
    blocked: Blocked, lab: Lab
) -> None:
    _ok(blocked.retried)
    # Agent 1 cordoned by hand, agent 2 tainted NoSchedule (no app pod tolerates it): the
    # server is then the only node its pods could go to.
    lab.kubectl("cordon", AGENT_1)
    lab.kubectl("taint", "node", AGENT_2, "dedicated=batch:NoSchedule")
    try:
        next_version = LATEST
        before = len(lab.log())
        update = lab.up(next_version, blocked.retried.state)
        _ok(update)
        ran = {r.name: r for r in update.ran}
        assert _last(ran[f"cluster-{SERVER}-drain"]) == (
            f"picluster k3s-drain: no changes ({SERVER} is the only schedulable node (the others "
            "are cordoned, not Ready or tainted NoSchedule/NoExecute): not drained, its pods stay "
            "through the restart)"
        )
        log = [line.split(" --")[0] for line in lab.log()[before:]]
        assert f"kubectl drain {SERVER}" not in log
        # Agent 1 was drained (there was room on the server), never marked, and stays cordoned
        # after its upgrade: picluster uncordons only what it cordoned.
        assert f"kubectl drain {AGENT_1}" in log
        assert f"kubectl cordon {AGENT_1}" not in log and f"kubectl uncordon {AGENT_1}" not in log
        assert lab.node(AGENT_1) == ("Ready,SchedulingDisabled", next_version)
        # Agent 2, tainted but schedulable, went the usual way: cordoned, drained, uncordoned.
        for verb in ("cordon", "drain", "uncordon"):
            assert f"kubectl {verb} {AGENT_2}" in log, (verb, log)
        assert lab.node(AGENT_2) == ("Ready", next_version)
    finally:
        lab.kubectl("uncordon", AGENT_1)
        lab.kubectl("taint", "node", AGENT_2, "dedicated-")


# --- an API server that fails a request -----------------------------------------------------


@pytest.fixture
def quiet_lab(blocked: Blocked, lab: Lab) -> Iterator[Lab]:
    """The lab after the rollouts above, put back as it was after each test: no failing
    requests, no pods, every node uncordoned and unmarked."""
    _ok(blocked.retried)
    yield lab
    for name in NODES:
        lab.api_errors(name)
        lab.pods(name)
        lab.kubectl("uncordon", name)
        lab.kubectl("annotate", "node", name, f"{CORDONED}-")


def test_a_drain_that_cannot_read_the_mark_stops_before_it_drains(quiet_lab: Lab) -> None:
    """A node picluster cordoned earlier (marked) must not pass for one cordoned by hand, which
    would be drained, left unmarked and never uncordoned."""
    lab = quiet_lab
    lab.kubectl("cordon", AGENT_2)
    lab.kubectl("annotate", "node", AGENT_2, f"{CORDONED}={LATEST}")
    lab.api_errors(AGENT_2, f"annotation {CORDONED}")
    before = len(lab.log())
    rc, out, err = _session(lab.first, lab.stdin(FUTURE, f"{AGENT_2}-drain"))
    assert rc == 1, out + err
    assert f"could not read {CORDONED} of {AGENT_2}" in err
    assert "cordoned by hand" not in err
    assert not [line for line in lab.log()[before:] if line.startswith("kubectl drain")]
    lab.api_errors(AGENT_2)
    assert lab.mark(AGENT_2) == LATEST


def test_a_failed_drain_says_so_when_the_node_could_not_be_uncordoned(quiet_lab: Lab) -> None:
    lab = quiet_lab
    lab.pods(AGENT_2, f"game/scores-{AGENT_2} pdb")
    lab.api_errors(AGENT_2, "uncordon")
    rc, out, err = _session(lab.first, lab.stdin(FUTURE, f"{AGENT_2}-drain"))
    assert rc == 1, out + err
    assert f"could not drain {AGENT_2} within 45s" in err
    assert f"it could not be uncordoned and stays cordoned (kubectl uncordon {AGENT_2}" in err
    assert "schedulable again" not in err
    lab.api_errors(AGENT_2)
    assert (lab.node(AGENT_2)[0], lab.mark(AGENT_2)) == ("Ready,SchedulingDisabled", FUTURE)
    # Its mark stays, so a later run gives it back: here the drain for the version it runs.
    lab.pods(AGENT_2)
    running = lab.node(AGENT_2)[1]
    rc, out, err = _session(lab.first, lab.stdin(running, f"{AGENT_2}-drain"))
    assert rc == 0, err
    assert parse_summaries(out)[-1].line == (
        f"picluster k3s-drain: changed: uncordoned ({AGENT_2} already runs {running})"
    )
    assert (lab.node(AGENT_2)[0], lab.mark(AGENT_2)) == ("Ready", "")


def test_a_failed_drain_of_a_node_cordoned_by_hand_says_it_stays_cordoned(
    quiet_lab: Lab,
) -> None:
    lab = quiet_lab
    lab.kubectl("cordon", AGENT_2)
    lab.pods(AGENT_2, f"game/scores-{AGENT_2} pdb")
    rc, out, err = _session(lab.first, lab.stdin(FUTURE, f"{AGENT_2}-drain"))
    assert rc == 1, out + err
    assert "it stays cordoned, as it was cordoned by hand" in err
    assert "schedulable again" not in err
    assert (lab.node(AGENT_2)[0], lab.mark(AGENT_2)) == ("Ready,SchedulingDisabled", "")


def test_a_join_that_cannot_read_the_mark_fails_instead_of_leaving_the_node_cordoned(
    quiet_lab: Lab,
) -> None:
    lab = quiet_lab
    lab.kubectl("cordon", AGENT_1)
    lab.kubectl("annotate", "node", AGENT_1, f"{CORDONED}={LATEST}")
    lab.api_errors(AGENT_1, f"annotation {CORDONED}")
    join = lab.stdin(lab.node(AGENT_1)[1], f"{AGENT_1}-join")  # Ready on the version it runs
    rc, out, err = _session(lab.first, join)
    assert rc == 1, out + err
    assert f"could not read {CORDONED} of {AGENT_1}" in err
    assert not parse_summaries(out), out  # no "no changes (... is Ready)"
    # Once the API server answers, the same step uncordons it.
    lab.api_errors(AGENT_1)
    rc, out, err = _session(lab.first, join)
    assert rc == 0, err
    assert "uncordoned" in parse_summaries(out)[-1].changed, out
    assert (lab.node(AGENT_1)[0], lab.mark(AGENT_1)) == ("Ready", "")


def test_a_node_missing_from_the_node_list_stops_the_drain_saying_so(quiet_lab: Lab) -> None:
    """The API server knew the node a moment before (deleted in between): the drain must fail
    with a reason, not stop silently under `set -e`. A shim ahead of the double on sudo's PATH
    leaves the node out of `kubectl get nodes`."""
    lab = quiet_lab
    shim = (
        "#!/bin/sh\n"
        'if [ "$1 $2 $3" = "kubectl get nodes" ]; then\n'
        f'    /usr/local/bin/k3s "$@" | grep -v "^{AGENT_2} "\n'
        "    exit 0\n"
        "fi\n"
        'exec /usr/local/bin/k3s "$@"\n'
    )
    lab.first.put("/usr/local/sbin/k3s", shim.encode())
    try:
        rc, out, err = _session(lab.first, lab.stdin(FUTURE, f"{AGENT_2}-drain"))
    finally:
        lab.first.exec("rm", "-f", "/usr/local/sbin/k3s")
    assert rc == 1, out + err
    assert f"{AGENT_2} is registered but not in the node list" in err
    assert lab.node(AGENT_2)[0] == "Ready"
