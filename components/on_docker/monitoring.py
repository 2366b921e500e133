"""Docker renderer of monitoring: Prometheus, Alertmanager, Grafana and the exporters, on the app's
network."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker
import yaml

from components import alertmanager_config, monitoring_config, versions
from components.alertmanager_config import SecretFile
from components.app_model import AppModel
from components.config import MonitoringConfig
from components.on_docker.alertmanager import run_alertmanager
from components.on_docker.containers import (
    ContainerSpec,
    DockerPlatform,
    DockerScope,
    published,
    run_container,
)
from components.secrets import StackSecrets

PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
NODE_EXPORTER = "node-exporter:9100"
CADVISOR = "cadvisor:8080"
POSTGRES_EXPORTER = "postgres-exporter:9187"
BLACKBOX = "blackbox-exporter:9115"


@dataclass(frozen=True, kw_only=True)
class DockerMonitoring:
    """What the Docker rendering of monitoring hands back."""

    grafana_url: pulumi.Output[str]
    prometheus_url: pulumi.Output[str]
    alertmanager_url: pulumi.Output[str]


def prometheus_config(app: AppModel, settings: MonitoringConfig) -> str:
    """prometheus.yml for the Docker target: static targets on the shared network."""
    jobs: list[dict[str, object]] = [
        {
            "job_name": "prometheus",
            "static_configs": [{"targets": [f"localhost:{PROMETHEUS_PORT}"]}],
        },
        {"job_name": "node", "static_configs": [{"targets": [NODE_EXPORTER]}]},
        {"job_name": "cadvisor", "static_configs": [{"targets": [CADVISOR]}]},
        {"job_name": "postgres", "static_configs": [{"targets": [POSTGRES_EXPORTER]}]},
        monitoring_config.probe_scrape_job(monitoring_config.probe_targets(app), BLACKBOX),
    ]
    with_metrics = [s for s in app.services if s.metrics_path is not None]
    if with_metrics:
        # DNS service discovery finds every replica behind a service's network alias.
        jobs.append(
            {
                "job_name": "services",
                "dns_sd_configs": [
                    {"names": [s.name], "type": "A", "port": s.port} for s in with_metrics
                ],
                "relabel_configs": [
                    rule
                    for s in with_metrics
                    for rule in (
                        {
                            "source_labels": ["__meta_dns_name"],
                            "regex": s.name,
                            "target_label": "service",
                            "replacement": s.name,
                        },
                        {
                            "source_labels": ["__meta_dns_name"],
                            "regex": s.name,
                            "target_label": "__metrics_path__",
                            "replacement": s.metrics_path,
                        },
                    )
                ],
            }
        )
    config = {
        "global": {
            "scrape_interval": settings.scrape_interval,
            "evaluation_interval": settings.scrape_interval,
        },
        "rule_files": ["/etc/prometheus/alerts.yml"],
        "alerting": alertmanager_config.prometheus_alerting(
            f"{alertmanager_config.ALERTMANAGER}:{alertmanager_config.ALERTMANAGER_PORT}"
        ),
        "scrape_configs": jobs,
    }
    return yaml.safe_dump(config, sort_keys=False)


def render_monitoring(
    parent: pulumi.Resource,
    name: str,
    app: AppModel,
    secrets: StackSecrets,
    settings: MonitoringConfig,
    platform: DockerPlatform,
    network_name: pulumi.Input[str],
    alert_secrets: Mapping[SecretFile, pulumi.Output[str]] | None = None,
) -> DockerMonitoring:
    """Declare Prometheus, Grafana and the exporters as children of `parent`."""
    scope = DockerScope(
        parent=parent, component=name, name_prefix=platform.name_prefix, network_name=network_name
    )
    opts = pulumi.ResourceOptions(parent=parent)
    address = platform.publish_address

    host_readonly = [
        docker.ContainerVolumeArgs(host_path=host, container_path=inside, read_only=True)
        for host, inside in (("/proc", "/host/proc"), ("/sys", "/host/sys"), ("/", "/rootfs"))
    ]
    exporters = [
        run_container(
            scope,
            ContainerSpec(
                name="node-exporter",
                image=versions.NODE_EXPORTER,
                aliases=("node-exporter",),
                command=[
                    "--path.procfs=/host/proc",
                    "--path.sysfs=/host/sys",
                    "--path.rootfs=/rootfs",
                    "--collector.filesystem.mount-points-exclude=^/(dev|proc|sys|run|var/lib/docker/.+)($|/)",
                ],
                volumes=host_readonly,
                pid_mode="host",
            ),
        ),
        run_container(
            scope,
            ContainerSpec(
                name="cadvisor",
                image=versions.CADVISOR,
                aliases=("cadvisor",),
                command=[
                    "--docker_only=true",
                    "--housekeeping_interval=30s",
                    "--store_container_labels=false",
                    "--disable_metrics=percpu,sched,tcp,udp,disk,referenced_memory,hugetlb",
                ],
                volumes=[
                    docker.ContainerVolumeArgs(host_path=h, container_path=c, read_only=True)
                    for h, c in (
                        ("/", "/rootfs"),
                        ("/var/run", "/var/run"),
                        ("/sys", "/sys"),
                        ("/var/lib/docker", "/var/lib/docker"),
                    )
                ],
            ),
        ),
        run_container(
            scope,
            ContainerSpec(
                name="postgres-exporter",
                image=versions.POSTGRES_EXPORTER,
                aliases=("postgres-exporter",),
                env={
                    "DATA_SOURCE_URI": f"{app.db.host}:{app.db.port}/{app.db.name}?sslmode=disable",
                    "DATA_SOURCE_USER": app.db.user,
                    "DATA_SOURCE_PASS_FILE": "/run/secrets/db-password",
                },
                secret_files={"/run/secrets/db-password": secrets.db_password},
            ),
        ),
        run_container(
            scope,
            ContainerSpec(
                name="blackbox-exporter",
                image=versions.BLACKBOX_EXPORTER,
                aliases=("blackbox-exporter",),
                files={"/etc/blackbox_exporter/config.yml": monitoring_config.blackbox_config()},
            ),
        ),
    ]

    alertmanager = run_alertmanager(scope, name, settings.alerts, alert_secrets or {}, platform)
    prometheus_data = docker.Volume(
        f"{name}-prometheus-data", name=f"{platform.name_prefix}-prometheus-data", opts=opts
    )
    prometheus = run_container(
        scope,
        ContainerSpec(
            name="prometheus",
            image=versions.PROMETHEUS,
            aliases=("prometheus",),
            command=[
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                f"--storage.tsdb.retention.time={settings.retention}",
                # Whichever of time and size is reached first drops the oldest blocks.
                f"--storage.tsdb.retention.size={monitoring_config.retention_size(settings.storage)}",
                "--web.enable-lifecycle",
            ],
            files={
                "/etc/prometheus/prometheus.yml": prometheus_config(app, settings),
                "/etc/prometheus/alerts.yml": monitoring_config.alert_rules(),
            },
            health=["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"],
            ports=[published(PROMETHEUS_PORT, platform.prometheus_port, address)],
            volumes=[
                docker.ContainerVolumeArgs(
                    volume_name=prometheus_data.name, container_path="/prometheus"
                )
            ],
        ),
        depends_on=[*exporters, alertmanager],
    )

    grafana_data = docker.Volume(
        f"{name}-grafana-data", name=f"{platform.name_prefix}-grafana-data", opts=opts
    )
    dashboards = {
        f"{monitoring_config.GRAFANA_DASHBOARDS_DIR}/{file}": content
        for file, content in monitoring_config.dashboards().items()
    }
    run_container(
        scope,
        ContainerSpec(
            name="grafana",
            image=versions.GRAFANA,
            aliases=("grafana",),
            # Resets an existing database's admin password from the secret file, then /run.sh.
            entrypoint=["sh", monitoring_config.GRAFANA_START_PATH],
            env={
                "GF_SECURITY_ADMIN_USER": "admin",
                "GF_SECURITY_ADMIN_PASSWORD__FILE": "/run/secrets/grafana-admin-password",
                "GF_USERS_ALLOW_SIGN_UP": "false",
                "GF_ANALYTICS_REPORTING_ENABLED": "false",
                "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            },
            files={
                monitoring_config.GRAFANA_START_PATH: monitoring_config.grafana_start_script(),
                "/etc/grafana/provisioning/datasources/picluster.yml": (
                    monitoring_config.grafana_datasource(f"http://prometheus:{PROMETHEUS_PORT}")
                ),
                "/etc/grafana/provisioning/dashboards/picluster.yml": (
                    monitoring_config.grafana_dashboard_provider()
                ),
                **dashboards,
            },
            secret_files={"/run/secrets/grafana-admin-password": secrets.grafana_admin_password},
            health=["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{GRAFANA_PORT}/api/health"],
            ports=[published(GRAFANA_PORT, platform.grafana_port, address)],
            volumes=[
                docker.ContainerVolumeArgs(
                    volume_name=grafana_data.name, container_path="/var/lib/grafana"
                )
            ],
        ),
        depends_on=[prometheus],
    )

    return DockerMonitoring(
        grafana_url=pulumi.Output.from_input(f"http://{address}:{platform.grafana_port}/"),
        prometheus_url=pulumi.Output.from_input(f"http://{address}:{platform.prometheus_port}/"),
        alertmanager_url=pulumi.Output.from_input(
            f"http://{address}:{platform.alertmanager_port}/"
        ),
    )
