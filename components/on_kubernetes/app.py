"""Kubernetes renderer of the app model: the game on K3s, hardened and sized for Raspberry Pis.

One namespace under Pod Security `restricted`; PostgreSQL as a StatefulSet on a retained volume
with scheduled `pg_dump` backups and the restore's pod template; each service as a Deployment
and Service spread across the Pis; the frontend behind K3s's Traefik ingress, which also routes
each service's path; and NetworkPolicies that deny everything but ingress -> frontend ->
services -> database, DNS, and monitoring.

Images picluster builds from the studio's source are built and pushed by one local command each
(components/image_build.py) before anything runs them: to the in-cluster registry
(components/on_kubernetes/registry.py, declared first) or to the user's. Pods run a built image
by the digest its push printed (`<ref>:<tag>@sha256:...`): a tag overwritten in the registry
later is not what they run. A service with a
`migrate` command gets a Job per release (components/on_kubernetes/migrations.py) that its
Deployment waits for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pulumi
import pulumi_kubernetes as k8s

from components.app_model import AppModel, Role, SecretKey, Workload
from components.image_build import RegistryPush, TunnelPush, declare_build, pinned_ref
from components.nginx import nginx_conf
from components.on_kubernetes import pods, policies, volumes
from components.on_kubernetes.backup import render_backup
from components.on_kubernetes.migrations import render_migration
from components.on_kubernetes.platform import KubernetesPlatform, selector
from components.on_kubernetes.registry import render_registry
from components.on_kubernetes.restore import render_restore
from components.on_kubernetes.workloads import (
    container_port,
    file_key,
    pod_spec,
    prefer_servers,
    workload_container,
)
from components.secrets import StackSecrets

APP_SECRET = "app-secrets"  # noqa: S105 - a Secret's name
"""The Secret holding the database password and DATABASE_URL."""


@dataclass(frozen=True, kw_only=True)
class KubernetesApp:
    """What the Kubernetes rendering of the app hands back."""

    frontend_url: pulumi.Output[str]
    namespace: pulumi.Output[str]


def _secret_keys(app: AppModel) -> dict[SecretKey, str]:
    """Secret key -> key inside the app Secret."""
    used = {s for w in app.workloads for s in (*w.secret_env.values(), *w.secret_files.values())}
    return {key: key.value for key in SecretKey if key in used}


def _secrets_read(workload: Workload, secrets: StackSecrets) -> list[pulumi.Output[str]]:
    """The secret values `workload` reads at start, in a stable order."""
    keys = sorted({*workload.secret_env.values(), *workload.secret_files.values()})
    return [secrets.get(key) for key in keys]


def _config_map(
    parent: pulumi.Resource, name: str, ns: pulumi.Input[str], files: dict[str, str]
) -> k8s.core.v1.ConfigMap:
    return k8s.core.v1.ConfigMap(
        name,
        metadata=pods.metadata(name, ns, "config"),
        data=files,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def _files_config_map(
    parent: pulumi.Resource, ns: pulumi.Input[str], workload: Workload, files: dict[str, str]
) -> str | None:
    """The ConfigMap `<workload>-files` holding the files the workload mounts; its name, or None
    when it mounts none."""
    if not files:
        return None
    name = f"{workload.name}-files"
    _config_map(parent, name, ns, {file_key(path): content for path, content in files.items()})
    return name


def _service(
    parent: pulumi.Resource,
    name: str,
    ns: pulumi.Input[str],
    workload: Workload,
    *,
    headless: bool = False,
) -> k8s.core.v1.Service:
    return k8s.core.v1.Service(
        f"{name}-{workload.name}",
        metadata=pods.metadata(workload.name, ns, workload.role.value),
        spec=k8s.core.v1.ServiceSpecArgs(
            cluster_ip="None" if headless else None,
            selector=selector(workload.name),
            ports=[
                k8s.core.v1.ServicePortArgs(
                    name="http" if workload.role is not Role.DATABASE else "postgres",
                    port=workload.port,
                    target_port=container_port(workload),
                )
            ],
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def render_app(
    parent: pulumi.Resource,
    name: str,
    app: AppModel,
    secrets: StackSecrets,
    platform: KubernetesPlatform,
    push: TunnelPush | RegistryPush | None = None,
) -> KubernetesApp:
    """Declare the app's Kubernetes objects as children of `parent`; `push` is where the images
    the app builds go (required when it builds any)."""
    opts = pulumi.ResourceOptions(parent=parent)
    images = _images(parent, name, app, platform, push)
    # Retained: deleting a namespace deletes its volumes, and the database's must survive.
    ns_resource = pods.namespace(
        parent, f"{name}-namespace", platform.app_namespace, "restricted", retain=True
    )
    ns = ns_resource.metadata.name

    keys = _secret_keys(app)
    app_secret = k8s.core.v1.Secret(
        f"{name}-secrets",
        metadata=pods.metadata(APP_SECRET, ns, "secrets"),
        type="Opaque",
        string_data={entry: secrets.get(key) for key, entry in keys.items()},
        opts=opts,
    )

    network_policies = policies.render_app_policies(parent, name, ns, app, platform)
    database = _database(parent, name, ns, app, secrets, platform)
    for service in app.services:
        built = images.get(service.name)
        after: list[pulumi.Resource] = [built.command] if built else []
        image = built.image if built else None
        if service.migrate is not None:
            # The migration reads the database through the Secret, past the NetworkPolicies.
            after = [
                render_migration(
                    parent,
                    name,
                    ns,
                    service,
                    secret_name=APP_SECRET,
                    # The ConfigMap `_deployment` declares, when the service mounts files.
                    config_map=f"{service.name}-files" if service.files else None,
                    files=dict(service.files),
                    depends_on=[*after, database, app_secret, *network_policies],
                    image=image,
                )
            ]
        _deployment(parent, name, ns, service, secrets, depends_on=after, image=image)
        _service(parent, name, ns, service)
    frontend_built = images.get(app.frontend.name)
    _frontend(parent, name, ns, app, secrets, built=frontend_built)
    if app.backup is not None:
        render_backup(parent, name, ns, app, app.backup, secrets, platform)
        render_restore(parent, name, ns, app)

    paths = [
        k8s.networking.v1.HTTPIngressPathArgs(
            path=w.route or "/",
            path_type="Prefix",
            backend=k8s.networking.v1.IngressBackendArgs(
                service=k8s.networking.v1.IngressServiceBackendArgs(
                    name=w.name, port=k8s.networking.v1.ServiceBackendPortArgs(number=w.port)
                )
            ),
        )
        for w in (*app.services, app.frontend)
    ]
    k8s.networking.v1.Ingress(
        f"{name}-ingress",
        metadata=pods.metadata("game", ns, "ingress"),
        spec=k8s.networking.v1.IngressSpecArgs(
            ingress_class_name=platform.ingress_class,
            # No host: the game answers on every Pi's address and on any name pointed at one
            # (app.domain names the URLs only; see KubernetesPlatform.domain).
            rules=[
                k8s.networking.v1.IngressRuleArgs(
                    http=k8s.networking.v1.HTTPIngressRuleValueArgs(paths=paths),
                )
            ],
        ),
        opts=opts,
    )
    host = platform.domain or platform.public_address
    return KubernetesApp(
        frontend_url=pulumi.Output.from_input(f"http://{host}/"),
        namespace=ns,
    )


@dataclass(frozen=True, kw_only=True)
class _Built:
    """A workload's image as its push left it."""

    command: pulumi.Resource
    """The build-and-push command, which the workload's pods wait for."""
    image: pulumi.Output[str]
    """`<ref>@sha256:...`, the digest the registry served after the push."""


