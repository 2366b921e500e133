"""Alertmanager on K3s: one small pod under Pod Security `restricted`, its configuration in a
ConfigMap, the receivers' secrets in a Secret mounted as files, silences and notification log on
their own small volume, reachable by Prometheus as `alertmanager:9093`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components import alertmanager_config, versions
from components.alertmanager_config import (
    ALERTMANAGER,
    ALERTMANAGER_PORT,
    CONFIG_DIR,
    DATA_DIR,
    SECRET_DIR,
    SecretFile,
)
from components.app_model import Resources
from components.config import AlertsConfig
from components.on_kubernetes import pods, volumes
from components.on_kubernetes.exporters import NOBODY
from components.on_kubernetes.forwards import ALERTMANAGER_FORWARD
from components.on_kubernetes.platform import KubernetesPlatform

COMPONENT: Final = "alerting"

ALERTMANAGER_RESOURCES: Final = Resources(
    cpu_request="10m", memory_request="40Mi", cpu_limit="200m", memory_limit="128Mi"
)
"""Alertmanager holds a handful of alerts and silences: about 39 MiB resident when measured
(0.28.1 on amd64, a few alerts). The request is what it uses; the limit, which reserves nothing,
leaves room for a burst of notifications."""


def render_alertmanager(
    name: str,
    namespace: str,
    alerts: AlertsConfig,
    secret_files: Mapping[SecretFile, pulumi.Output[str]],
    platform: KubernetesPlatform,
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.Service:
    """Alertmanager and its Service, ConfigMap, Secret (when a receiver has one) and volume."""
    config = alertmanager_config.alertmanager_config(alerts, secret_files.keys())
    k8s.core.v1.ConfigMap(
        f"{name}-alertmanager",
        metadata=pods.metadata(ALERTMANAGER, namespace, "config"),
        data={"alertmanager.yml": config},
        opts=opts,
    )
    mounts = [
        pods.mount("config", CONFIG_DIR, read_only=True),
        pods.mount("data", DATA_DIR),
    ]
    pod_volumes = [
        k8s.core.v1.VolumeArgs(
            name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=ALERTMANAGER)
        ),
        k8s.core.v1.VolumeArgs(
            name="data",
            persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                claim_name=f"{ALERTMANAGER}-data"
            ),
        ),
    ]
    if secret_files:
        k8s.core.v1.Secret(
            f"{name}-alertmanager",
            metadata=pods.metadata(ALERTMANAGER, namespace, "secrets"),
            type="Opaque",
            string_data={file.value: value for file, value in secret_files.items()},
            opts=opts,
        )
        # Not a subPath mount: the kubelet updates the files in place when the Secret changes,
        # and Alertmanager reads them at each notification, so a rotated token needs no restart.
        mounts.append(pods.mount("secrets", SECRET_DIR, read_only=True))
        pod_volumes.append(
            k8s.core.v1.VolumeArgs(
                name="secrets",
                secret=k8s.core.v1.SecretVolumeSourceArgs(
                    secret_name=ALERTMANAGER, default_mode=0o440
                ),
            )
        )
    data = volumes.persistent_volume_claim(
        f"{name}-alertmanager-data",
        namespace,
        f"{ALERTMANAGER}-data",
        COMPONENT,
        alerts.storage,
        config_key="picluster:monitoring.alerts.storage",
        platform=platform,
        opts=opts,
    )
    spec = k8s.core.v1.PodSpecArgs(
        automount_service_account_token=False,
        security_context=pods.restricted_pod_security(NOBODY, fs_group=NOBODY),
        containers=[
            k8s.core.v1.ContainerArgs(
                name=ALERTMANAGER,
                image=versions.ALERTMANAGER,
                # Links in notifications open where the laptop reaches it, as on Docker.
                args=alertmanager_config.alertmanager_args(external_url=ALERTMANAGER_FORWARD.url),
                ports=[
                    k8s.core.v1.ContainerPortArgs(name="http", container_port=ALERTMANAGER_PORT)
                ],
                readiness_probe=pods.http_probe("/-/ready", ALERTMANAGER_PORT),
                liveness_probe=pods.http_probe("/-/healthy", ALERTMANAGER_PORT, period_seconds=30),
                resources=pods.resources(ALERTMANAGER_RESOURCES),
                security_context=pods.restricted_container_security(),
                volume_mounts=mounts,
            )
        ],
        volumes=pod_volumes,
    )
    pods.deployment(
        f"{name}-alertmanager",
        namespace,
        ALERTMANAGER,
        COMPONENT,
        spec,
        pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[data])),
        config=[config],
        recreate=True,
    )
    return pods.service(
        f"{name}-alertmanager",
        namespace,
        ALERTMANAGER,
        COMPONENT,
        {"http": ALERTMANAGER_PORT},
        opts,
    )
