"""Prometheus on K3s: its prometheus.yml (Kubernetes service discovery, the same job names and
labels as the Docker target) and its objects (RBAC, ConfigMap, volume, Deployment, Service).
"""

from __future__ import annotations

from typing import Any, Final

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components import alertmanager_config, monitoring_config, versions
from components.app_model import AppModel, Resources
from components.config import MonitoringConfig
from components.monitoring_config import retention_size
from components.on_kubernetes import control_plane, pods, volumes
from components.on_kubernetes.exporters import (
    BLACKBOX,
    BLACKBOX_PORT,
    KUBE_STATE_METRICS,
    KUBE_STATE_METRICS_PORT,
    NOBODY,
    NODE_EXPORTER,
    NODE_EXPORTER_PORT,
    POSTGRES_EXPORTER,
    POSTGRES_EXPORTER_PORT,
)
from components.on_kubernetes.platform import KubernetesPlatform

PROMETHEUS: Final = "prometheus"
PROMETHEUS_PORT: Final = 9090
KUBELET_PORT: Final = 10250
CONFIG_DIR: Final = "/etc/prometheus"
SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"

PROMETHEUS_RESOURCES: Final = Resources(
    cpu_request="100m", memory_request="256Mi", cpu_limit="1000m", memory_limit="512Mi"
)

# K3s runs the kubelet, API server and controllers in one process sharing one metrics registry,
# so a server's kubelet /metrics also carries every API server and etcd series. Only the
# kubelet's own are worth a Pi's memory; the API server's and etcd's have their own jobs
# (control_plane.py), whose keep-lists share no name with this one.
_KUBELET_METRICS = "kubelet_.*|prober_.*|volume_manager_.*|process_.*|go_goroutines"
# Per-task-state and per-device cAdvisor series multiply every container's series count and no
# dashboard or alert reads them.
_CADVISOR_DROPPED = (
    "container_(tasks_state|memory_failures_total|blkio_device_usage_total"
    "|file_descriptors|sockets|threads|threads_max|ulimits_soft)"
)


def _relabel(source: str, target: str, replacement: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"source_labels": [source], "target_label": target}
    if replacement is not None:
        rule["replacement"] = replacement
    return rule


def _kubelet_job(job: str, path: str, metric_relabel: list[dict[str, Any]]) -> dict[str, Any]:
    """One target per node's kubelet, with the service account's token."""
    return {
        "job_name": job,
        "scheme": "https",
        "metrics_path": path,
        "authorization": {"credentials_file": f"{SERVICE_ACCOUNT_DIR}/token"},
        # The kubelet's serving certificate is self-signed per node unless the cluster rotates
        # serving certificates; the token still authenticates, and the kubelet authorizes it
        # against the API server (nodes/metrics).
        "tls_config": {"ca_file": f"{SERVICE_ACCOUNT_DIR}/ca.crt", "insecure_skip_verify": True},
        "kubernetes_sd_configs": [{"role": "node"}],
        "relabel_configs": [
            _relabel("__meta_kubernetes_node_name", "instance", f"$1:{KUBELET_PORT}"),
        ],
        "metric_relabel_configs": metric_relabel,
    }


def _services_job(app: AppModel, app_namespace: str) -> dict[str, Any] | None:
    """Every pod behind an app Service that has `metrics_path`, labelled by that Service."""
    with_metrics = [s for s in app.services if s.metrics_path is not None]
    if not with_metrics:
        return None
    return {
        "job_name": "services",
        # EndpointSlices rather than Endpoints, which Kubernetes deprecates from 1.33.
        "kubernetes_sd_configs": [
            {"role": "endpointslice", "namespaces": {"names": [app_namespace]}}
        ],
        "relabel_configs": [
            # By Service name alone: each app Service has one port, and the pod's port differs
            # from the Service's when the Service's is privileged (below 1024).
            {
                "source_labels": ["__meta_kubernetes_service_name"],
                "regex": "|".join(s.name for s in with_metrics),
                "action": "keep",
            },
            _relabel("__meta_kubernetes_service_name", "service"),
            *(
                {
                    "source_labels": ["__meta_kubernetes_service_name"],
                    "regex": s.name,
                    "target_label": "__metrics_path__",
                    "replacement": s.metrics_path,
                }
                for s in with_metrics
            ),
            _relabel("__meta_kubernetes_namespace", "namespace"),
            _relabel("__meta_kubernetes_pod_name", "pod"),
        ],
    }


