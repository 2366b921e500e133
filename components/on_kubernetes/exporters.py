"""The exporters Prometheus scrapes on K3s: node-exporter on every Pi, kube-state-metrics,
blackbox-exporter for the app's probes, and postgres-exporter for the game's database.
"""

from __future__ import annotations

from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components import monitoring_config, versions
from components.app_model import AppModel, Resources
from components.on_kubernetes import pods
from components.on_kubernetes.platform import KubernetesPlatform, selector
from components.secrets import StackSecrets

NODE_EXPORTER: Final = "node-exporter"
NODE_EXPORTER_PORT: Final = 9100
KUBE_STATE_METRICS: Final = "kube-state-metrics"
KUBE_STATE_METRICS_PORT: Final = 8080
KUBE_STATE_METRICS_TELEMETRY_PORT: Final = 8081
BLACKBOX: Final = "blackbox-exporter"
BLACKBOX_PORT: Final = 9115
POSTGRES_EXPORTER: Final = "postgres-exporter"
POSTGRES_EXPORTER_PORT: Final = 9187

NOBODY: Final = 65534
"""The user the Prometheus project's images (and kube-state-metrics) run as."""

NODE_EXPORTER_RESOURCES: Final = Resources(
    cpu_request="10m", memory_request="16Mi", cpu_limit="200m", memory_limit="48Mi"
)
KUBE_STATE_METRICS_RESOURCES: Final = Resources(
    cpu_request="10m", memory_request="32Mi", cpu_limit="200m", memory_limit="64Mi"
)
BLACKBOX_RESOURCES: Final = Resources(
    cpu_request="10m", memory_request="16Mi", cpu_limit="100m", memory_limit="48Mi"
)
POSTGRES_EXPORTER_RESOURCES: Final = Resources(
    cpu_request="10m", memory_request="24Mi", cpu_limit="100m", memory_limit="64Mi"
)

KUBE_STATE_METRICS_RULES: Final = (
    (
        "",
        ("nodes", "pods", "namespaces", "services", "persistentvolumeclaims", "persistentvolumes"),
    ),
    ("apps", ("deployments", "daemonsets", "statefulsets", "replicasets")),
    ("batch", ("jobs", "cronjobs")),
)
"""What kube-state-metrics lists and watches, by API group: only what the dashboards and a
small cluster need, which keeps its memory (it caches every object it watches) small."""

# Kernel and container-runtime mounts mirror the disk that backs them or are not disk at all.
_IGNORED_MOUNTS = (
    "^/(dev|proc|sys|run|var/lib/kubelet/.+|var/lib/rancher/k3s/agent/containerd/.+)($|/)"
)
# Per-pod virtual interfaces come and go with every pod: one series set each, for nothing.
_IGNORED_DEVICES = "^(veth.*|cni.*|flannel.*|cali.*|vxlan.*|lxc.*)$"


def render_node_exporter(
    name: str, namespace: str, opts: pulumi.ResourceOptions
) -> k8s.apps.v1.DaemonSet:
    """node-exporter on every node, servers included, reading the host read-only."""
    spec = k8s.core.v1.PodSpecArgs(
        host_pid=True,
        host_network=True,
        automount_service_account_token=False,
        security_context=pods.restricted_pod_security(NOBODY),
        # Every taint: the servers' too, so their CPU, memory and disk are watched as well.
        tolerations=[k8s.core.v1.TolerationArgs(operator="Exists")],
        containers=[
            k8s.core.v1.ContainerArgs(
                name=NODE_EXPORTER,
                image=versions.NODE_EXPORTER,
                args=[
                    "--path.rootfs=/host/root",
                    "--path.sysfs=/host/sys",
                    f"--web.listen-address=:{NODE_EXPORTER_PORT}",
                    f"--collector.filesystem.mount-points-exclude={_IGNORED_MOUNTS}",
                    f"--collector.netdev.device-exclude={_IGNORED_DEVICES}",
                    f"--collector.netclass.ignored-devices={_IGNORED_DEVICES}",
                ],
                ports=[
                    k8s.core.v1.ContainerPortArgs(
                        name="metrics", container_port=NODE_EXPORTER_PORT, protocol="TCP"
                    )
                ],
                readiness_probe=pods.http_probe("/", NODE_EXPORTER_PORT),
                liveness_probe=pods.http_probe("/", NODE_EXPORTER_PORT, period_seconds=30),
                resources=pods.resources(NODE_EXPORTER_RESOURCES),
                security_context=pods.restricted_container_security(),
                volume_mounts=[
                    k8s.core.v1.VolumeMountArgs(
                        name="root",
                        mount_path="/host/root",
                        read_only=True,
                        mount_propagation="HostToContainer",
                    ),
                    pods.mount("sys", "/host/sys", read_only=True),
                ],
            )
        ],
        volumes=[
            k8s.core.v1.VolumeArgs(
                name="root", host_path=k8s.core.v1.HostPathVolumeSourceArgs(path="/")
            ),
            k8s.core.v1.VolumeArgs(
                name="sys", host_path=k8s.core.v1.HostPathVolumeSourceArgs(path="/sys")
            ),
        ],
    )
    daemon_set = k8s.apps.v1.DaemonSet(
        f"{name}-node-exporter",
        metadata=pods.metadata(NODE_EXPORTER, namespace, "metrics"),
        spec=k8s.apps.v1.DaemonSetSpecArgs(
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector(NODE_EXPORTER)),
            template=pods.pod_template(NODE_EXPORTER, "metrics", spec),
        ),
        opts=opts,
    )
    pods.service(
        f"{name}-node-exporter",
        namespace,
        NODE_EXPORTER,
        "metrics",
        {"metrics": NODE_EXPORTER_PORT},
        opts,
    )
    return daemon_set


