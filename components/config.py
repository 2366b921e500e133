"""The stack configuration contract: one validated model, loaded once.

Every key lives under the `picluster:` namespace. Shapes and types are checked by pydantic models
(`extra="forbid"` at every depth); the invariants that span keys (unique node names, an odd number
of servers, unique service paths) are checked after that, each one whose keys parsed (`_CHECKS`),
so a bad value hides nothing else. Every problem is reported in one `ConfigError` whose lines each
name the full key path (`picluster:nodes[1].host`) and what would be valid, in words
(`components/config_errors.py`), before any resource is declared.

Secret keys (`sshPrivateKey` and its `sshKeyPassphrase`, `k3sToken`, `dbPassword`,
`grafanaAdminPassword`, the `alerts*` receiver secrets and the S3 keys of etcd snapshots
`etcdS3AccessKey` and `etcdS3SecretKey`) are never copied into the model: they are read as Pulumi
secrets by `StackConfig.secret`, and an error about them never repeats their value.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)
from pydantic.alias_generators import to_camel

from components import datastore_snapshots, docker_host, images, registries, ssh_auth, versions
from components.config_errors import (
    STACK_PLACEHOLDER,
    ConfigError,
    Loc,
    Parsed,
    command,
    parse,
    set_command,
    steps,
)

NAMESPACE = "picluster"

ALERT_SECRET_KEYS: tuple[str, ...] = (
    "alertsWebhookUrl",
    "alertsWebhookToken",
    "alertsNtfyUrl",
    "alertsNtfyToken",
    "alertsSlackWebhookUrl",
    "alertsSmtpPassword",
    "alertsHeartbeatUrl",
)
"""Secrets of Alertmanager's receivers: URLs that carry tokens, tokens, the SMTP password."""
ALERT_SECRET_URLS = frozenset(
    {"alertsWebhookUrl", "alertsNtfyUrl", "alertsSlackWebhookUrl", "alertsHeartbeatUrl"}
)
SECRET_KEYS: tuple[str, ...] = (
    "sshPrivateKey",
    "sshKeyPassphrase",
    "k3sToken",
    "dbPassword",
    "grafanaAdminPassword",
    *ALERT_SECRET_KEYS,
    "etcdS3AccessKey",
    "etcdS3SecretKey",
    "registryPassword",
)
"""Top-level keys that hold secrets: read with `StackConfig.secret`, never put in the model."""

RESERVED_NAMES = frozenset(
    {
        "frontend",
        "postgres",
        "prometheus",
        "grafana",
        "node-exporter",
        "cadvisor",
        "postgres-exporter",
        "blackbox-exporter",
        "kube-state-metrics",
        "alertmanager",
    }
)
"""Workload names picluster uses itself; a service may not take one of them."""

K3sComponent = Literal[
    "coredns", "servicelb", "traefik", "local-storage", "metrics-server", "runtimes"
]
"""Packaged K3s components that `k3s.disable` names."""

APP_NEEDS: dict[str, str] = {
    "traefik": "the game's Ingress (and Grafana's) is served by K3s's Traefik",
    "local-storage": "the database, backup, Prometheus and Grafana volumes use its local-path "
    "StorageClass",
    "coredns": "the services find PostgreSQL and each other by name through it",
}
"""Packaged components the app and monitoring depend on: disabling one breaks them."""
OPTIONAL_COMPONENTS = ("servicelb", "metrics-server", "runtimes")


class Target(StrEnum):
    """Where the app runs."""

    DOCKER = "docker"
    K3S = "k3s"


class NodeRole(StrEnum):
    """A K3s node's role."""

    SERVER = "server"
    AGENT = "agent"


# --- value types -------------------------------------------------------------------------------

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_DOTTED_NUMBERS = re.compile(r"^[0-9.]+$")
_IMAGE = re.compile(
    r"^(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+(?=/))?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$")
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_K3S_VERSION = re.compile(r"^v[0-9]+\.[0-9]+\.[0-9]+\+k3s[0-9]+$")
_HOST_KEY = re.compile(
    r"^(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) "
    r"[A-Za-z0-9+/]+={0,3}$"
)
_TAINT = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?(=[A-Za-z0-9._-]*)?:"
    r"(NoSchedule|PreferNoSchedule|NoExecute)$"
)


def _dns_label(value: str) -> str:
    if not _LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid name; use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return value


def _host(value: str) -> str:
    if _DOTTED_NUMBERS.match(value):
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address or hostname") from None
        return value
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is not an IPv4 address or hostname")
    return value


def _ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address (for example 127.0.0.1)") from None
    return value


def _image(value: str) -> str:
    match = _IMAGE.match(value)
    if not match:
        name, colon, tag = value.partition(":")
        if _IMAGE.match(name.lower() + colon + tag):
            raise ValueError(
                f"{value!r} has capital letters in its name, which image names cannot have; "
                f"write {name.lower() + colon + tag!r}"
            )
        raise ValueError(f"{value!r} is not an image reference such as nginx:1.27.3-alpine")
    if match["digest"] is None and match["tag"] in (None, "latest"):
        raise ValueError(
            f"{value!r} is not pinned; give a version tag or digest, such as node:22.12.0-alpine"
        )
    return value


_REGISTRY = re.compile(r"^(?P<host>[A-Za-z0-9.-]+(:[0-9]{1,5})?)(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


def _registry(value: str) -> str:
    host = value.split("/")[0]
    if not _REGISTRY.match(value) or ("." not in host and ":" not in host and host != "localhost"):
        raise ValueError(
            f"{value!r} is not a registry such as registry.lan:5000 or ghcr.io/studio "
            "(host[:port][/path], no scheme)"
        )
    return value


def _path(value: str) -> str:
    if not _PATH.match(value):
        raise ValueError(
            f"{value!r} is not a URL path prefix; use '/something' (no trailing '/', not '/' alone)"
        )
    return value


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a storage size such as 5Gi or 500Mi")
    return value


def _duration(value: str) -> str:
    if not _DURATION.match(value):
        raise ValueError(f"{value!r} is not a duration such as 30s, 15d or 2w")
    return value


def _k3s_version(value: str) -> str:
    if not _K3S_VERSION.match(value):
        raise ValueError(
            f"{value!r} is not a pinned K3s release; give one such as v1.31.4+k3s1 "
            "(channels like 'stable' or 'latest' are not accepted)"
        )
    return value


def _cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5 or not all(re.fullmatch(r"[0-9*/,-]+", f) for f in fields):
        raise ValueError(
            f"{value!r} is not a cron schedule; give five fields such as '17 3 * * *' "
            "(03:17 every day)"
        )
    return value


def _docker_host(value: str) -> str:
    if not re.match(r"^(unix|tcp|ssh)://.+", value):
        raise ValueError(
            f"{value!r} is not a Docker host; use unix:///var/run/docker.sock, "
            "tcp://host:2376 or ssh://user@host"
        )
    return value


_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


def _host_key_line(value: str) -> str:
    """The key line `value` names: itself, or the first line of the `.pub` file it is a path of."""
    text = value.strip()
    if text.split(" ", 1)[0] in (*_KEY_TYPES, "ssh-rsa") or " " in text:
        return text
    path = Path(text).expanduser()
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError):
        raise ValueError(
            f"{text!r} is neither an OpenSSH public host key nor a readable .pub file; give "
            "the Pi's /etc/ssh/ssh_host_ed25519_key.pub (its content or a copy's path)"
        ) from None
    return next((line for line in lines if line and not line.startswith("#")), "")


