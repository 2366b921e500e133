"""The change matrix: each routine change, and exactly what the engine would do about it.

Every row runs the real program twice under mocks and applies the engine's rules
(`tests/engine_rules.py`, `tests/provider_rules.py`). A change that would replace a protected or
data-holding resource, run a destructive `delete`, or be refused, fails here, and so does any
drift of the "What a change does" table in CONTRIBUTING.md from what the rules compute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.images import plan_build
from tests.change_matrix import CHANGES, Change, markdown_table, outcome, source_versions
from tests.engine_rules import Action

CONTRIBUTING = Path(__file__).resolve().parents[2] / "CONTRIBUTING.md"

EVERY_INSTALL_AND_CHECK = [
    f"Command cluster-{node}-{step}"
    for node in ("pi-agent-1", "pi-agent-2", "pi-server-1")
    for step in ("join", "k3s")
]
"""Each node's K3s install and its check: what a new version or a new token re-runs."""

EVERY_DRAIN_INSTALL_AND_CHECK = sorted(
    [*EVERY_INSTALL_AND_CHECK]
    + [f"Command cluster-{node}-drain" for node in ("pi-agent-1", "pi-agent-2", "pi-server-1")]
)
"""A new version also re-runs each node's drain before its install: a rolling upgrade."""

RELEASES = [plan_build("lobby", folder).tag for folder in source_versions()]
"""The content tags of the two versions of the built service's source."""

# (stack, change) -> {action: sorted "Kind name" labels}; actions with nothing are left out.
EXPECTED: dict[tuple[str, str], dict[str, list[str]]] = {
    ("prod", "K3s version bump"): {"update": EVERY_DRAIN_INSTALL_AND_CHECK},
    ("prod", "a label on one node"): {"update": ["Command cluster-pi-agent-1-join"]},
    ("prod", "a taint on one node"): {
        "update": ["Command cluster-pi-agent-2-join", "Command cluster-pi-agent-2-k3s"]
    },
    ("prod", "1 → 3 servers"): {
        "create": [
            "Command cluster-pi-server-2-drain",
            "Command cluster-pi-server-2-join",
            "Command cluster-pi-server-2-k3s",
            "Command cluster-pi-server-3-drain",
            "Command cluster-pi-server-3-join",
            "Command cluster-pi-server-3-k3s",
            "Command pi-server-2-gate",
            "Command pi-server-2-prepare",
            "Command pi-server-3-gate",
            "Command pi-server-3-prepare",
        ],
        "update": [
            "Command cluster-pi-server-1-join",
            "Command cluster-pi-server-1-k3s",
        ],
        # Embedded etcd from now on: K3s snapshots it; the SQLite copy's timer goes.
        "delete": ["Command cluster-pi-server-1-snapshots"],
    },
    ("prod", "add an agent"): {
        "create": [
            "Command cluster-pi-agent-3-drain",
            "Command cluster-pi-agent-3-join",
            "Command cluster-pi-agent-3-k3s",
            "Command pi-agent-3-gate",
            "Command pi-agent-3-prepare",
        ]
    },
    ("prod", "remove an agent"): {
        "delete": [
            "Command cluster-pi-agent-2-drain",
            "Command cluster-pi-agent-2-join",
            "Command cluster-pi-agent-2-k3s",
            "Command pi-agent-2-gate",
            "Command pi-agent-2-prepare",
        ]
    },
    ("prod", "an agent becomes a server (with a third server)"): {
        "create": [
            "Command cluster-pi-server-3-drain",
            "Command cluster-pi-server-3-join",
            "Command cluster-pi-server-3-k3s",
            "Command pi-server-3-gate",
            "Command pi-server-3-prepare",
        ],
        "update": [
            "Command cluster-pi-agent-1-join",
            "Command cluster-pi-agent-1-k3s",
            "Command cluster-pi-server-1-join",
            "Command cluster-pi-server-1-k3s",
        ],
        "delete": ["Command cluster-pi-server-1-snapshots"],
    },
    ("prod", "`dbPassword` rotated"): {
        "update": [
            "CronJob app-backup",
            "Deployment app-lobby",
            "Deployment app-scores",
            "Deployment monitoring-postgres-exporter",
            "Secret app-secrets",
            "Secret monitoring-postgres-exporter",
            "StatefulSet app-postgres",
        ]
    },
    ("prod", "`grafanaAdminPassword` rotated"): {
        "update": ["Deployment monitoring-grafana", "Secret monitoring-grafana"]
    },
    ("prod", "`k3sToken` rotated"): {"update": EVERY_INSTALL_AND_CHECK},
    ("prod", "a service's image bumped"): {"update": ["Deployment app-lobby"]},
    # Its build (and push) command and its Deployment change, and the new release gets its own
    # migration Job; nothing else, no other service, no replace.
    ("prod", "a service's source changed (with a migration)"): {
        "create": [f"Job app-lobby-migrate-{RELEASES[1]}"],
        "update": ["Command app-lobby-build", "Deployment app-lobby"],
        "delete": [f"Job app-lobby-migrate-{RELEASES[0]}"],
    },
    ("prod", "a new service"): {
        "create": ["Deployment app-chat", "Service app-chat"],
        "update": [
            "ConfigMap monitoring-prometheus",
            "Deployment monitoring-prometheus",
            "Ingress app-ingress",
            "NetworkPolicy app-netpol-frontend",
            "NetworkPolicy app-netpol-services",
        ],
    },
    # The Ingress is not in it: its rules carry no host, whatever the domain.
    ("prod", "`app.domain` set (a DNS name on the router)"): {
        "update": [
            "ConfigMap monitoring-blackbox-exporter",
            "ConfigMap monitoring-prometheus",
            "Deployment monitoring-blackbox-exporter",
            "Deployment monitoring-grafana",
            "Deployment monitoring-prometheus",
        ]
    },
    ("prod", "a service's replicas 1 → 3"): {
        "create": ["PodDisruptionBudget app-lobby-pdb"],
        "update": ["Deployment app-lobby"],
    },
    ("prod", "monitoring retention and scrape interval"): {
        "update": ["ConfigMap monitoring-prometheus", "Deployment monitoring-prometheus"]
    },
    ("prod", "an alert receiver added (ntfy)"): {
        "create": ["Secret monitoring-alertmanager"],
        "update": ["ConfigMap monitoring-alertmanager", "Deployment monitoring-alertmanager"],
    },
    ("prod", "datastore snapshot schedule and retention"): {
        "update": ["Command cluster-pi-server-1-snapshots"]
    },
    ("prod", "database storage 5Gi → 10Gi"): {},
    # registries.yaml travels on the install's stdin: an in-place update, K3s restarted on each
    # node one at a time, never a replace (whose delete would uninstall K3s).
    ("prod", "a user registry added"): {"update": EVERY_INSTALL_AND_CHECK},
    ("local", "`dbPassword` rotated"): {
        "replace": [
            "Container app-lobby-1",
            "Container app-postgres",
            "Container app-postgres-backup",
            "Container app-scores-1",
            "Container monitoring-postgres-exporter",
        ]
    },
    ("local", "`grafanaAdminPassword` rotated"): {"replace": ["Container monitoring-grafana"]},
    ("local", "a service's image bumped"): {
        "create": ["RemoteImage app-image-ghcr-io-studio-lobby-1-4-3"],
        "replace": ["Container app-lobby-1"],
        "delete": ["RemoteImage app-image-ghcr-io-studio-lobby-1-4-2"],
    },
    ("local", "an alert receiver added (ntfy)"): {"replace": ["Container monitoring-alertmanager"]},
    ("local", "`docker.publishAddress`"): {
        "replace": [
            "Container app-frontend",
            "Container monitoring-alertmanager",
            "Container monitoring-grafana",
            "Container monitoring-prometheus",
        ]
    },
}

