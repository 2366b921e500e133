"""The Kubernetes renderer of monitoring on its own, on a Kubernetes provider, under mocks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
import yaml

from components import monitoring_config
from components.app_model import build_app
from components.config import AppConfig, MonitoringConfig
from components.on_kubernetes.monitoring import render_monitoring
from components.on_kubernetes.platform import KubernetesPlatform
from components.on_kubernetes.prometheus import retention_size
from components.secrets import StackSecrets
from tests.harness import TEST_IMAGES, Registration, Run, run, unwrap
from tests.k8s_manifests import manifests, validate_manifests

DB_PASSWORD = "unit-db-pw"
GRAFANA_PASSWORD = "unit-grafana-pw"
PLATFORM = KubernetesPlatform(domain="game.example.com")
APP = build_app(
    AppConfig.model_validate(
        {
            "services": [
                {
                    "name": "match",
                    "image": "node:22.12.0-alpine",
                    "port": 4000,
                    "replicas": 2,
                    "healthPath": "/match/health",
                    "metricsPath": "/metrics",
                },
                {"name": "chat", "image": "node:22.12.0-alpine", "port": 4100},
            ],
            "database": {"name": "arena", "user": "arena"},
        }
    ),
    TEST_IMAGES,
)
SETTINGS = MonitoringConfig.model_validate(
    {"retention": "7d", "scrapeInterval": "15s", "storage": "10Gi", "grafanaStorage": "1Gi"}
)
NODES = 3
"""Pis assumed when counting node-exporter (a DaemonSet: one pod per node) in the budget."""
MEMORY_BUDGET_MI = 700

POD_TEMPLATE_KINDS = ("Deployment", "DaemonSet", "StatefulSet")


class _Monitoring(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        settings: MonitoringConfig,
        platform: KubernetesPlatform,
        opts: pulumi.ResourceOptions,
    ) -> None:
        super().__init__("picluster:index:Monitoring", name, None, opts)
        secrets = StackSecrets(
            db_password=pulumi.Output.secret(DB_PASSWORD),
            grafana_admin_password=pulumi.Output.secret(GRAFANA_PASSWORD),
            database_url=pulumi.Output.secret(f"postgresql://arena:{DB_PASSWORD}@postgres/arena"),
        )
        rendered = render_monitoring(self, name, APP, secrets, settings, platform)
        pulumi.export("grafana_url", rendered.grafana_url)
        pulumi.export("prometheus_url", rendered.prometheus_url)
        pulumi.export("alertmanager_url", rendered.alertmanager_url)
        pulumi.export("forward_command", rendered.forward_command)
        self.register_outputs({})


def program(settings: MonitoringConfig = SETTINGS, platform: KubernetesPlatform = PLATFORM) -> Run:
    def body() -> None:
        provider = k8s.Provider("unit-k8s", kubeconfig="{}")
        _Monitoring("watch", settings, platform, pulumi.ResourceOptions(providers=[provider]))

    return run(body, {})


@pytest.fixture(scope="module")
def result() -> Run:
    return program()


def kind(run_: Run, kind_: str) -> list[Registration]:
    return [r for r in run_.registrations if r.type.startswith("kubernetes:") and _kind(r) == kind_]


def _kind(registration: Registration) -> str:
    return str(registration.value("kind"))


def named(run_: Run, kind_: str, name: str) -> dict[str, Any]:
    """The one `kind_` object called `name`, as a manifest without secret markers."""
    found = [r for r in kind(run_, kind_) if r.value("metadata")["name"] == name]
    assert len(found) == 1, f"expected one {kind_} {name!r}, found {len(found)}"
    return unwrap(found[0].inputs)


def prometheus_yml(run_: Run) -> dict[str, Any]:
    return yaml.safe_load(named(run_, "ConfigMap", "prometheus")["data"]["prometheus.yml"])


def pod_templates(run_: Run) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(workload, namespace, pod spec) of every workload."""
    for kind_ in POD_TEMPLATE_KINDS:
        for registration in kind(run_, kind_):
            meta = registration.value("metadata")
            yield meta["name"], meta["namespace"], registration.value("spec")["template"]["spec"]


def mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi)?", quantity)
    assert match is not None, quantity
    return float(match[1]) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, None: 1 / 2**20}[match[2]]


# --- structure ---------------------------------------------------------------------------------


def test_every_object_is_a_child_of_the_component_named_after_it(result: Run) -> None:
    component = result.named("watch")
    objects = [r for r in result.registrations if r.type.startswith("kubernetes:")]
    assert objects
    for registration in objects:
        assert registration.parent == component.urn, registration.name
        assert registration.name.startswith("watch-"), registration.name
    assert not result.of_type("pulumi:providers:kubernetes")[1:], "a provider was created"


