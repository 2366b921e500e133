"""Alertmanager on Docker: one container on the app's network, its configuration uploaded as a
file, the receivers' secrets as secret uploads, silences and notification log on a volume."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_docker as docker

from components import alertmanager_config, versions
from components.alertmanager_config import ALERTMANAGER, ALERTMANAGER_PORT, DATA_DIR, SecretFile
from components.config import AlertsConfig
from components.on_docker.containers import (
    ContainerSpec,
    DockerPlatform,
    DockerScope,
    published,
    run_container,
)


def run_alertmanager(
    scope: DockerScope,
    name: str,
    alerts: AlertsConfig,
    secret_files: Mapping[SecretFile, pulumi.Output[str]],
    platform: DockerPlatform,
) -> docker.Container:
    """Alertmanager, published on `platform.alertmanager_port` of the publish address."""
    data = docker.Volume(
        f"{name}-alertmanager-data",
        name=f"{platform.name_prefix}-alertmanager-data",
        opts=scope.child_opts(),
    )
    address = platform.publish_address
    return run_container(
        scope,
        ContainerSpec(
            name=ALERTMANAGER,
            image=versions.ALERTMANAGER,
            aliases=(ALERTMANAGER,),
            command=alertmanager_config.alertmanager_args(
                external_url=f"http://{address}:{platform.alertmanager_port}/"
            ),
            files={
                alertmanager_config.CONFIG_FILE: alertmanager_config.alertmanager_config(
                    alerts, secret_files.keys()
                )
            },
            secret_files={file.path: value for file, value in secret_files.items()},
            health=[
                "wget",
                "-q",
                "-O",
                "/dev/null",
                f"http://127.0.0.1:{ALERTMANAGER_PORT}/-/ready",
            ],
            ports=[published(ALERTMANAGER_PORT, platform.alertmanager_port, address)],
            volumes=[docker.ContainerVolumeArgs(volume_name=data.name, container_path=DATA_DIR)],
        ),
    )
