"""picluster's policies: pure checks over one resource, and the pulumi-policy objects that run them.

Each `check_*` function takes a `Resource` (plain data) and the policy's config and returns the
violations as messages, so tests call it without an engine. `POLICIES` wraps each check in a
`ResourceValidationPolicy`; `policy/__main__.py` puts them in the pack.

Secrets: pulumi-policy 1.21 deserializes a resource's inputs with the secret markers dropped (a
secret arrives in `args.props` as its bare value, exactly like a plain one), so on its own a
policy cannot tell `Output.secret(password)` from a password in plain text. `keep_secret_markers`
makes the pack deserialize them as `pulumi_policy.Secret` instead; every check reads values
through `reveal`, and `check_no_plain_secrets` judges only what is not wrapped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pulumi_policy import (
    Policy,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
)
from pulumi_policy import deserialize as sdk_deserialize
from pulumi_policy import policy as sdk_policy
from pulumi_policy import proxy as sdk_proxy

UNKNOWNS = frozenset(
    {
        sdk_proxy.UNKNOWN_BOOLEAN_VALUE,
        sdk_proxy.UNKNOWN_NUMBER_VALUE,
        sdk_proxy.UNKNOWN_STRING_VALUE,
        sdk_proxy.UNKNOWN_ARRAY_VALUE,
        sdk_proxy.UNKNOWN_ASSET_VALUE,
        sdk_proxy.UNKNOWN_ARCHIVE_VALUE,
        sdk_proxy.UNKNOWN_OBJECT_VALUE,
    }
)
"""The sentinels the engine sends for values not known until `pulumi up` (during a preview)."""

REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
DOCKER_CONTAINER = "docker:index/container:Container"
DOCKER_VOLUME = "docker:index/volume:Volume"
K8S_SECRET = "kubernetes:core/v1:Secret"  # noqa: S105 - a type token
K8S_PVC = "kubernetes:core/v1:PersistentVolumeClaim"

POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:core/v1:Pod": ("spec",),
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
"""Where each Kubernetes workload kind keeps its pod spec."""

DEFAULT_PRIVILEGED_NAMESPACES = ("monitoring-node",)
DEFAULT_APP_NAMESPACE = "game"

# Compared against the key with case and separators removed, as a suffix: `POSTGRES_PASSWORD`
# and `dbPassword` match, while `POSTGRES_PASSWORD_FILE` and `secretName` (references to a
# secret, not the secret) do not.
SECRET_KEY_SUFFIXES = (
    "password",
    "passwd",
    "secret",
    "token",
    "privatekey",
    "secretkey",
    "apikey",
    "databaseurl",
    "connectionstring",
    "credentials",
)
PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
URL_WITH_CREDENTIALS = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")
ENV_ASSIGNMENT = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)=(?P<value>.*)$")
PUBLIC_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104 - what we look for


@dataclass(frozen=True, kw_only=True)
class Resource:
    """One resource as a policy sees it, in plain data."""

    type: str
    """The type token, `docker:index/remoteImage:RemoteImage`."""
    name: str
    """The resource's logical name."""
    props: Mapping[str, Any] = field(default_factory=dict)
    """Its inputs: dicts, lists and scalars; secrets as `Secret`; unknowns as `UNKNOWNS`."""
    protect: bool = False
    """The `protect` resource option."""
    retain_on_delete: bool | None = None
    """The `retainOnDelete` option, or None where the engine does not say (pulumi-policy 1.21)."""

    @classmethod
    def from_args(cls, args: ResourceValidationArgs) -> Resource:
        """The resource behind the SDK's validation arguments."""
        # PolicyResourceOptions has no retain_on_delete in pulumi-policy 1.21 (the analyzer
        # protocol does not carry it); read it if a later release adds it.
        retain = getattr(args.opts, "retain_on_delete", None)
        return cls(
            type=args.resource_type,
            name=args.name,
            props=plain(args.props),
            protect=bool(args.opts.protect),
            retain_on_delete=retain if isinstance(retain, bool) else None,
        )


