"""AppStack: the game (frontend, Node.js services, PostgreSQL) on the platform it is given:
containers on a Docker daemon, or hardened Kubernetes objects on the K3s cluster."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.app_model import AppModel
from components.image_build import RegistryPush, TunnelPush
from components.on_docker import app as on_docker
from components.on_docker.containers import DockerPlatform
from components.on_kubernetes import app as on_kubernetes
from components.on_kubernetes.platform import KubernetesPlatform
from components.secrets import StackSecrets


@dataclass(frozen=True, kw_only=True)
class AppStackArgs:
    """Inputs of an AppStack."""

    app: AppModel
    """The platform-neutral app model."""
    secrets: StackSecrets
    """Database password and DATABASE_URL, as secrets."""
    platform: DockerPlatform | KubernetesPlatform
    """Where the app runs; its provider arrives through `ResourceOptions(providers=[...])`."""
    push: TunnelPush | RegistryPush | None = None
    """K3s: where the images the app builds are pushed (their build commands need the command
    provider among the providers)."""


class AppStack(pulumi.ComponentResource):
    """The game's workloads rendered onto one platform from one app model."""

    frontend_url: pulumi.Output[str]
    """Where players open the game."""
    network_name: pulumi.Output[str] | None
    """Docker: the private network every workload shares (monitoring joins it); else None."""

    def __init__(
        self, name: str, args: AppStackArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("picluster:index:AppStack", name, None, opts)
        if isinstance(args.platform, DockerPlatform):
            rendered = on_docker.render_app(self, name, args.app, args.secrets, args.platform)
            self.frontend_url = rendered.frontend_url
            self.network_name = rendered.network_name
        else:
            on_k8s = on_kubernetes.render_app(
                self, name, args.app, args.secrets, args.platform, args.push
            )
            self.frontend_url = on_k8s.frontend_url
            self.network_name = None
        self.register_outputs({"frontend_url": self.frontend_url})
