"""Pods for app workloads: hardened containers, probes, files and secrets from the app model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.app_model import ProbeKind, Role, Workload
from components.on_kubernetes import pods

UNPRIVILEGED_PORT = 8080
"""Where a workload that would listen below 1024 listens instead (it runs as non-root)."""


def container_port(workload: Workload) -> int:
    """The port inside the pod: the workload's own, unless it is privileged (below 1024)."""
    return workload.port if workload.port >= 1024 else UNPRIVILEGED_PORT


def file_key(path: str) -> str:
    """A ConfigMap key for a file path (`/etc/nginx/nginx.conf` -> `etc_nginx_nginx.conf`)."""
    return path.strip("/").replace("/", "_")


def _probe(workload: Workload, *, liveness: bool) -> k8s.core.v1.ProbeArgs:
    port = container_port(workload)
    probe = workload.probe
    http_get = tcp_socket = exec_ = None
    if probe.kind is ProbeKind.HTTP:
        http_get = k8s.core.v1.HTTPGetActionArgs(path=probe.path, port=port)
    elif probe.kind is ProbeKind.TCP:
        tcp_socket = k8s.core.v1.TCPSocketActionArgs(port=port)
    else:
        exec_ = k8s.core.v1.ExecActionArgs(command=list(probe.command))
    # Liveness is patient (a Pi under load is slow, a restart makes it slower); readiness is not.
    return k8s.core.v1.ProbeArgs(
        http_get=http_get,
        tcp_socket=tcp_socket,
        exec_=exec_,
        period_seconds=20 if liveness else 10,
        timeout_seconds=5,
        failure_threshold=6 if liveness else 3,
        initial_delay_seconds=30 if liveness else 5,
    )


def _env(workload: Workload, secret_name: str) -> list[k8s.core.v1.EnvVarArgs]:
    """The workload's environment: its values, PORT as the pod sees it, secrets by reference."""
    env = [k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in workload.env.items()]
    if workload.role is Role.SERVICE:
        env = [e for e in env if e.name != "PORT"] + [
            k8s.core.v1.EnvVarArgs(name="PORT", value=str(container_port(workload)))
        ]
    env += [
        k8s.core.v1.EnvVarArgs(
            name=name,
            value_from=k8s.core.v1.EnvVarSourceArgs(
                secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=secret_name, key=key.value)
            ),
        )
        for name, key in workload.secret_env.items()
    ]
    return env


def _mounts(
    workload: Workload,
    *,
    config_map: str | None,
    files: Mapping[str, str] | None,
    data_volume: str | None = None,
) -> list[k8s.core.v1.VolumeMountArgs]:
    """Scratch space, the files from the ConfigMap, the secret files and the data volume."""
    mounts = [
        k8s.core.v1.VolumeMountArgs(name=f"scratch-{i}", mount_path=path)
        for i, path in enumerate(workload.writable_paths)
    ]
    if config_map is not None:
        mounts += [
            k8s.core.v1.VolumeMountArgs(
                name="files", mount_path=path, sub_path=file_key(path), read_only=True
            )
            for path in sorted(files or {})
        ]
    mounts += [
        k8s.core.v1.VolumeMountArgs(
            name="secrets", mount_path=path, sub_path=key.value, read_only=True
        )
        for path, key in workload.secret_files.items()
    ]
    if data_volume is not None and workload.data_path is not None:
        mounts.append(k8s.core.v1.VolumeMountArgs(name=data_volume, mount_path=workload.data_path))
    return mounts


