"""The K3s side of the images picluster builds, under mocks: the in-cluster registry, each built
workload after its image's build and push, and a service's migration Job per release.

The prod program runs whole (`__main__.py`), so what is checked is what `pulumi up -s prod`
registers: the registry's objects, the order the engine must follow (dependencies), and what a
changed source folder makes the engine do (`tests/engine_rules.plan`).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from components import images, registries, versions
from components.app_model import DEMO_API
from components.config import ConfigError
from components.on_kubernetes import migrations
from tests.engine_rules import Action, plan
from tests.harness import Registration, Run, mock_digest, run_main, stack_file_config, unwrap
from tests.k8s_manifests import kubernetes_minor, manifests, validate_manifests

KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk-images\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
TOKEN = "K10images-token-0123456789abcdef"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
JOB = "kubernetes:batch/v1:Job"
BUILD = "command:local:Command"


def prod(config: dict[str, Any] | None = None, **secrets: str) -> Run:
    """The committed prod stack (which builds the demo API), with `config` over it."""
    merged = {**stack_file_config("prod"), **(config or {})}
    keys = {"sshPrivateKey": KEY, "k3sToken": TOKEN, **secrets}
    return run_main({**merged, **keys}, stack="prod", secret_keys=tuple(keys))


def migrating(folder: Path | str) -> dict[str, Any]:
    """An app with one service built from `folder` that migrates, and one from a pinned image."""
    return {
        "app": {
            "domain": "game.local",
            "services": [
                {
                    "name": "scores",
                    "build": str(folder),
                    "port": 3000,
                    "path": "/scores",
                    "env": {"LOG_LEVEL": "info"},
                    "migrate": ["node", "migrate.js"],
                    "replicas": 2,
                },
                {"name": "lobby", "image": "ghcr.io/studio/lobby:1.4.2", "port": 8081},
            ],
        }
    }


def of_kind(result: Run, kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests(result) if m["kind"] == kind}


def registration(result: Run, type_: str, name: str) -> Registration:
    """The registration of the Kubernetes object (or command) called `name`."""
    found = [
        r
        for r in result.of_type(type_)
        if (r.value("metadata") or {}).get("name") == name or r.name == name
    ]
    assert len(found) == 1, (type_, name, [r.name for r in result.of_type(type_)])
    return found[0]


def upstream(result: Run, reg: Registration) -> set[str]:
    """The names of everything `reg` waits for, transitively (dependsOn and inputs): what the
    engine must have finished, successfully, before it runs `reg`'s step."""
    by_urn = {r.urn: r for r in result.registrations}
    seen: set[str] = set()
    todo = [reg.urn]
    while todo:
        current = by_urn[todo.pop()]
        edges = [
            *current.dependencies,
            *(d for v in current.property_dependencies.values() for d in v),
        ]
        for urn in edges:
            if urn in by_urn and urn not in seen:
                seen.add(urn)
                todo.append(urn)
    return {by_urn[u].name for u in seen}


@pytest.fixture(scope="module")
def demo() -> Run:
    return prod()


@pytest.fixture(scope="module")
def migration_run() -> Run:
    return prod(migrating(DEMO_API))


# --- the registry ----------------------------------------------------------------------------


def test_the_registry_objects_validate_and_run_restricted(demo: Run) -> None:
    objects = [
        m
        for m in manifests(demo)
        if (m.get("metadata") or {}).get("namespace") == "picluster-registry"
        or m["metadata"]["name"] == "picluster-registry"
    ]
    kinds = sorted(m["kind"] for m in objects)
    assert kinds == [
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Service",
    ]
    assert (
        validate_manifests(objects, kubernetes_minor(stack_file_config("prod")["k3s"]["version"]))
        == []
    )
    namespace = of_kind(demo, "Namespace")["picluster-registry"]
    for mode in ("enforce", "audit", "warn"):
        assert namespace["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] == "restricted"
    deployment = of_kind(demo, "Deployment")["registry"]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    pod = deployment["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == versions.REGISTRY == "registry:2.8.3"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["REGISTRY_STORAGE_DELETE_ENABLED"] == "false"
    assert env["REGISTRY_HTTP_ADDR"] == ":5000"
    assert not [k for k in env if "AUTH" in k]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/", "port": 5000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/", "port": 5000}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/var/lib/registry"]]["persistentVolumeClaim"] == {
        "claimName": "registry-data"
    }
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}