DATA_HOLDING = {
    "docker:index/volume:Volume",
    "kubernetes:core/v1:PersistentVolumeClaim",
    "random:index/randomPassword:RandomPassword",
}
"""Replacing one of these loses data or silently rotates a password."""


def _id(change: Change) -> str:
    return f"{change.stack}: {change.title}"


def test_every_change_has_an_expectation() -> None:
    assert {(c.stack, c.title) for c in CHANGES} == set(EXPECTED)


@pytest.mark.parametrize("change", CHANGES, ids=_id)
def test_change_does_exactly_what_is_expected(change: Change) -> None:
    result = outcome(change)
    found = {
        action.value: sorted(result.plan.labels(action))
        for action in Action
        if result.plan.labels(action)
    }
    assert found == EXPECTED[(change.stack, change.title)], result.plan.summary()


@pytest.mark.parametrize("change", CHANGES, ids=_id)
def test_change_is_accepted_and_keeps_data(change: Change) -> None:
    result = outcome(change)
    assert not result.plan.refusals, result.plan.refusals
    assert not result.plan.rejected, result.plan.rejected
    protected = {r.urn for r in result.before.registrations if r.protect}
    for step in result.plan.steps:
        if step.action in (Action.REPLACE, Action.DELETE):
            assert step.type not in DATA_HOLDING, step
            assert step.urn not in protected, step


@pytest.mark.parametrize("change", CHANGES, ids=_id)
def test_destructive_deletes_run_only_for_a_removed_node(change: Change) -> None:
    deletes = {(d.name, d.scripts) for d in outcome(change).plan.delete_commands}
    if change.title == "remove an agent":
        assert deletes == {
            ("cluster-pi-agent-2-k3s", ("k3s-install",)),  # uninstall K3s on the Pi
            ("cluster-pi-agent-2-join", ("k3s-node",)),  # drain and delete the node first
        }
    elif change.title in ("1 → 3 servers", "an agent becomes a server (with a third server)"):
        # Removes the SQLite copy's timer (the copies stay): K3s now snapshots etcd itself.
        assert deletes == {("cluster-pi-server-1-snapshots", ("k3s-sqlite-snapshots",))}
    else:
        assert not deletes


def test_the_contributing_table_is_the_generated_one() -> None:
    text = CONTRIBUTING.read_text()
    start = text.index("<!-- change-matrix:start -->")
    end = text.index("<!-- change-matrix:end -->")
    assert text[start:end].split("\n", 1)[1].strip() == markdown_table().strip(), (
        "CONTRIBUTING.md's change table is stale: regenerate it with "
        "`.venv/bin/python -m tests.change_matrix`"
    )


@pytest.mark.parametrize("change", CHANGES, ids=_id)
def test_the_preview_of_a_change_shows_its_real_blast_radius(change: Change) -> None:
    # A provider configured from a step that re-runs cannot diff in a preview: every object it
    # manages would show as an update, hiding the few that really change.
    assert not outcome(change).plan.blind_providers
    # Nor may a step that re-runs make a preview show updates `up` does not make (the other
    # nodes' installs once took the CA's hash from the first server's install stdout).
    assert not outcome(change).plan.overstated
