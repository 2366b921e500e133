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

from components.alertmanager_config import SecretFile
from components.app_model import AppModel
from components.config import MonitoringConfig
from components.on_kubernetes import exporters, pods
from components.on_kubernetes.alertmanager import render_alertmanager
from components.on_kubernetes.forwards import (
    ALERTMANAGER_FORWARD,
    PROMETHEUS_FORWARD,
    forward_command,
)
from components.on_kubernetes.grafana import SUB_PATH, render_grafana
from components.on_kubernetes.platform import KubernetesPlatform
from components.on_kubernetes.prometheus import PROMETHEUS, PROMETHEUS_PORT, render_prometheus
from components.secrets import StackSecrets


@dataclass(frozen=True, kw_only=True)
class KubernetesMonitoring:
    """What the Kubernetes rendering of monitoring hands back."""

    grafana_url: pulumi.Output[str]
    """Grafana through the ingress, on the domain or the first server's address."""
    prometheus_url: pulumi.Output[str]
    """Prometheus on the laptop while `forward_command` runs (it has no ingress: no login)."""
    alertmanager_url: pulumi.Output[str]
    """Alertmanager on the laptop, likewise."""
    forward_command: pulumi.Output[str]
    """`bin/picluster forward -s STACK`, which port-forwards the three to 127.0.0.1."""


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

    The ingress answers on any host (every Pi's address, and any name pointed at one); the
    domain, or without one `platform.public_address` (the first server's address), names the
    returned URL and Grafana's own absolute links.
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
        prometheus_url=pulumi.Output.from_input(PROMETHEUS_FORWARD.url),
        alertmanager_url=pulumi.Output.from_input(ALERTMANAGER_FORWARD.url),
        forward_command=pulumi.Output.from_input(forward_command(pulumi.get_stack())),
    )