class NotApplicable(Exception):  # noqa: N818 - named after the SDK's `not_applicable`
    """A check cannot judge this resource with what the engine shows it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- reading values ------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """`value` without the SDK's unknown-checking proxies (dicts and lists, `Secret`s kept).

    The proxies raise on the first unknown value they meet, which would make the SDK skip the
    whole policy for that resource during a preview; the checks skip unknown values one by one.
    """
    if isinstance(value, sdk_proxy._DictProxy | sdk_proxy._ListProxy):
        return plain(value["__target"])
    if isinstance(value, Secret):
        return Secret(plain(value.value))
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def reveal(value: Any) -> Any:
    """`value` with any `Secret` wrappers around it removed."""
    while isinstance(value, Secret):
        value = value.value
    return value


def is_unknown(value: Any) -> bool:
    """Whether `value` is not known until the update runs."""
    return isinstance(value, str) and value in UNKNOWNS


def at(value: Any, *path: str | int) -> Any:
    """The value at `path` inside `value` (secrets revealed on the way), or None."""
    for step in path:
        value = reveal(value)
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                return None
            value = value[step]
        elif isinstance(value, Mapping) and step in value:
            value = value[step]
        else:
            return None
    value = reveal(value)
    return None if is_unknown(value) else value


def _list(value: Any) -> list[Any]:
    return [reveal(item) for item in value] if isinstance(value, list) else []


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in _list(value) if isinstance(item, Mapping)]


# --- Kubernetes workloads ------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """One container of a pod spec, with where it sits."""

    where: str
    """`containers[0] (api)`, for messages."""
    spec: Mapping[str, Any]
    """The container's spec."""


def pod_spec(resource: Resource) -> Mapping[str, Any] | None:
    """The pod spec of a Kubernetes workload, or None for anything else."""
    path = POD_SPEC_PATHS.get(resource.type)
    if path is None:
        return None
    spec = at(resource.props, *path)
    return spec if isinstance(spec, Mapping) else None


def containers(spec: Mapping[str, Any]) -> Iterator[Container]:
    """The containers and init containers of a pod spec."""
    for kind in ("initContainers", "containers"):
        for index, container in enumerate(_mappings(spec.get(kind))):
            name = at(container, "name")
            label = f"{kind}[{index}]" + (f" ({name})" if isinstance(name, str) else "")
            yield Container(label, container)


def namespace_of(resource: Resource) -> str | None:
    """The Kubernetes namespace the resource lands in (`default` when unset); None if unknown."""
    metadata = at(resource.props, "metadata")
    raw = reveal(metadata.get("namespace")) if isinstance(metadata, Mapping) else None
    if is_unknown(raw):
        return None
    return raw if isinstance(raw, str) and raw else "default"


# --- the checks ----------------------------------------------------------------------------------


def image_problem(image: str) -> str | None:
    """Why the image reference `image` is not pinned, or None when it is."""
    if "@" in image:
        digest = image.split("@", 1)[1]
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else "has a malformed digest"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag"
    tag = last.split(":", 1)[1]
    if not tag:
        return "has an empty tag"
    if tag == "latest":
        return "is tagged latest"
    return None


