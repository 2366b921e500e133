"""The game as plain typed data, independent of where it runs.

`build_app` turns the validated `app` config into an `AppModel`: the frontend, each Node.js
service and PostgreSQL, with their images, ports, probes, routes and the secrets they need
(named by `SecretKey`, never by value). A Docker renderer and a Kubernetes renderer turn the same
model into resources; the stacks differ in the renderer, not in copies of the app.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from components import versions
from components.config import AppConfig, ServiceConfig
from components.images import TAG_LENGTH, BuildKind, ImageBuild, plan_build

ASSETS = Path(__file__).parent / "assets"

DEMO_SERVICE_NAME = "api"
DEMO_SERVICE_PORT = 3000
POSTGRES_PORT = 5432
POSTGRES_SCRIPTS_DIR = "/opt/picluster"
"""Where the database container finds picluster's start scripts."""
POSTGRES_START = f"{POSTGRES_SCRIPTS_DIR}/postgres-start.sh"


class Role(StrEnum):
    """What a workload is to the app."""

    FRONTEND = "frontend"
    SERVICE = "service"
    DATABASE = "database"


class SecretKey(StrEnum):
    """A secret a workload needs, resolved by the renderer from the stack's secrets."""

    DB_PASSWORD = "db-password"  # noqa: S105 - a name, not a value
    DATABASE_URL = "database-url"
    GRAFANA_ADMIN_PASSWORD = "grafana-admin-password"  # noqa: S105 - a name, not a value


class ProbeKind(StrEnum):
    """How readiness is checked where the platform checks it natively (Kubernetes)."""

    HTTP = "http"
    TCP = "tcp"
    EXEC = "exec"


@dataclass(frozen=True, kw_only=True)
class Probe:
    """A readiness and liveness check."""

    kind: ProbeKind
    """The native check Kubernetes runs."""
    path: str | None = None
    """HTTP path for `ProbeKind.HTTP`."""
    command: tuple[str, ...]
    """The same check as a command inside the container, for Docker's HEALTHCHECK."""


@dataclass(frozen=True, kw_only=True)
class Resources:
    """CPU and memory a workload asks for and may use, in Kubernetes quantities."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str


# Sized for a Raspberry Pi 4 with 4 GB: the game keeps most of the memory; limits catch leaks.
FRONTEND_RESOURCES = Resources(
    cpu_request="10m", memory_request="16Mi", cpu_limit="250m", memory_limit="64Mi"
)
SERVICE_RESOURCES = Resources(
    cpu_request="50m", memory_request="96Mi", cpu_limit="500m", memory_limit="256Mi"
)
DATABASE_RESOURCES = Resources(
    cpu_request="100m", memory_request="256Mi", cpu_limit="1000m", memory_limit="512Mi"
)


def _frozen(mapping: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One container image run as one or more replicas."""

    name: str
    """DNS name inside the app: the Docker network alias, the Kubernetes Service name."""
    role: Role
    image: str
    """Pinned image reference, multi-arch (amd64 and arm64), or the content-tagged reference of
    the image picluster builds (`build`)."""
    build: ImageBuild | None = None
    """How picluster builds `image` from the studio's source, when it does."""
    migrate: tuple[str, ...] | None = None
    """Run once per release, to completion, before the release's replicas start."""
    port: int
    """The port the container listens on."""
    probe: Probe
    resources: Resources
    replicas: int = 1
    command: tuple[str, ...] | None = None
    """Overrides the image's command when set."""
    env: Mapping[str, str] = field(default_factory=_frozen)
    """Plain environment variables."""
    secret_env: Mapping[str, SecretKey] = field(default_factory=lambda: MappingProxyType({}))
    """Environment variables whose values are secrets."""
    files: Mapping[str, str] = field(default_factory=_frozen)
    """Plain files written into the container: path to content."""
    secret_files: Mapping[str, SecretKey] = field(default_factory=lambda: MappingProxyType({}))
    """Files holding a secret: path to secret."""
    route: str | None = None
    """URL path prefix the frontend or ingress routes to this workload."""
    metrics_path: str | None = None
    """Where Prometheus scrapes the workload's own metrics, when it has them."""
    data_path: str | None = None
    """Directory whose content must survive the container (the database's data)."""
    storage: str | None = None
    """Size of the persistent volume on Kubernetes."""
    run_as_user: int | None = None
    """Non-root user id the image runs as (None: the image's own user, on Docker only)."""
    writable_paths: tuple[str, ...] = ("/tmp",)
    """Directories the image writes to, given scratch space under a read-only root filesystem."""