# K3s's packaged Traefik; the frontend answers /healthz behind the ingress rule for "/".
INGRESS_HEALTH_URL = "http://traefik.kube-system.svc/healthz"


def prometheus_config(
    app: AppModel, settings: MonitoringConfig, platform: KubernetesPlatform
) -> str:
    """prometheus.yml for K3s: Kubernetes discovery where targets come and go, Service names
    where there is one target. Job names and the `service` label are those of the Docker target,
    which the alert rules and dashboards rely on."""
    probes = [
        *monitoring_config.probe_targets(app, host_suffix=f".{platform.app_namespace}.svc"),
        monitoring_config.ingress_probe(INGRESS_HEALTH_URL, platform.domain),
    ]
    jobs: list[dict[str, Any]] = [
        {
            "job_name": "prometheus",
            "static_configs": [{"targets": [f"localhost:{PROMETHEUS_PORT}"]}],
        },
        {
            "job_name": "node",
            "kubernetes_sd_configs": [
                {"role": "pod", "namespaces": {"names": [platform.node_exporter_namespace]}}
            ],
            "relabel_configs": [
                {
                    "source_labels": [
                        "__meta_kubernetes_pod_label_app_kubernetes_io_name",
                        "__meta_kubernetes_pod_container_port_number",
                    ],
                    "regex": f"{NODE_EXPORTER};{NODE_EXPORTER_PORT}",
                    "action": "keep",
                },
                # hostNetwork: the pod IP is the node's, the node's name reads better.
                _relabel("__meta_kubernetes_pod_node_name", "instance", f"$1:{NODE_EXPORTER_PORT}"),
            ],
        },
        _kubelet_job(
            "cadvisor",
            "/metrics/cadvisor",
            [
                {"source_labels": ["__name__"], "regex": _CADVISOR_DROPPED, "action": "drop"},
                # cAdvisor's `name` is the runtime's container id on K3s; without it, alert
                # texts read `namespace/pod/container` as the rules expect of Kubernetes.
                {"regex": "name", "action": "labeldrop"},
            ],
        ),
        _kubelet_job(
            "kubelet",
            "/metrics",
            [{"source_labels": ["__name__"], "regex": _KUBELET_METRICS, "action": "keep"}],
        ),
        control_plane.apiserver_job(SERVICE_ACCOUNT_DIR),
        control_plane.etcd_job(),
        {
            "job_name": "kube-state-metrics",
            "static_configs": [{"targets": [f"{KUBE_STATE_METRICS}:{KUBE_STATE_METRICS_PORT}"]}],
        },
        {
            "job_name": "postgres",
            "static_configs": [{"targets": [f"{POSTGRES_EXPORTER}:{POSTGRES_EXPORTER_PORT}"]}],
        },
        monitoring_config.probe_scrape_job(probes, f"{BLACKBOX}:{BLACKBOX_PORT}"),
    ]
    services = _services_job(app, platform.app_namespace)
    if services is not None:
        jobs.append(services)
    config = {
        "global": {
            "scrape_interval": settings.scrape_interval,
            "evaluation_interval": settings.scrape_interval,
        },
        "rule_files": [f"{CONFIG_DIR}/alerts.yml"],
        "alerting": alertmanager_config.prometheus_alerting(
            f"{alertmanager_config.ALERTMANAGER}:{alertmanager_config.ALERTMANAGER_PORT}"
        ),
        "scrape_configs": jobs,
    }
    return yaml.safe_dump(config, sort_keys=False)


def _rbac(name: str, namespace: str, opts: pulumi.ResourceOptions) -> k8s.core.v1.ServiceAccount:
    return pods.service_account_with_cluster_role(
        f"{name}-prometheus",
        PROMETHEUS,
        namespace,
        "monitoring",
        [
            k8s.rbac.v1.PolicyRuleArgs(
                api_groups=[""],
                resources=["nodes", "nodes/metrics", "services", "endpoints", "pods"],
                verbs=["get", "list", "watch"],
            ),
            k8s.rbac.v1.PolicyRuleArgs(
                api_groups=["discovery.k8s.io"],
                resources=["endpointslices"],
                verbs=["get", "list", "watch"],
            ),
            k8s.rbac.v1.PolicyRuleArgs(non_resource_urls=["/metrics"], verbs=["get"]),
        ],
        opts,
    )


def render_prometheus(
    name: str,
    namespace: str,
    app: AppModel,
    settings: MonitoringConfig,
    platform: KubernetesPlatform,
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.Service:
    """Prometheus with the alert rules, on its own volume, reachable as `prometheus:9090`."""
    account = _rbac(name, namespace, opts)
    files = {
        "prometheus.yml": prometheus_config(app, settings, platform),
        "alerts.yml": monitoring_config.alert_rules(),
    }
    k8s.core.v1.ConfigMap(
        f"{name}-prometheus",
        metadata=pods.metadata(PROMETHEUS, namespace, "config"),
        data=files,
        opts=opts,
    )
    # On a class that cannot expand, a bigger `monitoring.storage` leaves the claim as it is,
    # but still raises the retention size below, which is what bounds Prometheus's disk use.
    data = volumes.persistent_volume_claim(
        f"{name}-prometheus-data",
        namespace,
        f"{PROMETHEUS}-data",
        "monitoring",
        settings.storage,
        config_key="picluster:monitoring.storage",
        platform=platform,
        opts=opts,
    )
    spec = k8s.core.v1.PodSpecArgs(
        service_account_name=PROMETHEUS,
        # Service discovery and the kubelet scrapes authenticate with this token.
        automount_service_account_token=True,
        security_context=pods.restricted_pod_security(NOBODY, fs_group=NOBODY),
        containers=[
            k8s.core.v1.ContainerArgs(
                name=PROMETHEUS,
                image=versions.PROMETHEUS,
                args=[
                    f"--config.file={CONFIG_DIR}/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    f"--storage.tsdb.retention.time={settings.retention}",
                    f"--storage.tsdb.retention.size={retention_size(settings.storage)}",
                ],
                ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=PROMETHEUS_PORT)],
                # Replaying the write-ahead log after a restart takes minutes on an SD card.
                startup_probe=pods.http_probe("/-/ready", PROMETHEUS_PORT, failure_threshold=60),
                readiness_probe=pods.http_probe("/-/ready", PROMETHEUS_PORT),
                liveness_probe=pods.http_probe("/-/healthy", PROMETHEUS_PORT, period_seconds=30),
                resources=pods.resources(PROMETHEUS_RESOURCES),
                security_context=pods.restricted_container_security(),
                volume_mounts=[
                    pods.mount("config", CONFIG_DIR, read_only=True),
                    pods.mount("data", "/prometheus"),
                ],
            )
        ],
        volumes=[
            k8s.core.v1.VolumeArgs(
                name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=PROMETHEUS)
            ),
            k8s.core.v1.VolumeArgs(
                name="data",
                persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                    claim_name=f"{PROMETHEUS}-data"
                ),
            ),
        ],
    )
    pods.deployment(
        f"{name}-prometheus",
        namespace,
        PROMETHEUS,
        "monitoring",
        spec,
        pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[account, data])),
        config=list(files.values()),
        recreate=True,
    )
    return pods.service(
        f"{name}-prometheus", namespace, PROMETHEUS, "monitoring", {"http": PROMETHEUS_PORT}, opts
    )
