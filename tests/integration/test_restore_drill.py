"""The database restore drill, for real: PostgreSQL and the backup job in Docker, as rendered.

The local program runs under mocks with a unique stack name; its PostgreSQL and backup
containers are then created on this machine's Docker exactly as the Docker provider would
(`docker create` with the rendered name, image, command, user, network and aliases, volumes and
environment, then each `upload` copied in as a tar entry of mode 0644 at `/`, as
terraform-provider-docker's resource_docker_container_funcs.go does), from the local stand-in of
the pinned image (`pgimage.py`, under a test-only tag, with the real image's stop signal), which
takes the rendered image's place. Around them:

- the drill: a table with rows, one run of the backup job, the data broken, `bin/restore-db`'s
  Docker flow (writers stopped, `pg-restore.sh` in the backup container, writers started, also
  one a killed run left stopped), the rows back; a damaged dump refused with the database
  untouched; a restore past its time limit leaves the writers stopped while the script runs on;
- the K3s restore pod: kwok runs no pods, so the rendered `postgres-restore` pod template runs
  here as a container with the same user, read-only root, dropped capabilities, no privilege
  escalation, mounts, arguments and environment (the password from the rendered Secret);
- the schedule: `* * * * *` with `keep: 2`, three old dumps seeded, makes a dump within a
  minute and a bit and keeps the newest two; `docker stop` (SIGINT, as the real image's
  STOPSIGNAL) ends it cleanly, with exit code 0.

The writer is a stand-in (the node image cannot be pulled either): a container named and
configured as the rendered `api` one, running `sleep`. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from components import versions
from tests.availability import INTEGRATION, unavailable
from tests.harness import Run, run_main, stack_file_config, unwrap
from tests.integration import pgimage
from tests.integration.localstack import Stack, docker, tar_of, wait_until
from tools.restore_db import DockerTarget, StillRunningError

pytestmark = pytest.mark.integration

PASSWORD = r"drill-Pa55:word\with@odd/chars"
"""A `:` and a `\\`: what pgpass must escape."""
NEVER = "0 0 30 2 *"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-drill-test-key\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
DUMP_NAME = re.compile(r"^game-\d{8}T\d{6}Z\.sql\.gz$")


@pytest.fixture(scope="module")
def image() -> str:
    reason = pgimage.unavailable_reason()
    if reason:
        unavailable(reason, INTEGRATION)
    pgimage.ensure_image()
    return pgimage.TAG


def new_stack(kind: str, backup: dict[str, Any]) -> Stack:
    """The local program rendered under a unique stack name, with `backup` settings."""
    config = {
        **stack_file_config("local"),
        "dbPassword": PASSWORD,
        "app": {"database": {"backup": backup}},
    }
    run = run_main(config, stack=f"{kind}{uuid.uuid4().hex[:6]}", secret_keys=("dbPassword",))
    prefix = run.named("app-network").value("name").removesuffix("-app")
    return Stack(run=run, prefix=prefix)


def start_database(stack: Stack) -> str:
    docker("network", "create", stack.network)
    stack.volume("app-db-data")
    stack.volume("app-postgres-backups")
    db = stack.postgres("app-postgres")
    docker("start", db)
    health = stack.container("app-postgres").value("healthcheck")["tests"][1:]

    def healthy() -> bool:
        return subprocess.run(["docker", "exec", db, *health], capture_output=True).returncode == 0

    wait_until(healthy, f"{db} healthy (its rendered health check)")
    return db


def sql(db: str, statement: str) -> str:
    """Run SQL in the database container as the app's user, over its socket."""
    return docker("exec", "--user", "postgres", db, "psql", "--no-psqlrc", "-qAt", "-U", "game",
                  "-d", "game", "-v", "ON_ERROR_STOP=1", "-c", statement)  # fmt: skip


@pytest.fixture(scope="module")
def drill(image: str) -> Iterator[Stack]:
    stack = new_stack("drill", {"schedule": NEVER, "keep": 3})
    try:
        start_database(stack)
        docker("start", stack.postgres("app-postgres-backup"))
        # The writer stand-in: the rendered api container's name, network and environment.
        # (The node image cannot be pulled here: the postgres one stands in, running `sleep`.)
        docker("start", stack.create("app-api-1", command=["sleep", "infinity"], image=image))
        yield stack
    finally:
        for name in stack.containers:
            print(f"--- logs of {name}\n" + docker("logs", name, check=False))
        stack.remove()