def _host_key(value: str) -> str:
    """The pinned key as `type base64`: a line as `ssh-keyscan` prints it (with or without the
    host name in front), a `.pub` line with its trailing comment, or the path of a `.pub` file."""
    fields = _host_key_line(value).split()
    if len(fields) >= 3 and fields[1] in (*_KEY_TYPES, "ssh-rsa") and fields[0] not in _KEY_TYPES:
        fields = fields[1:]  # `host ssh-ed25519 AAAA...`, as ssh-keyscan and known_hosts write it
    key = " ".join(fields[:2])
    if fields and fields[0] == "ssh-rsa":
        # pulumi-command pins the key's own algorithm (HostKeyAlgorithms = ["ssh-rsa"], SHA-1
        # signatures: provider/pkg/provider/remote/connection.go), which OpenSSH 8.8+ refuses.
        raise ValueError(
            "is an ssh-rsa key, which cannot be pinned: the SSH client then asks only for SHA-1 "
            "'ssh-rsa' signatures, which OpenSSH 8.8 and later (Raspberry Pi OS Bookworm) refuse, "
            "and every connection would retry for minutes; pin the Pi's ed25519 key instead, the "
            "line `ssh-keyscan -t ed25519 <host>` prints without the host name "
            "('ssh-ed25519 AAAAC3Nza...')"
        )
    if not _HOST_KEY.match(key):
        raise ValueError(
            "is not an OpenSSH public host key; give the key line as `ssh-keyscan` prints it "
            "(such as 'ssh-ed25519 AAAAC3Nza...', a trailing comment is fine) or the path of "
            "the Pi's ssh_host_ed25519_key.pub"
        )
    return key


_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
_LABEL_PREFIX = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_KUBERNETES_DOMAINS = ("kubernetes.io", "k8s.io")
NODE_ROLE_PREFIX = "node-role.kubernetes.io"
"""The one Kubernetes-reserved label prefix a user may set on a node (picluster sets it through
the API, where the kubelet's own restriction on it does not apply)."""
K3S_ROLE_LABELS = frozenset(
    f"{NODE_ROLE_PREFIX}/{role}" for role in ("control-plane", "master", "etcd")
)
"""Role labels K3s owns: a server sets control-plane and master to "true" at every start (k3s-io/k3s
pkg/server/server.go setNodeLabelsAndAnnotations), an etcd member sets etcd, and K3s trusts a
node carrying them as a server (its supervisor's certificate-name filter). Set by hand they would
flip back at each K3s start on a server and mislabel an agent as part of the control plane."""


def _node_labels(value: dict[str, str]) -> dict[str, str]:
    problems: list[str] = []
    for key, label in value.items():
        prefix, _, name = key.rpartition("/")
        if not _LABEL_NAME.match(name) or (
            prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix))
        ):
            problems.append(
                f"{key!r} is not a label key: an optional DNS prefix and '/', then up to 63 "
                "letters, digits, '-', '_' or '.', such as game.studio/tier"
            )
        elif prefix != NODE_ROLE_PREFIX and any(
            prefix == domain or prefix.endswith(f".{domain}") for domain in _KUBERNETES_DOMAINS
        ):
            problems.append(
                f"{key!r} uses a prefix Kubernetes reserves ({prefix}), which K3s and the "
                f"kubelet manage themselves; use your own prefix (game.studio/...) or "
                f"{NODE_ROLE_PREFIX}/<role>"
            )
        if key in K3S_ROLE_LABELS:
            problems.append(
                f"{key!r} is set by K3s itself on its servers and must not be set by hand; use "
                f"another role name ({NODE_ROLE_PREFIX}/worker, say) or your own prefix"
            )
        if not _LABEL_VALUE.match(label):
            problems.append(
                f"{label!r} (label {key}) is not a label value: up to 63 letters, digits, '-', "
                "'_' or '.', starting and ending with a letter or digit"
            )
    if problems:
        raise ValueError("; ".join(problems))
    return value


def _install_url(value: str) -> str:
    if not re.fullmatch(r"(https://[A-Za-z0-9.-]+(:[0-9]+)?(/[^\s]*)?|file:///[^\s]+)", value):
        raise ValueError(
            f"{value!r} is not an installer URL; give https://get.k3s.io (the default), a mirror "
            "such as https://mirror.example.lan/k3s/install.sh, or file:///path/on/each/Pi"
        )
    return value


def _taint(value: str) -> str:
    if not _TAINT.match(value):
        raise ValueError(f"{value!r} is not a taint such as 'dedicated=db:NoSchedule'")
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    if value == "DATABASE_URL":
        raise ValueError("DATABASE_URL is set by picluster from the database secret")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
Host = Annotated[str, AfterValidator(_host)]
IPv4 = Annotated[str, AfterValidator(_ipv4)]
Image = Annotated[str, AfterValidator(_image)]
UrlPath = Annotated[str, AfterValidator(_path)]
Quantity = Annotated[str, AfterValidator(_quantity)]
Duration = Annotated[str, AfterValidator(_duration)]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
Replicas = Annotated[int, Field(ge=1, le=50, strict=True)]
EnvName = Annotated[str, AfterValidator(_env_name)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=False,
        strict=False,
    )


# --- models --------------------------------------------------------------------------------------


class PublishedPorts(_Model):
    """Host ports the Docker target publishes on `docker.publishAddress`."""

    frontend: Port = 8080
    grafana: Port = 3000
    prometheus: Port = 9090
    alertmanager: Port = 9093


class DockerConfig(_Model):
    """The Docker daemon the `docker` target deploys to."""

    host: Annotated[str, AfterValidator(_docker_host)] = docker_host.DEFAULT_HOST
    """Unset: the daemon the `docker` CLI uses (DOCKER_HOST, else its current context, else
    this default), resolved by `load` (components/docker_host.py)."""
    publish_address: IPv4 = "127.0.0.1"
    ports: PublishedPorts = PublishedPorts()