@dataclass(frozen=True, kw_only=True)
class DatabaseInfo:
    """What clients need to reach PostgreSQL."""

    host: str
    port: int
    name: str
    user: str


@dataclass(frozen=True, kw_only=True)
class BackupInfo:
    """Scheduled database dumps."""

    schedule: str
    """Cron schedule."""
    keep: int
    """How many dumps to keep."""
    storage: str
    """Size of the backup volume."""


@dataclass(frozen=True, kw_only=True)
class AppModel:
    """The whole game."""

    frontend: Workload
    services: tuple[Workload, ...]
    database: Workload
    db: DatabaseInfo
    domain: str | None
    backup: BackupInfo | None
    uses_placeholder_page: bool
    """True when the frontend serves picluster's placeholder Phaser page."""

    @property
    def builds(self) -> tuple[Workload, ...]:
        """The workloads whose image picluster builds, in start order."""
        return tuple(w for w in self.workloads if w.build is not None)

    @property
    def workloads(self) -> tuple[Workload, ...]:
        """Database first, then services, then the frontend: the order they start in."""
        return (self.database, *self.services, self.frontend)


def _node_probe(port: int, path: str | None) -> Probe:
    # Every Node.js image has `node`, not always wget or curl: check with node itself.
    if path is None:
        script = (
            f"require('net').connect({port},'127.0.0.1')"
            ".on('connect',()=>process.exit(0)).on('error',()=>process.exit(1))"
        )
        return Probe(kind=ProbeKind.TCP, command=("node", "-e", script))
    script = (
        f"require('http').get('http://127.0.0.1:{port}{path}',"
        "r=>process.exit(r.statusCode<400?0:1)).on('error',()=>process.exit(1))"
    )
    return Probe(kind=ProbeKind.HTTP, path=path, command=("node", "-e", script))


def _shell_probe(port: int, path: str | None) -> Probe:
    """The check for an image built from the studio's own Dockerfile, which need not have
    `node`: busybox or curl first, `node` last (the service contract: `sh` with `wget`, `curl`
    or `node`). Kubernetes checks natively; this is Docker's HEALTHCHECK."""
    node = _node_probe(port, path)
    fallback = shlex.join(node.command)
    if path is None:
        script = f"nc -z 127.0.0.1 {port} || {fallback}"
        return Probe(kind=ProbeKind.TCP, command=("sh", "-c", script))
    url = f"http://127.0.0.1:{port}{path}"
    script = f"wget -q -O /dev/null {url} || curl -fsS -o /dev/null {url} || {fallback}"
    return Probe(kind=ProbeKind.HTTP, path=path, command=("sh", "-c", script))


def release(workload: Workload) -> str:
    """What names a release of `workload` (its migration container or Job): the content tag of
    a built image, else a hash of the pinned image reference (a new image is a new release; a
    digest reference would otherwise give 64 hex digits)."""
    if workload.build is not None:
        return workload.build.tag
    return hashlib.sha256(workload.image.encode()).hexdigest()[:TAG_LENGTH]


DEMO_API = ASSETS / "demo-api"
"""The demo API's source folder: a Node.js project, built like a studio's own service."""


def _demo_service() -> ServiceConfig:
    return ServiceConfig.model_validate(
        {
            "name": DEMO_SERVICE_NAME,
            "build": str(DEMO_API),
            "port": DEMO_SERVICE_PORT,
            "path": f"/{DEMO_SERVICE_NAME}",
            "healthPath": f"/{DEMO_SERVICE_NAME}/hello",
            "metricsPath": "/metrics",
        }
    )


def _service(config: ServiceConfig, *, demo: bool, images: ImageSource) -> Workload:
    env = {"PORT": str(config.port), **config.env}
    if demo:
        env["ROUTE_PREFIX"] = config.route
    build = images.build(config.name, config.build) if config.build is not None else None
    return Workload(
        name=config.name,
        role=Role.SERVICE,
        image=images.ref(build) if build is not None else str(config.image),
        build=build,
        migrate=tuple(config.migrate) if config.migrate is not None else None,
        port=config.port,
        replicas=config.replicas,
        env=_frozen(env),
        secret_env=MappingProxyType({"DATABASE_URL": SecretKey.DATABASE_URL}),
        probe=(
            _shell_probe(config.port, config.health_path)
            if build is not None and build.kind is BuildKind.DOCKERFILE
            else _node_probe(config.port, config.health_path)
        ),
        route=config.route,
        metrics_path=config.metrics_path,
        resources=SERVICE_RESOURCES,
        run_as_user=config.run_as_user,
    )