def test_namespaces_carry_their_pod_security_level(result: Run) -> None:
    monitoring = named(result, "Namespace", "monitoring")["metadata"]["labels"]
    assert {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/warn": "restricted",
    }.items() <= monitoring.items()
    node = named(result, "Namespace", "monitoring-node")["metadata"]["labels"]
    assert node["pod-security.kubernetes.io/enforce"] == "privileged"
    workloads = {name: ns for name, ns, _ in pod_templates(result)}
    assert workloads == {
        "prometheus": "monitoring",
        "alertmanager": "monitoring",
        "grafana": "monitoring",
        "kube-state-metrics": "monitoring",
        "blackbox-exporter": "monitoring",
        "postgres-exporter": "monitoring",
        "node-exporter": "monitoring-node",
    }


def test_prometheus_may_discover_and_scrape_the_cluster(result: Run) -> None:
    role = named(result, "ClusterRole", "picluster-prometheus")["rules"]
    core = next(r for r in role if r.get("apiGroups") == [""])
    assert set(core["resources"]) >= {"nodes", "nodes/metrics", "services", "endpoints", "pods"}
    assert set(core["verbs"]) == {"get", "list", "watch"}
    assert any(r.get("resources") == ["endpointslices"] for r in role)
    assert {"nonResourceURLs": ["/metrics"], "verbs": ["get"]} in role
    binding = named(result, "ClusterRoleBinding", "picluster-prometheus")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    ]
    pods = {name: spec for name, _, spec in pod_templates(result)}
    assert pods["prometheus"]["serviceAccountName"] == "prometheus"
    token = {name: spec.get("automountServiceAccountToken") for name, spec in pods.items()}
    assert {name for name, mounted in token.items() if mounted is not False} == {
        "prometheus",
        "kube-state-metrics",
    }


# --- prometheus.yml ---------------------------------------------------------------------------


