"""`pulumi up -s prod` with the real engine, end to end: three simulated Pis bootstrapped over SSH
(prepare, reboot, gate, K3s install, node checks, kubeconfig read), then the game and its
monitoring deployed to a real Kubernetes API server, every object accepted and awaited Ready;
the demo API built from its source folder on this machine and pushed through an SSH tunnel to
the in-cluster registry (its double), a changed source pushed and rolled out in place.
The lab and what stands in for what cannot run here: tests/engine/prod_lab.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import images, registries
from components.registries import REGISTRIES_MARK, in_cluster_mirror
from tests.engine.conftest import Up
from tests.engine.prod_lab import VERSION, Prod, default_config, kubectl, prod_lab, require_lab
from tools.restore_db import KubernetesTarget

pytestmark = [pytest.mark.engine, pytest.mark.integration]


@pytest.fixture(scope="module")
def prod(engine_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prod]:
    require_lab()
    with prod_lab(engine_bin, tmp_path_factory.mktemp("prod")) as lab:
        yield lab


@dataclass(frozen=True)
class Ups:
    first: Up
    second: Up


@pytest.fixture(scope="module")
def ups(prod: Prod) -> Ups:
    return Ups(prod.up(), prod.up())


def test_the_first_up_bootstraps_the_pis_and_deploys_everything(ups: Ups, prod: Prod) -> None:
    summary = ups.first.summary
    assert set(summary) == {"create"} and summary["create"] > 60, summary
    # prepare, gate, drain, install, node check x3; kubeconfig; the single server's snapshot
    # timer
    assert ups.first.remote_steps == 17
    server = prod.pis["pi-server-1"]
    timer = server.exec("systemctl", "is-active", "picluster-datastore-snapshot.timer", check=False)
    assert timer.stdout.strip() == "active"
    assert "OnCalendar=*-*-* 0/12:0:00" in server.read(
        "/etc/systemd/system/picluster-datastore-snapshot.timer"
    )
    for name, pi in prod.pis.items():
        assert pi.exec("k3s", "--version").stdout.startswith(f"k3s version {VERSION} "), name
        # Every node trusts the in-cluster registry: registries.yaml, root-only, read by K3s.
        registries = pi.read("/etc/rancher/k3s/registries.yaml")
        assert registries.splitlines()[0] == REGISTRIES_MARK, name
        mirrors = {k: v["endpoint"] for k, v in yaml.safe_load(registries)["mirrors"].items()}
        assert mirrors == in_cluster_mirror(), name
        mode = pi.exec("stat", "-c", "%a %U:%G", "/etc/rancher/k3s/registries.yaml").stdout
        assert mode.strip() == "600 root:root", name
        assert pi.read("/var/lib/rancher/k3s/agent/etc/double-registries.yaml") == registries
    deployments = prod.get("deployments", "-A")["items"]
    assert deployments and all(
        d["status"].get("readyReplicas") == d["spec"]["replicas"] for d in deployments
    )
    names = {d["metadata"]["name"] for d in deployments}
    assert {"frontend", "api", "prometheus", "grafana"} <= names
    statefulsets = prod.get("statefulsets", "-A")["items"]
    assert [s["status"].get("readyReplicas") for s in statefulsets] == [1]


def test_a_second_up_changes_nothing_and_runs_no_remote_command(ups: Ups) -> None:
    assert set(ups.second.summary) == {"same"}, ups.second.summary
    assert ups.second.remote_steps == 0


def test_the_restore_job_is_admitted_and_the_writers_come_back(
    ups: Ups, prod: Prod, capfd: pytest.CaptureFixture[str]
) -> None:
    """bin/restore-db's K3s flow against the lab's API server: the Job it makes from the
    suspended CronJob passes admission (Pod Security `restricted`, strict validation), the
    writers are scaled to 0 and back. kwok runs no container: it ends the Job's pod as
    succeeded (its `pod-complete` stage), so the script itself is proven in
    tests/integration/test_restore_drill.py, where this pod's spec runs as a container."""
    del ups  # after both ups
    before = {d["metadata"]["name"]: d["spec"]["replicas"] for d in _deployments(prod)}
    cronjob = prod.get("cronjob/postgres-restore", "-n", "game")
    assert cronjob["spec"]["suspend"] is True
    target = KubernetesTarget(namespace="game", kubeconfig=str(prod.kubeconfig), timeout=120)
    target.check()
    assert [name for name, _, _ in target.writers()] == ["api"]
    assert target.restore("game-20261126T031700Z.sql.gz") is True
    out = capfd.readouterr().out
    assert "scaling deployment/api to 0" in out and "deployment/api back to 1 replicas" in out
    jobs = prod.get("jobs", "-n", "game")["items"]
    (job,) = [j for j in jobs if j["metadata"]["name"].startswith("postgres-restore-run-")]
    assert job["status"].get("succeeded") == 1
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["game-20261126T031700Z.sql.gz"]
    after = {d["metadata"]["name"]: d["spec"]["replicas"] for d in _deployments(prod)}
    assert after == before


def _deployments(prod: Prod) -> list[dict[str, Any]]:
    return prod.get("deployments", "-n", "game")["items"]


def _demo_tag(prod: Prod) -> str:
    """The content tag of the demo API's folder in the lab's copy of the project."""
    return images.plan_build("api", prod.project.path / "components/assets/demo-api").tag