def check_images_pinned(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    """Docker images and Kubernetes container images carry a version tag (not latest) or digest."""
    images: list[tuple[str, Any]] = []
    if resource.type == REMOTE_IMAGE:
        images.append(("name", at(resource.props, "name")))
    spec = pod_spec(resource)
    if spec is not None:
        for c in containers(spec):
            raw = reveal(c.spec.get("image")) if isinstance(c.spec, Mapping) else None
            if is_unknown(raw):
                # Known only when the update runs (a built image's digest, printed by its
                # push): the policy pack checks it again then, on `pulumi up`.
                continue
            images.append((f"{c.where}.image", at(c.spec, "image")))
    problems: list[str] = []
    for where, image in images:
        if image is None:
            if where != "name":
                problems.append(f"{where} is not set: give a pinned image")
            continue
        why = image_problem(str(image))
        if why is not None:
            problems.append(
                f"{where} {image!r} {why}: pin a version tag (not latest) or a sha256 digest"
            )
    return problems


def check_container_limits(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    """Every Kubernetes container and init container has both a CPU and a memory limit."""
    spec = pod_spec(resource)
    if spec is None:
        return []
    problems: list[str] = []
    for container in containers(spec):
        resources = at(container.spec, "resources")
        limits = reveal(resources.get("limits")) if isinstance(resources, Mapping) else None
        if is_unknown(limits):
            continue
        have = set(limits) if isinstance(limits, Mapping) else set()
        missing = [kind for kind in ("cpu", "memory") if kind not in have]
        if missing:
            problems.append(f"{container.where} has no {' and no '.join(missing)} limit")
    return problems


def check_no_privileged(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    """No privileged container nor hostPID/hostNetwork/hostIPC pod outside allowed namespaces."""
    spec = pod_spec(resource)
    if spec is None:
        return []
    allowed = config.get("privilegedNamespaces", list(DEFAULT_PRIVILEGED_NAMESPACES))
    found = [f"{flag}: true" for flag in ("hostPID", "hostNetwork", "hostIPC") if at(spec, flag)]
    found += [
        f"{c.where} securityContext.privileged: true"
        for c in containers(spec)
        if at(c.spec, "securityContext", "privileged") is True
    ]
    if not found:
        return []
    namespace = namespace_of(resource)
    if namespace is not None and namespace in allowed:
        return []
    where = f"namespace {namespace!r}" if namespace else "a namespace not known yet"
    return [
        f"{flag} in {where}; host access is allowed only in {', '.join(allowed) or 'no namespace'}"
        for flag in found
    ]


def check_no_public_ports(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    """No Docker port published on every interface unless `allowPublicPorts` says so."""
    if resource.type != DOCKER_CONTAINER or config.get("allowPublicPorts", False) is True:
        return []
    problems: list[str] = []
    for index, port in enumerate(_mappings(at(resource.props, "ports"))):
        raw_ip = reveal(port.get("ip"))
        if is_unknown(raw_ip):
            continue
        # The Docker provider binds to 0.0.0.0 when no ip is given.
        ip = "" if raw_ip is None else str(raw_ip)
        if ip in PUBLIC_ADDRESSES:
            external = at(port, "external")
            problems.append(
                f"ports[{index}] publishes {external if external is not None else 'a port'} on "
                f"{ip or 'every interface'}; bind it to 127.0.0.1 (docker.publishAddress) or set "
                "the policy config allowPublicPorts: true"
            )
    return problems


def secret_looking_key(key: str) -> bool:
    """Whether a key or variable name says its value is a secret."""
    normalized = re.sub(r"[^a-z0-9]", "", key.lower())
    return normalized.endswith(SECRET_KEY_SUFFIXES)


def secret_looking_value(value: str) -> str | None:
    """What makes `value` look like a secret by its content, or None."""
    if PEM_PRIVATE_KEY.search(value):
        return "a PEM private key"
    if URL_WITH_CREDENTIALS.search(value):
        return "a URL with a password"
    return None


@dataclass(frozen=True)
class _Leaf:
    path: str
    key: str | None
    value: str
    secret: bool


def _leaves(value: Any, path: str, key: str | None, secret: bool) -> Iterator[_Leaf]:
    """Every string under `value` with the key it belongs to and whether it sits in a secret."""
    if isinstance(value, Secret):
        yield from _leaves(value.value, path, key, True)
    elif isinstance(value, str):
        if is_unknown(value):
            return
        assignment = ENV_ASSIGNMENT.match(value) if "\n" not in value else None
        if assignment:
            # Docker's `envs` entries: NAME=value.
            if not is_unknown(assignment["value"]):
                yield _Leaf(path, assignment["key"], assignment["value"], secret)
        else:
            yield _Leaf(path, key, value, secret)
    elif isinstance(value, Mapping):
        name = reveal(value.get("name"))
        for item_key, item in value.items():
            item_path = f"{path}.{item_key}" if path else str(item_key)
            # A Kubernetes env var ({name, value}): the value belongs to the variable's name.
            owner = name if item_key == "value" and isinstance(name, str) else str(item_key)
            yield from _leaves(item, item_path, owner, secret)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]", key, secret)


def check_no_plain_secrets(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    """No secret-looking value in an input that is not a Pulumi secret."""
    problems: list[str] = []
    props = dict(resource.props)
    if resource.type == K8S_SECRET:
        for data_key in ("data", "stringData"):
            value = props.pop(data_key, None)
            if value is None or isinstance(value, Secret) or is_unknown(value):
                continue
            if isinstance(value, Mapping) and all(
                isinstance(item, Secret) or is_unknown(item) for item in value.values()
            ):
                continue
            problems.append(
                f"{data_key} of a Secret is not a Pulumi secret: wrap it in pulumi.Output.secret"
            )
    for leaf in _leaves(props, "", None, False):
        if leaf.secret or not leaf.value:
            continue
        if leaf.key is not None and secret_looking_key(leaf.key):
            problems.append(
                f"{leaf.path} ({leaf.key}) looks like a secret but is plain text: pass it as a "
                "Pulumi secret (config --secret, Output.secret) or by reference"
            )
            continue
        what = secret_looking_value(leaf.value)
        if what is not None:
            problems.append(f"{leaf.path} holds {what} in plain text: pass it as a Pulumi secret")
    return problems


def check_storage_protected(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    """PostgreSQL's storage survives a destroy: `protect` or `retainOnDelete` on it."""
    if resource.type == K8S_PVC:
        app_namespace = config.get("appNamespace", DEFAULT_APP_NAMESPACE)
        name = at(resource.props, "metadata", "name")
        if namespace_of(resource) != app_namespace or not str(name or "").endswith("-data"):
            return []
        if resource.protect or resource.retain_on_delete:
            return []
        hint = "" if resource.retain_on_delete is not None else " (retainOnDelete is not visible)"
        return [f"the database claim {name!r} must be protected{hint}"]
    if resource.type == DOCKER_VOLUME:
        name = at(resource.props, "name") or resource.name
        if not str(name).endswith("-db-data"):
            return []
        if resource.protect or resource.retain_on_delete:
            return []
        if resource.retain_on_delete is None:
            raise NotApplicable(
                f"the database volume {name!r} is not protected, and pulumi-policy does not show "
                "retainOnDelete; tests/unit/test_local_program.py checks it is retained"
            )
        return [f"the database volume {name!r} needs retainOnDelete or protect"]
    return []


# --- the SDK side --------------------------------------------------------------------------------

Check = Callable[[Resource, Mapping[str, Any]], list[str]]


def _keep_secrets(prop: Any) -> Any:
    if isinstance(prop, list):
        return [_keep_secrets(item) for item in prop]
    if isinstance(prop, dict):
        signature = prop.get(sdk_deserialize.SPECIAL_SIG_KEY)
        if signature == sdk_deserialize.SPECIAL_SECRET_SIG:
            return Secret(_keep_secrets(prop["value"]))
        if signature is not None:
            return sdk_deserialize._deserialize_property(prop)  # assets and archives
        return {key: _keep_secrets(item) for key, item in prop.items()}
    return prop


def deserialize_keeping_secrets(
    props: dict[str, Any], proxy_secrets: bool = False
) -> dict[str, Any]:
    """The SDK's `deserialize_properties`, except that secrets stay wrapped in `Secret`."""
    if proxy_secrets:
        # Remediation's path already keeps them (in its own proxies); leave it as it is.
        return _SDK_DESERIALIZE(props, proxy_secrets)
    return {key: _keep_secrets(value) for key, value in props.items()}


_SDK_DESERIALIZE = sdk_deserialize.deserialize_properties


def keep_secret_markers() -> None:
    """Make the analyzer hand policies secret inputs as `Secret` rather than bare values."""
    # The analyzer servicer calls the name it imported into its own module (pulumi-policy 1.21,
    # policy.py: Analyze, AnalyzeStack, provider resources); replace it there.
    sdk_policy.deserialize_properties = deserialize_keeping_secrets  # pyright: ignore[reportPrivateImportUsage]


def as_validation(check: Check) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    """A pulumi-policy `validate` function running `check`."""

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        try:
            problems = check(Resource.from_args(args), args.get_config())
        except NotApplicable as reason:
            args.not_applicable(reason.reason)
            return
        for problem in problems:
            report_violation(problem, None)

    return validate


@dataclass(frozen=True)
class PolicySpec:
    """One policy: its name, what it asks, its check and its config schema."""

    name: str
    description: str
    check: Check
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


SPECS: Sequence[PolicySpec] = (
    PolicySpec(
        "images-pinned",
        "Docker images and Kubernetes container images are pinned: a version tag other than "
        "latest, or a digest.",
        check_images_pinned,
    ),
    PolicySpec(
        "container-limits",
        "Every Kubernetes container and init container has CPU and memory limits.",
        check_container_limits,
    ),
    PolicySpec(
        "no-privileged-containers",
        "No privileged container, hostPID, hostNetwork or hostIPC pod outside the namespaces "
        "that need host access (node-exporter's).",
        check_no_privileged,
        {
            "privilegedNamespaces": {
                "type": "array",
                "items": {"type": "string"},
                "default": list(DEFAULT_PRIVILEGED_NAMESPACES),
            }
        },
    ),
    PolicySpec(
        "no-public-docker-ports",
        "No Docker port published on 0.0.0.0 or :: unless allowPublicPorts is set.",
        check_no_public_ports,
        {"allowPublicPorts": {"type": "boolean", "default": False}},
    ),
    PolicySpec(
        "no-plain-secrets",
        "No password, token, private key or credential-bearing URL in an input that is not a "
        "Pulumi secret; Kubernetes Secret data only as secrets.",
        check_no_plain_secrets,
    ),
    PolicySpec(
        "postgres-storage-protected",
        "PostgreSQL's data volume (the *-data claim in the app namespace, the *-db-data Docker "
        "volume) is protected or retained on delete.",
        check_storage_protected,
        {"appNamespace": {"type": "string", "default": DEFAULT_APP_NAMESPACE}},
    ),
)
"""Every policy of the pack, in the order the pack lists them."""


def policies() -> list[Policy]:
    """The pack's policies as pulumi-policy objects."""
    return [
        ResourceValidationPolicy(
            name=spec.name,
            description=spec.description,
            validate=as_validation(spec.check),
            config_schema=PolicyConfigSchema(
                properties={k: dict(v) for k, v in spec.config.items()}
            )
            if spec.config
            else None,
        )
        for spec in SPECS
    ]