class NodeConfig(_Model):
    """One Raspberry Pi."""

    name: DnsLabel
    host: Host
    role: NodeRole
    user: str | None = None
    port: Port | None = None
    host_key: Annotated[str, AfterValidator(_host_key)] | None = None
    labels: Annotated[dict[str, str], AfterValidator(_node_labels)] = Field(default_factory=dict)
    taints: list[Annotated[str, AfterValidator(_taint)]] = Field(default_factory=list)
    docker: bool = False
    upgrade: bool = True


class SshConfig(_Model):
    """How picluster reaches the Pis."""

    user: Annotated[str, Field(min_length=1)] = "pi"
    port: Port = 22
    private_key_path: str | None = ssh_auth.DEFAULT_KEY_PATH
    """The private key file; its default applies only when `agent` is false (as applied:
    `ssh_auth.key_path`). The secret `sshPrivateKey` wins over it."""
    agent: bool = False
    """Sign in with the keys of the ssh-agent at `$SSH_AUTH_SOCK` of the shell running pulumi
    (read at each run, never stored)."""


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_S3_ENDPOINT = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_S3_FOLDER = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_S3_REGION = re.compile(r"^[a-z0-9-]{1,40}$")
_PG_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PG_NAME_WORDS = (
    "a PostgreSQL {} name such as game: lowercase letters, digits and '_', not starting with "
    "a digit, at most 63 characters"
)


