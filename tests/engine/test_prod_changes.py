"""Day two of the prod stack with the real engine: routine changes, a hand change, an uninstall.

On the prod lab (tests/engine/prod_lab.py: simulated Pis over real SSH, a real control plane),
starting from the change matrix's base stack (two services besides the demo's), each of four
routine changes of `tests/change_matrix.py` is previewed with `pulumi preview --diff` and then
applied with `pulumi up`, one after the other:

- the engine's plan must be exactly the one the change matrix computes under mocks with the
  engine's rules (`tests/unit/test_change_matrix.py` pins it): same creates, updates, replaces
  (none) and deletes (none), and `up` runs the same number of remote steps;
- and the change must show where the user looks: the new K3s on every Pi, the label on the
  Node, the rotated password in the cluster's Secret, the fourth Pi Ready in the cluster.

The version bump is watched while it runs: the nodes are cordoned one at a time (server first)
and every pod that was on a node before it was really evicted by `kubectl drain`.

Then a `kubectl scale` by hand is reported by `pulumi refresh` and undone by the next `up`, and
`pulumi destroy --exclude-protected` drains and removes the agents, keeps the protected server
and the database's claim, and the output says what is left and how to finish.

These tests run in order on one lab (each starts from the state the one before left).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.on_kubernetes.backup import BACKUP_CLAIM
from tests.change_matrix import CHANGES, Change, base, outcome
from tests.engine.prod_lab import VERSION, Config, Prod, kubectl, prod_lab, require_lab
from tests.unit.test_change_matrix import EXPECTED

pytestmark = [pytest.mark.engine, pytest.mark.integration]

STANDBY = "pi-agent-3"
"""The Pi that "add an agent" brings in (the change matrix's name for it)."""
REPLAYED = (
    "K3s version bump",
    "a label on one node",
    "`dbPassword` rotated",
    "add an agent",
    "datastore snapshot schedule and retention",
    "`app.domain` set (a DNS name on the router)",
)


def _change(title: str) -> Change:
    (change,) = [c for c in CHANGES if c.stack == "prod" and c.title == title]
    return change


def movable_pods(prod: Prod) -> dict[str, str]:
    """{uid: `namespace/name on node`} of the running pods a drain moves (not DaemonSets')."""
    pods: dict[str, str] = {}
    for pod in prod.get("pods", "-A")["items"]:
        owners = {o["kind"] for o in pod["metadata"].get("ownerReferences") or []}
        node = pod["spec"].get("nodeName")
        if node and "DaemonSet" not in owners and pod["status"].get("phase") == "Running":
            meta = pod["metadata"]
            pods[meta["uid"]] = f"{meta['namespace']}/{meta['name']} on {node}"
    return pods


class CordonWatch:
    """Polls which nodes are cordoned while an `up` runs: distinct states, in order."""

    def __init__(self, prod: Prod) -> None:
        self.prod = prod
        self.states: list[tuple[str, ...]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.is_set():
            listed = kubectl(self.prod.kubeconfig, "get", "nodes", "-o", "json")
            if listed.returncode == 0:
                state = tuple(
                    sorted(
                        n["metadata"]["name"]
                        for n in json.loads(listed.stdout)["items"]
                        if n["spec"].get("unschedulable")
                    )
                )
                if not self.states or self.states[-1] != state:
                    self.states.append(state)
            self.stop.wait(0.2)

    def __enter__(self) -> CordonWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


class Lab:
    """The prod lab and the configuration last written to its stack."""

    def __init__(self, prod: Prod) -> None:
        self.prod = prod
        self.cordons: list[tuple[str, ...]] = []
        """The cordoned nodes during the version bump's `up`, each distinct state in order."""
        self.pods_before_bump: dict[str, str] = {}
        self.pods_after_bump: dict[str, str] = {}
        self.config: Config = {**base("prod"), "k3sToken": "e2e-k3sToken-0123456789abcdef"}
        self.config["k3s"]["version"] = VERSION

    def apply(self, change: Change) -> None:
        self.config = change.edit(self.config)
        self.prod.configure(self.config)

    def preview(self) -> dict[str, Any]:
        result = self.prod.project.pulumi("preview", "--diff", "--json", "-s", "prod")
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def lab(engine_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab()
    with prod_lab(engine_bin, tmp_path_factory.mktemp("changes"), standby=(STANDBY,)) as prod:
        lab = Lab(prod)
        prod.configure(lab.config)
        first = prod.up()
        assert set(first.summary) == {"create"}, first.summary
        yield lab


_REPLACING = {"replace", "create-replacement", "delete-replaced"}


def engine_plan(preview: dict[str, Any]) -> dict[str, list[str]]:
    """The preview's custom-resource steps in the change matrix's form: {action: sorted
    `Kind name`} (a provider's own step included: the matrix plans providers too)."""
    found: dict[str, set[str]] = {}
    for step in preview["steps"]:
        op, urn = step["op"], step["urn"]
        kind = urn.split("::")[-2].rsplit(":", 1)[-1]
        state = step.get("newState") or step.get("oldState") or {}
        # The matrix plans custom resources; components and providers have no steps of their own.
        if op in ("same", "read") or not state.get("custom") or kind == "Stack":
            continue
        action = "replace" if op in _REPLACING else op
        found.setdefault(action, set()).add(f"{kind} {urn.rsplit('::', 1)[-1]}")
    return {action: sorted(labels) for action, labels in sorted(found.items())}


@pytest.mark.parametrize("title", REPLAYED)
def test_a_routine_change_previews_and_applies_as_the_change_matrix_says(
    lab: Lab, title: str
) -> None:
    change = _change(title)
    lab.apply(change)
    preview = lab.preview()
    assert engine_plan(preview) == EXPECTED[("prod", title)], json.dumps(
        [(s["op"], s["urn"], s.get("diffReasons")) for s in preview["steps"] if s["op"] != "same"],
        indent=1,
    )
    if title == "K3s version bump":
        lab.pods_before_bump = movable_pods(lab.prod)
        with CordonWatch(lab.prod) as watch:
            applied = lab.prod.up()
        lab.cordons = watch.states
        lab.pods_after_bump = movable_pods(lab.prod)
    else:
        applied = lab.prod.up()
    assert applied.remote_steps == len(outcome(change).plan.remote_steps), applied
    assert not {"replace", "delete"} & set(applied.summary), applied.summary
    again = lab.prod.up()
    assert set(again.summary) == {"same"} and again.remote_steps == 0, again


def test_the_version_bump_reached_every_pi(lab: Lab) -> None:
    new = lab.config["k3s"]["version"]
    assert new != VERSION
    for name in ("pi-server-1", "pi-agent-1", "pi-agent-2"):
        version = lab.prod.pis[name].exec("k3s", "--version").stdout
        assert version.startswith(f"k3s version {new} "), (name, version)


def test_the_new_snapshot_schedule_reached_the_server_timer(lab: Lab) -> None:
    assert lab.config["k3s"]["snapshots"] == {"schedule": "30 2 * * *", "retention": 10}
    server = lab.prod.pis["pi-server-1"]
    unit = "/etc/systemd/system/picluster-datastore-snapshot"
    assert "OnCalendar=*-*-* 2:30:00" in server.read(f"{unit}.timer")
    assert "Environment=RETENTION=10" in server.read(f"{unit}.service")
    active = server.exec("systemctl", "is-active", "picluster-datastore-snapshot.timer")
    assert active.stdout.strip() == "active"


def test_the_version_bump_drained_one_node_at_a_time_evicting_its_pods(lab: Lab) -> None:
    # Never two nodes cordoned at once; each in turn, the server first; none left cordoned.
    assert all(len(state) <= 1 for state in lab.cordons), lab.cordons
    turns = [state[0] for state in lab.cordons if state]
    assert turns == ["pi-server-1", "pi-agent-1", "pi-agent-2"], lab.cordons
    assert lab.cordons[-1] == (), lab.cordons
    # Every pod that ran on one of the stack's nodes before the bump was evicted (its controller
    # made a new one). (The standby Pi's Node exists from the start, not in the stack yet: its
    # pods stay.)
    drained = {
        uid: pod for uid, pod in lab.pods_before_bump.items() if not pod.endswith(f" on {STANDBY}")
    }
    assert drained, "no pods to drain: the lab's app did not run"
    stayed = set(drained) & set(lab.pods_after_bump)
    assert not stayed, sorted(lab.pods_before_bump[uid] for uid in stayed)
    nodes = {n["metadata"]["name"]: n for n in lab.prod.get("nodes")["items"]}
    for name in ("pi-server-1", "pi-agent-1", "pi-agent-2"):
        assert not nodes[name]["spec"].get("unschedulable"), name
        assert nodes[name]["status"]["nodeInfo"]["kubeletVersion"] == lab.config["k3s"]["version"]


def test_the_label_is_on_the_node(lab: Lab) -> None:
    labels = lab.prod.get("node", "pi-agent-1")["metadata"]["labels"]
    assert labels.get("game.studio/tier") == "frontend", labels


def test_the_rotated_password_is_in_the_cluster(lab: Lab) -> None:
    secret = lab.prod.get("secret", "-n", "game", "app-secrets")
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert lab.config["dbPassword"] == "matrix-db-password-2"
    assert "matrix-db-password-2" in json.dumps(values), sorted(values)


def test_the_new_agent_joined(lab: Lab) -> None:
    pi = lab.prod.pis[STANDBY]
    assert pi.exec("k3s", "--version").stdout.startswith("k3s version "), STANDBY
    node = lab.prod.get("node", STANDBY)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", node["status"]


def test_with_a_domain_the_ingresses_still_answer_on_any_host(lab: Lab) -> None:
    # As the API server holds them after the domain was set: one rule each, with no host, which
    # Traefik turns into a path-only router (pkg/provider/kubernetes/ingress, loadRouter), so
    # http://<any Pi>/ serves the game, its paths and /grafana as the domain does.
    assert lab.config["app"]["domain"] == "game.home.arpa"
    rules = {
        f"{i['metadata']['namespace']}/{i['metadata']['name']}": i["spec"]["rules"]
        for i in lab.prod.get("ingress", "-A")["items"]
    }
    assert set(rules) == {"game/game", "monitoring/grafana"}, "only these two are exposed"
    for name, [rule] in rules.items():
        assert "host" not in rule, name
    paths = {
        p["path"]: p["backend"]["service"]["name"] for p in rules["game/game"][0]["http"]["paths"]
    }
    assert paths == {"/": "frontend", "/lobby": "lobby", "/scores": "scores"}
    assert [p["path"] for p in rules["monitoring/grafana"][0]["http"]["paths"]] == ["/grafana"]
    grafana = lab.prod.get("deployment", "-n", "monitoring", "grafana")
    env = {
        e["name"]: e.get("value")
        for e in grafana["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["GF_SERVER_DOMAIN"] == "game.home.arpa"

    listed = lab.prod.project.pulumi("stack", "output", "--json", "-s", "prod")
    assert listed.returncode == 0, listed.stderr
    outputs = json.loads(listed.stdout)
    assert outputs["frontendUrl"] == "http://game.home.arpa/"
    assert outputs["grafanaUrl"] == "http://game.home.arpa/grafana/"
    assert outputs["prometheusUrl"] == "http://127.0.0.1:9090/"
    assert outputs["alertmanagerUrl"] == "http://127.0.0.1:9093/"
    assert outputs["forwardCommand"] == "bin/picluster forward -s prod"


def test_a_hand_change_in_the_cluster_is_reported_by_refresh_and_undone_by_up(lab: Lab) -> None:
    project = lab.prod.project
    scaled = kubectl(lab.prod.kubeconfig, "scale", "deployment/lobby", "-n", "game", "--replicas=3")
    assert scaled.returncode == 0, scaled.stderr
    refresh = project.pulumi("refresh", "--preview-only", "--json", "-s", "prod")
    assert refresh.returncode == 0, refresh.stdout[-4000:] + refresh.stderr[-2000:]
    steps = json.loads(refresh.stdout)["steps"]
    changed = {
        s["urn"].rsplit("::", 1)[-1]: (s.get("diffReasons"), sorted(s.get("detailedDiff") or {}))
        for s in steps
        if s.get("diffReasons") or s.get("detailedDiff")
    }
    assert set(changed) == {"app-lobby"}, (
        changed,
        [{k: v for k, v in s.items() if k not in ("oldState", "newState")} for s in steps[:3]],
        [
            {k: v for k, v in s.items() if k not in ("oldState", "newState")}
            for s in steps
            if "app-lobby" in s["urn"]
        ],
    )
    restored = lab.prod.up("--refresh")
    assert restored.remote_steps == 0, restored
    deployment = lab.prod.get("deployment", "-n", "game", "lobby")
    assert deployment["spec"]["replicas"] == 1, deployment["spec"]


def test_destroy_removes_the_agents_and_keeps_the_protected_servers_and_data(lab: Lab) -> None:
    project = lab.prod.project
    result = project.pulumi("destroy", "--exclude-protected", "--yes", "-s", "prod", timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    agents = ("pi-agent-1", "pi-agent-2", STANDBY)
    nodes = {n["metadata"]["name"] for n in lab.prod.get("nodes")["items"]}
    assert nodes == {"pi-server-1"}, nodes
    for name in agents:
        assert not lab.prod.pis[name].exists("/usr/local/bin/k3s"), f"{name} kept K3s"
    assert lab.prod.pis["pi-server-1"].exists("/usr/local/bin/k3s")
    # The database's claim is protected; the backups' is retained (kept in the cluster, gone
    # from the stack); the monitoring's went with the rest.
    claims = {c["metadata"]["name"] for c in lab.prod.get("pvc", "-A")["items"]}
    assert claims == {"postgres-data", BACKUP_CLAIM}, claims
    assert not lab.prod.get("deployments", "-A")["items"]
    assert "All unprotected resources were destroyed. There are still" in output, output[-3000:]
