"""The Docker daemon the `docker` CLI talks to, as the default of `docker.host`.

The rules are docker/cli's (cli/command/cli.go `resolveContextName`, `getServerHost`;
cli/config/config.go `Dir`; cli/context/store `contextdirOf`, metadatastore.go):

1. `DOCKER_HOST`, when set and not empty (the CLI then uses its "default" context);
2. else the context named by `DOCKER_CONTEXT`, else by `currentContext` in `config.json` of the
   CLI's configuration directory (`$DOCKER_CONFIG`, else `~/.docker`);
3. a context other than "default" is read from
   `<config dir>/contexts/meta/<sha256 of its name>/meta.json`: its `Endpoints.docker.Host`;
4. else `unix:///var/run/docker.sock`.

So a Colima, Rancher Desktop, Docker Desktop or rootless daemon that `docker info` reaches is the
one picluster deploys to. An explicit `docker.host` wins over all of this. Only the docker
target resolves it (config.load): K3s stacks never use docker.host.

The value follows the shell a command runs in: `bin/pulumi up` from a shell with another
`DOCKER_HOST` or context updates the Docker provider's `host` in place and deploys to that other
daemon (the containers on the first one are not moved). So every run logs which daemon it uses and
where that came from (config.load).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pulumi

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_CONTEXT = "default"


class DockerHostError(ValueError):
    """The CLI's current context cannot be read; the message says which and how to fix it."""


@dataclass(frozen=True)
class ResolvedHost:
    """The daemon's address and where it came from (for messages)."""

    host: str
    source: str
    """`DOCKER_HOST`, `Docker context NAME` or `default`."""
    tls_dir: Path | None = None
    """The context's TLS files (ca.pem, cert.pem, key.pem) when it has them."""


def config_dir(environ: Mapping[str, str]) -> Path:
    """The docker CLI's configuration directory: `$DOCKER_CONFIG`, else `~/.docker`."""
    configured = environ.get("DOCKER_CONFIG", "")
    if configured:
        return Path(configured)
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".docker"


def context_name(environ: Mapping[str, str]) -> tuple[str, str]:
    """The current context's name and what named it (the CLI's order, without its flags)."""
    if environ.get("DOCKER_HOST", ""):
        return DEFAULT_CONTEXT, "DOCKER_HOST"
    if environ.get("DOCKER_CONTEXT", ""):
        return environ["DOCKER_CONTEXT"], "DOCKER_CONTEXT"
    config = config_dir(environ) / "config.json"
    try:
        current = json.loads(config.read_text()).get("currentContext", "")
    except (OSError, ValueError, AttributeError):
        # The CLI goes on with an unreadable or missing config file as with an empty one.
        current = ""
    if isinstance(current, str) and current:
        return current, f"currentContext in {config}"
    return DEFAULT_CONTEXT, "default"


def resolve(environ: Mapping[str, str] | None = None) -> ResolvedHost:
    """The daemon the docker CLI would use, or DockerHostError."""
    env = os.environ if environ is None else environ
    name, named_by = context_name(env)
    if name == DEFAULT_CONTEXT:
        given = env.get("DOCKER_HOST", "").strip()
        if not given:
            return ResolvedHost(DEFAULT_HOST, "default")
        # `tcp` is the CLI's protocol for an address without one (opts/hosts.go).
        return ResolvedHost(given if "://" in given else f"tcp://{given}", "DOCKER_HOST")
    digest = hashlib.sha256(name.encode()).hexdigest()
    contexts = config_dir(env) / "contexts"
    meta = contexts / "meta" / digest / "meta.json"
    try:
        endpoint = json.loads(meta.read_text())["Endpoints"]["docker"]
        host = str(endpoint["Host"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DockerHostError(
            f"the Docker context {name!r} ({named_by}) has no readable endpoint in {meta}; "
            "check `docker context ls`, or set picluster:docker.host"
        ) from None
    tls = contexts / "tls" / digest / "docker"
    has_tls = all((tls / f).is_file() for f in ("ca.pem", "cert.pem", "key.pem"))
    return ResolvedHost(host, f"Docker context {name!r}", tls if has_tls else None)


def default_host(
    check: Callable[[str], str], environ: Mapping[str, str] | None = None, *, stack: str
) -> tuple[str, str, str | None]:
    """`docker.host` when the stack does not set it: the resolved host, where it came from
    (`DOCKER_HOST`, `Docker context NAME`, `the default socket`) and the config error (None when
    there is none; the host is then the default socket). `check` is the config's validation of a
    host (unix://, tcp:// or ssh://), which raises ValueError."""
    set_it = f"`bin/pulumi config set --path docker.host unix:///path/to/docker.sock -s {stack}`"
    try:
        resolved = resolve(environ)
    except DockerHostError as error:
        return DEFAULT_HOST, "the default socket", f"picluster:docker.host: {error} ({set_it})"
    source = "the default socket" if resolved.source == "default" else resolved.source
    try:
        host = check(resolved.host)
    except ValueError:
        return (
            DEFAULT_HOST,
            "the default socket",
            (
                f"picluster:docker.host: {resolved.host!r} (from {source}) is not a Docker "
                f"host picluster can use; set a unix://, tcp:// or ssh:// one with {set_it}"
            ),
        )
    if resolved.tls_dir is not None:
        pulumi.warn(
            f"picluster:docker.host: {source} ({host}) has TLS certificates, which "
            "picluster does not give the Docker provider; if it cannot connect, use an ssh:// "
            "or unix:// context, or set docker.host"
        )
    return host, source, None