def _pattern(regex: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


class SnapshotS3Config(_Model):
    """An S3-compatible bucket that K3s also uploads etcd snapshots to."""

    bucket: Annotated[str, _pattern(_BUCKET, "an S3 bucket name such as k3s-snapshots")]
    endpoint: Annotated[
        str, _pattern(_S3_ENDPOINT, "an S3 endpoint host[:port] such as s3.amazonaws.com")
    ] = "s3.amazonaws.com"
    region: Annotated[
        str, _pattern(_S3_REGION, "an S3 region such as us-east-1 (lowercase letters, digits, '-')")
    ] = "us-east-1"
    folder: Annotated[str, _pattern(_S3_FOLDER, "a folder such as picluster/prod")] | None = None
    insecure: bool = False
    skip_ssl_verify: bool = False


class SnapshotsConfig(_Model):
    """Scheduled snapshots of the K3s datastore (etcd: K3s's own; SQLite: a timer's copy)."""

    enabled: bool = True
    schedule: Annotated[str, AfterValidator(_cron)] = datastore_snapshots.DEFAULT_SCHEDULE
    retention: Annotated[int, Field(ge=1, le=1000, strict=True)] = (
        datastore_snapshots.DEFAULT_RETENTION
    )
    s3: SnapshotS3Config | None = None


class K3sConfig(_Model):
    """The K3s distribution and its settings."""

    version: Annotated[str, AfterValidator(_k3s_version)]
    disable: list[K3sComponent] = Field(default_factory=list)
    secrets_encryption: bool = True
    server_config: dict[str, Any] = Field(default_factory=dict)
    agent_config: dict[str, Any] = Field(default_factory=dict)
    protect_server_data: bool = True
    install_url: Annotated[str, AfterValidator(_install_url)] = "https://get.k3s.io"
    drain_timeout: Annotated[int, Field(ge=30, le=3600, strict=True)] = 300
    """Seconds a node's drain before its K3s upgrade may take (README: Rolling K3s upgrades)."""
    snapshots: SnapshotsConfig = SnapshotsConfig()


Folder = Annotated[str, Field(min_length=1)]
"""A folder path, relative to the project directory (checked in `_build_invariants`)."""


def _exec_form(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            f"{value!r} is a string; write the command as a list (exec form), "
            f"such as {value.split() or ['npm', 'run', 'migrate']}"
        )
    return value


Command = Annotated[
    list[Annotated[str, Field(min_length=1)]], Field(min_length=1), BeforeValidator(_exec_form)
]


class FrontendConfig(_Model):
    """The nginx frontend serving the Phaser.js game: picluster's placeholder page, the game's
    build output (`static`), a folder with its own Dockerfile (`build`), or an `image`."""

    image: Image | None = None
    static: Folder | None = None
    build: Folder | None = None
    replicas: Replicas = 1
    port: Port = 80


class ServiceConfig(_Model):
    """One Node.js microservice."""

    name: DnsLabel
    image: Image | None = None
    build: Folder | None = None
    """A source folder: its own Dockerfile, or a Node.js project (package.json)."""
    migrate: Command | None = None
    """Run once per release, before the release's pods start (exec form)."""
    port: Port
    replicas: Replicas = 1
    path: UrlPath | None = None
    env: dict[EnvName, str] = Field(default_factory=dict)
    health_path: UrlPath | None = None
    metrics_path: UrlPath | None = None
    run_as_user: Annotated[int, Field(ge=1, le=2147483647, strict=True)] = 1000

    @property
    def route(self) -> str:
        """The URL prefix the frontend routes to this service (default `/<name>`)."""
        return self.path if self.path is not None else f"/{self.name}"


class BackupConfig(_Model):
    """Scheduled `pg_dump` backups (both targets)."""

    enabled: bool = True
    schedule: Annotated[str, AfterValidator(_cron)] = "17 3 * * *"
    keep: Annotated[int, Field(ge=1, le=365, strict=True)] = 7
    storage: Quantity = "2Gi"


class DatabaseConfig(_Model):
    """PostgreSQL."""

    image: Image = versions.POSTGRES
    name: Annotated[str, _pattern(_PG_NAME, _PG_NAME_WORDS.format("database"))] = "game"
    user: Annotated[str, _pattern(_PG_NAME, _PG_NAME_WORDS.format("user"))] = "game"
    storage: Quantity = "5Gi"
    backup: BackupConfig = BackupConfig()


class AppConfig(_Model):
    """The game: frontend, services, database."""

    domain: Host | None = None
    frontend: FrontendConfig = FrontendConfig()
    services: list[ServiceConfig] | None = None
    database: DatabaseConfig = DatabaseConfig()


Severity = Literal["warning", "critical"]
"""Severities of picluster's alert rules (`components/assets/monitoring/alerts.yml`)."""
_EMAIL = re.compile(r"^[^@\s,<>]+@[A-Za-z0-9.-]+$")


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an e-mail address such as ops@example.com")
    return value


def _smarthost(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port, such as smtp.example.com:587")
    _host(host)
    return value


Email = Annotated[str, AfterValidator(_email)]


class WebhookReceiver(_Model):
    """A generic webhook; its URL is the secret `alertsWebhookUrl`."""

    min_severity: Severity = "warning"


class NtfyReceiver(_Model):
    """An ntfy topic; its URL is the secret `alertsNtfyUrl`."""

    min_severity: Severity = "warning"


class SlackReceiver(_Model):
    """A Slack channel; the incoming-webhook URL is the secret `alertsSlackWebhookUrl`."""

    channel: (
        Annotated[
            str,
            _pattern(
                re.compile(r"^[#@]?[A-Za-z0-9._-]{1,80}$"),
                "a Slack channel such as #alerts (letters, digits, '.', '_', '-')",
            ),
        ]
        | None
    ) = None
    min_severity: Severity = "warning"


class EmailReceiver(_Model):
    """E-mail through an SMTP server; its password is the secret `alertsSmtpPassword`."""

    to: Annotated[list[Email], Field(min_length=1)]
    from_: Annotated[Email, Field(alias="from")]
    smarthost: Annotated[str, AfterValidator(_smarthost)]
    username: str | None = None
    require_tls: bool = True
    min_severity: Severity = "warning"


class AlertsConfig(_Model):
    """Alertmanager: where alerts go. A receiver whose block or secret is absent is off."""

    storage: Quantity = "128Mi"
    webhook: WebhookReceiver | None = None
    ntfy: NtfyReceiver | None = None
    slack: SlackReceiver | None = None
    email: EmailReceiver | None = None


class MonitoringConfig(_Model):
    """Prometheus, Alertmanager and Grafana."""

    enabled: bool = True
    retention: Duration = "15d"
    scrape_interval: Duration = "30s"
    storage: Quantity = "10Gi"
    grafana_storage: Quantity = "1Gi"
    alerts: AlertsConfig = AlertsConfig()


class ImagesConfig(_Model):
    """How the studio's own images (`build`, `static`) are built and where they are pushed."""

    platforms: Annotated[
        list[Literal["linux/arm64", "linux/amd64"]], Field(min_length=1, max_length=2)
    ] = Field(default_factory=lambda: ["linux/arm64"])
    """K3s target: what the nodes run (a Pi is linux/arm64). Docker: the daemon's own."""
    builder: (
        Annotated[
            str,
            _pattern(
                re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"),
                "a buildx builder name such as pi-builder (letters, digits, '.', '_', '-')",
            ),
        ]
        | None
    ) = None
    """A `docker buildx` builder to build on (README: a native arm64 builder)."""
    registry: Annotated[str, AfterValidator(_registry)] | None = None
    """K3s target: `host[:port][/path]` of a registry the nodes pull from, instead of the
    in-cluster one."""
    registry_username: Annotated[str, Field(min_length=1)] | None = None
    registry_storage: Quantity = "10Gi"
    """K3s target, in-cluster registry: its volume's size (local-path enforces none)."""


class Settings(_Model):
    """Everything under `picluster:` except the secrets."""

    target: Target
    docker: DockerConfig = DockerConfig()
    nodes: list[NodeConfig] = Field(default_factory=list)
    ssh: SshConfig | None = None
    k3s: K3sConfig | None = Field(default=None, alias="k3s")
    app: AppConfig = AppConfig()
    images: ImagesConfig = ImagesConfig()
    monitoring: MonitoringConfig = MonitoringConfig()


_K3S_EXAMPLE = "v1.31.4+k3s1"
"""The pinned release messages suggest."""
_PLACEHOLDERS: dict[Loc, Any] = {
    ("target",): Target.DOCKER.value,
    ("k3s", "version"): _K3S_EXAMPLE,
}
"""Stand-ins for a required key that is missing or bad, so that the checks which do not read it
still run; the key counts as failed, so no check that reads it runs."""

_EXAMPLES: dict[str, str] = {
    "nodes.name": "pi-1",
    "nodes.host": "192.168.1.10",
    "nodes.role": "server",
    "k3s.version": _K3S_EXAMPLE,
    "k3s.snapshots.s3.bucket": "k3s-snapshots",
    "app.services.name": "api",
    "app.services.port": "3000",
    "app.services.build": "services/api",  # not required, but a service needs image or build
    "monitoring.alerts.email.to": "ops@example.com",
    "monitoring.alerts.email.from": "picluster@example.com",
    "monitoring.alerts.email.smarthost": "smtp.example.com:587",
}
"""A value for each required key, for the command a "missing" message shows (and for the
commands that set a list's first item, which show the keys listed here)."""

_KEY_FILE = "~/.ssh/id_ed25519"
"""The key file messages suggest (`ssh.privateKeyPath`'s default)."""
"""The stack name in suggested commands when the caller does not know it."""


# --- cross-key invariants ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Checked:
    """What the cross-key checks read: the settings as far as they parsed (defaults where a value
    was bad, bad nodes and services left out), which keys failed, the secrets that are set."""

    settings: Settings
    parsed: Parsed[Settings]
    secrets_set: frozenset[str]
    project_dir: Path
    stack: str

    def ok(self, *locs: Loc) -> bool:
        return self.parsed.ok(*locs)

    def nodes(self, *reads: str) -> list[tuple[int, NodeConfig]]:
        """The nodes whose keys `reads` parsed, each with its index in the stack's config."""
        indexed = self.parsed.indexed(("nodes",), self.settings.nodes)
        return [(i, n) for i, n in indexed if self.ok(*(("nodes", i, key) for key in reads))]

    def every_node(self, *reads: str) -> list[NodeConfig] | None:
        """All the nodes when each parsed with its keys `reads`, else None (a count of them
        would be wrong)."""
        nodes = self.nodes(*reads)
        if ("nodes",) in self.parsed.failed or len(nodes) != len(self.settings.nodes):
            return None
        if self.parsed.dropped.get(("nodes",)):
            return None
        return [node for _, node in nodes]

    def services(self, *reads: str) -> list[tuple[int, ServiceConfig]]:
        """The services whose keys `reads` parsed, each with its index in the stack's config."""
        base = ("app", "services")
        indexed = self.parsed.indexed(base, self.settings.app.services or [])
        return [(i, s) for i, s in indexed if self.ok(*((*base, i, key) for key in reads))]

    def command(self, args: str) -> str:
        return command(args, self.stack)


def _k3s_target(checked: _Checked) -> bool:
    return checked.settings.target is Target.K3S


def _node_uniqueness(checked: _Checked) -> list[str]:
    problems: list[str] = []
    ssh = checked.settings.ssh
    default_port = ssh.port if ssh else 22
    seen_names: dict[str, int] = {}
    seen_endpoints: dict[tuple[str, int], int] = {}
    for i, node in checked.nodes("name", "host", "port"):
        if node.name in seen_names:
            problems.append(
                f"picluster:nodes[{i}].name: {node.name!r} is already used by "
                f"picluster:nodes[{seen_names[node.name]}]; node names must be unique"
            )
        seen_names.setdefault(node.name, i)
        endpoint = (node.host.lower(), node.port if node.port is not None else default_port)
        if endpoint in seen_endpoints:
            problems.append(
                f"picluster:nodes[{i}].host: {node.host}:{endpoint[1]} is already used by "
                f"picluster:nodes[{seen_endpoints[endpoint]}]; "
                "each node needs its own host and port"
            )
        seen_endpoints.setdefault(endpoint, i)
    return problems


def _node_counts(checked: _Checked) -> list[str]:
    nodes = checked.every_node("role")
    if not _k3s_target(checked) or nodes is None:
        return []
    servers = sum(1 for node in nodes if node.role is NodeRole.SERVER)
    if not nodes:
        first = ("nodes", 0)
        return [
            "picluster:nodes: is required when target is k3s: one entry per Pi with its name, "
            "host (address) and role (server or agent; 1 or 3 servers), and its hostKey "
            "(recommended: the line `ssh-keyscan -t ed25519 HOST` prints); for the first Pi:"
            + steps(
                set_command((*first, "name"), "pi-1", checked.stack),
                set_command((*first, "host"), "192.168.1.10", checked.stack),
                set_command((*first, "role"), "server", checked.stack),
                set_command((*first, "hostKey"), "'ssh-ed25519 AAAA...'", checked.stack),
            )
        ]
    if servers == 0:
        return ["picluster:nodes: needs at least one node with role: server"]
    if servers % 2 == 0:
        return [
            f"picluster:nodes: has {servers} servers; embedded etcd needs an odd number "
            "(1, 3 or 5) to keep quorum"
        ]
    return []


def _k3s_disable(checked: _Checked) -> list[str]:
    k3s = checked.settings.k3s
    if not _k3s_target(checked) or k3s is None:
        return []
    return [
        f"picluster:k3s.disable[{i}]: {component!r} cannot be disabled: "
        f"{APP_NEEDS[component]}; disabling it on a running cluster uninstalls it. "
        f"Components that may be disabled: {', '.join(sorted(OPTIONAL_COMPONENTS))}"
        for i, component in enumerate(k3s.disable)
        if component in APP_NEEDS
    ]


def _ssh_required(checked: _Checked) -> list[str]:
    nodes_listed = bool(checked.settings.nodes) or not checked.ok(("nodes",))
    if checked.settings.ssh is not None or not (_k3s_target(checked) or nodes_listed):
        return []
    return [
        "picluster:ssh: is required when target is k3s or nodes are listed: the user picluster "
        "logs in to the Pis as, and its key (a file, or the secret picluster:sshPrivateKey):"
        + steps(
            set_command(("ssh", "user"), "pi", checked.stack),
            set_command(("ssh", "privateKeyPath"), "~/.ssh/id_ed25519", checked.stack),
        )
        + "\n  or, instead of privateKeyPath, the key itself as a secret:"
        + steps(command("config set --secret sshPrivateKey", checked.stack, stdin=_KEY_FILE))
        + "\n  or sign in with the keys of your ssh-agent:"
        + steps(set_command(("ssh", "agent"), "true", checked.stack))
    ]


def _k3s_required(checked: _Checked) -> list[str]:
    if not _k3s_target(checked) or checked.settings.k3s is not None:
        return []
    return [
        "picluster:k3s: is required when target is k3s, with a pinned K3s release: "
        + set_command(("k3s", "version"), _K3S_EXAMPLE, checked.stack)
    ]


K3S_KEYS_SET_BY_PICLUSTER = frozenset(
    {"token", "token-file", "node-name", "node-ip", "server", "cluster-init", "agent-token"}
)
"""config.yaml keys picluster writes itself; `serverConfig`/`agentConfig` may not set them."""


def _k3s_config_invariants(checked: _Checked) -> list[str]:
    k3s = checked.settings.k3s
    if k3s is None:
        return []
    problems: list[str] = []
    for section, extra in (("serverConfig", k3s.server_config), ("agentConfig", k3s.agent_config)):
        for key in sorted(set(extra) & K3S_KEYS_SET_BY_PICLUSTER):
            problems.append(
                f"picluster:k3s.{section}.{key}: is set by picluster "
                "(the token comes from picluster:k3sToken, names and addresses from "
                "picluster:nodes); remove it"
            )
        for key, secret in (
            ("etcd-s3-access-key", "etcdS3AccessKey"),
            ("etcd-s3-secret-key", "etcdS3SecretKey"),
        ):
            if key in extra:
                problems.append(
                    f"picluster:k3s.{section}.{key}: is a secret and would be stored in plain "
                    f"text; set it with {checked.command(f'config set --secret {secret}')} and "
                    "the bucket in picluster:k3s.snapshots.s3"
                )
    return problems


def _service_names(checked: _Checked) -> list[str]:
    problems: list[str] = []
    services = checked.services("name", "path")
    names = Counter(s.name for _, s in services)
    routes = Counter(s.route for _, s in services)
    for i, service in services:
        if service.name in RESERVED_NAMES:
            problems.append(
                f"picluster:app.services[{i}].name: {service.name!r} is used by picluster itself; "
                f"choose a name other than {', '.join(sorted(RESERVED_NAMES))}"
            )
        if names[service.name] > 1:
            problems.append(
                f"picluster:app.services[{i}].name: {service.name!r} is used by more than one "
                "service; service names must be unique"
            )
        if routes[service.route] > 1:
            problems.append(
                f"picluster:app.services[{i}].path: {service.route!r} is routed to more than one "
                "service; service paths must be unique"
            )
        if service.route in ("/healthz", "/metrics"):
            problems.append(
                f"picluster:app.services[{i}].path: {service.route!r} is served by the frontend"
            )
    return problems


def _frontend_sources(checked: _Checked) -> list[str]:
    """One source for the frontend, and folders that can be built."""
    frontend = checked.settings.app.frontend
    problems: list[str] = []
    given = [
        k
        for k, v in (
            ("image", frontend.image),
            ("static", frontend.static),
            ("build", frontend.build),
        )
        if v is not None
    ]
    if len(given) > 1:
        problems.append(
            f"picluster:app.frontend: gives {' and '.join(given)}; give one of image, static "
            "(the game's build output) or build (a folder with a Dockerfile)"
        )
    for key, folder, static in (
        ("picluster:app.frontend.static", frontend.static, True),
        ("picluster:app.frontend.build", frontend.build, False),
    ):
        if folder is not None:
            problems += images.folder_problems(
                checked.project_dir / folder, static=static, key=key, dockerfile_only=not static
            )
    return problems


def _service_sources(checked: _Checked) -> list[str]:
    """One source per service, folders that can be built, the user the Dockerfile runs as."""
    problems: list[str] = []
    for i, service in checked.services("image", "build", "runAsUser"):
        key = f"picluster:app.services[{i}]"
        if (service.image is None) == (service.build is None):
            what = "both image and build" if service.image else "neither image nor build"
            problems.append(
                f"{key}: gives {what}; give one: image (a pinned reference) or build (a source "
                "folder)"
            )
        if service.build is not None:
            folder = checked.project_dir / service.build
            found = images.folder_problems(folder, static=False, key=f"{key}.build")
            problems += found
            uid = images.own_dockerfile_uid(folder) if not found else None
            if uid is not None and uid != service.run_as_user:
                # Both targets run the container as runAsUser, whatever the image's USER says.
                problems.append(
                    f"{key}.runAsUser: the Dockerfile runs as {uid}; set runAsUser: {uid}"
                )
    return problems


def _loopback_images(checked: _Checked) -> list[str]:
    """On K3s, image references and a registry the Pis can reach (not this machine's loopback)."""
    if not _k3s_target(checked):
        return []
    problems: list[str] = []
    frontend = checked.settings.app.frontend
    if (
        checked.ok(("app", "frontend", "image"))
        and frontend.image is not None
        and images.is_loopback_registry(frontend.image)
    ):
        problems.append(_loopback_problem("picluster:app.frontend.image", frontend.image))
    for i, service in checked.services("image"):
        if service.image is not None and images.is_loopback_registry(service.image):
            problems.append(_loopback_problem(f"picluster:app.services[{i}].image", service.image))
    registry = checked.settings.images.registry
    if (
        checked.ok(("images", "registry"))
        and registry is not None
        and images.is_loopback_registry(f"{registry}/x")
    ):
        problems.append(
            f"picluster:images.registry: {registry!r} is this machine's loopback, which the Pis "
            "cannot reach; remove the key to use the in-cluster registry, or name an HTTPS "
            "registry the Pis reach"
        )
    return problems


def _registry_account(checked: _Checked) -> list[str]:
    """Registry credentials that come in pairs, platforms given once."""
    settings = checked.settings.images
    problems: list[str] = []
    has_user = settings.registry_username is not None
    has_password = "registryPassword" in checked.secrets_set
    if has_password and not has_user:
        problems.append(
            "picluster:registryPassword: is set but picluster:images.registryUsername is not; "
            "set the user name the password belongs to, or remove the secret "
            f"({checked.command('config rm registryPassword')})"
        )
    if has_user and not has_password:
        problems.append(
            "picluster:images.registryUsername: needs the secret picluster:registryPassword "
            f"({checked.command('config set --secret registryPassword')})"
        )
    platforms = settings.platforms
    if len(set(platforms)) != len(platforms):
        problems.append(
            f"picluster:images.platforms: {platforms!r} names a platform twice; give each of "
            "linux/arm64, linux/amd64 at most once"
        )
    if has_user and settings.registry is None:
        problems.append(
            "picluster:images.registryUsername: is for a registry named in "
            "picluster:images.registry; the in-cluster registry needs no account"
        )
    return problems


def _builds_images(app: AppConfig) -> bool:
    """True when picluster builds an image for the app (the demo API is built when no service
    is given)."""
    return (
        app.services is None
        or any(s.build is not None for s in app.services)
        or app.frontend.static is not None
        or app.frontend.build is not None
    )


def _registry_address_invariants(checked: _Checked) -> list[str]:
    """The in-cluster registry's Service takes a pinned clusterIP that every node's
    registries.yaml names: a `service-cidr` of the user's must hold it, or the API server
    refuses the Service (and every node would point at nothing)."""
    settings = checked.settings
    k3s = settings.k3s
    if (
        settings.target is not Target.K3S
        or k3s is None
        or settings.images.registry is not None
        or not _builds_images(settings.app)
        or "service-cidr" not in k3s.server_config
    ):
        return []
    key = "picluster:k3s.serverConfig.service-cidr"
    value = k3s.server_config["service-cidr"]
    # K3s takes one CIDR, a comma-separated pair (dual-stack) or, in config.yaml, a list.
    parts = value if isinstance(value, list) else str(value).split(",")
    try:
        networks = [ipaddress.ip_network(str(p).strip(), strict=False) for p in parts]  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]
    except ValueError:
        return [f"{key}: {value!r} is not a CIDR such as 10.43.0.0/16 (or an IPv4,IPv6 pair)"]
    address = ipaddress.ip_address(registries.REGISTRY_CLUSTER_IP)
    holding = [n for n in networks if n.version == 4 and address in n]
    if holding:
        network = holding[0]
        offset = int(address) - int(network.network_address)
        if 1 <= offset <= _static_band(network.num_addresses):
            return []
        return [
            f"{key}: {value!r} puts {registries.REGISTRY_CLUSTER_IP}, the in-cluster image "
            "registry's fixed Service address, outside the first "
            f"{_static_band(network.num_addresses)} addresses of the range, which the API "
            "server keeps for fixed addresses (another Service may take it first); remove the "
            "key (K3s's default 10.43.0.0/16 keeps its first 256), give a larger range or one "
            "starting closer below it, or set picluster:images.registry to a registry of your own"
        ]
    return [
        f"{key}: {value!r} does not hold {registries.REGISTRY_CLUSTER_IP}, the in-cluster image "
        "registry's fixed Service address that every node's registries.yaml names; remove the "
        "key (K3s's default 10.43.0.0/16 holds it), give a range that holds it, or set "
        "picluster:images.registry to a registry of your own"
    ]


_STATIC_BAND_MIN, _STATIC_BAND_MAX, _STATIC_BAND_STEP = 16, 256, 16


def _static_band(size: int) -> int:
    """How many addresses at the start of a Service range the API server keeps for fixed
    clusterIPs (dynamic allocation takes them last): kube-apiserver's `calculateRangeOffset`
    (pkg/registry/core/service/ipallocator), `min(max(16, size/16), 256)`, and none for a
    range of 16 addresses or fewer. The band starts at the address after the network's."""
    if size <= _STATIC_BAND_MIN:
        return 0
    return min(max(_STATIC_BAND_MIN, size // _STATIC_BAND_STEP), _STATIC_BAND_MAX)


def _loopback_problem(key: str, reference: str) -> str:
    return (
        f"{key}: {reference!r} is on this machine's loopback, which the Pis cannot pull from; "
        "give build (a source folder, pushed to the in-cluster registry) or a registry the Pis "
        "reach"
    )


_RECEIVER_SECRETS = {
    "webhook": ("alertsWebhookUrl", "https://hooks.example.com/picluster"),
    "ntfy": ("alertsNtfyUrl", "https://ntfy.sh/<your-topic>"),
    "slack": ("alertsSlackWebhookUrl", "https://hooks.slack.com/services/..."),
}
_OPTIONAL_SECRETS = {
    "alertsWebhookToken": "alertsWebhookUrl",
    "alertsNtfyToken": "alertsNtfyUrl",
}


def _alert_invariants(checked: _Checked) -> list[str]:
    """Receivers and their secrets come together: a block without its URL, or a token or
    password without what it authenticates, is a mistake worth one clear error."""
    alerts = checked.settings.monitoring.alerts
    secrets_set = checked.secrets_set
    problems: list[str] = []
    for receiver, (secret, example) in _RECEIVER_SECRETS.items():
        if getattr(alerts, receiver) is not None and secret not in secrets_set:
            problems.append(
                f"{NAMESPACE}:monitoring.alerts.{receiver}: needs the secret {NAMESPACE}:{secret} "
                f"(such as {example}); set it with "
                f"{checked.command(f'config set --secret {secret}')}"
            )
    for token, url in _OPTIONAL_SECRETS.items():
        if token in secrets_set and url not in secrets_set:
            problems.append(
                f"{NAMESPACE}:{token}: is set but {NAMESPACE}:{url} is not; "
                "set the URL too or remove the token"
            )
    email = alerts.email
    if "alertsSmtpPassword" in secrets_set and (email is None or email.username is None):
        problems.append(
            f"{NAMESPACE}:alertsSmtpPassword: is set but "
            f"{NAMESPACE}:monitoring.alerts.email.username is not; give the SMTP user name"
        )
    if email is not None and email.username is not None and "alertsSmtpPassword" not in secrets_set:
        problems.append(
            f"{NAMESPACE}:monitoring.alerts.email.username: needs the secret "
            f"{NAMESPACE}:alertsSmtpPassword; set it with "
            f"{checked.command('config set --secret alertsSmtpPassword')}"
        )
    return problems


S3_SECRET_KEYS = ("etcdS3AccessKey", "etcdS3SecretKey")


def _snapshot_secrets(checked: _Checked) -> list[str]:
    """The S3 target and its keys come together."""
    k3s = checked.settings.k3s
    s3 = k3s.snapshots.s3 if k3s else None
    given = [key for key in S3_SECRET_KEYS if key in checked.secrets_set]
    if s3 is not None and len(given) < len(S3_SECRET_KEYS):
        return [
            f"picluster:{key}: is required when picluster:k3s.snapshots.s3 is set "
            f"(set it with {checked.command(f'config set --secret {key}')})"
            for key in S3_SECRET_KEYS
            if key not in given
        ]
    if s3 is None and given:
        return [
            f"picluster:{key}: is set but picluster:k3s.snapshots.s3 is not; add the bucket "
            "(k3s.snapshots.s3: {bucket: ..., endpoint: ...}) or remove the key"
            for key in given
        ]
    return []


def _single_server_snapshots(checked: _Checked) -> list[str]:
    """A single server's copy needs a systemd form of the schedule, and has no S3 upload (K3s
    uploads etcd snapshots only)."""
    settings = checked.settings
    snapshots = settings.k3s.snapshots if settings.k3s else None
    nodes = checked.every_node("role")
    servers = sum(1 for node in nodes or [] if node.role is NodeRole.SERVER)
    if snapshots is None or settings.target is not Target.K3S or servers != 1:
        return []
    problems: list[str] = []
    if snapshots.s3 is not None:
        problems.append(
            "picluster:k3s.snapshots.s3: uploads are K3s's etcd snapshots, and one server "
            "runs SQLite; use 3 servers (embedded etcd) or remove s3 (the SQLite copies stay "
            f"in {datastore_snapshots.SNAPSHOT_DIR} on the server)"
        )
    try:
        datastore_snapshots.on_calendar(snapshots.schedule)
    except ValueError as error:
        problems.append(f"picluster:k3s.snapshots.schedule: {error}")
    return problems


_Check = Callable[[_Checked], list[str]]
_CHECKS: tuple[tuple[tuple[Loc, ...], _Check], ...] = (
    # (the keys a check reads, which must all have parsed; the check)
    ((("ssh",),), _node_uniqueness),  # on the nodes that parsed
    ((("target",),), _node_counts),  # when every node's role parsed
    ((("target",), ("k3s", "disable")), _k3s_disable),
    ((("target",), ("ssh",)), _ssh_required),
    ((("target",), ("k3s",)), _k3s_required),
    ((("k3s", "serverConfig"), ("k3s", "agentConfig")), _k3s_config_invariants),
    ((), _service_names),  # on the services that parsed
    ((("app", "frontend"),), _frontend_sources),
    ((), _service_sources),  # on the services that parsed
    ((("target",),), _loopback_images),
    ((("images",),), _registry_account),
    (
        (("target",), ("k3s", "serverConfig"), ("images", "registry"), ("app",)),
        _registry_address_invariants,
    ),
    ((("monitoring", "alerts"),), _alert_invariants),
    ((("k3s", "snapshots", "s3"),), _snapshot_secrets),
    ((("target",), ("k3s", "snapshots")), _single_server_snapshots),  # as _node_counts
)
"""Every cross-key check. One runs only when every key it reads parsed, so a bad value is
reported once, never again as the consequence a default standing in for it would have."""


# --- loading -------------------------------------------------------------------------------------


def _raw_config() -> dict[str, Any]:
    """Every `picluster:` key the stack sets, with JSON objects and lists decoded."""
    merged: dict[str, Any] = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    raw: dict[str, Any] = {}
    prefix = f"{NAMESPACE}:"
    for full_key, value in merged.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix) :]
        raw[key] = _decode(value)
    return raw


def _decode(value: Any) -> Any:
    """An object or list value as Python data; anything else as it is."""
    if not (isinstance(value, str) and value[:1] in ("{", "[")):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        # Left as a string: the model then reports the wrong type under the key's path.
        return value


def _check_secret_keys(raw: Mapping[str, Any], stack: str) -> list[str]:
    problems: list[str] = []
    for key in SECRET_KEYS:
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, str) or not value.strip():
            problems.append(
                f"{NAMESPACE}:{key}: must be a non-empty string; set it with "
                f"{command(f'config set --secret {key}', stack)}"
            )
        elif key == "k3sToken" and (len(value) < 16 or re.search(r"\s", value)):
            problems.append(
                f"{NAMESPACE}:k3sToken: must be at least 16 characters with no white space"
            )
        elif key in ALERT_SECRET_URLS and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            # The value is never repeated: it is a secret.
            problems.append(
                f"{NAMESPACE}:{key}: is not an http:// or https:// URL (the value is not shown)"
            )
    return problems