def render_kube_state_metrics(
    name: str, namespace: str, opts: pulumi.ResourceOptions
) -> k8s.apps.v1.Deployment:
    """kube-state-metrics: nodes, pods and workloads as metrics, read from the API server."""
    account = pods.service_account_with_cluster_role(
        f"{name}-kube-state-metrics",
        KUBE_STATE_METRICS,
        namespace,
        "metrics",
        [
            k8s.rbac.v1.PolicyRuleArgs(
                api_groups=[group], resources=list(resources), verbs=["list", "watch"]
            )
            for group, resources in KUBE_STATE_METRICS_RULES
        ],
        opts,
    )
    watched = sorted(r for _, resources in KUBE_STATE_METRICS_RULES for r in resources)
    spec = k8s.core.v1.PodSpecArgs(
        service_account_name=KUBE_STATE_METRICS,
        # It lists and watches the API: the only exporter that needs its token.
        automount_service_account_token=True,
        security_context=pods.restricted_pod_security(NOBODY),
        containers=[
            k8s.core.v1.ContainerArgs(
                name=KUBE_STATE_METRICS,
                image=versions.KUBE_STATE_METRICS,
                args=[
                    f"--port={KUBE_STATE_METRICS_PORT}",
                    f"--telemetry-port={KUBE_STATE_METRICS_TELEMETRY_PORT}",
                    f"--resources={','.join(watched)}",
                ],
                ports=[
                    k8s.core.v1.ContainerPortArgs(
                        name="metrics", container_port=KUBE_STATE_METRICS_PORT
                    ),
                    k8s.core.v1.ContainerPortArgs(
                        name="telemetry", container_port=KUBE_STATE_METRICS_TELEMETRY_PORT
                    ),
                ],
                readiness_probe=pods.http_probe("/readyz", KUBE_STATE_METRICS_TELEMETRY_PORT),
                liveness_probe=pods.http_probe(
                    "/livez", KUBE_STATE_METRICS_PORT, period_seconds=30
                ),
                resources=pods.resources(KUBE_STATE_METRICS_RESOURCES),
                security_context=pods.restricted_container_security(),
            )
        ],
    )
    workload = pods.deployment(
        f"{name}-kube-state-metrics",
        namespace,
        KUBE_STATE_METRICS,
        "metrics",
        spec,
        pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[account])),
    )
    pods.service(
        f"{name}-kube-state-metrics",
        namespace,
        KUBE_STATE_METRICS,
        "metrics",
        {"metrics": KUBE_STATE_METRICS_PORT, "telemetry": KUBE_STATE_METRICS_TELEMETRY_PORT},
        opts,
    )
    return workload


