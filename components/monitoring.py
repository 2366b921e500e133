"""Monitoring: Prometheus, its exporters and probes, Alertmanager and Grafana, for the app and its
hosts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi

from components.alertmanager_config import SecretFile
from components.app_model import AppModel
from components.config import MonitoringConfig
from components.on_docker import monitoring as on_docker
from components.on_docker.containers import DockerPlatform
from components.on_kubernetes import monitoring as on_kubernetes
from components.on_kubernetes.platform import KubernetesPlatform
from components.secrets import StackSecrets


@dataclass(frozen=True, kw_only=True)
class MonitoringArgs:
    """Inputs of Monitoring."""

    app: AppModel
    """The app whose endpoints are probed and whose services are scraped."""
    secrets: StackSecrets
    """Grafana's admin password and the database password for postgres-exporter."""
    settings: MonitoringConfig
    """Retention, scrape interval, storage, alert receivers."""
    alert_secrets: Mapping[SecretFile, pulumi.Output[str]] = field(default_factory=dict)
    """The alert receivers' secrets (URLs with tokens, tokens, SMTP password), by file."""
    platform: DockerPlatform | KubernetesPlatform
    """Where monitoring runs; its provider arrives through `ResourceOptions(providers=[...])`."""
    network_name: pulumi.Input[str] | None = None
    """Docker: the app's network, joined to reach every workload by name."""


class Monitoring(pulumi.ComponentResource):
    """CPU, memory, network latency and availability of the game, charted and alerted on."""

    grafana_url: pulumi.Output[str]
    """Grafana, with the picluster dashboards."""
    prometheus_url: pulumi.Output[str]
    """Prometheus, with the alert rules."""
    alertmanager_url: pulumi.Output[str]
    """Alertmanager: the alerts firing now, silences, where each was sent."""
    forward_command: pulumi.Output[str] | None
    """K3s: the command that forwards Prometheus, Alertmanager and Grafana to the laptop, where
    `prometheus_url` and `alertmanager_url` point; None on Docker (published ports)."""

    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("picluster:index:Monitoring", name, None, opts)
        self.forward_command = None
        if isinstance(args.platform, DockerPlatform):
            if args.network_name is None:
                raise ValueError("Monitoring on Docker needs the app's network_name")
            rendered = on_docker.render_monitoring(
                self,
                name,
                args.app,
                args.secrets,
                args.settings,
                args.platform,
                args.network_name,
                args.alert_secrets,
            )
        else:
            rendered = on_kubernetes.render_monitoring(
                self, name, args.app, args.secrets, args.settings, args.platform, args.alert_secrets
            )
            self.forward_command = rendered.forward_command
        self.grafana_url = rendered.grafana_url
        self.prometheus_url = rendered.prometheus_url
        self.alertmanager_url = rendered.alertmanager_url
        self.register_outputs(
            {
                "grafana_url": self.grafana_url,
                "prometheus_url": self.prometheus_url,
                "alertmanager_url": self.alertmanager_url,
            }
        )