def test_the_registry_keeps_its_images_and_sits_on_the_pinned_cluster_ip(demo: Run) -> None:
    claim = registration(demo, "kubernetes:core/v1:PersistentVolumeClaim", "registry-data")
    # Retained (a destroy or a switch to images.registry leaves the images on disk), and not
    # protected: that switch would otherwise be a change the engine refuses.
    assert claim.retain_on_delete and not claim.protect
    assert claim.value("spec")["resources"]["requests"]["storage"] == "10Gi"
    assert registration(demo, "kubernetes:core/v1:Namespace", "picluster-registry").retain_on_delete
    service = of_kind(demo, "Service")["registry"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["clusterIP"] == registries.REGISTRY_CLUSTER_IP == "10.43.0.50"
    assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(5000, 5000)]
    # Never on the LAN: no NodePort, LoadBalancer, hostPort or hostNetwork anywhere near it.
    pod = of_kind(demo, "Deployment")["registry"]["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod
    assert all("hostPort" not in p for p in pod["containers"][0]["ports"])


def test_the_registry_takes_connections_on_its_port_and_makes_none(demo: Run) -> None:
    policy = of_kind(demo, "NetworkPolicy")["registry"]["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "registry"
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert "egress" not in policy  # Egress listed, no rule: nothing out
    (rule,) = policy["ingress"]
    assert rule == {"ports": [{"protocol": "TCP", "port": 5000}]}


def test_the_registry_size_follows_its_key() -> None:
    result = prod({"images": {"registryStorage": "25Gi"}})
    claim = registration(result, "kubernetes:core/v1:PersistentVolumeClaim", "registry-data")
    assert claim.value("spec")["resources"]["requests"]["storage"] == "25Gi"


def test_no_registry_when_nothing_is_built() -> None:
    services = [{"name": "lobby", "image": "ghcr.io/studio/lobby:1.4.2", "port": 8081}]
    result = prod({"app": {"services": services}})
    assert not result.of_type(BUILD)
    assert "picluster-registry" not in of_kind(result, "Namespace")
    assert "registry" not in of_kind(result, "Deployment")


def test_no_registry_when_the_user_names_one() -> None:
    result = prod(
        {"images": {"registry": "ghcr.io/studio", "registryUsername": "ci"}},
        registryPassword="registry-password-not-plain",
    )
    assert "picluster-registry" not in of_kind(result, "Namespace")
    (build,) = result.of_type(BUILD)
    api = of_kind(result, "Deployment")["api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["image"].startswith("ghcr.io/studio/api:")
    assert build.is_secret("stdin")
    for r in result.registrations:
        assert not any("registry-password-not-plain" in s for s in r.plain_strings()), r.name
    # The nodes pull with the credentials registries.yaml gives containerd: no imagePullSecrets.
    assert (
        "imagePullSecrets" not in of_kind(result, "Deployment")["api"]["spec"]["template"]["spec"]
    )


# --- built workloads wait for their image ------------------------------------------------------


def test_the_demo_api_runs_its_content_tagged_image_after_the_push(demo: Run) -> None:
    (build,) = demo.of_type(BUILD)
    api = registration(demo, DEPLOYMENT, "api")
    tag = images.plan_build("api", DEMO_API).tag
    container = unwrap(api.inputs)["spec"]["template"]["spec"]["containers"][0]
    # By the digest the push printed: containerd pulls and verifies exactly that manifest, so a
    # tag overwritten in the registry afterwards is never what the pods run.
    ref = f"registry.picluster.internal/api:{tag}"
    assert container["image"] == f"{ref}@{mock_digest(ref)}"
    assert build.urn in api.dependencies
    assert build.urn in api.property_dependencies["spec"]
    # The push goes through the first server, after the registry is up.
    registry = registration(demo, DEPLOYMENT, "registry")
    service = registration(demo, "kubernetes:core/v1:Service", "registry")
    assert {registry.urn, service.urn} <= set(build.dependencies)
    assert build.is_secret("stdin")  # it carries the SSH key
    stdin = str(unwrap(build.inputs["stdin"]))
    assert "MODE='tunnel'" in stdin or "MODE=tunnel" in stdin
    assert "192.168.1.10" in stdin  # pi-server-1, the first server
    assert "pulumi:providers:command::command" in build.provider


# --- migrations --------------------------------------------------------------------------------


def test_a_migration_is_one_job_per_release_like_the_service(migration_run: Run) -> None:
    tag = images.plan_build("scores", DEMO_API).tag
    jobs = of_kind(migration_run, "Job")
    assert set(jobs) == {f"scores-migrate-{tag}"}  # none for lobby, which has no migrate
    job = jobs[f"scores-migrate-{tag}"]
    spec = job["spec"]
    assert spec["completions"] == 1 and spec["parallelism"] == 1  # never once per replica
    assert spec["backoffLimit"] == migrations.BACKOFF_LIMIT == 1
    assert spec["ttlSecondsAfterFinished"] >= 24 * 3600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    service_pod = of_kind(migration_run, "Deployment")["scores"]["spec"]["template"]["spec"]
    (service,) = service_pod["containers"]
    assert container["command"] == ["node", "migrate.js"]
    for same in ("image", "env", "securityContext", "resources", "volumeMounts"):
        assert container[same] == service[same], same
    assert container["image"].endswith(
        f"@{mock_digest(f'registry.picluster.internal/scores:{tag}')}"
    )
    assert pod["securityContext"] == service_pod["securityContext"]
    assert pod["volumes"] == service_pod["volumes"]
    assert "livenessProbe" not in container and "readinessProbe" not in container
    assert {
        "name": "DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "app-secrets", "key": "database-url"}},
    } in container["env"]
    # Its pods are not the service's: the Service and the budget select the name label.
    labels = spec["template"]["metadata"]["labels"]
    selector = of_kind(migration_run, "Service")["scores"]["spec"]["selector"]
    assert not selector.items() <= labels.items()
    assert labels["app.kubernetes.io/component"] == "migration"
    version = kubernetes_minor(stack_file_config("prod")["k3s"]["version"])
    assert validate_manifests([job], version) == []


def test_the_migration_reaches_the_database_and_only_it(migration_run: Run) -> None:
    policies = of_kind(migration_run, "NetworkPolicy")
    sources = [p for r in policies["database"]["spec"]["ingress"] for p in r["from"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "migration"}}} in sources
    egress = policies["migrations"]["spec"]
    assert egress["podSelector"] == {"matchLabels": {"app.kubernetes.io/component": "migration"}}
    assert egress["policyTypes"] == ["Egress"]
    (rule,) = egress["egress"]
    assert rule["to"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "database"}}}
    ]
    # Without a migrate command, the database admits no migration pods.
    plain = prod()
    database = of_kind(plain, "NetworkPolicy")["database"]["spec"]["ingress"]
    assert "migration" not in str(database)
    assert "migrations" not in of_kind(plain, "NetworkPolicy")


def test_the_rollout_waits_for_the_migration_which_waits_for_the_push(migration_run: Run) -> None:
    tag = images.plan_build("scores", DEMO_API).tag
    job = registration(migration_run, JOB, f"scores-migrate-{tag}")
    deployment = registration(migration_run, DEPLOYMENT, "scores")
    build = registration(migration_run, BUILD, "app-scores-build")
    # The engine runs a step only after every step it depends on succeeded, and skips it when
    # one failed: a failed migration leaves the Deployment, and so the old pods, as they are.
    assert job.urn in deployment.dependencies
    assert build.urn in job.dependencies
    waits_for = upstream(migration_run, job)
    assert {
        "app-postgres",
        "app-secrets",
        "app-netpol-database",
        "app-netpol-migrations",
        "app-netpol-dns",
    } <= waits_for
    assert {"app-scores-build", "app-registry"} <= waits_for
    # Kept after its release: the engine forgets it, the TTL controller removes it.
    assert job.retain_on_delete
    assert job.ignore_changes == ["spec"]
    assert not job.protect


def test_a_changed_source_is_a_new_build_rollout_and_migration(tmp_path: Path) -> None:
    source = tmp_path / "scores"
    shutil.copytree(DEMO_API, source)
    before = prod(migrating(source))
    (source / "server.js").write_text((source / "server.js").read_text() + "\n// v2\n")
    after = prod(migrating(source))
    old_tag = images.plan_build("scores", DEMO_API).tag
    new_tag = images.plan_build("scores", source).tag
    assert old_tag != new_tag
    result = plan(before.registrations, after.registrations)
    assert result.names(Action.UPDATE) == {"app-scores-build", "app-scores"}, result.summary()
    assert result.names(Action.CREATE) == {f"app-scores-migrate-{new_tag}"}
    assert result.names(Action.DELETE) == {f"app-scores-migrate-{old_tag}"}
    assert not result.names(Action.REPLACE)
    assert not result.refusals and not result.rejected
    # The old release's Job is deleted only from the state: retained in the cluster.
    (old,) = [r for r in before.of_type(JOB)]
    assert old.retain_on_delete
    # And the same source again changes nothing at all.
    again = plan(after.registrations, prod(migrating(source)).registrations)
    assert not [s for s in again.steps], again.summary()


def test_an_env_change_leaves_the_release_job_alone(tmp_path: Path) -> None:
    before = prod(migrating(DEMO_API))
    changed = migrating(DEMO_API)
    changed["app"]["services"][0]["env"] = {"LOG_LEVEL": "debug"}
    result = plan(before.registrations, prod(changed).registrations)
    # The Deployment rolls; the Job's spec is immutable and left out of updates (no rejected
    # patch, no same-name replace colliding with a retained Job).
    assert result.names(Action.UPDATE) == {"app-scores"}, result.summary()
    assert not result.rejected


def test_a_long_service_name_still_gives_a_valid_job_name() -> None:
    from components.app_model import build_app
    from components.config import AppConfig
    from tests.harness import TEST_IMAGES

    name = "s" * 60
    app = build_app(
        AppConfig.model_validate(
            {
                "services": [
                    {
                        "name": name,
                        "build": str(DEMO_API),
                        "port": 3000,
                        "migrate": ["node", "m.js"],
                    }
                ]
            }
        ),
        TEST_IMAGES,
    )
    job = migrations.job_name(app.services[0])
    assert len(job) <= 63 and job.endswith(f"-migrate-{app.services[0].build.tag}")  # type: ignore[union-attr]


# --- the service CIDR ------------------------------------------------------------------------