def render_blackbox_exporter(
    name: str, namespace: str, ingress_host: str | None, opts: pulumi.ResourceOptions
) -> k8s.apps.v1.Deployment:
    """blackbox-exporter, which Prometheus asks to probe each app endpoint and the ingress."""
    config = monitoring_config.blackbox_config(ingress_host)
    k8s.core.v1.ConfigMap(
        f"{name}-blackbox-exporter",
        metadata=pods.metadata(BLACKBOX, namespace, "config"),
        data={"config.yml": config},
        opts=opts,
    )
    spec = k8s.core.v1.PodSpecArgs(
        automount_service_account_token=False,
        security_context=pods.restricted_pod_security(NOBODY),
        containers=[
            k8s.core.v1.ContainerArgs(
                name=BLACKBOX,
                image=versions.BLACKBOX_EXPORTER,
                args=["--config.file=/etc/blackbox_exporter/config.yml"],
                ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=BLACKBOX_PORT)],
                readiness_probe=pods.http_probe("/-/healthy", BLACKBOX_PORT),
                liveness_probe=pods.http_probe("/-/healthy", BLACKBOX_PORT, period_seconds=30),
                resources=pods.resources(BLACKBOX_RESOURCES),
                security_context=pods.restricted_container_security(),
                volume_mounts=[pods.mount("config", "/etc/blackbox_exporter", read_only=True)],
            )
        ],
        volumes=[
            k8s.core.v1.VolumeArgs(
                name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=BLACKBOX)
            )
        ],
    )
    workload = pods.deployment(
        f"{name}-blackbox-exporter", namespace, BLACKBOX, "metrics", spec, opts, config=[config]
    )
    pods.service(
        f"{name}-blackbox-exporter", namespace, BLACKBOX, "metrics", {"http": BLACKBOX_PORT}, opts
    )
    return workload


def render_postgres_exporter(
    name: str,
    namespace: str,
    app: AppModel,
    secrets: StackSecrets,
    platform: KubernetesPlatform,
    opts: pulumi.ResourceOptions,
) -> k8s.apps.v1.Deployment:
    """postgres-exporter, connecting to the game's PostgreSQL across namespaces."""
    k8s.core.v1.Secret(
        f"{name}-postgres-exporter",
        metadata=pods.metadata(POSTGRES_EXPORTER, namespace, "secrets"),
        type="Opaque",
        string_data={"db-password": secrets.db_password},
        opts=opts,
    )
    db = app.db
    secret_dir = "/run/secrets/postgres"  # noqa: S105 - a path, not a value
    spec = k8s.core.v1.PodSpecArgs(
        automount_service_account_token=False,
        security_context=pods.restricted_pod_security(NOBODY, fs_group=NOBODY),
        containers=[
            k8s.core.v1.ContainerArgs(
                name=POSTGRES_EXPORTER,
                image=versions.POSTGRES_EXPORTER,
                env=[
                    k8s.core.v1.EnvVarArgs(name=key, value=value)
                    for key, value in {
                        "DATA_SOURCE_URI": (
                            f"{db.host}.{platform.app_namespace}.svc:{db.port}/{db.name}"
                            "?sslmode=disable"
                        ),
                        "DATA_SOURCE_USER": db.user,
                        "DATA_SOURCE_PASS_FILE": f"{secret_dir}/db-password",
                    }.items()
                ],
                ports=[
                    k8s.core.v1.ContainerPortArgs(
                        name="metrics", container_port=POSTGRES_EXPORTER_PORT
                    )
                ],
                readiness_probe=pods.http_probe("/", POSTGRES_EXPORTER_PORT),
                liveness_probe=pods.http_probe("/", POSTGRES_EXPORTER_PORT, period_seconds=30),
                resources=pods.resources(POSTGRES_EXPORTER_RESOURCES),
                security_context=pods.restricted_container_security(),
                volume_mounts=[pods.mount("db-password", secret_dir, read_only=True)],
            )
        ],
        volumes=[
            k8s.core.v1.VolumeArgs(
                name="db-password",
                secret=k8s.core.v1.SecretVolumeSourceArgs(
                    secret_name=POSTGRES_EXPORTER, default_mode=0o440
                ),
            )
        ],
    )
    workload = pods.deployment(
        f"{name}-postgres-exporter",
        namespace,
        POSTGRES_EXPORTER,
        "metrics",
        spec,
        opts,
        # The exporter reads the password at start: a rotated one restarts it.
        secrets=[secrets.db_password],
    )
    pods.service(
        f"{name}-postgres-exporter",
        namespace,
        POSTGRES_EXPORTER,
        "metrics",
        {"metrics": POSTGRES_EXPORTER_PORT},
        opts,
    )
    return workload
