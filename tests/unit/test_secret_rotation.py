"""Rotating `dbPassword` or `grafanaAdminPassword`: every reader of the password restarts with
the new one, on K3s and on Docker, and PostgreSQL and Grafana apply it to their existing data.

The whole program runs twice under mocks, once per password, and the two runs are compared.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.app_model import ASSETS, POSTGRES_START
from components.monitoring_config import GRAFANA_START_PATH, MONITORING_ASSETS
from components.on_kubernetes.pods import SECRET_CHECKSUM_ANNOTATION
from tests.harness import (
    SECRET_SIG,
    SIG_KEY,
    Registration,
    Run,
    run_main,
    stack_file_config,
    unwrap,
)

PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-rotation-test-key\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
TOKEN = "K10picluster-rotation-test-token-0123456789"
OLD = {"dbPassword": "old-db-Pa55word", "grafanaAdminPassword": "old-grafana-Pa55word"}
NEW = {"dbPassword": "new-db-Pa55word", "grafanaAdminPassword": "new-grafana-Pa55word"}
ROTATED_DB_ONLY = {**OLD, "dbPassword": NEW["dbPassword"]}
POSTGRES_SCRIPTS = ASSETS / "postgres"
CONTAINER_SCRIPTS = [
    POSTGRES_SCRIPTS / "postgres-start.sh",
    POSTGRES_SCRIPTS / "pg-password.sh",
    MONITORING_ASSETS / "grafana-start.sh",
]

WORKLOAD_TYPES = {
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:batch/v1:CronJob",
}
# Who reads which password on K3s; everything else must not restart on a rotation.
DB_READERS = {"postgres", "api", "postgres-backup", "postgres-exporter"}
GRAFANA_READERS = {"grafana"}
# Read the password only when a Job is made of them (bin/restore-db): no pod of theirs runs, so
# nothing rolls, and a rotation leaves their template alone.
ON_DEMAND_READERS = {"postgres-restore"}


def run_prod(passwords: dict[str, str]) -> Run:
    return run_main(
        {**stack_file_config("prod"), "sshPrivateKey": PRIVATE_KEY, "k3sToken": TOKEN, **passwords},
        stack="prod",
        secret_keys=("sshPrivateKey", "k3sToken", *passwords),
    )


def run_local(passwords: dict[str, str]) -> Run:
    return run_main(
        {**stack_file_config("local"), **passwords}, stack="local", secret_keys=tuple(passwords)
    )


@pytest.fixture(scope="module")
def prod_old() -> Run:
    return run_prod(OLD)


@pytest.fixture(scope="module")
def prod_new() -> Run:
    return run_prod(NEW)


@pytest.fixture(scope="module")
def local_old() -> Run:
    return run_local(OLD)


@pytest.fixture(scope="module")
def local_new() -> Run:
    return run_local(NEW)


def pod_templates(result: Run) -> dict[str, dict[str, Any]]:
    """Each workload's pod template, by object name, secrets unwrapped."""
    templates: dict[str, dict[str, Any]] = {}
    for registration in result.registrations:
        if registration.type not in WORKLOAD_TYPES:
            continue
        spec = registration.value("spec")
        if registration.type.endswith("CronJob"):
            spec = spec["jobTemplate"]["spec"]
        templates[registration.value("metadata")["name"]] = spec["template"]
    return templates


def reads_a_secret(template: dict[str, Any]) -> bool:
    spec = template["spec"]
    from_env = any(
        "secretKeyRef" in (env.get("valueFrom") or {})
        for container in spec["containers"]
        for env in container.get("env") or []
    )
    from_volume = any("secret" in volume for volume in spec.get("volumes") or [])
    return from_env or from_volume


def test_every_k3s_reader_of_a_password_rolls_when_it_changes(prod_old: Run, prod_new: Run) -> None:
    old, new = pod_templates(prod_old), pod_templates(prod_new)
    readers = {name for name, template in old.items() if reads_a_secret(template)}
    assert readers == DB_READERS | GRAFANA_READERS | ON_DEMAND_READERS
    for name in readers - ON_DEMAND_READERS:
        assert old[name] != new[name], f"{name} keeps its pods on a new password"
        assert old[name]["spec"] == new[name]["spec"], f"{name}: only the annotation may change"
    for name in set(old) - readers:
        assert old[name] == new[name], f"{name} reads no secret but would restart"


def test_rotating_only_the_database_password_leaves_grafana_alone(prod_old: Run) -> None:
    old, rotated = pod_templates(prod_old), pod_templates(run_prod(ROTATED_DB_ONLY))
    for name in DB_READERS:
        assert old[name] != rotated[name], name
    for name in GRAFANA_READERS:
        assert old[name] == rotated[name], name


def test_the_same_password_never_rolls_anything(prod_old: Run) -> None:
    assert pod_templates(prod_old) == pod_templates(run_prod(OLD))


def test_the_rollout_digest_is_secret_and_never_the_password(prod_old: Run) -> None:
    passwords = list(OLD.values())
    digests: set[str] = set()
    for registration in prod_old.registrations:
        for plain in registration.plain_strings():
            assert not any(p in plain for p in passwords), registration.name
        if registration.type in WORKLOAD_TYPES:
            name = registration.value("metadata")["name"]
            annotations = pod_templates(prod_old)[name]["metadata"].get("annotations") or {}
            digest = annotations.get(SECRET_CHECKSUM_ANNOTATION)
            if digest is not None:
                assert digest in registration.secret_strings(), name
                assert digest not in registration.plain_strings(), name
                digests.add(digest)
    # One per secret read: the database password, DATABASE_URL (the services), Grafana's.
    assert len(digests) == 3
    assert not any(p in d for d in digests for p in passwords)


def _mounted_files(result: Run, workload: str) -> dict[str, str]:
    """Path -> content of the ConfigMap files mounted by subPath into `workload`'s container."""
    template = pod_templates(result)[workload]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    config_maps = {
        r.value("metadata")["name"]: r.value("data")
        for r in result.of_type("kubernetes:core/v1:ConfigMap")
    }
    files: dict[str, str] = {}
    for mount in template["spec"]["containers"][0]["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is not None and "subPath" in mount:
            files[mount["mountPath"]] = config_maps[source["name"]][mount["subPath"]]
    return files


def test_k3s_postgres_and_grafana_start_through_their_rotation_scripts(prod_old: Run) -> None:
    postgres = pod_templates(prod_old)["postgres"]["spec"]["containers"][0]
    assert postgres["command"] == ["bash", POSTGRES_START, "postgres"]
    files = _mounted_files(prod_old, "postgres")
    for script in ("postgres-start.sh", "pg-password.sh"):
        assert files[f"/opt/picluster/{script}"] == (POSTGRES_SCRIPTS / script).read_text()
    grafana = pod_templates(prod_old)["grafana"]["spec"]["containers"][0]
    assert grafana["command"] == ["sh", GRAFANA_START_PATH]
    assert (
        _mounted_files(prod_old, "grafana")[GRAFANA_START_PATH]
        == (MONITORING_ASSETS / "grafana-start.sh").read_text()
    )


def masked(value: Any) -> Any:
    """`value` with each secret replaced by a placeholder."""
    if isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG:
        return "<secret>"
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return value


def _containers(result: Run) -> dict[str, Registration]:
    return {r.name: r for r in result.of_type("docker:index/container:Container")}


def test_docker_readers_get_new_secret_inputs_and_nothing_else_changes(
    local_old: Run, local_new: Run
) -> None:
    # The bridged docker provider replaces a container on any change of `envs` or `uploads`
    # (ForceNew in terraform-provider-docker), so differing inputs mean a new container.
    old, new = _containers(local_old), _containers(local_new)
    changed = {name for name in old if unwrap(old[name].inputs) != unwrap(new[name].inputs)}
    assert changed == {
        "app-postgres",
        "app-postgres-backup",
        "app-api-1",
        "monitoring-postgres-exporter",
        "monitoring-grafana",
    }
    for name in changed:
        # What changed is secret content only (the password file, DATABASE_URL).
        assert masked(old[name].inputs) == masked(new[name].inputs), name


def test_docker_postgres_and_grafana_start_through_their_rotation_scripts(
    local_old: Run,
) -> None:
    containers = _containers(local_old)
    postgres = containers["app-postgres"]
    # The image's entrypoint passes a non-postgres command through: the wrapper starts as root,
    # as the entrypoint would, and drops to the postgres user itself.
    assert postgres.value("command") == ["bash", POSTGRES_START, "postgres"]
    uploads = {u["file"]: u["content"] for u in postgres.value("uploads")}
    for script in ("postgres-start.sh", "pg-password.sh"):
        assert uploads[f"/opt/picluster/{script}"] == (POSTGRES_SCRIPTS / script).read_text()
    grafana = containers["monitoring-grafana"]
    assert grafana.value("entrypoints") == ["sh", GRAFANA_START_PATH]
    uploads = {u["file"]: u["content"] for u in grafana.value("uploads")}
    assert uploads[GRAFANA_START_PATH] == (MONITORING_ASSETS / "grafana-start.sh").read_text()


def test_start_scripts_never_take_a_password_in_argv() -> None:
    pg_password = (POSTGRES_SCRIPTS / "pg-password.sh").read_text()
    # The password comes from the file, inside psql, and goes to the server as a quoted literal.
    assert "\\set pw `cat -- :'file'`" in pg_password
    assert "PASSWORD :'pw'" in pg_password
    assert "PGPASSWORD" not in pg_password
    grafana = (MONITORING_ASSETS / "grafana-start.sh").read_text()
    assert '--password-from-stdin <"$password_file"' in grafana


@pytest.mark.parametrize("path", CONTAINER_SCRIPTS, ids=lambda path: path.name)
def test_container_scripts_are_shellcheck_clean(path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
