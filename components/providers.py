"""Provider construction: the one place a Docker or Kubernetes provider is built.

Default providers are disabled in `Pulumi.yaml`, so every resource reaches its daemon or cluster
through a provider made here and nothing falls back to an ambient socket or kubeconfig.
"""

from __future__ import annotations

import pulumi_docker as docker

from components.config import DockerConfig


def docker_provider(config: DockerConfig) -> docker.Provider:
    """The Docker daemon named by `docker.host` (a local socket, tcp:// or ssh://user@pi)."""
    ssh_opts = None
    if config.host.startswith("ssh://"):
        # Fail fast on an unreachable Pi instead of hanging; BatchMode never prompts.
        ssh_opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    return docker.Provider("docker", host=config.host, ssh_opts=ssh_opts)
