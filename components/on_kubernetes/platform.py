"""What the Kubernetes renderers share: where things go on K3s and how they are named."""

from __future__ import annotations

from dataclasses import dataclass

PART_OF = "picluster"
"""`app.kubernetes.io/part-of` on every object picluster creates."""


@dataclass(frozen=True, kw_only=True)
class KubernetesPlatform:
    """The K3s cluster the app and monitoring land on (the provider arrives through opts)."""

    app_namespace: str = "game"
    """The game's workloads; Pod Security `restricted`, default-deny NetworkPolicies."""
    monitoring_namespace: str = "monitoring"
    """Prometheus, Grafana, kube-state-metrics, the exporters that need no host access."""
    node_exporter_namespace: str = "monitoring-node"
    """node-exporter alone: it reads the host (hostPID, hostNetwork), so `privileged` here."""
    registry_namespace: str = "picluster-registry"
    """The in-cluster image registry (components/on_kubernetes/registry.py); `restricted`."""
    registry_storage: str = "10Gi"
    """The in-cluster registry's claim (`images.registryStorage`)."""
    domain: str | None = None
    """The name the printed URLs and Grafana's links use; the Ingress rules carry no host, so
    the game also answers on every Pi's address (a name a phone cannot resolve locks no one out)."""
    public_address: str = "localhost"
    """The address the URLs use when there is no domain (the first server's)."""
    ingress_class: str = "traefik"
    """K3s's packaged ingress controller."""
    storage_class: str = "local-path"
    """K3s's packaged local-path provisioner."""
    storage_class_expands: bool = False
    """Whether `storage_class` has `allowVolumeExpansion` (local-path has not): only then does a
    bigger configured size grow a claim in place; otherwise the claim keeps its size and the
    program warns (components/on_kubernetes/volumes.py)."""


def labels(name: str, component: str) -> dict[str, str]:
    """The recommended labels for one workload."""
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
    }


def selector(name: str) -> dict[str, str]:
    """The stable subset of `labels` used in selectors (selectors are immutable)."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}