def _k3s(server_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    config = stack_file_config("prod")
    return {**config, "k3s": {**config["k3s"], "serverConfig": server_config}, **extra}


@pytest.mark.parametrize(
    "cidr", ["10.43.0.0/16", "10.43.0.0/22", "10.43.0.0/16,fd00:43::/112", ["10.43.0.0/20"]]
)
def test_a_service_cidr_holding_the_registry_address_is_fine(cidr: Any) -> None:
    from components import config as stack_config

    stack_config.validate(_k3s({"service-cidr": cidr}), secret_values=False)


@pytest.mark.parametrize(
    ("cidr", "band"),
    [
        ("10.43.0.0/24", 16),  # 256 addresses: a band of max(16, 256/16) = 16
        ("10.43.0.0/23", 32),  # 512 / 16
        ("10.42.0.0/15", 256),  # 10.43.0.50 is 65586 past 10.42.0.0
    ],
)
def test_a_service_cidr_must_hold_the_registry_address_in_its_static_band(
    cidr: str, band: int
) -> None:
    # kube-apiserver's calculateRangeOffset (pkg/registry/core/service/ipallocator): the first
    # min(max(16, size/16), 256) addresses are taken by dynamic allocation only when the rest
    # are full, so a fixed clusterIP outside them may already be some other Service's.
    from components import config as stack_config

    with pytest.raises(ConfigError) as error:
        stack_config.validate(_k3s({"service-cidr": cidr}), secret_values=False)
    (problem,) = error.value.problems
    assert problem.startswith("picluster:k3s.serverConfig.service-cidr: ")
    assert f"outside the first {band} addresses of the range" in problem


@pytest.mark.parametrize("cidr", ["10.96.0.0/12", "10.43.1.0/24", "fd00:43::/112"])
def test_a_service_cidr_without_the_registry_address_names_the_key(cidr: str) -> None:
    from components import config as stack_config

    with pytest.raises(ConfigError) as error:
        stack_config.validate(_k3s({"service-cidr": cidr}), secret_values=False)
    (problem,) = error.value.problems
    assert problem.startswith("picluster:k3s.serverConfig.service-cidr: ")
    assert "10.43.0.50" in problem and "picluster:images.registry" in problem


def test_a_malformed_service_cidr_names_the_key() -> None:
    from components import config as stack_config

    with pytest.raises(ConfigError) as error:
        stack_config.validate(_k3s({"service-cidr": "10.43.0.0/99"}), secret_values=False)
    assert error.value.problems == [
        "picluster:k3s.serverConfig.service-cidr: '10.43.0.0/99' is not a CIDR such as "
        "10.43.0.0/16 (or an IPv4,IPv6 pair)"
    ]


def test_the_service_cidr_does_not_matter_without_the_in_cluster_registry() -> None:
    from components import config as stack_config

    elsewhere = _k3s({"service-cidr": "10.96.0.0/12"}, images={"registry": "ghcr.io/studio"})
    stack_config.validate(elsewhere, secret_values=False)
    services = [{"name": "lobby", "image": "ghcr.io/studio/lobby:1.4.2", "port": 8081}]
    nothing_built = _k3s({"service-cidr": "10.96.0.0/12"}, app={"services": services})
    stack_config.validate(nothing_built, secret_values=False)


def test_a_pinned_image_service_migrates_once_per_image() -> None:
    services = [
        {
            "name": "lobby",
            "image": "ghcr.io/studio/lobby:1.4.2",
            "port": 8081,
            "migrate": ["npm", "run", "migrate"],
        }
    ]
    result = prod({"app": {"services": services}})
    (job,) = result.of_type(JOB)
    release = hashlib.sha256(b"ghcr.io/studio/lobby:1.4.2").hexdigest()[:12]
    assert job.value("metadata")["name"] == f"lobby-migrate-{release}"
    assert not result.of_type(BUILD)  # nothing built: no push to wait for
    assert job.urn in registration(result, DEPLOYMENT, "lobby").dependencies


def test_a_static_frontend_waits_for_its_image() -> None:
    result = prod(
        {"app": {"domain": "game.local", "frontend": {"static": "examples/studio/game/dist"}}}
    )
    frontend = registration(result, DEPLOYMENT, "frontend")
    build = registration(result, BUILD, "app-frontend-build")
    assert build.urn in frontend.dependencies
    image = unwrap(frontend.inputs)["spec"]["template"]["spec"]["containers"][0]["image"]
    ref = images.plan_build("frontend", Path("examples/studio/game/dist"), static=True).ref(
        registries.REGISTRY_NAME
    )
    assert image == f"{ref}@{mock_digest(ref)}"
    assert build.urn in frontend.property_dependencies["spec"]


def test_each_push_names_the_registry_storage_it_fills(demo: Run) -> None:
    # The claim's uid is in every push's stdin: a registry whose claim was created again
    # (empty) makes every build run, check and push again.
    builds = demo.of_type("command:local:Command")
    assert builds
    for build in builds:
        [line] = [x for x in str(build.value("stdin")).splitlines() if x.startswith("REGISTRY_ID=")]
        assert len(line.removeprefix("REGISTRY_ID=").strip("'")) == 32, line
