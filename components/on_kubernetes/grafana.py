"""Grafana on K3s: provisioned with the Prometheus datasource and the picluster dashboards,
served under `/grafana` behind the cluster's ingress.
"""

from __future__ import annotations

from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components import monitoring_config, versions
from components.app_model import Resources
from components.config import MonitoringConfig
from components.on_kubernetes import pods, volumes
from components.on_kubernetes.platform import KubernetesPlatform
from components.secrets import StackSecrets

GRAFANA: Final = "grafana"
GRAFANA_PORT: Final = 3000
GRAFANA_UID: Final = 472
"""The grafana user of the official image."""
SUB_PATH: Final = "/grafana"
SECRET_DIR: Final = "/run/secrets/grafana"  # noqa: S105 - a path, not a value
PROVISIONING_DIR: Final = "/etc/grafana/provisioning"

GRAFANA_RESOURCES: Final = Resources(
    cpu_request="50m", memory_request="128Mi", cpu_limit="500m", memory_limit="256Mi"
)


def _dashboard_files() -> dict[str, str]:
    shared = monitoring_config.dashboards()
    kubernetes = monitoring_config.kubernetes_dashboards()
    clashing = set(shared) & set(kubernetes)
    if clashing:
        raise ValueError(f"dashboard file names used twice: {sorted(clashing)}")
    return {**shared, **kubernetes}


