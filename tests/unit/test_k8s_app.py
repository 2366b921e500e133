"""AppStack on Kubernetes under mocks: hardened, valid objects that keep data and secrets safe."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
from pulumi_command import Provider as CommandProvider

from components.app_model import build_app
from components.app_stack import AppStack, AppStackArgs
from components.config import AppConfig
from components.on_kubernetes.platform import KubernetesPlatform
from components.secrets import StackSecrets
from tests.harness import TEST_IMAGES, Registration, Run, run, tunnel_push
from tests.k8s_manifests import assert_password_is_a_file, manifests, validate_manifests

PLATFORM = KubernetesPlatform(domain="game.example.test", public_address="10.0.0.10")
DB_PW = "k8s-unit-db-password"
APP_CONFIG: dict[str, Any] = {
    "services": [
        {
            "name": "lobby",
            "image": "ghcr.io/studio/lobby:1.4.2",
            "port": 8081,
            "replicas": 3,
            "healthPath": "/lobby/healthz",
            "metricsPath": "/metrics",
            "env": {"LOG_LEVEL": "info"},
        },
        {
            "name": "scores",
            "image": "ghcr.io/studio/scores:2.0.0",
            "port": 9000,
            "path": "/api/scores",
        },
    ],
    "database": {"storage": "8Gi", "backup": {"keep": 5, "schedule": "0 4 * * *"}},
}


def secrets() -> StackSecrets:
    return StackSecrets(
        db_password=pulumi.Output.secret(DB_PW),
        grafana_admin_password=pulumi.Output.secret("unused-here"),
        database_url=pulumi.Output.secret(f"postgresql://game:{DB_PW}@postgres:5432/game"),
    )


def program(config: dict[str, Any]) -> Any:
    def body() -> None:
        provider = k8s.Provider("unit-k8s", kubeconfig="{}")
        commands = CommandProvider("unit-command")
        AppStack(
            "app",
            AppStackArgs(
                app=build_app(AppConfig.model_validate(config), TEST_IMAGES),
                secrets=secrets(),
                platform=PLATFORM,
                push=tunnel_push(),
            ),
            pulumi.ResourceOptions(providers=[provider, commands]),
        )

    return body


@pytest.fixture(scope="module")
def game() -> Run:
    return run(program(APP_CONFIG), {})


@pytest.fixture(scope="module")
def demo() -> Run:
    return run(program({}), {})


def of_kind(result: Run, kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests(result) if m["kind"] == kind}


def pod_specs(result: Run) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for m in manifests(result):
        if m["kind"] in ("Deployment", "StatefulSet"):
            specs.append((m["metadata"]["name"], m["spec"]["template"]["spec"]))
        elif m["kind"] == "CronJob":
            specs.append(
                (m["metadata"]["name"], m["spec"]["jobTemplate"]["spec"]["template"]["spec"])
            )
    return specs


@pytest.mark.parametrize("name", ["game", "demo"])
def test_every_object_validates_for_the_pinned_kubernetes_minor(
    name: str, request: pytest.FixtureRequest
) -> None:
    result: Run = request.getfixturevalue(name)
    objects = manifests(result)
    assert len(objects) > 10
    assert validate_manifests(objects, "1.31.0") == []


def test_namespace_enforces_pod_security_restricted(game: Run) -> None:
    ns = of_kind(game, "Namespace")["game"]
    for mode in ("enforce", "audit", "warn"):
        assert ns["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_every_container_is_pinned_limited_and_restricted(game: Run) -> None:
    specs = pod_specs(game)
    assert {n for n, _ in specs} == {
        "postgres",
        "lobby",
        "scores",
        "frontend",
        "postgres-backup",
        "postgres-restore",
    }
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), name
            for section in ("requests", "limits"):
                assert set(container["resources"][section]) == {"cpu", "memory"}, name
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["readOnlyRootFilesystem"] is True, name


def test_database_storage_is_retained_and_protected(game: Run) -> None:
    claim = game.named("app-db-data")
    assert claim.retain_on_delete and claim.protect
    assert claim.value("spec")["resources"]["requests"]["storage"] == "8Gi"
    assert claim.value("spec")["storageClassName"] == "local-path"
    namespace = game.named("app-namespace")
    assert namespace.retain_on_delete  # deleting the namespace would delete the claim
    statefulset = of_kind(game, "StatefulSet")["postgres"]
    volumes = statefulset["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "postgres-data"}} in volumes
    service = of_kind(game, "Service")["postgres"]
    assert service["spec"]["clusterIP"] == "None"


def test_passwords_live_only_in_the_secret(game: Run) -> None:
    secret = game.named("app-secrets")
    assert secret.is_secret("stringData")
    assert secret.value("stringData")["db-password"] == DB_PW
    for resource in game.registrations:
        assert not any(DB_PW in s for s in resource.plain_strings()), resource.name
    lobby = of_kind(game, "Deployment")["lobby"]["spec"]["template"]["spec"]["containers"][0]
    url = next(e for e in lobby["env"] if e["name"] == "DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"] == {"name": "app-secrets", "key": "database-url"}
    assert {"name": "PORT", "value": "8081"} in lobby["env"]


def test_services_are_spread_probed_and_budgeted(game: Run) -> None:
    lobby = of_kind(game, "Deployment")["lobby"]
    assert lobby["spec"]["replicas"] == 3
    spec = lobby["spec"]["template"]["spec"]
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    container = spec["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/lobby/healthz", "port": 8081}
    assert container["livenessProbe"]["httpGet"]["path"] == "/lobby/healthz"
    scores = of_kind(game, "Deployment")["scores"]["spec"]["template"]["spec"]["containers"][0]
    assert scores["readinessProbe"]["tcpSocket"] == {"port": 9000}
    budgets = of_kind(game, "PodDisruptionBudget")
    assert set(budgets) == {"lobby"}
    assert budgets["lobby"]["spec"]["minAvailable"] == 1


def test_ingress_routes_root_to_frontend_and_paths_to_services(game: Run) -> None:
    ingress = of_kind(game, "Ingress")["game"]
    assert ingress["spec"]["ingressClassName"] == "traefik"
    # One rule without a host although the platform has a domain: the game answers on every
    # Pi's address too (Traefik matches a host-less rule on the path alone).
    [rule] = ingress["spec"]["rules"]
    assert "host" not in rule
    routes = {
        p["path"]: (p["backend"]["service"]["name"], p["backend"]["service"]["port"]["number"])
        for p in rule["http"]["paths"]
    }
    assert routes == {
        "/": ("frontend", 80),
        "/lobby": ("lobby", 8081),
        "/api/scores": ("scores", 9000),
    }


def test_frontend_runs_nginx_unprivileged_with_the_placeholder(demo: Run) -> None:
    frontend = of_kind(demo, "Deployment")["frontend"]["spec"]["template"]
    container = frontend["spec"]["containers"][0]
    assert container["image"] == "nginx:1.27.3-alpine"
    assert container["ports"] == [{"name": "main", "containerPort": 8080}]
    assert frontend["spec"]["securityContext"]["runAsUser"] == 101
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/nginx/nginx.conf", "/usr/share/nginx/html/index.html", "/tmp"} <= mounts
    files = of_kind(demo, "ConfigMap")["frontend-files"]["data"]
    assert "listen 8080;" in files["etc_nginx_conf.d_default.conf"]
    assert "pid /tmp/nginx.pid;" in files["etc_nginx_nginx.conf"]
    assert "checksum/config" in frontend["metadata"]["annotations"]
    service = of_kind(demo, "Service")["frontend"]
    assert service["spec"]["ports"][0]["port"] == 80
    assert service["spec"]["ports"][0]["targetPort"] == 8080


def test_network_policies_deny_by_default_then_allow_the_chain(game: Run) -> None:
    policies = of_kind(game, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny

    def sources(policy: str) -> list[dict[str, Any]]:
        return [peer for rule in policies[policy]["spec"]["ingress"] for peer in rule["from"]]

    component = "app.kubernetes.io/component"
    namespace = "kubernetes.io/metadata.name"
    assert {"namespaceSelector": {"matchLabels": {namespace: "kube-system"}}} in sources("frontend")
    assert {"podSelector": {"matchLabels": {component: "frontend"}}} in sources("services")
    assert {"podSelector": {"matchLabels": {component: "service"}}} in sources("database")
    assert {"namespaceSelector": {"matchLabels": {namespace: "monitoring"}}} in sources("database")
    assert {"podSelector": {"matchLabels": {component: "frontend"}}} not in sources("database")
    # Services call each other by name: both ends of the service -> service path are open.
    assert {"podSelector": {"matchLabels": {component: "service"}}} in sources("services")
    service_egress = [
        peer for rule in policies["services"]["spec"]["egress"] for peer in rule["to"]
    ]
    assert {"podSelector": {"matchLabels": {component: "service"}}} in service_egress
    dns = policies["allow-dns"]["spec"]["egress"][0]
    assert {p["port"] for p in dns["ports"]} == {53}


def test_backups_run_pg_dump_on_their_own_volume(game: Run) -> None:
    cron = of_kind(game, "CronJob")["postgres-backup"]
    assert cron["spec"]["schedule"] == "0 4 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["KEEP"]["value"] == "5"
    assert_password_is_a_file(pod)
    script = of_kind(game, "ConfigMap")["postgres-backup"]["data"]["pg-backup.sh"]
    assert "pg_dump" in script
    backups = game.named("app-backups")
    assert backups.retain_on_delete


def test_pods_writing_kept_volumes_prefer_a_server(game: Run) -> None:
    """A local-path volume stays on the node its pod first ran on. The claims a destroy keeps
    (retained or protected) must start on a server: on an agent they would block its drain when
    `destroy --exclude-protected` removes the agents, and go with the Pi when it is removed."""
    kept = {
        r.value("metadata")["name"]
        for r in game.registrations
        if r.type == "kubernetes:core/v1:PersistentVolumeClaim"
        and (r.retain_on_delete or r.protect)
    }
    assert kept == {"postgres-data", "postgres-backups"}
    writers = {
        name: spec
        for name, spec in pod_specs(game)
        if any(
            v.get("persistentVolumeClaim", {}).get("claimName") in kept
            for v in spec.get("volumes", [])
        )
    }
    writers |= {
        f"{name} (claim template)": m["spec"]["template"]["spec"]
        for name, m in of_kind(game, "StatefulSet").items()
        if any(t["metadata"]["name"] in kept for t in m["spec"].get("volumeClaimTemplates", []))
    }
    assert {"postgres", "postgres-backup"} <= set(writers)
    for name, spec in writers.items():
        terms = spec.get("affinity", {}).get("nodeAffinity", {})
        preferred = terms.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        keys = {
            e["key"]
            for term in preferred
            for e in term["preference"]["matchExpressions"]
            if e["operator"] == "Exists"
        }
        assert "node-role.kubernetes.io/control-plane" in keys, name


def test_backups_can_be_turned_off() -> None:
    result = run(program({"database": {"backup": {"enabled": False}}}), {})
    assert "postgres-backup" not in of_kind(result, "CronJob")
    assert "backup" not in of_kind(result, "NetworkPolicy")


def app_memory_requests_mib(result: Run) -> float:
    units = {"Mi": 1, "Gi": 1024, "Ki": 1 / 1024}
    total = 0.0
    for m in manifests(result):
        if m["kind"] not in ("Deployment", "StatefulSet"):
            continue
        replicas = m["spec"].get("replicas", 1)
        for c in m["spec"]["template"]["spec"]["containers"]:
            value = c["resources"]["requests"]["memory"]
            total += replicas * float(value[:-2]) * units[value[-2:]]
    return total


def test_default_app_fits_a_small_share_of_a_pi(demo: Run) -> None:
    requested = app_memory_requests_mib(demo)
    assert requested <= 512, f"the default app requests {requested} MiB"


def registration(result: Run, name: str) -> Registration:
    return result.named(name)
