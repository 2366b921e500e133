"""Building blocks for pod templates that pass Pod Security `restricted` and fit on a Raspberry Pi.

Generic on purpose: any Kubernetes renderer (monitoring, the app) can build its containers from
these, so every workload gets the same hardening and the same shape of resource requests.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.app_model import Resources
from components.on_kubernetes.platform import PART_OF, labels, selector

POD_SECURITY_VERSION = "latest"
CHECKSUM_ANNOTATION = "checksum/config"
"""Pod-template annotation carrying `checksum` of the configuration the pod reads."""
OWNED_ANNOTATIONS = {"pulumi.com/patchForce": "true"}
"""On every object picluster declares: its Server-Side Apply takes back the fields it declares
from a hand change (`kubectl scale`, `kubectl edit`), so `pulumi up --refresh` restores them
instead of failing on a field conflict (pulumi-kubernetes `pkg/await/await.go`, `patchForce`).
Fields picluster does not declare stay with whoever set them."""
SECRET_CHECKSUM_ANNOTATION = "checksum/secrets"  # noqa: S105 - an annotation's name
"""Pod-template annotation carrying `secret_checksum` of the secrets the pod reads."""
# scrypt's cost: 16 MiB and some tens of milliseconds per digest, once per secret set and run.
_SCRYPT_N = 2**14
_SCRYPT_R = 8


def pod_security_labels(level: str) -> dict[str, str]:
    """Namespace labels that enforce, audit and warn at Pod Security `level`."""
    return {
        "pod-security.kubernetes.io/enforce": level,
        "pod-security.kubernetes.io/enforce-version": POD_SECURITY_VERSION,
        "pod-security.kubernetes.io/audit": level,
        "pod-security.kubernetes.io/warn": level,
    }


def namespace(
    parent: pulumi.Resource, resource_name: str, name: str, level: str, *, retain: bool = False
) -> k8s.core.v1.Namespace:
    """A namespace whose Pod Security admission enforces, audits and warns at `level`."""
    return k8s.core.v1.Namespace(
        resource_name,
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=name,
            labels={**labels(name, "namespace"), **pod_security_labels(level)},
            annotations=OWNED_ANNOTATIONS,
        ),
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=retain),
    )


def metadata(
    name: str,
    namespace: pulumi.Input[str] | None,
    component: str,
    *,
    annotations: Mapping[str, str] | None = None,
) -> k8s.meta.v1.ObjectMetaArgs:
    """An object's name, namespace, recommended labels and `OWNED_ANNOTATIONS`."""
    return k8s.meta.v1.ObjectMetaArgs(
        name=name,
        namespace=namespace,
        labels=labels(name, component),
        annotations={**OWNED_ANNOTATIONS, **(annotations or {})},
    )


def resources(sizing: Resources) -> k8s.core.v1.ResourceRequirementsArgs:
    """Requests and limits for CPU and memory."""
    return k8s.core.v1.ResourceRequirementsArgs(
        requests={"cpu": sizing.cpu_request, "memory": sizing.memory_request},
        limits={"cpu": sizing.cpu_limit, "memory": sizing.memory_limit},
    )


def restricted_pod_security(
    run_as_user: int, *, fs_group: int | None = None
) -> k8s.core.v1.PodSecurityContextArgs:
    """The pod half of Pod Security `restricted`.

    `run_as_user` is explicit because the kubelet cannot check `runAsNonRoot` against an image
    whose USER is a name (`nobody` in the Prometheus images); `fs_group` makes mounted volumes
    and Secret files readable by that user.
    """
    return k8s.core.v1.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=run_as_user,
        run_as_group=run_as_user,
        fs_group=fs_group,
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def restricted_container_security(
    *, read_only_root: bool = True
) -> k8s.core.v1.SecurityContextArgs:
    """The container half of Pod Security `restricted`, with a read-only root filesystem."""
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        read_only_root_filesystem=read_only_root,
    )


def http_probe(
    path: str,
    port: int,
    *,
    period_seconds: int = 10,
    failure_threshold: int = 3,
    scheme: str | None = None,
) -> k8s.core.v1.ProbeArgs:
    """An HTTP GET probe."""
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port=port, scheme=scheme),
        period_seconds=period_seconds,
        timeout_seconds=5,
        failure_threshold=failure_threshold,
    )


def scratch_volume(name: str, size_limit: str = "64Mi") -> k8s.core.v1.VolumeArgs:
    """A small emptyDir, for the paths an image writes to under a read-only root filesystem."""
    return k8s.core.v1.VolumeArgs(
        name=name, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=size_limit)
    )


def mount(name: str, path: str, *, read_only: bool = False) -> k8s.core.v1.VolumeMountArgs:
    """Mount volume `name` at `path`."""
    return k8s.core.v1.VolumeMountArgs(name=name, mount_path=path, read_only=read_only or None)


def checksum(contents: Sequence[str]) -> str:
    """A digest of configuration content, for a pod-template annotation that rolls the pods
    whenever the content changes (a mounted ConfigMap updates in place, unread by most apps)."""
    digest = hashlib.sha256()
    for content in contents:
        digest.update(hashlib.sha256(content.encode()).digest())
    return digest.hexdigest()