def render_grafana(
    name: str,
    namespace: str,
    secrets: StackSecrets,
    settings: MonitoringConfig,
    platform: KubernetesPlatform,
    prometheus_url: str,
    server_domain: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> k8s.networking.v1.Ingress:
    """Grafana, its volume, admin password and provisioning, and the Ingress to it."""
    k8s.core.v1.Secret(
        f"{name}-grafana",
        metadata=pods.metadata(GRAFANA, namespace, "secrets"),
        type="Opaque",
        string_data={"admin-password": secrets.grafana_admin_password},
        opts=opts,
    )
    provisioning = {
        "datasources.yml": monitoring_config.grafana_datasource(prometheus_url),
        "dashboards.yml": monitoring_config.grafana_dashboard_provider(),
    }
    k8s.core.v1.ConfigMap(
        f"{name}-grafana-provisioning",
        metadata=pods.metadata(f"{GRAFANA}-provisioning", namespace, "config"),
        data=provisioning,
        opts=opts,
    )
    dashboards = _dashboard_files()
    k8s.core.v1.ConfigMap(
        f"{name}-grafana-dashboards",
        metadata=pods.metadata(f"{GRAFANA}-dashboards", namespace, "config"),
        data=dashboards,
        opts=opts,
    )
    start_script = monitoring_config.grafana_start_script()
    k8s.core.v1.ConfigMap(
        f"{name}-grafana-start",
        metadata=pods.metadata(f"{GRAFANA}-start", namespace, "config"),
        data={"grafana-start.sh": start_script},
        opts=opts,
    )
    data = volumes.persistent_volume_claim(
        f"{name}-grafana-data",
        namespace,
        f"{GRAFANA}-data",
        "dashboards",
        settings.grafana_storage,
        config_key="picluster:monitoring.grafanaStorage",
        platform=platform,
        opts=opts,
    )
    env: dict[str, pulumi.Input[str]] = {
        "GF_SECURITY_ADMIN_USER": "admin",
        "GF_SECURITY_ADMIN_PASSWORD__FILE": f"{SECRET_DIR}/admin-password",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
        "GF_SERVER_DOMAIN": server_domain,
        "GF_SERVER_ROOT_URL": f"%(protocol)s://%(domain)s{SUB_PATH}/",
        "GF_SERVER_SERVE_FROM_SUB_PATH": "true",
        # The image also logs to /var/log/grafana, which the read-only root filesystem refuses.
        "GF_LOG_MODE": "console",
    }
    provisioning_volume = "provisioning"
    spec = k8s.core.v1.PodSpecArgs(
        automount_service_account_token=False,
        security_context=pods.restricted_pod_security(GRAFANA_UID, fs_group=GRAFANA_UID),
        containers=[
            k8s.core.v1.ContainerArgs(
                name=GRAFANA,
                image=versions.GRAFANA,
                command=["sh", monitoring_config.GRAFANA_START_PATH],
                env=[k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in env.items()],
                ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=GRAFANA_PORT)],
                # Database migrations on first start take minutes on an SD card.
                startup_probe=pods.http_probe("/api/health", GRAFANA_PORT, failure_threshold=30),
                readiness_probe=pods.http_probe("/api/health", GRAFANA_PORT),
                liveness_probe=pods.http_probe("/api/health", GRAFANA_PORT, period_seconds=30),
                resources=pods.resources(GRAFANA_RESOURCES),
                security_context=pods.restricted_container_security(),
                volume_mounts=[
                    pods.mount("data", "/var/lib/grafana"),
                    pods.mount("tmp", "/tmp"),
                    k8s.core.v1.VolumeMountArgs(
                        name=provisioning_volume,
                        mount_path=f"{PROVISIONING_DIR}/datasources/picluster.yml",
                        sub_path="datasources.yml",
                        read_only=True,
                    ),
                    k8s.core.v1.VolumeMountArgs(
                        name=provisioning_volume,
                        mount_path=f"{PROVISIONING_DIR}/dashboards/picluster.yml",
                        sub_path="dashboards.yml",
                        read_only=True,
                    ),
                    pods.mount(
                        "dashboards", monitoring_config.GRAFANA_DASHBOARDS_DIR, read_only=True
                    ),
                    pods.mount("admin-password", SECRET_DIR, read_only=True),
                    k8s.core.v1.VolumeMountArgs(
                        name="start",
                        mount_path=monitoring_config.GRAFANA_START_PATH,
                        sub_path="grafana-start.sh",
                        read_only=True,
                    ),
                ],
            )
        ],
        volumes=[
            k8s.core.v1.VolumeArgs(
                name="data",
                persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                    claim_name=f"{GRAFANA}-data"
                ),
            ),
            pods.scratch_volume("tmp"),
            k8s.core.v1.VolumeArgs(
                name=provisioning_volume,
                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=f"{GRAFANA}-provisioning"),
            ),
            k8s.core.v1.VolumeArgs(
                name="dashboards",
                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=f"{GRAFANA}-dashboards"),
            ),
            k8s.core.v1.VolumeArgs(
                name="admin-password",
                secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=GRAFANA, default_mode=0o440),
            ),
            k8s.core.v1.VolumeArgs(
                name="start",
                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=f"{GRAFANA}-start"),
            ),
        ],
    )
    pods.deployment(
        f"{name}-grafana",
        namespace,
        GRAFANA,
        "dashboards",
        spec,
        pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[data])),
        # Datasources are read at start only; dashboards are re-read, but a restart is cheap.
        config=[start_script, *provisioning.values(), *dashboards.values()],
        # The admin password is set at start only (grafana-start.sh): a new one restarts Grafana.
        secrets=[secrets.grafana_admin_password],
        recreate=True,
    )
    pods.service(f"{name}-grafana", namespace, GRAFANA, "dashboards", {"http": GRAFANA_PORT}, opts)
    return k8s.networking.v1.Ingress(
        f"{name}-grafana",
        metadata=pods.metadata(GRAFANA, namespace, "dashboards"),
        spec=k8s.networking.v1.IngressSpecArgs(
            ingress_class_name=platform.ingress_class,
            rules=[
                # No host, as the game's Ingress: Grafana answers on any Pi's address too.
                k8s.networking.v1.IngressRuleArgs(
                    http=k8s.networking.v1.HTTPIngressRuleValueArgs(
                        paths=[
                            k8s.networking.v1.HTTPIngressPathArgs(
                                path=SUB_PATH,
                                path_type="Prefix",
                                backend=k8s.networking.v1.IngressBackendArgs(
                                    service=k8s.networking.v1.IngressServiceBackendArgs(
                                        name=GRAFANA,
                                        port=k8s.networking.v1.ServiceBackendPortArgs(
                                            number=GRAFANA_PORT
                                        ),
                                    )
                                ),
                            )
                        ]
                    ),
                )
            ],
        ),
        opts=opts,
    )
