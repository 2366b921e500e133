"""bin/restore-datastore's order of steps and its refusals, with a recording stand-in for SSH (the
steps themselves run for real on simulated Pis in tests/integration/test_datastore_restore.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

import pytest

from components.config import validate
from tests.harness import stack_file_config
from tools import restore_datastore
from tools.restore_datastore import RestoreError, Server

FIRST, SECOND, THIRD = (
    Server(name=f"cp-{i}", host=f"10.0.0.{i}", port=22, user="pi") for i in (1, 2, 3)
)


class Recorder:
    """Answers every step with its summary line, failing the one named in `fail`."""

    def __init__(self, fail: tuple[str, str] | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = fail

    def __call__(
        self, server: Server, values: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        action = values["ACTION"]
        self.calls.append((server.name, action, values["SNAPSHOT"]))
        if (server.name, action) == self.fail:
            return subprocess.CompletedProcess([], 1, "", "picluster k3s-datastore-restore: ERROR")
        out = "picluster k3s-datastore-restore: no changes\n"
        return subprocess.CompletedProcess([], 0, out, "")


def test_etcd_restore_checks_everything_then_stops_restores_and_rejoins_in_order() -> None:
    run = Recorder()
    plan = restore_datastore.plan_for(FIRST, (SECOND, THIRD), "etcd-snapshot-cp-1-1700000000")
    restore_datastore.restore(run, plan)
    assert [(name, action) for name, action, _ in run.calls] == [
        ("cp-1", "check"),
        ("cp-2", "check"),
        ("cp-3", "check"),
        ("cp-2", "stop"),
        ("cp-3", "stop"),
        ("cp-1", "stop"),
        ("cp-1", "restore"),
        ("cp-1", "start"),
        ("cp-2", "rejoin"),
        ("cp-2", "start"),
        ("cp-3", "rejoin"),
        ("cp-3", "start"),
    ]
    # Only the first server is told the snapshot.
    assert {snap for name, _, snap in run.calls if name != "cp-1"} == {""}


def test_a_failed_check_stops_before_anything_is_stopped() -> None:
    run = Recorder(fail=("cp-3", "check"))
    plan = restore_datastore.plan_for(FIRST, (SECOND, THIRD), "etcd-snapshot-cp-1-1700000000")
    with pytest.raises(RestoreError, match="check on cp-3 failed"):
        restore_datastore.restore(run, plan)
    assert not [c for c in run.calls if c[1] != "check"]


def test_sqlite_restore_is_four_steps_on_the_one_server() -> None:
    run = Recorder()
    restore_datastore.restore(run, restore_datastore.plan_for(FIRST, (), "state-x.db"))
    assert [action for _, action, _ in run.calls] == ["check", "stop", "restore", "start"]


def test_the_plan_comes_from_the_stack_config_with_pinned_host_keys() -> None:
    config = stack_file_config("prod")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ2dW5pdHRlc3Rob3N0a2V5MDEyMzQ1Njc4OWFi"
    config["nodes"][0] = {**config["nodes"][0], "hostKey": key, "port": 2201}
    plan = restore_datastore.plan(validate(config), "state-x.db")
    assert plan.datastore == "sqlite"
    assert (plan.first.port, plan.first.host_key) == (2201, key)
    assert plan.others == ()
    assert "Everything written to the cluster since the snapshot is lost." in plan.describe()


def test_without_yes_nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = validate(stack_file_config("prod"))
    monkeypatch.setattr(restore_datastore, "stack_settings", lambda stack: settings)
    ran: list[str] = []
    monkeypatch.setattr(restore_datastore.Ssh, "run", lambda self, *a: ran.append("ssh"))
    assert restore_datastore.main(["--snapshot", "state-x.db", "--identity", "/dev/null"]) == 1
    assert ran == []
    assert restore_datastore.main(["--identity", "/dev/null"]) == 2  # no snapshot named
    assert ran == []
