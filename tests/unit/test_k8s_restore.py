"""The database restore on K3s, under mocks: the suspended CronJob `postgres-restore` holding the
restore pod, the Job `bin/restore-db` makes of it, and bin/restore-db's K3s flow against a
kubectl test double answering with the rendered objects (kwok runs no pods, and no cluster runs
here; tests/integration/test_restore_drill.py runs this pod's spec as a container), and how
bin/restore-db picks its target and asks before it restores."""

from __future__ import annotations

import argparse
import copy
import io
import json
import subprocess
from collections.abc import Sequence
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
import pytest
from pulumi_command import Provider as CommandProvider

from components.app_model import ASSETS, build_app
from components.app_stack import AppStack, AppStackArgs
from components.config import AppConfig
from components.on_kubernetes.platform import KubernetesPlatform
from components.on_kubernetes.restore import RESTORE_DEADLINE_SECONDS
from components.secrets import StackSecrets
from tests.harness import TEST_IMAGES, Run, run, tunnel_push
from tests.k8s_manifests import assert_password_is_a_file, manifests, validate_manifests
from tools import restore_db
from tools.restore_db import (
    REPLICAS_ANNOTATION,
    DockerTarget,
    KubernetesTarget,
    RestoreError,
    StillRunningError,
    job_from_cronjob,
    target_for,
)

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
        commands = CommandProvider("unit-command")
        AppStack(
            "app",
            AppStackArgs(
                app=build_app(AppConfig.model_validate(config), TEST_IMAGES),
                secrets=StackSecrets(
                    db_password=pulumi.Output.secret(DB_PW),
                    grafana_admin_password=pulumi.Output.secret("unused"),
                    database_url=pulumi.Output.secret(f"postgresql://game:{DB_PW}@postgres/game"),
                ),
                platform=KubernetesPlatform(public_address="10.0.0.10"),
                push=tunnel_push(),
            ),
            pulumi.ResourceOptions(providers=[provider, commands]),
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
    # A pod left behind by an interrupted bin/restore-db is stopped by the Job controller;
    # bin/restore-db waits a little longer, so the Job normally ends first.
    assert job["activeDeadlineSeconds"] == RESTORE_DEADLINE_SECONDS
    assert KubernetesTarget(namespace="game").timeout > RESTORE_DEADLINE_SECONDS
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    script = of_kind(game, "ConfigMap")["postgres-restore"]["data"]["pg-restore.sh"]
    assert script == (ASSETS / "backup" / "pg-restore.sh").read_text()


def test_the_restore_pod_is_restricted_and_reads_the_password_from_a_file(game: Run) -> None:
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
    assert_password_is_a_file(spec)
    assert {k: v.get("value") for k, v in env.items() if k != "DB_PASSWORD_FILE"} == {
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


Outcome = Literal["succeeded", "failed", "running"]


class FakeKubectl:
    """Test double of `kubectl` for bin/restore-db's K3s flow: answers `get` from the rendered
    objects, records every command, annotates and scales Deployments, and ends each Job as told:
    `running` never ends; its pod goes only with a foreground `delete` (the only kind that waits
    for the pod), unless `delete_works` is False (an API server that cannot be reached)."""

    def __init__(
        self, result: Run, *, outcome: Outcome, delete_works: bool = True,
        failing_scales: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.cronjob = live(restore_cronjob(result))
        self.deployments = copy.deepcopy(list(of_kind(result, "Deployment").values()))
        self.outcome: Outcome = outcome
        self.delete_works = delete_works
        self.failing_scales = set(failing_scales)
        self.calls: list[list[str]] = []
        self.created: list[dict[str, Any]] = []
        self.pod_gone = False

    def deployment(self, name: str) -> dict[str, Any]:
        (found,) = [d for d in self.deployments if d["metadata"]["name"] == name]
        return found

    def __call__(self, argv: Sequence[str], *, input: str | None = None, **_: Any) -> Any:
        args = list(argv)
        assert args[:3] == ["kubectl", "--namespace", "game"], args
        verb, rest = args[3], args[4:]
        self.calls.append([verb, *rest])
        stdout, code = "", 0
        if verb == "get" and rest[0] == "cronjob/postgres-restore":
            stdout = json.dumps(self.cronjob)
        elif verb == "get" and rest[0] == "deployments":
            stdout = json.dumps({"items": self.deployments})
        elif verb == "get" and rest[0].startswith("job/"):
            status = {} if self.outcome == "running" else {self.outcome: 1}
            stdout = json.dumps({"status": status})
        elif verb == "get" and rest[0] == "pods":
            phase = {"succeeded": "Succeeded", "failed": "Failed", "running": "Running"}
            pods = [
                {
                    "metadata": {
                        "ownerReferences": [{"kind": "Job", "name": job["metadata"]["name"]}]
                    },
                    "status": {"phase": phase[self.outcome]},
                }
                for job in self.created
                if not self.pod_gone
            ]
            # Another Job's pod, still running: not this restore's.
            pods.append(
                {
                    "metadata": {"ownerReferences": [{"kind": "Job", "name": "postgres-backup-1"}]},
                    "status": {"phase": "Running"},
                }
            )
            stdout = json.dumps({"items": pods})
        elif verb == "create":
            assert input is not None
            self.created.append(json.loads(input))
        elif verb == "logs":
            stdout = "picluster restore: ...\n"
        elif verb == "annotate":
            metadata = self.deployment(rest[-2].removeprefix("deployment/"))["metadata"]
            annotations: dict[str, str] = metadata.setdefault("annotations", {})
            key, _sep, value = rest[-1].partition("=")
            if key.endswith("-"):
                annotations.pop(key[:-1], None)
            else:
                annotations[key] = value
        elif verb == "scale":
            name = rest[0].removeprefix("deployment/")
            if f"{name} {rest[1]}" in self.failing_scales:
                code = 1
            else:
                self.deployment(name)["spec"]["replicas"] = int(rest[1].split("=")[1])
        elif verb == "delete":
            if self.delete_works and "--cascade=foreground" in rest:
                self.pod_gone = True
            elif not self.delete_works:
                code = 1
        return subprocess.CompletedProcess(args, code, stdout=stdout, stderr="")

    def steps(self) -> list[str]:
        return [" ".join(call[:2]) if call[0] != "get" else call[1] for call in self.calls]

    def replicas(self) -> dict[str, int]:
        """The writers' replica counts (the frontend is not one)."""
        return {
            d["metadata"]["name"]: int(d["spec"]["replicas"])
            for d in self.deployments
            if d["metadata"]["name"] != "frontend"
        }

    def annotations(self) -> dict[str, dict[str, str]]:
        return {
            d["metadata"]["name"]: d["metadata"].get("annotations") or {} for d in self.deployments
        }


class Clock:
    """A clock that moves only when the flow sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def target(kubectl: FakeKubectl, *, timeout: float = 60) -> KubernetesTarget:
    clock = Clock()
    return KubernetesTarget(
        namespace="game", run=kubectl, timeout=timeout, clock=clock, sleep=clock.sleep
    )


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_the_k3s_flow_stops_the_writers_runs_the_job_and_brings_them_back(
    game: Run, outcome: Outcome
) -> None:
    kubectl = FakeKubectl(game, outcome=outcome)
    before = kubectl.replicas()
    assert target(kubectl).restore("game-20261126T031700Z.sql.gz") is (outcome == "succeeded")
    job_name = kubectl.created[0]["metadata"]["name"]
    # The writers are the Deployments given DATABASE_URL: the services, not the frontend.
    # Each one's replica count is recorded on it before it is scaled to 0.
    assert kubectl.steps()[:10] == [
        "deployments",
        "annotate --overwrite",
        "scale deployment/lobby",
        "annotate --overwrite",
        "scale deployment/scores",
        "wait --for=delete",
        "wait --for=delete",
        "cronjob/postgres-restore",
        "create --filename",
        f"job/{job_name}",
    ]
    # A failed Job's pod is seen to have stopped before the writers come back.
    assert kubectl.steps()[10:] == [
        f"logs job/{job_name}",
        *(["pods"] if outcome == "failed" else []),
        "scale deployment/lobby",
        "annotate deployment/lobby",
        "scale deployment/scores",
        "annotate deployment/scores",
    ]
    scales = [call for call in kubectl.calls if call[0] == "scale"]
    assert [c[2] for c in scales] == [
        "--replicas=0",
        "--replicas=0",
        "--replicas=3",
        "--replicas=1",
    ]
    recorded = [c[-1] for c in kubectl.calls if c[:2] == ["annotate", "--overwrite"]]
    assert recorded == [f"{REPLICAS_ANNOTATION}=3", f"{REPLICAS_ANNOTATION}=1"]
    assert kubectl.replicas() == before
    assert not any(REPLICAS_ANNOTATION in a for a in kubectl.annotations().values())
    (job,) = kubectl.created
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "game-20261126T031700Z.sql.gz"
    ]
    waits = [call for call in kubectl.calls if call[0] == "wait"]
    assert waits[0][3:5] == [
        "--selector",
        "app.kubernetes.io/name=lobby,app.kubernetes.io/part-of=picluster",
    ]


def test_a_job_past_its_time_is_deleted_with_its_pod_before_the_writers_come_back(
    game: Run,
) -> None:
    kubectl = FakeKubectl(game, outcome="running")
    with pytest.raises(RestoreError, match="deleted with its pod") as raised:
        target(kubectl, timeout=30).restore(None)
    assert not isinstance(raised.value, StillRunningError)
    steps = kubectl.steps()
    delete = steps.index(f"delete job/{kubectl.created[0]['metadata']['name']}")
    (call,) = [c for c in kubectl.calls if c[0] == "delete"]
    assert "--cascade=foreground" in call and "--wait=true" in call
    # Only once the Job and its pod are gone do the writers come back.
    assert steps.index("pods", delete) < steps.index("scale deployment/lobby", delete)
    assert kubectl.replicas() == {"lobby": 3, "scores": 1}


def test_writers_stay_stopped_while_a_restore_that_cannot_be_stopped_may_still_run(
    game: Run, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl = FakeKubectl(game, outcome="running", delete_works=False)
    with pytest.raises(StillRunningError) as raised:
        target(kubectl, timeout=30).restore(None)
    message = str(raised.value)
    assert "may still be running, so the writers stay stopped" in message
    assert "kubectl -n game scale deployment/lobby --replicas=3" in message
    assert kubectl.replicas() == {"lobby": 0, "scores": 0}
    # The counts stay recorded on the Deployments for the next run.
    assert kubectl.annotations()["lobby"][REPLICAS_ANNOTATION] == "3"
    # And bin/restore-db says so, without claiming the database is as it was.
    monkeypatch.setattr(restore_db, "target_for", lambda _: target(kubectl, timeout=30))
    capsys.readouterr()
    assert restore_db.main(["--stack", "prod", "--yes"]) == 2
    out = capsys.readouterr().out
    assert "writers stay stopped" in out and "as it was" not in out


def test_an_interrupted_wait_deletes_the_job_before_the_writers_come_back(game: Run) -> None:
    kubectl = FakeKubectl(game, outcome="running")
    flow = target(kubectl)

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    flow.sleep = interrupt
    with pytest.raises(RestoreError, match="interrupted; it was deleted with its pod"):
        flow.restore(None)
    assert kubectl.pod_gone
    assert kubectl.replicas() == {"lobby": 3, "scores": 1}


def test_a_run_after_a_killed_one_brings_back_the_recorded_replicas(game: Run) -> None:
    kubectl = FakeKubectl(game, outcome="succeeded")
    # What a run killed after scaling leaves: 0 replicas, the count before in the annotation.
    kubectl.deployment("lobby")["spec"]["replicas"] = 0
    kubectl.deployment("lobby")["metadata"]["annotations"] = {REPLICAS_ANNOTATION: "3"}
    flow = target(kubectl)
    assert [(name, n) for name, n, _ in flow.writers()] == [("lobby", 3), ("scores", 1)]
    assert flow.restore(None) is True
    assert kubectl.replicas() == {"lobby": 3, "scores": 1}
    assert REPLICAS_ANNOTATION not in kubectl.annotations()["lobby"]


def test_every_writer_is_brought_back_and_every_failure_reported(
    game: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    kubectl = FakeKubectl(game, outcome="succeeded", failing_scales=["lobby --replicas=3"])
    with pytest.raises(RestoreError, match="not every writer is back") as raised:
        target(kubectl).restore(None)
    assert "scale deployment/lobby --replicas=3` failed" in str(raised.value)
    assert kubectl.replicas()["scores"] == 1, "a failure does not stop the others"
    assert kubectl.annotations()["lobby"][REPLICAS_ANNOTATION] == "3"
    # When the restore itself failed, its error is the one raised; the scale failure is said.
    kubectl = FakeKubectl(game, outcome="succeeded", failing_scales=["lobby --replicas=3"])
    kubectl.cronjob = {"metadata": {}, "spec": {}}  # no template: the Job cannot be made
    capsys.readouterr()
    with pytest.raises(KeyError):
        target(kubectl).restore(None)
    assert "scale deployment/lobby --replicas=3` failed" in capsys.readouterr().out
    assert kubectl.replicas()["scores"] == 1


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