def _images(
    parent: pulumi.Resource,
    name: str,
    app: AppModel,
    platform: KubernetesPlatform,
    push: TunnelPush | RegistryPush | None,
) -> dict[str, _Built]:
    """Build and push each image the app builds, after the in-cluster registry when that is where
    they go; workload name -> its pushed image."""
    if not app.builds:
        return {}
    if push is None:
        raise ValueError("the app builds images: render_app needs where to push them")
    registry = render_registry(parent, name, platform) if isinstance(push, TunnelPush) else None
    after = pulumi.ResourceOptions(parent=parent, depends_on=registry.ready if registry else [])
    if registry is not None and isinstance(push, TunnelPush):
        push = replace(push, registry_id=registry.storage_id)
    built: dict[str, _Built] = {}
    for workload in app.builds:
        assert workload.build is not None
        build = declare_build(
            parent, f"{name}-{workload.name}-build", workload.build, workload.image, push, after
        )
        built[workload.name] = _Built(command=build, image=pinned_ref(build, workload.image))
    return built


def _database(
    parent: pulumi.Resource,
    name: str,
    ns: pulumi.Input[str],
    app: AppModel,
    secrets: StackSecrets,
    platform: KubernetesPlatform,
) -> k8s.apps.v1.StatefulSet:
    db = app.database
    claim = f"{db.name}-data"
    # The claim is its own resource, retained on destroy: a replaced StatefulSet or a
    # `pulumi destroy` leaves the game's data where it is.
    volumes.persistent_volume_claim(
        f"{name}-db-data",
        ns,
        claim,
        "storage",
        db.storage or "5Gi",
        config_key="picluster:app.database.storage",
        platform=platform,
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True, protect=True),
    )
    files = dict(db.files)
    config_name = _files_config_map(parent, ns, db, files)
    container = workload_container(
        db, APP_SECRET, config_map=config_name, files=files, data_volume="data"
    )
    statefulset = k8s.apps.v1.StatefulSet(
        f"{name}-{db.name}",
        metadata=pods.metadata(db.name, ns, db.role.value),
        spec=k8s.apps.v1.StatefulSetSpecArgs(
            service_name=db.name,
            replicas=1,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector(db.name)),
            # The start script sets the role's password from the Secret: a new password
            # restarts the database, which then refuses the old one.
            template=pods.pod_template(
                db.name,
                db.role.value,
                pod_spec(
                    db,
                    [container],
                    config_map=config_name,
                    extra_volumes=[
                        k8s.core.v1.VolumeArgs(
                            name="data",
                            persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                                claim_name=claim
                            ),
                        )
                    ],
                    secret_name=APP_SECRET,
                    affinity=prefer_servers(),
                ),
                config=sorted(files.values()),
                secrets=_secrets_read(db, secrets),
            ),
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    _service(parent, name, ns, db, headless=True)
    return statefulset