def backup_once(stack: Stack) -> str:
    """One run of the backup job, in its container with its environment; the dump's name."""
    out = docker("exec", "--user", "postgres", f"{stack.prefix}-postgres-backup",
                 "sh", "/opt/picluster/pg-backup.sh")  # fmt: skip
    match = re.search(r"wrote /backups/(\S+)", out)
    assert match, out
    return match.group(1)


def dumps(stack: Stack) -> list[str]:
    out = docker("exec", f"{stack.prefix}-postgres-backup", "ls", "/backups")
    return sorted(out.split())


def started_at(name: str) -> str:
    return docker("inspect", "--format", "{{.State.StartedAt}}", name).strip()


def test_restore_drill_on_docker(drill: Stack, capfd: pytest.CaptureFixture[str]) -> None:
    db = f"{drill.prefix}-postgres"
    writer = f"{drill.prefix}-api-1"
    sql(db, "CREATE TABLE scores (player text PRIMARY KEY, points int NOT NULL);"
            "INSERT INTO scores VALUES ('ada', 30), ('bob', 20), ('cy', 10);")  # fmt: skip
    dump = backup_once(drill)
    assert DUMP_NAME.match(dump), dump
    # The data broken after the backup: a table dropped, another one that must not survive.
    sql(db, "DROP TABLE scores; CREATE TABLE junk (x int); INSERT INTO junk VALUES (1);")
    # The writer as a run of bin/restore-db that was killed after stopping it leaves it.
    docker("stop", writer)
    writer_started = started_at(writer)

    target = DockerTarget(prefix=drill.prefix)
    target.check()
    assert target.writers() == [writer]
    assert target.restore(None) is True
    out = capfd.readouterr().out

    assert sql(db, "SELECT player, points FROM scores ORDER BY points DESC").split() == [
        "ada|30", "bob|20", "cy|10"
    ]  # fmt: skip
    assert sql(db, "SELECT to_regclass('junk') IS NULL") == "t\n", "the broken data survived"
    # The data it replaced is kept aside, inert.
    kept = docker("exec", "--user", "postgres", db, "psql", "-qAt", "-U", "game", "-d", "postgres",
                  "-c", "SELECT datname, datallowconn FROM pg_database "
                        "WHERE datname LIKE 'picluster%' ORDER BY 1")  # fmt: skip
    assert kept.split() == ["picluster_pre_restore|f"]
    assert f"picluster restore: restored {dump} into game (1 tables)" in out
    # The writer, stopped, is running again.
    assert docker("inspect", "--format", "{{.State.Running}}", writer).strip() == "true"
    assert started_at(writer) != writer_started
    assert PASSWORD not in out


def test_a_damaged_dump_changes_nothing(drill: Stack, capfd: pytest.CaptureFixture[str]) -> None:
    db = f"{drill.prefix}-postgres"
    sql(db, "CREATE TABLE IF NOT EXISTS marker (x int); INSERT INTO marker VALUES (42);")
    damaged = "game-20000101T000000Z.sql.gz"
    docker("exec", "--user", "postgres", f"{drill.prefix}-postgres-backup", "sh", "-c",
           f"echo not-gzip > /backups/{damaged}")  # fmt: skip
    target = DockerTarget(prefix=drill.prefix)
    assert target.restore(damaged) is False
    out = capfd.readouterr()
    assert f"{damaged} is damaged (gzip -t failed); nothing was changed" in out.err + out.out
    assert sql(db, "SELECT x FROM marker") == "42\n"
    assert docker("inspect", "--format", "{{.State.Running}}", f"{drill.prefix}-api-1").strip() == (
        "true"
    )
    # A name that is not a dump's is refused before anything runs.
    assert target.restore("../etc/passwd") is False
    assert "is not the name of a dump" in "".join(capfd.readouterr())
    docker("exec", f"{drill.prefix}-postgres-backup", "rm", f"/backups/{damaged}")


def test_listing_and_the_password_stay_private(
    drill: Stack, capfd: pytest.CaptureFixture[str]
) -> None:
    assert DockerTarget(prefix=drill.prefix).list() is True
    listed = [line.split()[0] for line in capfd.readouterr().out.splitlines()]
    assert listed == sorted(dumps(drill), reverse=True) and listed
    backup = f"{drill.prefix}-postgres-backup"
    inspected = docker("inspect", backup)
    assert PASSWORD not in inspected and json.dumps(PASSWORD)[1:-1] not in inspected
    env = json.loads(inspected)[0]["Config"]["Env"]
    assert "DB_PASSWORD_FILE=/run/secrets/db-password" in env
    assert not any(e.startswith(("PGPASSWORD=", "POSTGRES_PASSWORD=")) for e in env)
    # No pgpass is left behind, and the job runs as the image's postgres user (id 70).
    assert docker("exec", backup, "sh", "-c", "ls -A /tmp | wc -l").strip() == "0"
    status = docker("exec", backup, "cat", "/proc/1/status")
    assert re.search(r"^Uid:\s+70\s+70\s", status, re.MULTILINE), status


