"""bin/restore-datastore reads the stack's configuration through the real CLI
(`pulumi config --json`): objects, secrets present but never shown, and the plan it makes."""

from __future__ import annotations

import pytest

from tests.engine.conftest import Project
from tools import restore_datastore

pytestmark = pytest.mark.engine

ACCESS_KEY = "engine-restore-access-key-0001"
SECRET_KEY = "engine-restore-secret-key-0123456789"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ2dW5pdHRlc3Rob3N0a2V5MDEyMzQ1Njc4OWFi"


def test_the_restore_reads_nodes_snapshots_and_secret_presence_from_the_stack(
    project: Project,
) -> None:
    assert project.pulumi("stack", "init", "prod").returncode == 0
    secrets = {
        "k3sToken": "engine-restore-token-0123456789",
        "etcdS3AccessKey": ACCESS_KEY,
        "etcdS3SecretKey": SECRET_KEY,
        # A secret whose value the config checks (an http(s) URL): read without its value.
        "alertsWebhookUrl": "https://hooks.example.com/picluster-engine-restore",
    }
    for key, value in secrets.items():
        project.set_secret("prod", key, value)
    for path, value in (
        ("nodes[0].hostKey", HOST_KEY),
        ("nodes[1].role", "server"),
        ("nodes[3].name", "pi-server-3"),
        ("nodes[3].host", "192.168.1.14"),
        ("nodes[3].role", "server"),
        ("k3s.snapshots.s3.bucket", "pi-snapshots"),
        ("monitoring.alerts.webhook.minSeverity", "critical"),
    ):
        result = project.pulumi("config", "set", "--path", path, value, "-s", "prod")
        assert result.returncode == 0, result.stderr
    # A number, as `pulumi config set --type int` stores it (the model takes no string for it).
    result = project.pulumi(
        "config", "set", "--path", "k3s.snapshots.retention", "9", "--type", "int", "-s", "prod"
    )
    assert result.returncode == 0, result.stderr

    settings = restore_datastore.stack_settings("prod", cwd=project.path, env=project.env)

    assert settings.k3s is not None and settings.k3s.snapshots.s3 is not None
    assert settings.k3s.snapshots.s3.bucket == "pi-snapshots"
    assert settings.k3s.snapshots.retention == 9
    assert settings.monitoring.alerts.webhook is not None
    plan = restore_datastore.plan(settings, "etcd-snapshot-pi-server-1-1700000000")
    assert plan.datastore == "etcd"
    assert (plan.first.name, plan.first.host_key) == ("pi-server-1", HOST_KEY)
    assert [s.name for s in plan.others] == ["pi-agent-1", "pi-server-3"]
    raw = project.pulumi("config", "--json", "-s", "prod").stdout
    assert SECRET_KEY not in raw and ACCESS_KEY not in raw  # the CLI never showed them