def _deployment(
    parent: pulumi.Resource,
    name: str,
    ns: pulumi.Input[str],
    workload: Workload,
    secrets: StackSecrets,
    *,
    extra_files: dict[str, str] | None = None,
    depends_on: Sequence[pulumi.Resource] = (),
    image: pulumi.Input[str] | None = None,
) -> None:
    """`image`: what the pods run instead of `workload.image` (a built image by its digest)."""
    files = {**workload.files, **(extra_files or {})}
    config_name = _files_config_map(parent, ns, workload, files)
    container = workload_container(
        workload, APP_SECRET, config_map=config_name, files=files, image=image
    )
    spread = [
        k8s.core.v1.TopologySpreadConstraintArgs(
            max_skew=1,
            topology_key="kubernetes.io/hostname",
            when_unsatisfiable="ScheduleAnyway",
            label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector(workload.name)),
        )
    ]
    k8s.apps.v1.Deployment(
        f"{name}-{workload.name}",
        metadata=pods.metadata(workload.name, ns, workload.role.value),
        spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=workload.replicas,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector(workload.name)),
            # subPath-mounted files and secrets in env do not update in place, and the services
            # read DATABASE_URL at start: a change to either rolls the pods.
            template=pods.pod_template(
                workload.name,
                workload.role.value,
                pod_spec(
                    workload,
                    [container],
                    config_map=config_name,
                    topology_spread=spread,
                    secret_name=APP_SECRET,
                ),
                config=sorted(files.values()),
                secrets=_secrets_read(workload, secrets),
            ),
        ),
        # Its image pushed, its release's migration done: a failed one leaves the old pods be.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )
    if workload.replicas > 1:
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-{workload.name}-pdb",
            metadata=pods.metadata(workload.name, ns, "availability"),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                min_available=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector(workload.name)),
            ),
            opts=pulumi.ResourceOptions(parent=parent),
        )


def _frontend(
    parent: pulumi.Resource,
    name: str,
    ns: pulumi.Input[str],
    app: AppModel,
    secrets: StackSecrets,
    *,
    built: _Built | None = None,
) -> None:
    frontend = app.frontend
    # Traefik routes the service paths itself: nginx only serves the game, listening on an
    # unprivileged port as the non-root nginx user.
    _deployment(
        parent,
        name,
        ns,
        frontend,
        secrets,
        extra_files={
            "/etc/nginx/conf.d/default.conf": nginx_conf(
                app, resolver=None, listen_port=container_port(frontend)
            ),
            "/etc/nginx/nginx.conf": UNPRIVILEGED_NGINX_CONF,
        },
        depends_on=[built.command] if built else [],
        image=built.image if built else None,
    )
    _service(parent, name, ns, frontend)


UNPRIVILEGED_NGINX_CONF = """# nginx as a non-root user under a read-only root filesystem:
# every file it writes (pid, temporary bodies, caches) lives in the writable /tmp.
worker_processes auto;
error_log /dev/stderr warn;
pid /tmp/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path /tmp/client_temp;
    proxy_temp_path /tmp/proxy_temp;
    fastcgi_temp_path /tmp/fastcgi_temp;
    uwsgi_temp_path /tmp/uwsgi_temp;
    scgi_temp_path /tmp/scgi_temp;
    include /etc/nginx/conf.d/*.conf;
}
"""
