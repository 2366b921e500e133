"""NetworkPolicies of the app namespace: deny by default, then open only the game's own paths.

ingress controller -> frontend -> services -> database, service -> service, backups -> database,
DNS for every pod, and the monitoring namespace to every pod (Prometheus scrapes, blackbox probes,
postgres-exporter). K3s enforces these with its bundled network policy controller.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.app_model import AppModel, Role
from components.on_kubernetes import pods
from components.on_kubernetes.platform import KubernetesPlatform
from components.on_kubernetes.workloads import container_port

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
COMPONENT_LABEL = "app.kubernetes.io/component"
BACKUP_COMPONENT = "backup"
MIGRATION_COMPONENT = "migration"
"""The pods of a service's migration Job (components/on_kubernetes/migrations.py)."""


def _from_namespace(name: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={NAMESPACE_NAME_LABEL: name})
    )


def _from_component(component: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={COMPONENT_LABEL: component})
    )


def _tcp(port: int) -> k8s.networking.v1.NetworkPolicyPortArgs:
    return k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=port)


def _policy(
    parent: pulumi.Resource,
    resource_name: str,
    ns: pulumi.Input[str],
    policy_name: str,
    *,
    pod_labels: dict[str, str],
    policy_types: Sequence[str],
    ingress: Sequence[k8s.networking.v1.NetworkPolicyIngressRuleArgs] = (),
    egress: Sequence[k8s.networking.v1.NetworkPolicyEgressRuleArgs] = (),
) -> k8s.networking.v1.NetworkPolicy:
    return k8s.networking.v1.NetworkPolicy(
        resource_name,
        metadata=pods.metadata(policy_name, ns, "network-policy"),
        spec=k8s.networking.v1.NetworkPolicySpecArgs(
            # An empty selector (no matchLabels) selects every pod in the namespace.
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=pod_labels or None),
            policy_types=list(policy_types),
            ingress=list(ingress) or None,
            egress=list(egress) or None,
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def render_app_policies(
    parent: pulumi.Resource,
    name: str,
    ns: pulumi.Input[str],
    app: AppModel,
    platform: KubernetesPlatform,
) -> list[k8s.networking.v1.NetworkPolicy]:
    """Declare the app namespace's NetworkPolicies; returns the ones a migration needs to reach
    the database (its Job waits for them: under default-deny nothing else lets it through)."""
    ingress_controller = _from_namespace("kube-system")
    monitoring = _from_namespace(platform.monitoring_namespace)
    db_port = _tcp(container_port(app.database))
    migrations = any(s.migrate is not None for s in app.services)

    _policy(
        parent,
        f"{name}-netpol-default-deny",
        ns,
        "default-deny",
        pod_labels={},
        policy_types=["Ingress", "Egress"],
    )
    dns = _policy(
        parent,
        f"{name}-netpol-dns",
        ns,
        "allow-dns",
        pod_labels={},
        policy_types=["Egress"],
        egress=[
            k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                to=[
                    k8s.networking.v1.NetworkPolicyPeerArgs(
                        namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                            match_labels={NAMESPACE_NAME_LABEL: "kube-system"}
                        ),
                        pod_selector=k8s.meta.v1.LabelSelectorArgs(
                            match_labels={"k8s-app": "kube-dns"}
                        ),
                    )
                ],
                ports=[
                    k8s.networking.v1.NetworkPolicyPortArgs(protocol="UDP", port=53),
                    k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=53),
                ],
            )
        ],
    )
    frontend = app.frontend
    _policy(
        parent,
        f"{name}-netpol-frontend",
        ns,
        "frontend",
        pod_labels={COMPONENT_LABEL: Role.FRONTEND.value},
        policy_types=["Ingress", "Egress"],
        ingress=[
            k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                from_=[ingress_controller, monitoring], ports=[_tcp(container_port(frontend))]
            )
        ],
        egress=[
            k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                to=[_from_component(Role.SERVICE.value)],
                ports=[_tcp(container_port(s)) for s in app.services] or None,
            )
        ]
        if app.services
        else [],
    )
    if app.services:
        _policy(
            parent,
            f"{name}-netpol-services",
            ns,
            "services",
            pod_labels={COMPONENT_LABEL: Role.SERVICE.value},
            policy_types=["Ingress", "Egress"],
            ingress=[
                k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                    from_=[
                        ingress_controller,
                        monitoring,
                        _from_component(Role.FRONTEND.value),
                        # Services call each other by name (README: The service contract).
                        _from_component(Role.SERVICE.value),
                    ],
                    ports=[_tcp(container_port(s)) for s in app.services],
                )
            ],
            egress=[
                k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                    to=[_from_component(Role.DATABASE.value)], ports=[db_port]
                ),
                k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                    to=[_from_component(Role.SERVICE.value)],
                    ports=[_tcp(container_port(s)) for s in app.services],
                ),
            ],
        )
    database = _policy(
        parent,
        f"{name}-netpol-database",
        ns,
        "database",
        pod_labels={COMPONENT_LABEL: Role.DATABASE.value},
        policy_types=["Ingress"],
        ingress=[
            k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                from_=[
                    _from_component(Role.SERVICE.value),
                    _from_component(BACKUP_COMPONENT),
                    *([_from_component(MIGRATION_COMPONENT)] if migrations else []),
                    monitoring,
                ],
                ports=[db_port],
            )
        ],
    )
    if app.backup is not None:
        _database_only(parent, f"{name}-netpol-backup", ns, "backup", BACKUP_COMPONENT, db_port)
    if not migrations:
        return []
    migration = _database_only(
        parent, f"{name}-netpol-migrations", ns, "migrations", MIGRATION_COMPONENT, db_port
    )
    return [dns, database, migration]


def _database_only(
    parent: pulumi.Resource,
    resource_name: str,
    ns: pulumi.Input[str],
    policy_name: str,
    component: str,
    db_port: k8s.networking.v1.NetworkPolicyPortArgs,
) -> k8s.networking.v1.NetworkPolicy:
    """The pods of `component` may reach the database and nothing else (backups, migrations)."""
    return _policy(
        parent,
        resource_name,
        ns,
        policy_name,
        pod_labels={COMPONENT_LABEL: component},
        policy_types=["Egress"],
        egress=[
            k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                to=[_from_component(Role.DATABASE.value)], ports=[db_port]
            )
        ],
    )
