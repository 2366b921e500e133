"""From the validated stack config to each component's Args: the wiring `__main__.py` uses.

Nothing here declares a resource; it only decides what each component is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pulumi

from components.app_model import ImageSource
from components.config import (
    NodeConfig,
    NodeRole,
    Settings,
    SnapshotsConfig,
    StackConfig,
    Target,
)
from components.datastore_snapshots import DatastoreSnapshots, S3Target
from components.image_build import RegistryPush, TunnelPush
from components.k3s_cluster import ClusterNode, K3sClusterArgs
from components.on_docker.containers import DockerPlatform
from components.on_kubernetes.platform import KubernetesPlatform
from components.pi_node import PiNode, PiNodeArgs, SshTarget
from components.registries import REGISTRY_NAME, RegistryTrust, registry_trust


def image_source(settings: Settings) -> ImageSource:
    """Where the images picluster builds are named from: the local daemon's own repository, the
    in-cluster registry, or the registry `images.registry` names; folders are relative to the
    project directory (Pulumi runs the program there)."""
    if settings.target is Target.K3S:
        repository = settings.images.registry or REGISTRY_NAME
    else:
        repository = f"picluster-{pulumi.get_stack()}".lower()
    return ImageSource(repository=repository, project_dir=Path.cwd())


def docker_platform(settings: Settings) -> DockerPlatform:
    """Where the Docker target publishes, and how it names what it creates."""
    return DockerPlatform(
        publish_address=settings.docker.publish_address,
        frontend_port=settings.docker.ports.frontend,
        grafana_port=settings.docker.ports.grafana,
        prometheus_port=settings.docker.ports.prometheus,
        alertmanager_port=settings.docker.ports.alertmanager,
        name_prefix=f"picluster-{pulumi.get_stack()}",
        docker_host=settings.docker.host,
    )


def _ssh_target(
    config: StackConfig,
    node: NodeConfig,
    key: pulumi.Output[str] | None,
    passphrase: pulumi.Output[str] | None,
) -> SshTarget:
    ssh = config.settings.ssh
    assert ssh is not None  # the config requires `ssh` whenever nodes are listed
    return SshTarget(
        host=node.host,
        port=node.port if node.port is not None else ssh.port,
        user=node.user if node.user is not None else ssh.user,
        private_key=key,
        private_key_password=passphrase,
        agent=config.ssh_agent,
        host_key=node.host_key,
    )


def pi_node_args(config: StackConfig) -> list[tuple[NodeConfig, PiNodeArgs]]:
    """One PiNodeArgs per configured node, in config order."""
    if not config.settings.nodes:
        return []
    key, passphrase = config.ssh_private_key(), config.ssh_key_passphrase()
    return [
        (
            node,
            PiNodeArgs(
                node_name=node.name,
                ssh=_ssh_target(config, node, key, passphrase),
                upgrade=node.upgrade,
                docker=node.docker,
            ),
        )
        for node in config.settings.nodes
    ]


def k3s_cluster_args(
    config: StackConfig, nodes: Sequence[tuple[NodeConfig, PiNode]], token: pulumi.Output[str]
) -> K3sClusterArgs:
    """The cluster on the prepared Pis."""
    k3s = config.settings.k3s
    assert k3s is not None  # the config requires `k3s` when the target is k3s
    return K3sClusterArgs(
        nodes=[
            ClusterNode(
                name=node.name,
                role=node.role,
                ssh=pi.ssh,
                address=node.host,
                ready=pi,
                labels=node.labels,
                taints=node.taints,
            )
            for node, pi in nodes
        ],
        version=k3s.version,
        token=token,
        cluster_name=f"picluster-{pulumi.get_stack()}",
        disable=k3s.disable,
        secrets_encryption=k3s.secrets_encryption,
        server_config=k3s.server_config,
        agent_config=k3s.agent_config,
        protect_servers=k3s.protect_server_data,
        install_url=k3s.install_url,
        drain_timeout=k3s.drain_timeout,
        snapshots=datastore_snapshots(k3s.snapshots),
        etcd_s3_access_key=config.secret("etcdS3AccessKey"),
        etcd_s3_secret_key=config.secret("etcdS3SecretKey"),
        registries=registries(config),
    )


def registries(config: StackConfig) -> RegistryTrust:
    """What every node's registries.yaml trusts: the in-cluster registry, always, and the
    credentials of `images.registry` when `images.registryUsername` is set."""
    settings = config.settings.images
    return registry_trust(
        settings.registry or "",
        settings.registry_username or "",
        config.secret("registryPassword"),
    )


def datastore_snapshots(snapshots: SnapshotsConfig) -> DatastoreSnapshots:
    """`k3s.snapshots` as the cluster's snapshot settings."""
    s3 = snapshots.s3
    return DatastoreSnapshots(
        enabled=snapshots.enabled,
        schedule=snapshots.schedule,
        retention=snapshots.retention,
        s3=None
        if s3 is None
        else S3Target(
            bucket=s3.bucket,
            endpoint=s3.endpoint,
            region=s3.region,
            folder=s3.folder,
            insecure=s3.insecure,
            skip_ssl_verify=s3.skip_ssl_verify,
        ),
    )


def k3s_image_push(
    config: StackConfig, nodes: Sequence[tuple[NodeConfig, PiNode]]
) -> TunnelPush | RegistryPush:
    """Where the K3s target pushes the images it builds: the in-cluster registry through an SSH
    tunnel to the first server, or the registry `images.registry` names."""
    images = config.settings.images
    platforms = tuple(images.platforms)
    if images.registry is None:
        first = next(pi for node, pi in nodes if node.role is NodeRole.SERVER)
        return TunnelPush(server=first.ssh, platforms=platforms, builder=images.builder)
    return RegistryPush(
        platforms=platforms,
        builder=images.builder,
        username=images.registry_username,
        password=config.secret("registryPassword"),
    )


def kubernetes_platform(settings: Settings) -> KubernetesPlatform:
    """Where the K3s target puts the app and monitoring."""
    first_server = next(n for n in settings.nodes if n.role is NodeRole.SERVER)
    return KubernetesPlatform(
        domain=settings.app.domain,
        public_address=first_server.host,
        registry_storage=settings.images.registry_storage,
    )
