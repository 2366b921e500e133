"""Docker renderer of the app model: one private network, PostgreSQL and its scheduled backups,
the services, the frontend."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pulumi
import pulumi_docker as docker

from components.app_model import AppModel, Role, Workload
from components.nginx import DOCKER_RESOLVER, nginx_conf
from components.on_docker.backup import render_backup
from components.on_docker.containers import (
    ContainerSpec,
    DockerPlatform,
    DockerScope,
    published,
    run_container,
)
from components.secrets import StackSecrets


@dataclass(frozen=True, kw_only=True)
class DockerApp:
    """What the Docker rendering of the app hands back."""

    network_name: pulumi.Output[str]
    frontend_url: pulumi.Output[str]
    database: docker.Container


def _spec(workload: Workload, secrets: StackSecrets, *, replica: int | None) -> ContainerSpec:
    suffix = workload.name if replica is None else f"{workload.name}-{replica}"
    return ContainerSpec(
        name=suffix,
        image=workload.image,
        aliases=(workload.name,),
        env=workload.env,
        secret_env={k: secrets.get(s) for k, s in workload.secret_env.items()},
        files=workload.files,
        secret_files={p: secrets.get(s) for p, s in workload.secret_files.items()},
        command=workload.command,
        health=workload.probe.command,
        # The official nginx and postgres images start as root and drop privileges themselves;
        # Node.js services run as their own non-root user from the start.
        user=str(workload.run_as_user)
        if workload.role is Role.SERVICE and workload.run_as_user is not None
        else None,
    )


def render_app(
    parent: pulumi.Resource,
    name: str,
    app: AppModel,
    secrets: StackSecrets,
    platform: DockerPlatform,
) -> DockerApp:
    """Declare the app's Docker resources as children of `parent`."""
    network = docker.Network(
        f"{name}-network",
        name=f"{platform.name_prefix}-app",
        driver="bridge",
        opts=pulumi.ResourceOptions(parent=parent),
    )
    scope = DockerScope(
        parent=parent,
        component=name,
        name_prefix=platform.name_prefix,
        network_name=network.name,
    )

    # The data outlives the container and `pulumi destroy`: deleting the game's database is
    # a deliberate `docker volume rm`, never a side effect of an update.
    db = app.database
    volume = docker.Volume(
        f"{name}-db-data",
        name=f"{platform.name_prefix}-db-data",
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True),
    )
    database = run_container(
        scope,
        replace(
            _spec(db, secrets, replica=None),
            volumes=[
                docker.ContainerVolumeArgs(volume_name=volume.name, container_path=db.data_path)
            ],
        ),
    )

    if app.backup is not None:
        render_backup(scope, app, app.backup, secrets, database=database)

    services: list[docker.Container] = []
    for service in app.services:
        for replica in range(1, service.replicas + 1):
            services.append(
                run_container(
                    scope, _spec(service, secrets, replica=replica), depends_on=[database]
                )
            )

    frontend = app.frontend
    # Only one container can own the published port: on Docker the frontend runs once.
    frontend_files = {
        **frontend.files,
        "/etc/nginx/conf.d/default.conf": nginx_conf(app, resolver=DOCKER_RESOLVER),
    }
    frontend_spec = replace(
        _spec(frontend, secrets, replica=None),
        files=frontend_files,
        ports=[published(frontend.port, platform.frontend_port, platform.publish_address)],
    )
    run_container(scope, frontend_spec, depends_on=services)

    return DockerApp(
        network_name=network.name,
        frontend_url=pulumi.Output.from_input(
            f"http://{platform.publish_address}:{platform.frontend_port}/"
        ),
        database=database,
    )