def _restore_pod(stack: Stack, prod: Run) -> tuple[list[str], str]:
    """`docker run` arguments of the rendered K3s restore pod (a pod's `command` replaces the
    image's ENTRYPOINT, its `args` the CMD), and its env file's content."""
    cronjob = unwrap(prod.named("app-restore").inputs)
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    secret = unwrap(prod.named("app-secrets").inputs)["stringData"]
    script_data = unwrap(prod.named("app-restore-script").inputs)["data"]
    scripts = stack.workdir / "restore-scripts"
    scripts.mkdir(exist_ok=True)
    for key, content in script_data.items():
        (scripts / key).write_text(content)
        (scripts / key).chmod(0o644)  # what a ConfigMap volume gives its files
    context, pod_context = container["securityContext"], spec["securityContext"]
    assert pod_context["runAsNonRoot"] and pod_context["runAsUser"] != 0
    # Numbers come back from the mocks as floats.
    user, group, fs_group = (int(pod_context[k]) for k in ("runAsUser", "runAsGroup", "fsGroup"))
    argv = [
        "--user", f"{user}:{group}",
        "--group-add", str(fs_group),
        "--network", stack.network,
    ]  # fmt: skip
    if context["readOnlyRootFilesystem"]:
        argv.append("--read-only")
    if context["capabilities"]["drop"] == ["ALL"]:
        argv += ["--cap-drop", "ALL"]
    if context["allowPrivilegeEscalation"] is False:
        argv += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        suffix = ":ro" if mount.get("readOnly") else ""
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] == "postgres-backups"
            argv += ["--volume", f"{stack.prefix}-postgres-backups:{mount['mountPath']}{suffix}"]
        elif "configMap" in volume:
            assert volume["configMap"]["name"] == "postgres-restore"
            argv += ["--volume", f"{scripts}:{mount['mountPath']}{suffix}"]
        elif "secret" in volume:
            # What the kubelet makes of a Secret volume: each item a file of the Secret's value,
            # `defaultMode`, group-owned by the pod's fsGroup.
            assert volume["secret"]["secretName"] == "app-secrets"
            folder = stack.workdir / f"secret-{mount['name']}"
            folder.mkdir(exist_ok=True)
            for item in volume["secret"]["items"]:
                path = folder / item["path"]
                path.write_text(secret[item["key"]])
                os.chown(path, 0, fs_group)
                path.chmod(int(volume["secret"]["defaultMode"]))
            argv += ["--volume", f"{folder}:{mount['mountPath']}{suffix}"]
        else:
            assert "emptyDir" in volume
            argv += ["--tmpfs", mount["mountPath"]]
    env_lines = []
    for variable in container["env"]:
        if "value" in variable:
            env_lines.append(f"{variable['name']}={variable['value']}")
        else:
            raise AssertionError(f"{variable['name']} takes a value from elsewhere: {variable}")
    command = container["command"]
    assert container["image"] == versions.POSTGRES
    argv += ["--entrypoint", command[0], pgimage.TAG, *command[1:]]
    return argv, "".join(f"{e}\n" for e in env_lines)


def test_the_k3s_restore_pod_runs_the_same_script(drill: Stack) -> None:
    prod = run_main(
        {**stack_file_config("prod"), "sshPrivateKey": PRIVATE_KEY, "k3sToken": "t" * 40,
         "dbPassword": PASSWORD},
        stack="prod", secret_keys=("sshPrivateKey", "k3sToken", "dbPassword"),
    )  # fmt: skip
    db = f"{drill.prefix}-postgres"
    sql(db, "CREATE TABLE IF NOT EXISTS levels (n int); DELETE FROM levels;"
            "INSERT INTO levels VALUES (1), (2);")  # fmt: skip
    dump = backup_once(drill)
    sql(db, "DELETE FROM levels;")
    argv, env = _restore_pod(drill, prod)
    env_file = drill.workdir / "restore-pod.env"
    env_file.touch(mode=0o600)
    env_file.write_text(env)
    name = f"{drill.prefix}-restore-pod"
    drill.containers.append(name)
    out = docker("run", "--name", name, "--env-file", str(env_file), *argv, dump)
    assert f"picluster restore: restored {dump} into game" in out
    assert sql(db, "SELECT n FROM levels ORDER BY n").split() == ["1", "2"]
    assert PASSWORD not in out
    assert PASSWORD not in env  # the password is a mounted file, never an environment variable