def workload_container(
    workload: Workload,
    secret_name: str,
    *,
    config_map: str | None = None,
    files: Mapping[str, str] | None = None,
    data_volume: str | None = None,
    image: pulumi.Input[str] | None = None,
) -> k8s.core.v1.ContainerArgs:
    """The workload's container, hardened, with its env, secrets, files and scratch space;
    `image` overrides `workload.image` (a built image pinned by its pushed digest)."""
    port = container_port(workload)
    env = _env(workload, secret_name)
    return k8s.core.v1.ContainerArgs(
        name=workload.name,
        image=workload.image if image is None else image,
        image_pull_policy="IfNotPresent",
        command=list(workload.command) if workload.command else None,
        ports=[k8s.core.v1.ContainerPortArgs(name="main", container_port=port)],
        env=env or None,
        volume_mounts=_mounts(
            workload, config_map=config_map, files=files, data_volume=data_volume
        ),
        readiness_probe=_probe(workload, liveness=False),
        liveness_probe=_probe(workload, liveness=True),
        resources=pods.resources(workload.resources),
        security_context=pods.restricted_container_security(),
    )


def migration_container(
    workload: Workload,
    secret_name: str,
    *,
    config_map: str | None = None,
    files: Mapping[str, str] | None = None,
    image: pulumi.Input[str] | None = None,
) -> k8s.core.v1.ContainerArgs:
    """The workload's container running its `migrate` command: the same image (`image` when
    given), environment, secrets, files, limits and hardening, but no port and no probes (it
    serves nothing, and a liveness probe on the health path would kill a long migration)."""
    assert workload.migrate is not None
    env = _env(workload, secret_name)
    return k8s.core.v1.ContainerArgs(
        name="migrate",
        image=workload.image if image is None else image,
        image_pull_policy="IfNotPresent",
        command=list(workload.migrate),
        env=env or None,
        volume_mounts=_mounts(workload, config_map=config_map, files=files),
        resources=pods.resources(workload.resources),
        security_context=pods.restricted_container_security(),
    )


def pod_spec(
    workload: Workload,
    containers: Sequence[k8s.core.v1.ContainerArgs],
    *,
    secret_name: str,
    config_map: str | None = None,
    extra_volumes: Sequence[k8s.core.v1.VolumeArgs] = (),
    topology_spread: Sequence[k8s.core.v1.TopologySpreadConstraintArgs] | None = None,
    affinity: k8s.core.v1.AffinityArgs | None = None,
    restart_policy: str | None = None,
) -> k8s.core.v1.PodSpecArgs:
    """A restricted pod running `containers` as the workload's non-root user."""
    volumes = [pods.scratch_volume(f"scratch-{i}") for i, _ in enumerate(workload.writable_paths)]
    if config_map is not None:
        volumes.append(
            k8s.core.v1.VolumeArgs(
                name="files", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config_map)
            )
        )
    if workload.secret_files:
        volumes.append(
            k8s.core.v1.VolumeArgs(
                name="secrets",
                secret=k8s.core.v1.SecretVolumeSourceArgs(
                    secret_name=secret_name, default_mode=0o440
                ),
            )
        )
    user = workload.run_as_user if workload.run_as_user is not None else 1000
    return k8s.core.v1.PodSpecArgs(
        automount_service_account_token=False,
        enable_service_links=False,
        security_context=pods.restricted_pod_security(user, fs_group=user),
        containers=list(containers),
        volumes=[*volumes, *extra_volumes],
        topology_spread_constraints=list(topology_spread) if topology_spread else None,
        affinity=affinity,
        restart_policy=restart_policy,
    )


def prefer_servers() -> k8s.core.v1.AffinityArgs:
    """Prefer a K3s server: a local-path volume stays on the node its pod first ran on, and the
    servers are the nodes picluster protects, so the data is not on an agent that a node removal
    or `pulumi destroy --exclude-protected` takes away. A preference, not a rule: a volume already
    bound on an agent keeps its pod there."""
    return k8s.core.v1.AffinityArgs(
        node_affinity=k8s.core.v1.NodeAffinityArgs(
            preferred_during_scheduling_ignored_during_execution=[
                k8s.core.v1.PreferredSchedulingTermArgs(
                    weight=100,
                    preference=k8s.core.v1.NodeSelectorTermArgs(
                        match_expressions=[
                            k8s.core.v1.NodeSelectorRequirementArgs(
                                key="node-role.kubernetes.io/control-plane", operator="Exists"
                            )
                        ]
                    ),
                )
            ]
        )
    )