class StackConfig:
    """The validated configuration, and access to the secrets it left out."""

    def __init__(
        self,
        settings: Settings,
        secrets_set: frozenset[str],
        key_file: Path | None = None,
        key_choice: ssh_auth.KeyChoice | None = None,
    ) -> None:
        self.settings = settings
        self._secrets_set = secrets_set
        self._key_file = key_file
        self._key_choice = key_choice or ssh_auth.KeyChoice(
            use_key=True, use_passphrase="sshKeyPassphrase" in secrets_set
        )
        self._config = pulumi.Config(NAMESPACE)

    def ssh_private_key(self) -> pulumi.Output[str] | None:
        """The SSH private key, a secret: `sshPrivateKey`, else the file at `ssh.privateKeyPath`;
        None when the agent alone signs in (`ssh.agent` without a usable key)."""
        if not self._key_choice.use_key:
            return None
        given = self.secret("sshPrivateKey")
        if given is not None:
            return given
        if self._key_file is None:
            raise ConfigError(["picluster:sshPrivateKey: is required when no key file is set"])
        return pulumi.Output.secret(self._key_file.read_text())

    def ssh_key_passphrase(self) -> pulumi.Output[str] | None:
        """The key's passphrase (`sshKeyPassphrase`, a secret) when the key needs one."""
        return self.secret("sshKeyPassphrase") if self._key_choice.use_passphrase else None

    @property
    def ssh_agent(self) -> bool:
        """`ssh.agent`: the agent at `$SSH_AUTH_SOCK` signs in (too)."""
        return self.settings.ssh is not None and self.settings.ssh.agent

    def secret(self, key: str) -> pulumi.Output[str] | None:
        """The secret `key` as a Pulumi secret, or None when the stack does not set it."""
        if key not in SECRET_KEYS:
            raise KeyError(key)
        if key not in self._secrets_set:
            return None
        return self._config.require_secret(key)


