"""The in-cluster image registry: where `pulumi up` pushes the studio's images, and where every
node pulls them from.

The pinned `registry` image (CNCF distribution) in its own namespace under Pod Security
`restricted`, on a retained volume, behind a Service whose clusterIP is pinned
(`registries.REGISTRY_CLUSTER_IP`). It is never on the LAN: K3s's containerd reaches it from each
node's host network through kube-proxy (`/etc/rancher/k3s/registries.yaml` maps
`registry.picluster.internal` to `http://<clusterIP>:5000`), and `pulumi up` pushes through an SSH
tunnel to the first server (`components/image_build.py`). So the registry needs no TLS and no
account for anything outside the cluster, which cannot connect to it.

Inside the cluster it is open: any process on a node, and any pod in a namespace with no egress
NetworkPolicy (monitoring, kube-system), can push and overwrite a tag (the app namespace's pods
cannot: `_network_policy`). That is harmless because pods never run a tag alone: they run
`<ref>@sha256:...`, the digest the push read back from the registry (`image_build.pinned_ref`),
and containerd pulls by that digest and verifies the content against it.

Declared only when the app builds images and `images.registry` names no registry of the user's.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components import versions
from components.app_model import Resources
from components.on_kubernetes import pods, volumes
from components.on_kubernetes.platform import KubernetesPlatform, selector
from components.on_kubernetes.workloads import prefer_servers
from components.registries import REGISTRY_CLUSTER_IP, REGISTRY_PORT

NAME = "registry"
"""The Deployment's, Service's and pods' name."""
CLAIM = "registry-data"
DATA_PATH = "/var/lib/registry"
"""Where distribution's filesystem driver keeps blobs and manifests (the image's default)."""
USER = 1000
"""The uid and gid the registry runs as: the image's process needs no user of its own, only
write access to its volume (fsGroup)."""
RESOURCES = Resources(
    cpu_request="10m", memory_request="32Mi", cpu_limit="500m", memory_limit="128Mi"
)
"""Measured here on distribution 2.8.2 (Debian's build of the same code, the test suite's
stand-in of the pinned image), run as the pod runs it (uid 1000, read-only root): 20 MiB
resident idle, 27 MiB at most while a 343 MB image (121 MB of layers) and a second one were
pushed, 0.7 s of CPU for both (amd64; not measured on a Pi). The request covers that peak; the
limit, about five times it, leaves room for several nodes pulling at once."""
ENV = {
    "REGISTRY_HTTP_ADDR": f":{REGISTRY_PORT}",
    "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": DATA_PATH,
    # Content tags are immutable and nothing garbage-collects: a manifest or blob is never deleted
    # through the API (a pod being rescheduled must always find its image).
    "REGISTRY_STORAGE_DELETE_ENABLED": "false",
}
"""distribution reads `REGISTRY_<section>_<key>` over its config file (configuration/parser.go)."""


@dataclass(frozen=True, kw_only=True)
class InClusterRegistry:
    """What the app's image builds wait for before they push."""

    deployment: k8s.apps.v1.Deployment
    """Ready (its `/v2/` answers) once created: the provider awaits the rollout."""
    service: k8s.core.v1.Service
    """The pinned clusterIP the nodes and the push tunnel reach."""
    storage_id: pulumi.Output[str]
    """The uid of the registry's claim: a new one (the volume was lost and created again) is
    an empty registry, to which every build must push again."""

    @property
    def ready(self) -> list[pulumi.Resource]:
        """What a push depends on."""
        return [self.deployment, self.service]