def _api_image(prod: Prod) -> str:
    deployment = prod.get("deployment/api", "-n", "game")
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def _pinned(prod: Prod, name: str, tag: str) -> str:
    """What a pod runs for the pushed `name:tag`: the tag and the digest the registry serves."""
    return f"{registries.REGISTRY_NAME}/{name}:{tag}@{prod.registry_digest(name, tag)}"


def test_the_first_up_pushed_the_demo_api_and_runs_its_content_tag(ups: Ups, prod: Prod) -> None:
    del ups
    tag = _demo_tag(prod)
    assert prod.registry_tags("api") == [tag]
    assert _api_image(prod) == _pinned(prod, "api", tag)
    registry = prod.get("deployment/registry", "-n", "picluster-registry")
    assert registry["status"].get("readyReplicas") == 1
    service = prod.get("service/registry", "-n", "picluster-registry")
    assert service["spec"]["clusterIP"] == registries.REGISTRY_CLUSTER_IP


def test_a_changed_demo_source_is_pushed_and_rolled_in_place(ups: Ups, prod: Prod) -> None:
    """It changes the source the tests before it deployed."""
    del ups
    old = _demo_tag(prod)
    server = prod.project.path / "components/assets/demo-api/server.js"
    server.write_text(server.read_text() + "\n// the next release\n")
    new = _demo_tag(prod)
    assert new != old
    changed = prod.up()
    # The api image's build-and-push command and the api Deployment, in place: nothing else.
    assert changed.summary.get("update") == 2, changed.summary
    assert set(changed.summary) == {"same", "update"}, changed.summary
    assert changed.remote_steps == 0
    assert prod.registry_tags("api") == sorted([old, new])
    assert _api_image(prod) == _pinned(prod, "api", new)
    assert set(prod.up().summary) == {"same"}


def test_a_migration_completes_before_its_service_is_deployed(ups: Ups, prod: Prod) -> None:
    """It replaces the demo with a service that migrates. kwok ends a Job's
    pod as succeeded (its `pod-complete` stage) without running it; the migration command itself
    is the service's own (tests/integration cover running images)."""
    del ups
    prod.configure(_scores(["node", "migrate.js"]))
    prod.up()
    tag = images.plan_build("scores", prod.project.path / "components/assets/demo-api").tag
    assert prod.registry_tags("scores") == [tag]
    job = prod.get(f"job/scores-migrate-{tag}", "-n", "game")
    assert job["status"].get("succeeded") == 1
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["node", "migrate.js"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == _pinned(prod, "scores", tag)
    deployment = prod.get("deployment/scores", "-n", "game")
    # The engine created the Deployment only once it had awaited the Job's completion.
    assert deployment["metadata"]["creationTimestamp"] >= job["status"]["completionTime"]
    assert set(prod.up().summary) == {"same"}


def _scores(migrate: list[str]) -> dict[str, Any]:
    """The lab's stack with one service built from the demo's folder, migrating with `migrate`."""
    config = default_config()
    service = {
        "name": "scores",
        "build": "components/assets/demo-api",
        "port": 3000,
        "path": "/scores",
        "migrate": migrate,
    }
    config["app"] = {"domain": "game.local", "services": [service]}
    return config


def test_a_failed_migration_stops_the_rollout_and_the_old_pods_keep_serving(
    ups: Ups, prod: Prod
) -> None:
    """Last in the module. The next release's migration fails (its command is `false`, which
    the lab's kwok ends as a kubelet would: exit code 1, tools/cluster/kwok-stages.yaml): `up`
    fails on the Job, the Deployment is not touched and its pods keep the previous release. The
    README's way out, once the cause is fixed: delete the Job, `up --refresh`."""
    del ups
    source = prod.project.path / "components/assets/demo-api"
    old = images.plan_build("scores", source).tag
    server = source / "server.js"
    server.write_text(server.read_text() + "\n// a release whose migration fails\n")
    new = images.plan_build("scores", source).tag
    prod.configure(_scores(["false"]))
    failed = prod.project.pulumi("up", "--yes", "--json", "-s", "prod", timeout=1500)
    assert failed.returncode != 0
    assert f"scores-migrate-{new}" in failed.stdout and "BackoffLimitExceeded" in failed.stdout
    job = prod.get(f"job/scores-migrate-{new}", "-n", "game")
    assert job["status"].get("failed") == 2  # backoffLimit 1: two attempts, two pods kept
    # The push happened, the rollout did not: the Deployment still runs the previous release.
    assert new in prod.registry_tags("scores")
    image = prod.get("deployment/scores", "-n", "game")["spec"]["template"]["spec"]
    assert image["containers"][0]["image"] == _pinned(prod, "scores", old)
    # The previous release's Job is still there (retained), its log readable.
    assert prod.get(f"job/scores-migrate-{old}", "-n", "game")["status"].get("succeeded") == 1

    prod.configure(_scores(["node", "migrate.js"]))
    deleted = kubectl(prod.kubeconfig, "-n", "game", "delete", "job", f"scores-migrate-{new}")
    assert deleted.returncode == 0, deleted.stderr
    prod.up("--refresh")
    job = prod.get(f"job/scores-migrate-{new}", "-n", "game")
    assert job["status"].get("succeeded") == 1
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["node", "migrate.js"]
    image = prod.get("deployment/scores", "-n", "game")["spec"]["template"]["spec"]
    assert image["containers"][0]["image"] == _pinned(prod, "scores", new)