def validate(
    raw: Mapping[str, Any],
    *,
    secret_values: bool = True,
    project_dir: Path | None = None,
    stack: str = STACK_PLACEHOLDER,
) -> Settings:
    """Validate raw config values (keys without namespace) or raise one `ConfigError` that lists
    every problem: each bad value, and each cross-key rule broken by the values that are good.

    Build folders are relative to `project_dir` (default: the working directory, which is the
    project's when Pulumi runs the program). `stack` names the stack in suggested commands.

    With `secret_values=False` the secrets' values are not checked, only which are set: for a
    reader that sees the stack's configuration without them (`bin/restore-datastore`).
    """
    checked, problems = _check(
        raw, secret_values=secret_values, project_dir=project_dir or Path.cwd(), stack=stack
    )
    if problems or checked is None:
        raise ConfigError(problems)
    return checked.settings


def _check(
    raw: Mapping[str, Any], *, secret_values: bool, project_dir: Path, stack: str
) -> tuple[_Checked | None, list[str]]:
    """The settings as far as they parse, and every problem found."""
    problems = _check_secret_keys(raw, stack) if secret_values else []
    parsed = parse(
        Settings,
        {k: v for k, v in raw.items() if k not in SECRET_KEYS},
        stack=stack,
        placeholders=_PLACEHOLDERS,
        root_extra_keys=SECRET_KEYS,
        examples=_EXAMPLES,
    )
    problems += parsed.problems
    if parsed.model is None:
        return None, problems
    secrets_set = frozenset(k for k in SECRET_KEYS if k in raw)
    checked = _Checked(parsed.model, parsed, secrets_set, project_dir, stack)
    for reads, check in _CHECKS:
        if checked.ok(*reads):
            problems += check(checked)
    return checked, problems