def test_scrape_jobs_match_the_docker_target_plus_kubernetes_ones(result: Run) -> None:
    config = prometheus_yml(result)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {
        "prometheus",
        "node",
        "cadvisor",
        "kubelet",
        "apiserver",
        "etcd",
        "kube-state-metrics",
        "postgres",
        "probe",
        "services",
    }
    assert config["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}
    assert jobs["cadvisor"]["metrics_path"] == "/metrics/cadvisor"
    for job in ("cadvisor", "kubelet"):
        assert jobs[job]["kubernetes_sd_configs"] == [{"role": "node"}]
        assert jobs[job]["scheme"] == "https"
    # Kubernetes' cAdvisor series keep namespace/pod/container and lose Docker's `name`.
    assert {"regex": "name", "action": "labeldrop"} in jobs["cadvisor"]["metric_relabel_configs"]
    assert jobs["node"]["kubernetes_sd_configs"][0]["namespaces"] == {"names": ["monitoring-node"]}
    assert jobs["postgres"]["static_configs"] == [{"targets": ["postgres-exporter:9187"]}]


def test_probe_job_covers_every_app_service_by_its_cluster_dns_name(result: Run) -> None:
    jobs = {job["job_name"]: job for job in prometheus_yml(result)["scrape_configs"]}
    probe = jobs["probe"]
    targets = {c["labels"]["service"]: c for c in probe["static_configs"]}
    assert set(targets) == {"frontend", "match", "chat", "ingress"}
    assert targets["ingress"]["targets"] == ["http://traefik.kube-system.svc/healthz"]
    assert targets["ingress"]["labels"]["__param_module"] == "http_2xx_ingress"
    assert targets["match"]["targets"] == ["http://match.game.svc:4000/match/health"]
    assert targets["match"]["labels"]["__param_module"] == "http_2xx"
    assert targets["chat"]["targets"] == ["chat.game.svc:4100"]
    assert targets["chat"]["labels"]["__param_module"] == "tcp_connect"
    assert targets["frontend"]["targets"] == ["http://frontend.game.svc:80/healthz"]
    assert {"target_label": "__address__", "replacement": "blackbox-exporter:9115"} in probe[
        "relabel_configs"
    ]


def test_services_job_scrapes_only_services_with_metrics_and_labels_them(result: Run) -> None:
    jobs = {job["job_name"]: job for job in prometheus_yml(result)["scrape_configs"]}
    services = jobs["services"]
    assert services["kubernetes_sd_configs"][0]["namespaces"] == {"names": ["game"]}
    keep = next(r for r in services["relabel_configs"] if r.get("action") == "keep")
    assert keep["source_labels"] == ["__meta_kubernetes_service_name"]
    assert re.fullmatch(keep["regex"], "match")
    assert not re.fullmatch(keep["regex"], "chat")
    assert {
        "source_labels": ["__meta_kubernetes_service_name"],
        "target_label": "service",
    } in services["relabel_configs"]
    paths = [r for r in services["relabel_configs"] if r.get("target_label") == "__metrics_path__"]
    assert [(r["regex"], r["replacement"]) for r in paths] == [("match", "/metrics")]


def test_alert_rules_ship_next_to_the_config_and_a_change_rolls_the_pod(result: Run) -> None:
    data = named(result, "ConfigMap", "prometheus")["data"]
    assert data["alerts.yml"] == monitoring_config.alert_rules()
    assert prometheus_yml(result)["rule_files"] == ["/etc/prometheus/alerts.yml"]

    def checksum(run_: Run) -> str:
        template = named(run_, "Deployment", "prometheus")["spec"]["template"]
        return template["metadata"]["annotations"]["checksum/config"]

    changed = program(settings=SETTINGS.model_copy(update={"scrape_interval": "60s"}))
    assert checksum(changed) != checksum(result)
    assert checksum(program()) == checksum(result)


def test_prometheus_keeps_its_data_within_the_volume(result: Run) -> None:
    claim = named(result, "PersistentVolumeClaim", "prometheus-data")["spec"]
    assert claim["storageClassName"] == "local-path"
    assert claim["resources"]["requests"]["storage"] == "10Gi"
    deployment = named(result, "Deployment", "prometheus")["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    container = deployment["template"]["spec"]["containers"][0]
    assert "--storage.tsdb.retention.time=7d" in container["args"]
    assert "--storage.tsdb.retention.size=8192MB" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert retention_size("500Mi") == "400MB"
    assert retention_size("1.5Gi") == "1228MB"


# --- containers --------------------------------------------------------------------------------


def test_every_container_is_pinned_sized_and_hardened(result: Run) -> None:
    for workload, namespace, spec in pod_templates(result):
        containers = [*spec.get("initContainers", []), *spec["containers"]]
        for container in containers:
            where = f"{workload}/{container['name']}"
            image = container["image"]
            tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else None
            assert tag not in (None, "latest"), f"{where}: image {image!r} is not pinned"
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert security["readOnlyRootFilesystem"] is True, where
        if namespace == "monitoring":
            pod_security = spec["securityContext"]
            assert pod_security["runAsNonRoot"] is True, workload
            assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, workload
            assert not spec.get("hostNetwork") and not spec.get("hostPID"), workload
    users = {name: spec["securityContext"]["runAsUser"] for name, _, spec in pod_templates(result)}
    assert users["prometheus"] == 65534 and users["grafana"] == 472


def test_node_exporter_reads_the_host_read_only_on_every_node(result: Run) -> None:
    spec = named(result, "DaemonSet", "node-exporter")["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert {"operator": "Exists"} in spec["tolerations"]
    container = spec["containers"][0]
    assert "--path.rootfs=/host/root" in container["args"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert all(m["readOnly"] for m in mounts.values())
    roots = [v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == "/"]
    assert [mounts["/host/root"]["name"]] == [v["name"] for v in roots]


def test_memory_requests_fit_the_monitoring_budget(result: Run) -> None:
    total = 0.0
    parts: list[str] = []
    for registration in [*kind(result, "Deployment"), *kind(result, "DaemonSet")]:
        spec = registration.value("spec")
        copies = NODES if _kind(registration) == "DaemonSet" else spec.get("replicas", 1)
        for container in spec["template"]["spec"]["containers"]:
            mi = mebibytes(container["resources"]["requests"]["memory"]) * copies
            parts.append(f"{container['name']}={mi:g}Mi")
            total += mi
    summary = f"monitoring requests {total:g}Mi on {NODES} nodes: {', '.join(sorted(parts))}"
    assert total < MEMORY_BUDGET_MI, summary
    print(summary)


# --- secrets -----------------------------------------------------------------------------------


def test_passwords_live_only_in_secret_objects_as_secrets(result: Run) -> None:
    for registration in result.registrations:
        plain = registration.plain_strings()
        assert not any(DB_PASSWORD in s for s in plain), registration.name
        assert not any(GRAFANA_PASSWORD in s for s in plain), registration.name
        if registration.type.startswith("kubernetes:") and _kind(registration) != "Secret":
            # Marked secret or not, a password in a Deployment is readable by anyone who can
            # read Deployments: only Secret objects may carry one.
            assert not any(
                p in s
                for s in registration.secret_strings()
                for p in (DB_PASSWORD, GRAFANA_PASSWORD)
            ), registration.name
    secrets = {r.value("metadata")["name"]: r for r in kind(result, "Secret")}
    assert set(secrets) == {"grafana", "postgres-exporter"}
    assert all(secret.is_secret("stringData") for secret in secrets.values())
    assert GRAFANA_PASSWORD in secrets["grafana"].secret_strings()
    assert DB_PASSWORD in secrets["postgres-exporter"].secret_strings()


def test_passwords_reach_the_containers_as_files(result: Run) -> None:
    pods = {name: spec for name, _, spec in pod_templates(result)}
    grafana_env = {e["name"]: e.get("value") for e in pods["grafana"]["containers"][0]["env"]}
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana_env
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana/admin-password"
    exporter = pods["postgres-exporter"]
    env = {e["name"]: e.get("value") for e in exporter["containers"][0]["env"]}
    assert env["DATA_SOURCE_URI"] == "postgres.game.svc:5432/arena?sslmode=disable"
    assert env["DATA_SOURCE_USER"] == "arena"
    assert env["DATA_SOURCE_PASS_FILE"] == "/run/secrets/postgres/db-password"
    assert {
        "name": "db-password",
        "secret": {"secretName": "postgres-exporter", "defaultMode": 0o440},
    } in exporter["volumes"]


# --- grafana -----------------------------------------------------------------------------------


def test_grafana_is_provisioned_with_every_dashboard(result: Run) -> None:
    provisioning = named(result, "ConfigMap", "grafana-provisioning")["data"]
    datasource = yaml.safe_load(provisioning["datasources.yml"])["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["uid"] == monitoring_config.DATASOURCE_UID
    dashboards = named(result, "ConfigMap", "grafana-dashboards")["data"]
    assert set(dashboards) == {
        "app.json",
        "containers.json",
        "host.json",
        "postgres.json",
        "cluster.json",
        "control-plane.json",
    }
    assert '"uid": "picluster-cluster"' in dashboards["cluster.json"]
    assert '"uid": "picluster-control-plane"' in dashboards["control-plane.json"]
    for kubernetes_only in ("cluster.json", "control-plane.json"):
        assert kubernetes_only not in monitoring_config.dashboards(), "Docker must not load it"


def test_grafana_is_served_under_grafana_behind_the_ingress(result: Run) -> None:
    ingress = named(result, "Ingress", "grafana")["spec"]
    assert ingress["ingressClassName"] == "traefik"
    [rule] = ingress["rules"]
    assert "host" not in rule, "Grafana must answer on every Pi's address, domain or not"
    [path] = rule["http"]["paths"]
    assert path["path"] == "/grafana" and path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": "grafana", "port": {"number": 3000}}
    container = named(result, "Deployment", "grafana")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GF_SERVER_ROOT_URL"] == "%(protocol)s://%(domain)s/grafana/"
    assert env["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    assert env["GF_SERVER_DOMAIN"] == "game.example.com"
    assert result.outputs["grafana_url"].value == "http://game.example.com/grafana/"
    # Prometheus and Alertmanager have no login, so no Ingress: the laptop reaches them through
    # `bin/picluster forward`, on the same ports of 127.0.0.1.
    assert result.outputs["prometheus_url"].value == "http://127.0.0.1:9090/"
    assert result.outputs["alertmanager_url"].value == "http://127.0.0.1:9093/"
    assert result.outputs["forward_command"].value == "bin/picluster forward -s test"
    ingresses = [r.name for r in result.registrations if r.type.endswith(":Ingress")]
    assert ingresses == ["watch-grafana"]


def test_without_a_domain_grafana_answers_on_the_first_server(result: Run) -> None:
    bare = program(platform=KubernetesPlatform(public_address="192.168.1.10"))
    [rule] = named(bare, "Ingress", "grafana")["spec"]["rules"]
    assert "host" not in rule
    assert bare.outputs["grafana_url"].value == "http://192.168.1.10/grafana/"


# --- offline validation ------------------------------------------------------------------------


def test_every_object_validates_against_kubernetes_1_31(result: Run) -> None:
    objects = manifests(result)
    assert len(objects) > 20
    assert validate_manifests(objects, "1.31.0") == []


def test_ingress_probe_sends_the_game_host_or_none_without_a_domain(result: Run) -> None:
    modules = yaml.safe_load(named(result, "ConfigMap", "blackbox-exporter")["data"]["config.yml"])
    ingress = modules["modules"]["http_2xx_ingress"]
    assert ingress["http"]["headers"] == {"Host": "game.example.com"}
    assert ingress["prober"] == "http"

    bare = program(platform=KubernetesPlatform(public_address="192.168.1.10"))
    probe = next(j for j in prometheus_yml(bare)["scrape_configs"] if j["job_name"] == "probe")
    ingress_target = next(c for c in probe["static_configs"] if c["labels"]["service"] == "ingress")
    assert ingress_target["labels"]["__param_module"] == "http_2xx"
    bare_modules = yaml.safe_load(
        named(bare, "ConfigMap", "blackbox-exporter")["data"]["config.yml"]
    )
    assert "http_2xx_ingress" not in bare_modules["modules"]
