"""Datastore snapshots under mocks: `k3s.snapshots` to the servers' config.yaml (embedded etcd) or
to the SQLite copy's timer step (one server), S3 keys kept secret, and bad config named."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
import yaml

from components.config import ConfigError, validate
from components.datastore_snapshots import on_calendar
from tests.harness import Registration, Run, run_main, stack_file_config

COMMAND = "command:remote:Command"
TOKEN = "K10picluster-unit-test-token-0123456789abcdef"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nunit\n-----END OPENSSH PRIVATE KEY-----\n"
ACCESS_KEY = "AKIAPICLUSTERUNIT0001"
SECRET_KEY = "picluster-unit-s3-secret-key-0123456789"

S3 = {
    "bucket": "pi-snapshots",
    "endpoint": "minio.lan:9000",
    "folder": "prod/etcd",
    "region": "eu-west-1",
    "insecure": True,
}
HA: dict[str, Any] = {
    "target": "k3s",
    "ssh": {"user": "pi"},
    "k3s": {
        "version": "v1.31.4+k3s1",
        "snapshots": {"schedule": "0 */6 * * *", "retention": 14, "s3": S3},
    },
    "nodes": [
        {"name": "cp-a", "host": "10.20.0.11", "role": "server"},
        {"name": "cp-b", "host": "10.20.0.12", "role": "server"},
        {"name": "cp-c", "host": "10.20.0.13", "role": "server"},
        {"name": "worker-1", "host": "10.20.0.21", "role": "agent"},
    ],
}
SECRETS = ("sshPrivateKey", "k3sToken", "etcdS3AccessKey", "etcdS3SecretKey")


def run_prod(config: dict[str, Any], **extra: Any) -> Run:
    return run_main(
        {**config, "sshPrivateKey": PRIVATE_KEY, "k3sToken": TOKEN, **extra},
        stack="prod",
        secret_keys=SECRETS,
    )


@pytest.fixture(scope="module")
def ha() -> Run:
    return run_prod(HA, etcdS3AccessKey=ACCESS_KEY, etcdS3SecretKey=SECRET_KEY)


@pytest.fixture(scope="module")
def single() -> Run:
    config = stack_file_config("prod")
    config["k3s"] = {**config["k3s"], "snapshots": {"schedule": "30 2 * * 1-5", "retention": 9}}
    return run_prod(config)


def stdin_values(command: Registration) -> dict[str, str]:
    return {
        m["name"]: m["value"].strip("'")
        for m in re.finditer(
            r"^(?P<name>[A-Z_][A-Z0-9_]*)=(?P<value>.*)$", command.value("stdin"), re.M
        )
    }


def k3s_config(command: Registration) -> dict[str, Any]:
    return yaml.safe_load(base64.b64decode(stdin_values(command)["CONFIG_YAML_B64"]))


def test_embedded_etcd_servers_get_k3s_snapshot_and_s3_keys(ha: Run) -> None:
    for server in ("cp-a", "cp-b", "cp-c"):
        config = k3s_config(ha.named(f"cluster-{server}-k3s"))
        assert {
            k: v
            for k, v in config.items()
            if k.startswith("etcd-snapshot") or k.startswith("etcd-s3")
        } == {
            "etcd-snapshot-schedule-cron": "0 */6 * * *",
            "etcd-snapshot-retention": 14,
            "etcd-s3": True,
            "etcd-s3-endpoint": "minio.lan:9000",
            "etcd-s3-bucket": "pi-snapshots",
            "etcd-s3-region": "eu-west-1",
            "etcd-s3-folder": "prod/etcd",
            "etcd-s3-insecure": True,
            "etcd-s3-access-key": ACCESS_KEY,
            "etcd-s3-secret-key": SECRET_KEY,
        }
    agent = k3s_config(ha.named("cluster-worker-1-k3s"))
    assert not [key for key in agent if key.startswith("etcd-")]
    # K3s snapshots etcd itself: no SQLite timer anywhere.
    assert not [r.name for r in ha.of_type(COMMAND) if r.name.endswith("-snapshots")]


def test_s3_keys_stay_secret_and_off_every_command_line(ha: Run) -> None:
    carrying = set()
    for resource in ha.registrations:
        for key in ("create", "update", "delete"):
            text = str(resource.value(key) or "")
            assert ACCESS_KEY not in text and SECRET_KEY not in text, f"{resource.name}.{key}"
        for value in (ACCESS_KEY, SECRET_KEY):
            assert not any(value in s for s in resource.plain_strings()), resource.name
        installs = resource.type == COMMAND and "CONFIG_YAML_B64" in (resource.value("stdin") or "")
        if installs and k3s_config(resource).get("etcd-s3-secret-key") == SECRET_KEY:
            carrying.add(resource.name)
            assert resource.is_secret("stdin"), resource.name
    # Only the servers' installs, inside their secret stdin (config.yaml is written 0600).
    assert carrying == {"cluster-cp-a-k3s", "cluster-cp-b-k3s", "cluster-cp-c-k3s"}


def test_server_config_still_overrides_what_picluster_sets(ha: Run) -> None:
    config = {**HA, "k3s": {**HA["k3s"], "serverConfig": {"etcd-snapshot-retention": 3}}}
    run = run_prod(config, etcdS3AccessKey=ACCESS_KEY, etcdS3SecretKey=SECRET_KEY)
    assert k3s_config(run.named("cluster-cp-b-k3s"))["etcd-snapshot-retention"] == 3


def test_snapshots_disabled_on_etcd_turns_k3s_snapshots_off() -> None:
    config = {**HA, "k3s": {"version": "v1.31.4+k3s1", "snapshots": {"enabled": False}}}
    run = run_prod(config)
    etcd = {k: v for k, v in k3s_config(run.named("cluster-cp-a-k3s")).items() if "snapshot" in k}
    assert etcd == {"etcd-disable-snapshots": True}


def test_a_single_server_gets_the_sqlite_timer_step(single: Run) -> None:
    install = single.named("cluster-pi-server-1-k3s")
    assert not [key for key in k3s_config(install) if key.startswith("etcd-")]
    step = single.named("cluster-pi-server-1-snapshots")
    assert step.parent == single.named("cluster").urn
    assert install.urn in step.dependencies
    assert step.value("create") == "sudo bash -s"
    assert step.value("update") == "sudo bash -s"
    assert step.value("delete") == "sudo bash -s -- delete"
    assert not step.value("triggers")
    values = stdin_values(step)
    assert values["ON_CALENDAR"] == "Mon..Fri *-*-* 2:30:00"
    assert values["RETENTION"] == "9"
    assert values["ENABLED"] == "1"
    copy_script = base64.b64decode(values["COPY_SCRIPT_B64"]).decode()
    assert copy_script.startswith("#!/usr/bin/env bash\n# picluster datastore-snapshot:")
    assert "k3s-sqlite-snapshots" in step.value("stdin")


@pytest.mark.parametrize(
    ("cron", "calendar"),
    [
        ("0 */12 * * *", "*-*-* 0/12:0:00"),
        ("17 3 * * *", "*-*-* 3:17:00"),
        ("*/15 * * * *", "*-*-* *:0/15:00"),
        ("0 4 1,15 * *", "*-*-1,15 4:0:00"),
        ("0 1 * 1-6 0,6", "Sun,Sat *-1..6-* 1:0:00"),
        ("5 0 */2 * 7", "Sun *-*-1/2 0:5:00"),
    ],
)
def test_cron_schedules_become_systemd_calendars(cron: str, calendar: str) -> None:
    assert on_calendar(cron) == calendar


@pytest.mark.parametrize("cron", ["0 1-5/2 * * *", "0 0 * * */2", "60 * * * *", "0 0 0 * *"])
def test_cron_without_a_systemd_form_is_refused(cron: str) -> None:
    with pytest.raises(ValueError, match="cannot be scheduled"):
        on_calendar(cron)


def _problems(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    return str(caught.value)


def test_s3_without_its_keys_names_both_keys() -> None:
    text = _problems(HA)
    assert "picluster:etcdS3AccessKey: is required when picluster:k3s.snapshots.s3 is set" in text
    assert "picluster:etcdS3SecretKey: is required" in text
    assert "pulumi config set --secret etcdS3SecretKey" in text


def test_s3_keys_without_a_bucket_are_refused() -> None:
    raw = {**HA, "k3s": {"version": "v1.31.4+k3s1"}, "etcdS3AccessKey": ACCESS_KEY}
    assert "picluster:etcdS3AccessKey: is set but picluster:k3s.snapshots.s3 is not" in (
        _problems(raw)
    )


def test_s3_on_a_single_sqlite_server_is_refused() -> None:
    raw = {**stack_file_config("prod"), "etcdS3AccessKey": ACCESS_KEY, "etcdS3SecretKey": "x" * 20}
    raw["k3s"] = {**raw["k3s"], "snapshots": {"s3": {"bucket": "pi-snapshots"}}}
    text = _problems(raw)
    assert "picluster:k3s.snapshots.s3: uploads are K3s's etcd snapshots" in text


def test_a_schedule_the_sqlite_timer_cannot_run_names_the_key() -> None:
    raw = stack_file_config("prod")
    raw["k3s"] = {**raw["k3s"], "snapshots": {"schedule": "0 1-5/2 * * *"}}
    assert "picluster:k3s.snapshots.schedule: hour '1-5/2' cannot be scheduled" in _problems(raw)
    # With embedded etcd, K3s's own cron takes it.
    validate({**HA, "k3s": {"version": "v1.31.4+k3s1", "snapshots": {"schedule": "0 1-5/2 * * *"}}})


@pytest.mark.parametrize(
    ("snapshots", "message"),
    [
        ({"retention": 0}, "picluster:k3s.snapshots.retention: 0 is out of range; give a whole"),
        ({"schedule": "hourly"}, "picluster:k3s.snapshots.schedule: 'hourly' is not a cron"),
        ({"s3": {"bucket": "A_B"}}, "picluster:k3s.snapshots.s3.bucket: 'A_B' is not an S3"),
        ({"s3": {"bucket": "ok-bucket", "endpoint": "https://x"}}, "s3.endpoint: 'https://x'"),
        ({"s3": {"bucket": "ok-bucket", "secretKey": "x"}}, "s3.secretKey: unknown key"),
    ],
)
def test_bad_snapshot_settings_name_the_key(snapshots: dict[str, Any], message: str) -> None:
    raw = {**HA, "k3s": {"version": "v1.31.4+k3s1", "snapshots": snapshots}}
    assert message in _problems(raw)


def test_s3_keys_in_server_config_are_refused_as_plain_text() -> None:
    server_config = {"etcd-s3-secret-key": SECRET_KEY}
    raw = {**HA, "k3s": {"version": "v1.31.4+k3s1", "serverConfig": server_config}}
    text = _problems(raw)
    assert "picluster:k3s.serverConfig.etcd-s3-secret-key: is a secret" in text
    assert SECRET_KEY not in text
