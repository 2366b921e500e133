"""Shared building blocks of the Docker renderers: pinned images and containers.

Files reach containers as `uploads` (copied in before the container starts), not bind mounts, so
the same program works against a remote daemon (`docker.host: ssh://pi@...`) where this
checkout's files do not exist. Secret files are uploads whose content is a secret Output, so the
value stays encrypted in the state and never appears in `docker inspect`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker


@dataclass(frozen=True, kw_only=True)
class DockerPlatform:
    """Where and how the Docker target publishes what it runs."""

    publish_address: str
    """Host address published ports bind to."""
    frontend_port: int
    grafana_port: int
    prometheus_port: int
    alertmanager_port: int
    name_prefix: str
    """Prefix of container, network and volume names on the daemon, e.g. `picluster-local`."""
    docker_host: str = "unix:///var/run/docker.sock"
    """The daemon (`docker.host`): the studio's images are built on it."""


@dataclass(kw_only=True)
class DockerScope:
    """A component's place on the daemon: its parent, network, pulled and built images."""

    parent: pulumi.Resource
    component: str
    """The component's name; child resource names derive from it."""
    name_prefix: str
    network_name: pulumi.Input[str]
    _images: dict[str, docker.RemoteImage] = field(default_factory=dict)
    _builds: dict[str, pulumi.Resource] = field(default_factory=dict)

    def built(self, ref: str, build: pulumi.Resource) -> None:
        """Mark `ref` as built on the daemon by `build`, before `image(ref)` is first asked for:
        its image then waits for the build, and is found there without a pull."""
        if ref in self._images:
            raise ValueError(f"{ref} was declared before its build")
        self._builds[ref] = build

    def child_opts(self, *, depends_on: Sequence[pulumi.Resource] = ()) -> pulumi.ResourceOptions:
        """Options for a child: parented here, so it inherits the component's provider."""
        return pulumi.ResourceOptions(parent=self.parent, depends_on=list(depends_on))

    def image(self, ref: str) -> docker.RemoteImage:
        """The pinned image `ref`, pulled once per component however many containers use it.

        A built image (`built`) is the same resource after its build: the provider looks the
        name up on the daemon first and pulls only what it does not find (kreuzwerker
        terraform-provider-docker v4.5.0, resource_docker_image_funcs.go `findImage`), so a
        built image is never pulled. `keep_locally`: a replaced or deleted image stays on the
        daemon (a rollback finds it; `docker image prune` removes old ones).
        """
        if ref not in self._images:
            slug = re.sub(r"[^a-z0-9]+", "-", ref.lower()).strip("-")
            build = self._builds.get(ref)
            self._images[ref] = docker.RemoteImage(
                f"{self.component}-image-{slug}",
                name=ref,
                keep_locally=True,
                opts=self.child_opts(depends_on=[build] if build is not None else ()),
            )
        return self._images[ref]


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    """One container, in the terms the Docker renderers need."""

    name: str
    """Resource and container name suffix, unique within the component."""
    image: str
    aliases: tuple[str, ...]
    """DNS names on the network."""
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    secret_files: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    command: Sequence[str] | None = None
    entrypoint: Sequence[str] | None = None
    """Replaces the image's ENTRYPOINT when set (`command` then gives its arguments)."""
    health: Sequence[str] | None = None
    """Health check command (exec form) run inside the container."""
    ports: Sequence[docker.ContainerPortArgs] = ()
    volumes: Sequence[docker.ContainerVolumeArgs] = ()
    user: str | None = None
    pid_mode: str | None = None
    wait_healthy: bool = True
    """Make `pulumi up` wait until the health check passes, so dependants start after it."""
    labels: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    run_once: bool = False
    """A one-shot container: never restarted, and `pulumi up` waits until it exited (its
    `exit_code` output then says how)."""


def run_container(
    scope: DockerScope, spec: ContainerSpec, *, depends_on: Sequence[pulumi.Resource] = ()
) -> docker.Container:
    """Declare the container described by `spec` on the scope's network."""
    image = scope.image(spec.image)
    env: list[pulumi.Input[str]] = [f"{k}={v}" for k, v in spec.env.items()]
    env += [pulumi.Output.concat(k, "=", v) for k, v in spec.secret_env.items()]
    uploads = [docker.ContainerUploadArgs(file=p, content=c) for p, c in spec.files.items()]
    uploads += [docker.ContainerUploadArgs(file=p, content=c) for p, c in spec.secret_files.items()]
    healthcheck = None
    if spec.health is not None:
        healthcheck = docker.ContainerHealthcheckArgs(
            tests=["CMD", *spec.health],
            interval="10s",
            timeout="5s",
            retries=6,
            start_period="20s",
        )
    return docker.Container(
        f"{scope.component}-{spec.name}",
        name=f"{scope.name_prefix}-{spec.name}",
        image=image.image_id,
        envs=env,
        uploads=uploads,
        command=list(spec.command) if spec.command is not None else None,
        entrypoints=list(spec.entrypoint) if spec.entrypoint is not None else None,
        healthcheck=healthcheck,
        networks_advanced=[
            docker.ContainerNetworksAdvancedArgs(
                name=scope.network_name, aliases=list(spec.aliases)
            )
        ],
        ports=list(spec.ports),
        volumes=list(spec.volumes),
        user=spec.user,
        pid_mode=spec.pid_mode,
        labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in spec.labels.items()]
        or None,
        # One-shot: the provider's create attaches and waits until the container is no longer
        # running (resource_docker_container_funcs.go, `attach`: ContainerWait
        # WaitConditionNotRunning), then reads its exit code into `exit_code`; `must_run` false
        # so an exited container is no drift to restart. (Given only then: the other
        # containers' inputs stay as they were.)
        restart="no" if spec.run_once else "unless-stopped",
        must_run=False if spec.run_once else None,
        attach=True if spec.run_once else None,
        logs=True if spec.run_once else None,
        wait=spec.wait_healthy and healthcheck is not None and not spec.run_once,
        wait_timeout=180,
        log_driver="json-file",
        # Bounded logs: a Pi's SD card must not fill up with container output.
        log_opts={"max-size": "10m", "max-file": "3"},
        opts=pulumi.ResourceOptions.merge(
            scope.child_opts(depends_on=depends_on),
            # A migration's output may quote its database URL.
            pulumi.ResourceOptions(additional_secret_outputs=["containerLogs"])
            if spec.run_once
            else None,
        ),
    )


def published(internal: int, external: int, address: str) -> docker.ContainerPortArgs:
    """A TCP port published on `address` only."""
    return docker.ContainerPortArgs(internal=internal, external=external, ip=address)