def load() -> StackConfig:
    """Read and validate the stack's configuration once, before any resource is declared."""
    raw = _raw_config()
    checked, problems = _check(
        raw, secret_values=True, project_dir=Path.cwd(), stack=pulumi.get_stack()
    )
    key_file, key_choice = None, None
    settings = checked.settings if checked is not None else None
    daemon = None
    docker_target = checked is not None and checked.ok(("target",))
    if checked is not None and settings is not None and docker_target:
        docker_target = settings.target is Target.DOCKER
    if checked is not None and settings is not None and docker_target:
        # Only the docker target's provider uses docker.host (on K3s the images are pushed
        # through the caller's own daemon), so only it resolves a context: a stale one must not
        # stop a K3s stack. Unset: the daemon the docker CLI uses (DOCKER_HOST, its context), as
        # `docker info` does.
        if "host" in settings.docker.model_fields_set:
            daemon = f"{settings.docker.host} (from {NAMESPACE}:docker.host)"
        elif checked.ok(("docker", "host")):
            host, source, problem = docker_host.default_host(_docker_host, stack=checked.stack)
            problems += [problem] if problem else []
            docker = settings.docker.model_copy(update={"host": host})
            settings = settings.model_copy(update={"docker": docker})
            daemon = f"{host} (from {source})"
    if checked is not None and settings is not None and checked.ok(("ssh",)):
        nodes_listed = bool(settings.nodes) or not checked.ok(("nodes",))
        if nodes_listed:
            given = raw.get("sshPrivateKey")
            key_file, key_choice = ssh_auth.key_for(
                settings.ssh,
                given if isinstance(given, str) else None,
                passphrase_set="sshKeyPassphrase" in raw,
                stack=checked.stack,
            )
            problems += key_choice.problems
    if problems or checked is None or settings is None:
        raise ConfigError(problems)
    if daemon is not None:
        # Every run: an unset docker.host follows the shell (DOCKER_HOST, the Docker context), so
        # a different shell silently points the stack at another daemon; this line shows which.
        pulumi.log.info(f"{NAMESPACE}:docker.host: the Docker daemon is {daemon}")
    secrets_set = checked.secrets_set
    for key in sorted(secrets_set):
        if not runtime_config.is_config_secret(f"{NAMESPACE}:{key}"):
            pulumi.warn(
                f"{NAMESPACE}:{key} is stored in plain text in the stack file; "
                f"set it with {checked.command(f'config set --secret {key}')}"
            )
    return StackConfig(settings, secrets_set, key_file, key_choice)


def load_or_exit() -> StackConfig:
    """`load()` for the program: a `ConfigError` is shown as one error diagnostic, and the
    program ends with the Python host's "message already shown" exit code. Raised instead, the
    engine would add "an unhandled error occurred: program exited with non-zero exit code: 1"
    (pulumi-language-python-exec logs a RunError, then exits 1)."""
    try:
        return load()
    except ConfigError as error:
        pulumi.log.error(str(error))
        raise SystemExit(EXIT_ERROR_SHOWN) from error


EXIT_ERROR_SHOWN = 32
"""pulumi-language-python-exec's PYTHON_PROCESS_EXITED_AFTER_SHOWING_USER_ACTIONABLE_MESSAGE_CODE:
the language host then reports no error of its own."""