@pytest.fixture
def scheduled(image: str) -> Iterator[Stack]:
    stack = new_stack("sched", {"schedule": "* * * * *", "keep": 2})
    try:
        start_database(stack)
        yield stack
    finally:
        for name in stack.containers:
            print(f"--- logs of {name}\n" + docker("logs", name, check=False))
        stack.remove()


def test_the_schedule_makes_a_dump_and_keeps_the_newest(scheduled: Stack) -> None:
    old = [f"game-20200101T00000{i}Z.sql.gz" for i in (1, 2, 3)]
    backup = scheduled.postgres("app-postgres-backup")
    # Dumps of an earlier life of the volume, put there before the job starts.
    docker("cp", "-", f"{backup}:/backups", input=tar_of({n: "old" for n in old}))
    docker("start", backup)
    wait_until(lambda: len(dumps(scheduled)) == 2 and old[-1] in dumps(scheduled),
               "a scheduled dump, and the oldest ones rotated out", timeout=130)  # fmt: skip
    found = dumps(scheduled)
    assert found[0] == old[-1] and DUMP_NAME.match(found[1]), found
    logs = docker("logs", backup)
    assert "schedule '* * * * *' (UTC), keeping the newest 2 dumps" in logs
    assert f"removed /backups/{old[0]}" in logs and f"removed /backups/{old[1]}" in logs
    owner = docker("exec", backup, "stat", "-c", "%u %a", "/backups", f"/backups/{found[1]}")
    assert owner.split()[:3] == ["70", "700", "70"], owner
    # As Docker stops the real image: its STOPSIGNAL (SIGINT), SIGKILL only after 30 s.
    assert docker("inspect", "--format", "{{.Config.StopSignal}}", backup).strip() == "SIGINT"
    docker("stop", "--time", "30", backup)
    assert docker("inspect", "--format", "{{.State.ExitCode}}", backup).strip() == "0"
    assert docker("logs", backup).rstrip().endswith("picluster backup: stopping")


def test_a_restore_past_its_time_leaves_the_writers_stopped_while_it_runs(drill: Stack) -> None:
    """`docker exec` killed at the time limit leaves pg-restore.sh running in the container:
    the writers must stay stopped until it has ended."""
    backup = f"{drill.prefix}-postgres-backup"
    writer = f"{drill.prefix}-api-1"
    db = f"{drill.prefix}-postgres"
    sql(db, "CREATE TABLE IF NOT EXISTS slow_marker (x int); INSERT INTO slow_marker VALUES (7);")
    # A dump that loads for a while, then fails: the database stays as it is.
    slow = "game-20000101T000001Z.sql.gz"
    docker("exec", "--user", "postgres", backup, "sh", "-c",
           f"printf 'SELECT pg_sleep(15);\\nSELECT 1/0;\\n' | gzip > /backups/{slow}")  # fmt: skip
    target = DockerTarget(prefix=drill.prefix, timeout=4)
    try:
        with pytest.raises(StillRunningError, match="the writers stay stopped"):
            target.restore(slow)
        assert target.script_running()
        assert docker("inspect", "--format", "{{.State.Running}}", writer).strip() == "false"
        wait_until(lambda: not target.script_running(), "pg-restore.sh ended", timeout=60)
        assert sql(db, "SELECT x FROM slow_marker") == "7\n"
    finally:
        docker("start", writer)
        docker("exec", backup, "rm", "-f", f"/backups/{slow}")


def test_the_stand_in_never_takes_the_real_images_tag(drill: Stack) -> None:
    assert pgimage.TAG != versions.POSTGRES
    for name in (f"{drill.prefix}-postgres", f"{drill.prefix}-postgres-backup"):
        image = docker("inspect", "--format", "{{.Config.Image}}", name).strip()
        assert image == pgimage.TAG, (name, image)


def test_removing_a_stack_removes_its_env_files(image: str) -> None:
    del image
    stack = new_stack("rm", {"schedule": NEVER})
    secret = stack.workdir / "picluster-rm-postgres.env"
    secret.write_text(f"PASSWORD={PASSWORD}\n")
    stack.remove()
    assert not stack.workdir.exists(), "env files with the password left in /tmp"
