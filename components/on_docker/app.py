"""Docker renderer of the app model: one private network, PostgreSQL and its scheduled backups,
the studio's images built on the daemon, each service's migration, the services, the frontend."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pulumi
import pulumi_docker as docker

from components.app_model import AppModel, Role, Workload, release
from components.image_build import LocalDaemon, declare_build
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


MIGRATION_LABEL = "picluster.migration"
"""On a service's containers: the migration container of their release, which exited 0."""


class MigrationFailedError(pulumi.RunError):
    """A service's migration exited non-zero: its new containers are not created."""


def _migrate(
    scope: DockerScope, service: Workload, secrets: StackSecrets, database: docker.Container
) -> docker.Container:
    """The service's migration: one container per release (so a new
    release runs it once and a new replica count none), with the service's image, environment
    and secrets, run to completion after the database is healthy. The release is named as on
    K3s (`app_model.release`): the content tag, or a hash of a pinned reference."""
    assert service.migrate is not None
    spec = replace(
        _spec(service, secrets, replica=None),
        name=f"{service.name}-migrate-{release(service)}",
        aliases=(),
        command=service.migrate,
        health=None,
        run_once=True,
    )
    return run_container(scope, spec, depends_on=[database])


def _migrated(migration: docker.Container) -> pulumi.Output[str]:
    """The migration's container name once it exited 0. Its exit code is an input of the
    service's containers (a label), so they are created (and the old ones replaced) only after
    it; a non-zero exit fails the program there, and the engine, which replaces a container
    only when its new registration arrives and deletes nothing after a failed program, leaves
    the running release as it was."""

    def check(values: list[object]) -> str:
        name, code = values
        if code != 0:
            raise MigrationFailedError(
                f"the migration container {name} exited with code {code}, so the service's "
                f"containers were left as they were; see `docker logs {name}`. Fix the "
                "migration (a changed source is a new release that runs it again), or run this "
                "one again with `pulumi up --replace <its URN>` (README: Database migrations)"
            )
        return str(name)

    return pulumi.Output.all(migration.name, migration.exit_code).apply(check)


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

    # The studio's images, built on the daemon the containers run on: each image waits for its
    # build, and an unchanged folder (the same tag, the same stdin) changes nothing at all.
    for workload in app.builds:
        assert workload.build is not None
        build = declare_build(
            parent,
            f"{name}-{workload.name}-build",
            workload.build,
            workload.image,
            LocalDaemon(docker_host=platform.docker_host),
        )
        scope.built(workload.image, build)

    services: list[docker.Container] = []
    for service in app.services:
        spec = _spec(service, secrets, replica=None)
        if service.migrate is not None:
            migration = _migrate(scope, service, secrets, database)
            spec = replace(spec, labels={MIGRATION_LABEL: _migrated(migration)})
        for replica in range(1, service.replicas + 1):
            services.append(
                run_container(
                    scope,
                    replace(spec, name=f"{service.name}-{replica}"),
                    depends_on=[database],
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