def secret_checksum(secrets: Sequence[pulumi.Input[str]]) -> pulumi.Output[str]:
    """A digest of secret values that changes when any of them does, itself a secret Output.

    For a pod-template annotation: a changed Secret reaches neither environment variables nor
    subPath mounts, and PostgreSQL, Grafana and the services read their passwords at start
    only, so the pods must roll. The digest is salted per stack and deliberately slow (scrypt):
    whoever can read a Deployment, but not the Secret, cannot cheaply test guesses against it.
    """
    salt = f"picluster/{pulumi.get_project()}/{pulumi.get_stack()}/pod-secrets".encode()

    def digest(values: list[str]) -> str:
        material = b"".join(hashlib.sha256(value.encode()).digest() for value in values)
        return _scrypt(material, salt)

    return pulumi.Output.secret(pulumi.Output.all(*secrets).apply(digest))


@functools.cache
def _scrypt(material: bytes, salt: bytes) -> str:
    # Several pods read the same secrets (every service the DATABASE_URL): one slow digest each.
    return hashlib.scrypt(material, salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=1, dklen=16).hex()


def template_annotations(
    *, config: Sequence[str] = (), secrets: Sequence[pulumi.Input[str]] = ()
) -> dict[str, pulumi.Input[str]] | None:
    """The checksum annotations that roll a pod when its `config` or `secrets` change."""
    annotations: dict[str, pulumi.Input[str]] = {}
    if config:
        annotations[CHECKSUM_ANNOTATION] = checksum(config)
    if secrets:
        annotations[SECRET_CHECKSUM_ANNOTATION] = secret_checksum(secrets)
    return annotations or None


def pod_template(
    name: str,
    component: str,
    spec: k8s.core.v1.PodSpecArgs,
    *,
    config: Sequence[str] = (),
    secrets: Sequence[pulumi.Input[str]] = (),
) -> k8s.core.v1.PodTemplateSpecArgs:
    """A pod template labelled for `selector(name)`; `config` and `secrets` are checksummed
    into annotations, so a change to either rolls the pods."""
    return k8s.core.v1.PodTemplateSpecArgs(
        metadata=k8s.meta.v1.ObjectMetaArgs(
            labels=labels(name, component),
            annotations=template_annotations(config=config, secrets=secrets),
        ),
        spec=spec,
    )


def deployment(
    resource_name: str,
    namespace: pulumi.Input[str],
    name: str,
    component: str,
    spec: k8s.core.v1.PodSpecArgs,
    opts: pulumi.ResourceOptions,
    *,
    config: Sequence[str] = (),
    secrets: Sequence[pulumi.Input[str]] = (),
    replicas: int = 1,
    recreate: bool = False,
) -> k8s.apps.v1.Deployment:
    """A Deployment of `spec`; `recreate` stops the old pod first, for a ReadWriteOnce volume.

    `config` and `secrets` are what the pods read at start: a change to either rolls them."""
    return k8s.apps.v1.Deployment(
        resource_name,
        metadata=metadata(name, namespace, component),
        spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=replicas,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector(name)),
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate") if recreate else None,
            template=pod_template(name, component, spec, config=config, secrets=secrets),
        ),
        opts=opts,
    )


def service(
    resource_name: str,
    namespace: pulumi.Input[str],
    name: str,
    component: str,
    ports: Mapping[str, int],
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.Service:
    """A ClusterIP Service in front of the pods of `selector(name)`, port name -> port."""
    return k8s.core.v1.Service(
        resource_name,
        metadata=metadata(name, namespace, component),
        spec=k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP",
            selector=selector(name),
            ports=[
                k8s.core.v1.ServicePortArgs(name=port_name, port=port, target_port=port)
                for port_name, port in ports.items()
            ],
        ),
        opts=opts,
    )


def service_account_with_cluster_role(
    resource_name: str,
    account_name: str,
    namespace: pulumi.Input[str],
    component: str,
    rules: Sequence[k8s.rbac.v1.PolicyRuleArgs],
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.ServiceAccount:
    """A service account of `namespace` granted `rules` cluster-wide.

    The ClusterRole and its binding are named `picluster-<account>`. The token is not mounted by
    default: a pod that talks to the API server opts in.
    """
    account = k8s.core.v1.ServiceAccount(
        resource_name,
        metadata=metadata(account_name, namespace, component),
        automount_service_account_token=False,
        opts=opts,
    )
    cluster_name = f"{PART_OF}-{account_name}"
    role = k8s.rbac.v1.ClusterRole(
        resource_name,
        metadata=metadata(cluster_name, None, component),
        rules=list(rules),
        opts=opts,
    )
    k8s.rbac.v1.ClusterRoleBinding(
        resource_name,
        metadata=metadata(cluster_name, None, component),
        role_ref=k8s.rbac.v1.RoleRefArgs(
            api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role.metadata.name
        ),
        subjects=[
            k8s.rbac.v1.SubjectArgs(
                kind="ServiceAccount", name=account.metadata.name, namespace=namespace
            )
        ],
        opts=opts,
    )
    return account
