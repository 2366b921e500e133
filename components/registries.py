"""Which image registries every K3s node trusts: `/etc/rancher/k3s/registries.yaml`, as data.

K3s reads the file when it starts (rancher/wharfie pkg/registries: a `Registry` of `mirrors`,
registry name -> `endpoint` list, and `configs`, registry host -> `auth` and `tls`) and renders
containerd's `hosts.toml` files from it (k3s-io/k3s pkg/agent/containerd/config.go
`getHostConfigs`): a changed file takes effect only when K3s restarts. `K3sCluster` sends the
document on the install's secret stdin and `k3s-install.sh` writes it 0600, restarting K3s only
when its content changed.

picluster's own registry runs on the cluster (a ClusterIP Service, never on the LAN); every node
trusts it as a mirror of the name the images carry, so containerd, on the node's host network,
pulls `registry.picluster.internal/<name>:<tag>` from the Service's ClusterIP over plain HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import yaml

REGISTRY_NAME = "registry.picluster.internal"
"""The registry name in the references of images picluster builds for the K3s target."""
REGISTRY_CLUSTER_IP = "10.43.0.50"
"""The in-cluster registry Service's pinned clusterIP, in K3s's default service CIDR
10.43.0.0/16 (the low band Kubernetes keeps for fixed IPs)."""
REGISTRY_PORT = 5000
"""The in-cluster registry Service's port."""
REGISTRIES_MARK = "# picluster: written by K3sCluster; pulumi up rewrites or removes it"
"""The first line of every registries.yaml picluster writes: k3s-install.sh removes or replaces
only a file that starts with it (and says so when it leaves another one alone)."""


@dataclass(frozen=True, kw_only=True)
class RegistryAuth:
    """Credentials for one registry host."""

    username: str
    """The registry user."""
    password: pulumi.Input[str]
    """Its password, a secret."""


@dataclass(frozen=True, kw_only=True)
class RegistryTrust:
    """What registries.yaml says: where images of a registry name come from, and with which
    credentials. Empty: no registries.yaml (one picluster wrote earlier is removed)."""

    mirrors: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Registry name -> endpoints (`http://` or `https://` URLs), tried in order."""
    auth: Mapping[str, RegistryAuth] = field(default_factory=dict)
    """Registry host (`host[:port]`, as in image references) -> its credentials."""

    def __post_init__(self) -> None:
        for name, endpoints in self.mirrors.items():
            if not name or "/" in name:
                raise ValueError(f"registry mirror name {name!r} is not a registry host")
            if not endpoints:
                raise ValueError(f"registry mirror {name} has no endpoint")
            for endpoint in endpoints:
                if not endpoint.startswith(("http://", "https://")):
                    raise ValueError(
                        f"registry mirror {name}: endpoint {endpoint!r} is not an http:// or "
                        "https:// URL"
                    )
        for host, credentials in self.auth.items():
            if not host or "/" in host:
                raise ValueError(f"registry credentials: {host!r} is not a registry host")
            if not credentials.username:
                raise ValueError(f"registry credentials for {host} have no username")

    @property
    def empty(self) -> bool:
        """Nothing to trust: no registries.yaml."""
        return not self.mirrors and not self.auth


def in_cluster_mirror() -> dict[str, list[str]]:
    """The in-cluster registry as the mirror of `registry.picluster.internal`."""
    return {REGISTRY_NAME: [f"http://{REGISTRY_CLUSTER_IP}:{REGISTRY_PORT}"]}


def registry_host(registry: str) -> str:
    """`host[:port]` of a `host[:port][/path]` registry reference: what K3s keys `configs` by."""
    return registry.split("/", 1)[0]


def registry_trust(
    registry: str = "", username: str = "", password: pulumi.Input[str] | None = None
) -> RegistryTrust:
    """What every node of a K3s stack trusts: the in-cluster registry's mirror, always, and the
    credentials of the user's registry (`host[:port][/path]`) when a username is given with it.

    Raises ValueError for a username without a registry or a password, or a password without
    a username (the config names the keys before this is called).
    """
    auth: dict[str, RegistryAuth] = {}
    if username:
        if not registry:
            raise ValueError("a registry username needs the registry it belongs to")
        if password is None:
            raise ValueError(f"the registry username for {registry} needs a password")
        auth[registry_host(registry)] = RegistryAuth(username=username, password=password)
    elif password is not None:
        raise ValueError("a registry password needs a registry username")
    return RegistryTrust(mirrors=in_cluster_mirror(), auth=auth)


def registries_yaml(trust: RegistryTrust, passwords: Mapping[str, str]) -> str:
    """The text of registries.yaml for `trust` (`passwords`: registry host -> the value of its
    password), starting with `REGISTRIES_MARK`; "" when there is nothing to trust.

    Raises KeyError when a host with credentials has no password in `passwords`.
    """
    if trust.empty:
        return ""
    document: dict[str, object] = {}
    if trust.mirrors:
        document["mirrors"] = {
            name: {"endpoint": list(endpoints)} for name, endpoints in trust.mirrors.items()
        }
    if trust.auth:
        document["configs"] = {
            host: {"auth": {"username": credentials.username, "password": passwords[host]}}
            for host, credentials in trust.auth.items()
        }
    return f"{REGISTRIES_MARK}\n{yaml.safe_dump(document, sort_keys=True)}"


def registries_document(trust: RegistryTrust) -> pulumi.Output[str]:
    """`registries_yaml` with the passwords resolved: a secret whenever it holds credentials."""
    hosts = sorted(trust.auth)
    document = pulumi.Output.all(*(trust.auth[host].password for host in hosts)).apply(
        lambda values: registries_yaml(trust, dict(zip(hosts, values, strict=True)))
    )
    return pulumi.Output.secret(document) if hosts else document