def _database(config: AppConfig) -> Workload:
    db = config.database
    scripts = ASSETS / "postgres"
    return Workload(
        name="postgres",
        role=Role.DATABASE,
        image=db.image,
        port=POSTGRES_PORT,
        # The image's entrypoint sets the password only when it creates the database: this
        # wrapper also makes an existing database's password the current one (rotation).
        command=("bash", POSTGRES_START, "postgres"),
        files=_frozen(
            {
                f"{POSTGRES_SCRIPTS_DIR}/{name}": (scripts / name).read_text()
                for name in ("postgres-start.sh", "pg-password.sh")
            }
        ),
        env=_frozen(
            {
                "POSTGRES_DB": db.name,
                "POSTGRES_USER": db.user,
                "POSTGRES_PASSWORD_FILE": "/run/secrets/db-password",
                "PGDATA": "/var/lib/postgresql/data/pgdata",
            }
        ),
        secret_files=MappingProxyType({"/run/secrets/db-password": SecretKey.DB_PASSWORD}),
        probe=Probe(
            kind=ProbeKind.EXEC,
            command=("pg_isready", "-U", db.user, "-d", db.name, "-h", "127.0.0.1"),
        ),
        data_path="/var/lib/postgresql/data",
        storage=db.storage,
        resources=DATABASE_RESOURCES,
        run_as_user=70,
        writable_paths=("/tmp", "/var/run/postgresql"),
    )


def _frontend(config: AppConfig, images: ImageSource) -> Workload:
    frontend = config.frontend
    files: dict[str, str] = {}
    build = None
    if frontend.static is not None:
        build = images.build("frontend", frontend.static, static=True)
    elif frontend.build is not None:
        build = images.build("frontend", frontend.build)
    elif frontend.image is None:
        for name in ("index.html", "game.js"):
            files[f"/usr/share/nginx/html/{name}"] = (ASSETS / "frontend" / name).read_text()
    url = f"http://127.0.0.1:{frontend.port}/healthz"
    return Workload(
        name="frontend",
        role=Role.FRONTEND,
        image=images.ref(build) if build is not None else frontend.image or versions.NGINX,
        build=build,
        port=frontend.port,
        replicas=frontend.replicas,
        files=_frozen(files),
        probe=Probe(
            kind=ProbeKind.HTTP,
            path="/healthz",
            # nginx:alpine has busybox wget; Debian-based nginx images have curl.
            command=(
                "sh",
                "-c",
                f"wget -q -O /dev/null {url} || curl -fsS -o /dev/null {url}",
            ),
        ),
        route="/",
        resources=FRONTEND_RESOURCES,
        run_as_user=101,  # the nginx user of the nginx images
        writable_paths=("/tmp", "/var/cache/nginx"),
    )


@dataclass(frozen=True, kw_only=True)
class ImageSource:
    """Where built images go and where their folders are: the repository the target pulls from
    (`picluster-<stack>` on the local daemon, the in-cluster registry or the user's on K3s) and
    the project directory that `build`/`static` paths are relative to."""

    repository: str
    project_dir: Path

    def build(self, name: str, folder: str, *, static: bool = False) -> ImageBuild:
        """The build of `folder` (absolute, or relative to the project) as image `name`."""
        return plan_build(name, self.project_dir / folder, static=static)

    def ref(self, build: ImageBuild) -> str:
        """The reference the target runs `build`'s image under."""
        return build.ref(self.repository)


def build_app(config: AppConfig, images: ImageSource) -> AppModel:
    """The app model for the validated `app` config; the demo API when no service is given."""
    demo = config.services is None
    services = [_demo_service()] if demo else list(config.services or [])
    return AppModel(
        frontend=_frontend(config, images),
        services=tuple(_service(s, demo=demo, images=images) for s in services),
        database=_database(config),
        db=DatabaseInfo(
            host="postgres",
            port=POSTGRES_PORT,
            name=config.database.name,
            user=config.database.user,
        ),
        domain=config.domain,
        backup=(
            BackupInfo(
                schedule=config.database.backup.schedule,
                keep=config.database.backup.keep,
                storage=config.database.backup.storage,
            )
            if config.database.backup.enabled
            else None
        ),
        uses_placeholder_page=config.frontend.image is None
        and config.frontend.static is None
        and config.frontend.build is None,
    )
