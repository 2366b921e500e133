"""Kubernetes renderer of monitoring: Prometheus, Alertmanager, Grafana and the exporters as plain
objects on K3s (no operator, no Helm chart: a Raspberry Pi has no memory to spare for them).

Two namespaces: `monitoring` under Pod Security `restricted` for everything that needs no host
access, and a `privileged` one for node-exporter alone, which reads each Pi's /proc, /sys and
filesystems. Prometheus scrapes with the same job names and labels as on Docker, so the shared
alert rules and dashboards work unchanged; Grafana answers under `/grafana` on the ingress.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi

from components.alertmanager_config import ALERTMANAGER, ALERTMANAGER_PORT, SecretFile
from components.app_model import AppModel
from components.config import MonitoringConfig
from components.on_kubernetes import exporters, pods
from components.on_kubernetes.alertmanager import render_alertmanager
from components.on_kubernetes.grafana import SUB_PATH, render_grafana
from components.on_kubernetes.platform import KubernetesPlatform
from components.on_kubernetes.prometheus import PROMETHEUS, PROMETHEUS_PORT, render_prometheus
from components.secrets import StackSecrets


@dataclass(frozen=True, kw_only=True)
class KubernetesMonitoring:
    """What the Kubernetes rendering of monitoring hands back."""

    grafana_url: pulumi.Output[str]
    """Grafana through the ingress."""
    prometheus_url: pulumi.Output[str]
    """Prometheus inside the cluster (it has no ingress: reach it with `kubectl port-forward`)."""
    alertmanager_url: pulumi.Output[str]
    """Alertmanager inside the cluster, likewise without an ingress."""


def render_monitoring(
    parent: pulumi.Resource,
    name: str,
    app: AppModel,
    secrets: StackSecrets,
    settings: MonitoringConfig,
    platform: KubernetesPlatform,
    alert_secrets: Mapping[SecretFile, pulumi.Output[str]] | None = None,
) -> KubernetesMonitoring:
    """Declare monitoring's Kubernetes objects as children of `parent`.

    Without `platform.domain`, the ingress answers on `platform.public_address` (the first
    server's address): it makes Grafana's own links and the returned URL absolute.
    """
    monitoring_ns = platform.monitoring_namespace
    monitoring = pods.namespace(parent, f"{name}-namespace", monitoring_ns, "restricted")
    node_ns = pods.namespace(
        parent, f"{name}-node-namespace", platform.node_exporter_namespace, "privileged"
    )
    in_monitoring = pulumi.ResourceOptions(parent=parent, depends_on=[monitoring])

    exporters.render_node_exporter(
        name,
        platform.node_exporter_namespace,
        pulumi.ResourceOptions(parent=parent, depends_on=[node_ns]),
    )
    exporters.render_kube_state_metrics(name, monitoring_ns, in_monitoring)
    exporters.render_blackbox_exporter(name, monitoring_ns, platform.domain, in_monitoring)
    exporters.render_postgres_exporter(name, monitoring_ns, app, secrets, platform, in_monitoring)
    render_alertmanager(
        name, monitoring_ns, settings.alerts, alert_secrets or {}, platform, in_monitoring
    )
    render_prometheus(name, monitoring_ns, app, settings, platform, in_monitoring)

    host: pulumi.Input[str] = (
        platform.domain if platform.domain is not None else platform.public_address
    )
    render_grafana(
        name,
        monitoring_ns,
        secrets,
        settings,
        platform,
        f"http://{PROMETHEUS}:{PROMETHEUS_PORT}",
        host,
        in_monitoring,
    )
    return KubernetesMonitoring(
        grafana_url=pulumi.Output.format("http://{0}{1}/", host, SUB_PATH),
        prometheus_url=pulumi.Output.from_input(
            f"http://{PROMETHEUS}.{monitoring_ns}.svc:{PROMETHEUS_PORT}"
        ),
        alertmanager_url=pulumi.Output.from_input(
            f"http://{ALERTMANAGER}.{monitoring_ns}.svc:{ALERTMANAGER_PORT}"
        ),
    )
