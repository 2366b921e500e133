"""Provider construction: the one place a Docker, Kubernetes or command provider is built.

Default providers are disabled in `Pulumi.yaml` (docker, kubernetes, command), so the engine
refuses any resource of those packages that does not name a provider made here: nothing falls back
to an ambient socket or kubeconfig, and no remote command runs through an implicit provider.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_docker as docker
import pulumi_kubernetes as k8s
from pulumi_command import Provider as CommandProvider

from components.config import DockerConfig


def docker_provider(
    config: DockerConfig, depends_on: Sequence[pulumi.Resource] = ()
) -> docker.Provider:
    """The Docker daemon named by `docker.host` (a local socket, tcp:// or ssh://user@pi); when
    the stack does not set it, the one the docker CLI uses (`config.load`, docker_host.py)."""
    ssh_opts = None
    if config.host.startswith("ssh://"):
        # Fail fast on an unreachable Pi instead of hanging; BatchMode never prompts.
        ssh_opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    return docker.Provider(
        "docker",
        host=config.host,
        ssh_opts=ssh_opts,
        opts=pulumi.ResourceOptions(depends_on=list(depends_on)),
    )


def kubernetes_provider(
    kubeconfig: pulumi.Input[str], cluster_identifier: str, depends_on: Sequence[pulumi.Resource]
) -> k8s.Provider:
    """The K3s cluster, from its (secret) kubeconfig.

    The cluster identifier is stable, so a rotated kubeconfig (new certificates, another server
    address) updates the provider instead of replacing it and every object deployed through it.
    """
    return k8s.Provider(
        "k3s",
        kubeconfig=kubeconfig,
        cluster_identifier=cluster_identifier,
        # A changed ConfigMap or Secret (a new service's scrape config, a rotated password) is
        # patched in place rather than deleted and re-created under the same name, which would
        # leave a window where a restarting pod finds no Secret. Pods that read them roll through
        # their checksum annotations.
        enable_config_map_mutable=True,
        enable_secret_mutable=True,
        opts=pulumi.ResourceOptions(depends_on=list(depends_on)),
    )


def command_provider() -> CommandProvider:
    """The provider of every remote command on the Pis (PiNode's bootstrap, K3sCluster's steps).

    It has no settings of its own: each command carries its SSH connection. It exists because the
    default `command` provider is disabled, and the engine refuses a command without a provider.
    """
    return CommandProvider("command")
