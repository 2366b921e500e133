"""bin/restore-datastore's order of steps and its refusals, with a recording stand-in for SSH (the
steps themselves run for real on simulated Pis in tests/integration/test_datastore_restore.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from components.config import ConfigError, validate
from tests.harness import ROOT, stack_file_config
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
        changed = {"stop": "stopped", "resume": "started"}.get(action)
        summary = f"changed: {changed}" if changed else "no changes"
        out = f"picluster k3s-datastore-restore: {summary}\n"
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


@pytest.mark.parametrize("failing", [("cp-1", "restore"), ("cp-1", "stop")])
def test_a_failed_restore_starts_the_stopped_servers_again(failing: tuple[str, str]) -> None:
    run = Recorder(fail=failing)
    plan = restore_datastore.plan_for(FIRST, (SECOND, THIRD), "etcd-snapshot-cp-1-1700000000")
    with pytest.raises(RestoreError, match=f"{failing[1]} on cp-1 failed") as raised:
        restore_datastore.restore(run, plan)
    after = [(name, action) for name, action, _ in run.calls][7 if failing[1] == "restore" else 6 :]
    stopped = ["cp-2", "cp-3", "cp-1"] if failing[1] == "restore" else ["cp-2", "cp-3"]
    # Every stopped server started before any is waited for: an etcd member alone has no quorum.
    assert after == [(n, "resume") for n in stopped] + [(n, "start") for n in stopped]
    assert raised.value.restarted == tuple(stopped)


def test_without_the_venv_it_refuses_clearly(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    shutil.copy(ROOT / "bin" / "restore-datastore", tmp_path / "bin")
    result = subprocess.run(
        [tmp_path / "bin" / "restore-datastore", "--list"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"bin/restore-datastore: no {tmp_path}/.venv yet: "
        "run bin/pulumi install (or bin/up-local, bin/test) once\n"
    )


def _fake_pulumi(tmp_path: Path, config: Mapping[str, Any], secrets: set[str]) -> dict[str, str]:
    """A `pulumi` on PATH printing `pulumi config --json` as the CLI does: objects as JSON text in
    `value` and as data in `objectValue`, secrets as `[secret]` (never their values)."""
    entries: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (dict, list)):
            entries[f"picluster:{key}"] = {
                "value": json.dumps(value),
                "objectValue": value,
                "secret": False,
            }
        else:
            entries[f"picluster:{key}"] = {"value": value, "secret": False}
    for key in secrets:
        entries[f"picluster:{key}"] = {"value": "[secret]", "secret": True}
    (tmp_path / "config.json").write_text(json.dumps(entries))
    script = tmp_path / "pulumi"
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'config.json'}\n")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}


def test_a_stack_with_alert_secrets_is_read_without_their_values(tmp_path: Path) -> None:
    config = stack_file_config("prod")
    monitoring = dict(config.get("monitoring") or {})
    monitoring["alerts"] = {"webhook": {}, "ntfy": {}, "slack": {}}
    config["monitoring"] = monitoring
    secrets = {"k3sToken", "alertsWebhookUrl", "alertsNtfyUrl", "alertsSlackWebhookUrl"}
    secrets.add("alertsHeartbeatUrl")
    env = _fake_pulumi(tmp_path, config, secrets)
    settings = restore_datastore.stack_settings("prod", env=env)
    assert settings.monitoring.alerts.webhook is not None
    assert restore_datastore.plan(settings, "state-x.db").first.name == config["nodes"][0]["name"]
    # The receivers' secrets are still required: only their values go unread.
    env = _fake_pulumi(tmp_path, config, secrets - {"alertsNtfyUrl"})
    with pytest.raises(ConfigError, match=r"monitoring\.alerts\.ntfy: needs the secret"):
        restore_datastore.stack_settings("prod", env=env)


def test_a_step_without_an_answer_in_time_is_a_restore_error(tmp_path: Path) -> None:
    ssh = restore_datastore.Ssh(tmp_path / "key", step_timeout=0.5)
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text("#!/bin/sh\nexec sleep 30\n")
    fake_ssh.chmod(0o755)
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{tmp_path}:{old_path}"
    try:
        with pytest.raises(RestoreError, match=r"restore on cp-1 gave no answer in 0\.5s"):
            ssh.run(FIRST, {"ACTION": "restore"})
    finally:
        os.environ["PATH"] = old_path
        ssh.close()


def test_a_step_may_take_longer_over_ssh_than_on_the_server() -> None:
    # The restore step: the copy of the etcd data aside, then `timeout READY_TIMEOUT` of the reset.
    remote = restore_datastore.READY_TIMEOUT_SECONDS + restore_datastore.COPY_ALLOWANCE_SECONDS
    assert remote < restore_datastore.SSH_TIMEOUT_SECONDS


def test_a_passphrase_key_needs_the_agent_and_the_agent_alone_needs_no_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The restore never stops at a prompt (BatchMode): a passphrase-protected key is refused
    unless an agent holds it; with `ssh.agent` alone, ssh gets no `-i`."""
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "unit-pass", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    problem = restore_datastore.identity_problem(key)
    assert problem is not None and "ssh-add" in problem
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    assert restore_datastore.identity_problem(key) is None

    config = stack_file_config("prod")
    settings = validate({**config, "ssh": {"user": "pi", "agent": True}})
    monkeypatch.setattr(restore_datastore, "stack_settings", lambda stack: settings)
    argvs: list[list[str]] = []

    def fake_run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        argvs.append(argv)
        return subprocess.CompletedProcess(argv, 0, "picluster k3s-datastore-restore: listed\n", "")

    monkeypatch.setattr(restore_datastore.subprocess, "run", fake_run)
    restore_datastore.main(["--list"])
    assert argvs and "-i" not in argvs[0]
