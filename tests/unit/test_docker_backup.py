"""The backup job on the Docker target, under mocks: the same pg_dump job as on K3s, on its
schedule, into a retained volume, with the password in a secret file only; and bin/restore-db's
Docker flow against a `docker` test double (tests/integration/test_restore_drill.py runs it
against the real daemon)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_docker as docker
import pytest
from pulumi_command import Provider as CommandProvider

from components.app_model import ASSETS, build_app
from components.app_stack import AppStack, AppStackArgs
from components.config import AppConfig
from components.on_docker.containers import DockerPlatform
from components.secrets import StackSecrets
from tests.harness import TEST_IMAGES, Run, run
from tools.restore_db import DockerTarget, RestoreError, RestoreTimeoutError, StillRunningError

CONTAINER = "docker:index/container:Container"
DB_PW = "unit-backup:pw\\x"
PLATFORM = DockerPlatform(
    publish_address="127.0.0.1",
    frontend_port=8080,
    grafana_port=3000,
    prometheus_port=9090,
    alertmanager_port=9093,
    name_prefix="picluster-unit",
)
BACKUP_SCRIPTS = ASSETS / "backup"


def program(config: dict[str, Any]) -> Any:
    def body() -> None:
        provider = docker.Provider("unit-docker", host="unix:///var/run/docker.sock")
        AppStack(
            "app",
            AppStackArgs(
                app=build_app(AppConfig.model_validate(config), TEST_IMAGES),
                secrets=StackSecrets(
                    db_password=pulumi.Output.secret(DB_PW),
                    grafana_admin_password=pulumi.Output.secret("unused"),
                    database_url=pulumi.Output.secret("postgresql://game:x@postgres:5432/game"),
                ),
                platform=PLATFORM,
            ),
            # The demo API is built from its folder: a local command on the command provider.
            pulumi.ResourceOptions(providers=[provider, CommandProvider("unit-command")]),
        )

    return body


@pytest.fixture(scope="module")
def app() -> Run:
    return run(
        program(
            {"database": {"name": "arena", "backup": {"schedule": "*/30 2-4 * * 1", "keep": 4}}}
        ),
        {},
    )


def env_of(result: Run, name: str) -> dict[str, str]:
    return dict(str(e).split("=", 1) for e in result.named(name).value("envs"))


def test_the_backup_container_runs_the_k3s_job_on_the_configured_schedule(app: Run) -> None:
    backup = app.named("app-postgres-backup")
    assert backup.type == CONTAINER
    assert backup.value("name") == "picluster-unit-postgres-backup"
    # The database's own pinned image, the same script as the CronJob, on the schedule.
    assert backup.value("image") == app.named("app-postgres").value("image")
    assert backup.value("command") == ["sh", "/opt/picluster/pg-backup-schedule.sh"]
    env = env_of(app, "app-postgres-backup")
    assert env == {
        "PGHOST": "postgres",
        "PGPORT": "5432",
        "PGDATABASE": "arena",
        "PGUSER": "game",
        "KEEP": "4",
        "SCHEDULE": "*/30 2-4 * * 1",
        "DB_PASSWORD_FILE": "/run/secrets/db-password",
    }
    files = {u["file"]: u["content"] for u in backup.value("uploads")}
    for script in ("pg-backup-schedule.sh", "pg-backup.sh", "pg-restore.sh"):
        assert files[f"/opt/picluster/{script}"] == (BACKUP_SCRIPTS / script).read_text()
    assert backup.value("restart") == "unless-stopped"
    assert backup.value("networksAdvanced") == [
        {"name": app.named("app-network").value("name"), "aliases": ["postgres-backup"]}
    ]
    assert app.named("app-postgres").urn in backup.dependencies


def test_the_password_reaches_it_as_a_secret_file_only(app: Run) -> None:
    backup = app.named("app-postgres-backup")
    assert backup.is_secret("uploads")
    assert DB_PW in backup.secret_strings()
    assert not any(DB_PW in s for s in backup.plain_strings())
    assert not backup.is_secret("envs"), "nothing secret in its environment"
    assert not any("PASSWORD=" in e for e in backup.value("envs") if "FILE" not in e)
    files = {u["file"]: u["content"] for u in backup.value("uploads")}
    assert files["/run/secrets/db-password"] == DB_PW


def test_the_dumps_volume_is_retained_and_mounted(app: Run) -> None:
    volume = app.named("app-postgres-backups")
    assert volume.value("name") == "picluster-unit-postgres-backups"
    assert volume.retain_on_delete, "a destroy must not take the dumps with it"
    backup = app.named("app-postgres-backup")
    assert backup.value("volumes") == [
        {"volumeName": "picluster-unit-postgres-backups", "containerPath": "/backups"}
    ]
    assert volume.urn in backup.dependencies


def test_backups_can_be_turned_off_on_docker() -> None:
    result = run(program({"database": {"backup": {"enabled": False}}}), {})
    names = {r.name for r in result.registrations}
    assert "app-postgres-backup" not in names and "app-postgres-backups" not in names
    assert "app-postgres" in names


# The schedule: pg-backup-schedule.sh --matches "M H D Mo W" answers for one time, as
# robfig/cron (Kubernetes' CronJob) would: `date -u '+%M %H %d %m %w'` fields, 0 = Sunday.
SCHEDULE_CASES = [
    ("17 3 * * *", "17 03 29 11 0", True),
    ("17 3 * * *", "17 04 29 11 0", False),
    ("17 3 * * *", "18 03 29 11 0", False),
    ("*/15 * * * *", "45 13 01 02 3", True),
    ("*/15 * * * *", "08 13 01 02 3", False),  # a leading zero is not octal
    ("5/20 * * * *", "45 00 01 01 0", True),  # N/S: from N on
    ("5/20 * * * *", "40 00 01 01 0", False),
    ("1-5/2 * * * *", "03 00 01 01 0", True),
    ("1-5/2 * * * *", "04 00 01 01 0", False),
    ("0 0 1,15 * *", "00 00 15 06 4", True),
    ("0 0 */2 * *", "00 00 03 06 4", True),  # days count from 1
    ("0 0 */2 * *", "00 00 02 06 4", False),
    ("0 0 * * 7", "00 00 05 01 0", True),  # 7 is Sunday too
    ("0 0 * * 1-5", "00 00 05 01 0", False),
    ("0 0 1 * 1", "00 00 03 11 1", True),  # both restricted: either day field matches
    ("0 0 1 * 1", "00 00 01 11 3", True),
    ("0 0 1 * 1", "00 00 02 11 3", False),
    ("0 0 * 6 *", "00 00 02 11 3", False),
    ("0 0 30 2 *", "00 00 28 02 6", False),
]


def shells() -> list[str]:
    found = [sh for sh in ("dash", "busybox") if shutil.which(sh)]
    if not found:
        pytest.skip("neither dash nor busybox is installed")
    return found


@pytest.mark.parametrize(("schedule", "now", "expected"), SCHEDULE_CASES)
def test_the_schedule_matches_as_cron_does(schedule: str, now: str, expected: bool) -> None:
    for shell in shells():
        argv = [shell, "sh"] if shell == "busybox" else [shell]
        result = subprocess.run(
            [*argv, str(BACKUP_SCRIPTS / "pg-backup-schedule.sh"), "--matches", now],
            env={"SCHEDULE": schedule, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == (0 if expected else 1), (shell, result.stderr)


@pytest.mark.parametrize("script", ["pg-backup-schedule.sh", "pg-backup.sh", "pg-restore.sh"])
def test_backup_scripts_are_posix_sh_and_shellcheck_clean(script: str) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
    path = BACKUP_SCRIPTS / script
    assert path.read_text().startswith("#!/bin/sh\n")  # the alpine image's sh is busybox ash
    result = subprocess.run(
        ["shellcheck", "--shell=sh", "--severity=style", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


@dataclass
class FakeDocker:
    """Test double of the `docker` CLI for bin/restore-db's Docker flow: `ps` lists the running
    containers unless given `--all` (as the real one does), `inspect` gives the variables'
    names, `stop`/`start` change state, `exec` of pg-restore.sh ends as told (`timeout`: the
    CLI is killed at the limit, as `run` reports it), and `top` shows whether the script still
    runs in the backup container."""

    exec_outcome: Literal["ok", "fails", "timeout", "interrupted"] = "ok"
    script_still_running: bool = False
    failing_starts: set[str] = field(default_factory=set)
    running: dict[str, bool] = field(
        default_factory=lambda: {
            "p-postgres": True, "p-postgres-backup": True, "p-api-1": True,
            "p-scores-1": True, "p-frontend": True,
        }
    )  # fmt: skip
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], **_: Any) -> Any:
        args = list(argv)
        assert args[0] == "docker", args
        verb, rest = args[1], args[2:]
        self.calls.append([verb, *rest])
        stdout, code = "", 0
        if verb == "ps":
            names = [n for n, up in self.running.items() if up or "--all" in rest]
            stdout = "\n".join(names)
        elif verb == "inspect":
            writers = {"p-api-1", "p-scores-1"}
            stdout = "".join(
                f"/{n} PATH{' DATABASE_URL' if n in writers else ''}\n" for n in rest[2:]
            )
        elif verb == "stop":
            for name in rest:
                self.running[name] = False
        elif verb == "start":
            if rest[0] in self.failing_starts:
                code = 1
            else:
                self.running[rest[0]] = True
        elif verb == "exec":
            if self.exec_outcome == "timeout":
                raise RestoreTimeoutError("`docker exec ...` did not end in 5 s")
            if self.exec_outcome == "interrupted":
                raise KeyboardInterrupt
            code = 0 if self.exec_outcome == "ok" else 1
        elif verb == "top":
            stdout = "UID PID CMD\n70 1 sh /opt/picluster/pg-backup-schedule.sh\n"
            if self.script_still_running:
                stdout += "70 99 sh /opt/picluster/pg-restore.sh game-x.sql.gz\n"
        return subprocess.CompletedProcess(args, code, stdout=stdout, stderr="")

    def started(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "start"]


def test_the_docker_flow_stops_the_writers_restores_and_starts_them() -> None:
    fake = FakeDocker()
    assert DockerTarget(prefix="p", run=fake).restore("game-x.sql.gz") is True
    assert ["stop", "p-api-1", "p-scores-1"] in fake.calls
    assert fake.started() == ["p-api-1", "p-scores-1"]
    assert fake.running["p-api-1"] and fake.running["p-scores-1"]


def test_writers_a_killed_run_left_stopped_are_started() -> None:
    fake = FakeDocker()
    fake.running["p-api-1"] = False  # what a run killed after `docker stop` leaves
    assert DockerTarget(prefix="p", run=fake).writers() == ["p-api-1", "p-scores-1"]
    assert DockerTarget(prefix="p", run=fake).restore(None) is True
    assert fake.running["p-api-1"]


@pytest.mark.parametrize("outcome", ["timeout", "interrupted"])
def test_writers_stay_stopped_while_the_script_may_still_run(
    outcome: Literal["timeout", "interrupted"],
) -> None:
    fake = FakeDocker(exec_outcome=outcome, script_still_running=True)
    with pytest.raises(StillRunningError, match=r"pg-restore\.sh may still be running") as raised:
        DockerTarget(prefix="p", run=fake, timeout=5).restore(None)
    assert "docker start p-api-1 p-scores-1" in str(raised.value)
    assert fake.started() == []
    assert not fake.running["p-api-1"] and not fake.running["p-scores-1"]


def test_writers_come_back_once_an_interrupted_script_has_ended() -> None:
    fake = FakeDocker(exec_outcome="timeout", script_still_running=False)
    with pytest.raises(RestoreError, match=r"pg-restore\.sh has ended") as raised:
        DockerTarget(prefix="p", run=fake, timeout=5).restore(None)
    assert not isinstance(raised.value, StillRunningError)
    assert fake.started() == ["p-api-1", "p-scores-1"]


def test_every_writer_is_started_and_every_failure_reported() -> None:
    fake = FakeDocker(exec_outcome="fails", failing_starts={"p-api-1"})
    with pytest.raises(RestoreError, match="the restore failed, but not every writer is back"):
        DockerTarget(prefix="p", run=fake).restore(None)
    assert fake.started() == ["p-api-1", "p-scores-1"]
    assert fake.running["p-scores-1"]
