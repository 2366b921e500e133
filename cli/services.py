"""The names `bin/picluster logs SERVICE` takes, and where each runs on either target.

A SERVICE is a workload of the app model (components/app_model.py: the frontend, each service,
postgres) or a monitoring component. On Docker a workload is one container
`picluster-<stack>-<name>`, or one per replica `picluster-<stack>-<name>-<n>`
(components/on_docker/app.py); on K3s it is the Deployment, StatefulSet or DaemonSet of that
name, whose pods its selector picks (components/on_kubernetes). Both lists are checked against
the programs' declared resources by tests/unit/test_cli_services.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cli.stack import Stack
from components import alertmanager_config
from components.app_model import AppModel, ImageSource, build_app
from components.config import Target
from components.on_docker.backup import BACKUP_CONTAINER
from components.on_kubernetes import exporters, grafana, prometheus
from components.on_kubernetes.platform import KubernetesPlatform

DOCKER_MONITORING: tuple[str, ...] = (
    "node-exporter",
    "cadvisor",
    "postgres-exporter",
    "blackbox-exporter",
    alertmanager_config.ALERTMANAGER,
    "prometheus",
    "grafana",
)
"""The monitoring containers of components/on_docker/monitoring.py and alertmanager.py."""

_PLATFORM = KubernetesPlatform()
K3S_MONITORING: dict[str, str] = {
    exporters.NODE_EXPORTER: _PLATFORM.node_exporter_namespace,
    exporters.KUBE_STATE_METRICS: _PLATFORM.monitoring_namespace,
    exporters.POSTGRES_EXPORTER: _PLATFORM.monitoring_namespace,
    exporters.BLACKBOX: _PLATFORM.monitoring_namespace,
    alertmanager_config.ALERTMANAGER: _PLATFORM.monitoring_namespace,
    prometheus.PROMETHEUS: _PLATFORM.monitoring_namespace,
    grafana.GRAFANA: _PLATFORM.monitoring_namespace,
}
"""The monitoring workloads of components/on_kubernetes, and their namespaces."""

NAMESPACES: tuple[str, ...] = (
    _PLATFORM.app_namespace,
    _PLATFORM.monitoring_namespace,
    _PLATFORM.node_exporter_namespace,
    _PLATFORM.registry_namespace,
)
"""Where picluster's pods run on K3s."""


class UnknownServiceError(Exception):
    """A SERVICE name the stack does not run; the message lists the valid ones."""


@dataclass(frozen=True)
class Service:
    """One SERVICE of a stack."""

    name: str
    replicas: int | None
    """Docker: how many containers `<name>-<n>` it runs; None when it is one `<name>`."""
    namespace: str
    """K3s: the namespace of its workload."""


def app_model(stack: Stack) -> AppModel:
    """The stack's app model (only its names and replica counts are used here, so the image
    repository is not the stack's)."""
    images = ImageSource(repository="picluster-cli", project_dir=stack.root)
    return build_app(stack.settings.app, images)


def services(stack: Stack) -> dict[str, Service]:
    """Every SERVICE of the stack, by name, in start order then monitoring."""
    app = app_model(stack)
    found: dict[str, Service] = {}
    for workload in app.workloads:
        replicated = workload in app.services
        found[workload.name] = Service(
            workload.name,
            workload.replicas if replicated else None,
            _PLATFORM.app_namespace,
        )
    if stack.settings.monitoring.enabled:
        if stack.target is Target.K3S:
            for name, namespace in K3S_MONITORING.items():
                found[name] = Service(name, None, namespace)
        else:
            for name in DOCKER_MONITORING:
                found[name] = Service(name, None, _PLATFORM.monitoring_namespace)
    return found


def resolve(stack: Stack, name: str) -> Service:
    """The SERVICE `name`, or UnknownServiceError listing the valid names."""
    known = services(stack)
    if name in known:
        return known[name]
    raise UnknownServiceError(
        f"stack {stack.name} runs no service {name!r}; valid names: {', '.join(known)}"
    )


def docker_containers(stack: Stack) -> list[str]:
    """The containers the stack's program declares on Docker, by name (migrations and their
    releases aside: they run once and are named by release)."""
    names: list[str] = []
    for service in services(stack).values():
        names += docker_names(stack, service)
    app = app_model(stack)
    if app.backup is not None:
        names.append(f"{stack.docker_prefix}-{BACKUP_CONTAINER}")
    return names


def docker_names(stack: Stack, service: Service) -> list[str]:
    """The container names of `service` on Docker."""
    base = f"{stack.docker_prefix}-{service.name}"
    if service.replicas is None:
        return [base]
    return [f"{base}-{n}" for n in range(1, service.replicas + 1)]


def docker_service_of(stack: Stack, container: str, known: dict[str, Service]) -> str:
    """The SERVICE a container of the stack belongs to: `api` for `picluster-local-api-2` and
    `picluster-local-api-migrate-<release>`; the name without the prefix when it is none."""
    short = container.removeprefix("/").removeprefix(f"{stack.docker_prefix}-")
    for name in sorted(known, key=len, reverse=True):
        if short == name or re.fullmatch(rf"{re.escape(name)}-(\d+|migrate-[0-9a-f]+)", short):
            return name
    return short