def render_registry(
    parent: pulumi.Resource, name: str, platform: KubernetesPlatform
) -> InClusterRegistry:
    """Declare the registry's namespace, volume, Deployment, Service and NetworkPolicy."""
    opts = pulumi.ResourceOptions(parent=parent)
    # Retained, like the app's: deleting a namespace deletes its claims.
    namespace = pods.namespace(
        parent, f"{name}-registry-namespace", platform.registry_namespace, "restricted", retain=True
    )
    ns = namespace.metadata.name
    # Retained, not protected: every image in it can be built again from its source (content
    # tags), and protection would make switching to `images.registry` a change the engine refuses.
    # Retained so that a `destroy` or that switch leaves the images on the node's disk.
    claim = volumes.persistent_volume_claim(
        f"{name}-registry-data",
        ns,
        CLAIM,
        NAME,
        platform.registry_storage,
        config_key="picluster:images.registryStorage",
        platform=platform,
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True),
    )
    container = k8s.core.v1.ContainerArgs(
        name=NAME,
        image=versions.REGISTRY,
        image_pull_policy="IfNotPresent",
        ports=[k8s.core.v1.ContainerPortArgs(name="registry", container_port=REGISTRY_PORT)],
        env=[k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in ENV.items()],
        volume_mounts=[pods.mount("data", DATA_PATH), pods.mount("tmp", "/tmp")],
        # `/v2/` answers 200 without auth, and 503 once the storage driver's health check fails.
        readiness_probe=pods.http_probe("/v2/", REGISTRY_PORT),
        liveness_probe=pods.http_probe(
            "/v2/", REGISTRY_PORT, period_seconds=20, failure_threshold=6
        ),
        resources=pods.resources(RESOURCES),
        security_context=pods.restricted_container_security(),
    )
    spec = k8s.core.v1.PodSpecArgs(
        automount_service_account_token=False,
        enable_service_links=False,
        security_context=pods.restricted_pod_security(USER, fs_group=USER),
        containers=[container],
        volumes=[
            k8s.core.v1.VolumeArgs(
                name="data",
                persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                    claim_name=CLAIM
                ),
            ),
            pods.scratch_volume("tmp"),
        ],
        # A kept local-path volume stays on the node its pod first ran on: a server, which
        # picluster never removes (tests/unit/test_k8s_app.py, the kept-volume rule).
        affinity=prefer_servers(),
    )
    # Recreate: the volume is ReadWriteOnce, and two registries on one directory would race.
    deployment = pods.deployment(
        f"{name}-registry",
        ns,
        NAME,
        NAME,
        spec,
        pulumi.ResourceOptions(parent=parent, depends_on=[claim]),
        recreate=True,
    )
    service = k8s.core.v1.Service(
        f"{name}-registry",
        metadata=pods.metadata(NAME, ns, NAME),
        spec=k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP",
            # Pinned: registries.yaml on every node names it before the Service exists.
            cluster_ip=REGISTRY_CLUSTER_IP,
            selector=selector(NAME),
            ports=[
                k8s.core.v1.ServicePortArgs(
                    name="registry", port=REGISTRY_PORT, target_port=REGISTRY_PORT
                )
            ],
        ),
        opts=opts,
    )
    _network_policy(parent, name, ns)
    return InClusterRegistry(
        deployment=deployment,
        service=service,
        storage_id=claim.metadata.apply(lambda m: (m.uid if m else None) or ""),
    )


def _network_policy(parent: pulumi.Resource, name: str, ns: pulumi.Input[str]) -> None:
    """Ingress on the registry's port only, and no egress at all.

    Egress: the registry opens no connection of its own (no upstream to proxy, no notification
    endpoint, no DNS lookups); replies to its clients are allowed by connection tracking.
    Ingress cannot be narrowed to its real clients: those are containerd and sshd on the nodes'
    host network, which reach the pod from the node's own address (same node) or from its flannel
    address (10.42.N.0, inside the pod CIDR, from another node), so any peer rule that admits them
    admits pods too. The game's pods cannot reach it anyway: the app namespace denies all egress
    but DNS and its own chain (components/on_kubernetes/policies.py)."""
    k8s.networking.v1.NetworkPolicy(
        f"{name}-registry-netpol",
        metadata=pods.metadata(NAME, ns, "network-policy"),
        spec=k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector(NAME)),
            policy_types=["Ingress", "Egress"],
            ingress=[
                k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                    ports=[
                        k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=REGISTRY_PORT)
                    ]
                )
            ],
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )
