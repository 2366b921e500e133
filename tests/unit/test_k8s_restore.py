"""The database restore on K3s, under mocks: the suspended CronJob `postgres-restore` holding the
restore pod, the Job `bin/restore-db` makes of it, and bin/restore-db's K3s flow against a
kubectl test double answering with the rendered objects (kwok runs no pods, and no cluster runs
here; tests/integration/test_restore_drill.py runs this pod's spec as a container), and how
bin/restore-db picks its target and asks before it restores."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest

from components.app_model import ASSETS, build_app
from components.app_stack import AppStack, AppStackArgs
from components.config import AppConfig
from components.on_kubernetes.platform import KubernetesPlatform
from components.secrets import StackSecrets
from tests.harness import Run, run
from tests.k8s_manifests import manifests, validate_manifests
from tools import restore_db
from tools.restore_db import DockerTarget, KubernetesTarget, job_from_cronjob, target_for

DB_PW = "k8s-restore-db-password"
APP_CONFIG: dict[str, Any] = {
    "services": [
        {"name": "lobby", "image": "ghcr.io/studio/lobby:1.4.2", "port": 8081, "replicas": 3},
        {"name": "scores", "image": "ghcr.io/studio/scores:2.0.0", "port": 9000},
    ],
}
COMPONENT = "app.kubernetes.io/component"


def program(config: dict[str, Any]) -> Any:
    def body() -> None:
        provider = k8s.Provider("unit-k8s", kubeconfig="{}")
        AppStack(
            "app",
            AppStackArgs(
                app=build_app(AppConfig.model_validate(config)),
                secrets=StackSecrets(
                    db_password=pulumi.Output.secret(DB_PW),
                    grafana_admin_password=pulumi.Output.secret("unused"),
                    database_url=pulumi.Output.secret(f"postgresql://game:{DB_PW}@postgres/game"),
                ),
                platform=KubernetesPlatform(public_address="10.0.0.10"),
            ),
            pulumi.ResourceOptions(providers=[provider]),
        )

    return body


@pytest.fixture(scope="module")
def game() -> Run:
    return run(program(APP_CONFIG), {})


def of_kind(result: Run, kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests(result) if m["kind"] == kind}


def restore_cronjob(result: Run) -> dict[str, Any]:
    return of_kind(result, "CronJob")["postgres-restore"]


def test_the_restore_is_a_suspended_cronjob_that_never_fires(game: Run) -> None:
    cron = restore_cronjob(game)
    assert cron["spec"]["suspend"] is True
    assert cron["spec"]["schedule"] == "0 0 30 2 *"  # February 30th
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0, "a failed restore is never retried on its own"
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    script = of_kind(game, "ConfigMap")["postgres-restore"]["data"]["pg-restore.sh"]
    assert script == (ASSETS / "backup" / "pg-restore.sh").read_text()


def test_the_restore_pod_is_restricted_and_reads_the_password_by_reference(game: Run) -> None:
    pod = restore_cronjob(game)["spec"]["jobTemplate"]["spec"]["template"]
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 70
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["image"] == "postgres:17-alpine"
    assert container["command"] == ["sh", "/scripts/pg-restore.sh"]
    context = container["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    env = {e["name"]: e for e in container["env"]}
    assert env["PGPASSWORD"] == {
        "name": "PGPASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "app-secrets", "key": "db-password"}},
    }
    assert {k: v.get("value") for k, v in env.items() if k != "PGPASSWORD"} == {
        "PGHOST": "postgres",
        "PGPORT": "5432",
        "PGDATABASE": "game",
        "PGUSER": "game",
    }
    registration = game.named("app-restore")
    assert not any(DB_PW in s for s in registration.plain_strings() + registration.secret_strings())
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["backups"]["persistentVolumeClaim"] == {
        "claimName": "postgres-backups",
        "readOnly": True,
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["backups"] == {"name": "backups", "mountPath": "/backups", "readOnly": True}


def test_the_network_policies_let_the_restore_pod_reach_postgres(game: Run) -> None:
    labels = restore_cronjob(game)["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert labels[COMPONENT] == "backup"
    policies = of_kind(game, "NetworkPolicy")
    backup = policies["backup"]["spec"]
    assert backup["podSelector"]["matchLabels"] == {COMPONENT: "backup"}
    assert backup["egress"][0]["to"] == [{"podSelector": {"matchLabels": {COMPONENT: "database"}}}]
    database = policies["database"]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {COMPONENT: "backup"}}} in database


def test_no_restore_template_without_backups() -> None:
    result = run(program({"database": {"backup": {"enabled": False}}}), {})
    assert "postgres-restore" not in of_kind(result, "CronJob")
    assert "postgres-restore" not in of_kind(result, "ConfigMap")


def live(cronjob: dict[str, Any]) -> dict[str, Any]:
    """The CronJob as the API server returns it: with a uid."""
    return {**cronjob, "metadata": {**cronjob["metadata"], "uid": "3f2c-restore-uid"}}


def test_the_job_bin_restore_db_makes_is_valid_and_keeps_the_template(game: Run) -> None:
    cron = live(restore_cronjob(game))
    job = job_from_cronjob(cron, "postgres-restore-run-20261129-101500", ["game-x.sql.gz"])
    assert validate_manifests([job], "1.31.0") == []
    assert job["metadata"]["namespace"] == "game"
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "3f2c-restore-uid"
    pod = job["spec"]["template"]
    template = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert pod["metadata"] == template["metadata"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["game-x.sql.gz"]
    container.pop("args")
    assert pod["spec"] == template["spec"], "only the arguments are the script's"
    assert "args" not in template["spec"]["containers"][0], "the template is left as it was"


class FakeKubectl:
    """Test double of `kubectl` for bin/restore-db's K3s flow: answers `get` from the rendered
    objects, records every command, scales Deployments, and ends each Job as told."""

    def __init__(self, result: Run, *, job_succeeds: bool) -> None:
        self.objects = {
            "cronjob/postgres-restore": live(restore_cronjob(result)),
            "deployments": {"items": list(of_kind(result, "Deployment").values())},
        }
        self.job_succeeds = job_succeeds
        self.calls: list[list[str]] = []
        self.created: list[dict[str, Any]] = []

    def __call__(self, argv: Sequence[str], *, input: str | None = None, **_: Any) -> Any:
        args = list(argv)
        assert args[:3] == ["kubectl", "--namespace", "game"], args
        verb, rest = args[3], args[4:]
        self.calls.append([verb, *rest])
        stdout = ""
        if verb == "get" and rest[0] in self.objects:
            stdout = json.dumps(self.objects[rest[0]])
        elif verb == "get" and rest[0].startswith("job/"):
            stdout = json.dumps({"status": {"succeeded" if self.job_succeeds else "failed": 1}})
        elif verb == "create":
            assert input is not None
            self.created.append(json.loads(input))
        elif verb == "logs":
            stdout = "picluster restore: ...\n"
        return subprocess.CompletedProcess(args, 0, stdout=stdout, stderr="")


@pytest.mark.parametrize("job_succeeds", [True, False])
def test_the_k3s_flow_stops_the_writers_runs_the_job_and_brings_them_back(
    game: Run, job_succeeds: bool
) -> None:
    kubectl = FakeKubectl(game, job_succeeds=job_succeeds)
    target = KubernetesTarget(namespace="game", run=kubectl, sleep=lambda _: None)
    assert target.restore("game-20261126T031700Z.sql.gz") is job_succeeds
    steps = [" ".join(call[:2]) if call[0] != "get" else call[1] for call in kubectl.calls]
    # The writers are the Deployments given DATABASE_URL: the services, not the frontend.
    assert steps == [
        "deployments",
        "scale deployment/lobby",
        "scale deployment/scores",
        "wait --for=delete",
        "wait --for=delete",
        "cronjob/postgres-restore",
        "create --filename",
        f"job/{kubectl.created[0]['metadata']['name']}",
        f"logs job/{kubectl.created[0]['metadata']['name']}",
        "scale deployment/lobby",
        "scale deployment/scores",
    ]
    scales = [call for call in kubectl.calls if call[0] == "scale"]
    assert [c[2] for c in scales] == [
        "--replicas=0",
        "--replicas=0",
        "--replicas=3",
        "--replicas=1",
    ]
    (job,) = kubectl.created
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "game-20261126T031700Z.sql.gz"
    ]
    waits = [call for call in kubectl.calls if call[0] == "wait"]
    assert waits[0][3:5] == [
        "--selector",
        "app.kubernetes.io/name=lobby,app.kubernetes.io/part-of=picluster",
    ]


def test_the_stack_names_the_target() -> None:
    local = target_for(argparse.Namespace(stack="local", namespace=None, kubeconfig=None))
    assert isinstance(local, DockerTarget) and local.prefix == "picluster-local"
    assert local.backup == "picluster-local-postgres-backup"
    prod = target_for(argparse.Namespace(stack="prod", namespace=None, kubeconfig="/k"))
    assert isinstance(prod, KubernetesTarget)
    assert (prod.namespace, prod.kubeconfig) == ("game", "/k")


def test_a_restore_without_a_terminal_needs_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Target:
        def check(self) -> None:
            calls.append("check")

        def restore(self, dump: str | None) -> bool:
            calls.append(f"restore {dump}")
            return True

    monkeypatch.setattr(restore_db, "target_for", lambda _: Target())
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert restore_db.main(["--stack", "local"]) == 2
    assert calls == ["check"], "nothing may be restored without a confirmation"
    assert restore_db.main(["--stack", "local", "--dump", "game-x.sql.gz", "--yes"]) == 0
    assert calls[-1] == "restore game-x.sql.gz"
