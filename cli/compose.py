"""`bin/picluster compose [-s STACK] [--out FILE]`: a `docker-compose.yml` of the local twin, for
running the game and its monitoring with `docker compose up` and no Pulumi.

The services are the containers the Docker target declares for `pulumi up` (`cli/program.py` runs
the program under the SDK's mocks), translated field by field: image, command, entrypoint, user,
environment, network aliases, published ports, volumes, health check, restart policy, logging,
labels; `depends_on` from what each container waits for (a container with a health check that
`pulumi up` waits on: `service_healthy`; a one-shot migration: `service_completed_successfully`;
else `service_started`). Files the Docker target uploads into a container become `configs:` with
inline `content:` (compose 2.23 or later), so the compose file stands alone.

Secrets never go into the compose file. They are files in `secrets/` next to it (a folder of mode
0700 that git ignores by its own `.gitignore`): the database and Grafana passwords, generated once
and kept (a second run reuses them: the database volume was initialised with the first), mounted
where the Docker target uploads them (`secrets:` with a `target`); the files are 0644 inside
that folder because compose bind-mounts them and each container reads its own as its own user.
Which entries are secret is decided by Pulumi's secret markers (and, as a second net, by holding
a secret value the run used); a secret in any other field is refused, and a last check searches
the compose file and `build/` for each secret value, as is, percent- and base64-encoded.
A secret in an environment variable (`DATABASE_URL`) goes through an `env_file` of mode 0600,
read by compose itself. Other secrets the stack sets (alert receivers) are decrypted with
`bin/pulumi config --show-secrets` and written the same way.

Images picluster builds from a folder get `build:` with that folder as the context and
picluster's generated Dockerfile (written to `build/<service>/`, with its `.dockerignore`), and
`image:` the content tag `pulumi up` would build, so an image `up` already built is used as is.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cli.program import ROOT, Declared, RenderError, declare, holds_secret, refuse_leaks, reveal

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
NETWORK = "docker:index/network:Network"
BUILD = "command:local:Command"
NETWORK_KEY = "app"
SECRETS_DIR = "secrets"
BUILD_DIR = "build"
GENERATED = {"dbPassword": "db-password", "grafanaAdminPassword": "grafana-admin-password"}
"""The passwords `compose` generates (config key -> file in `secrets/`)."""


@dataclass
class Compose:
    """The compose document and the files that go next to it."""

    document: dict[str, Any]
    secret_files: dict[str, str] = field(default_factory=dict)
    """File name in `secrets/` -> content."""
    build_files: dict[str, str] = field(default_factory=dict)
    """Path under `build/` -> content (Dockerfiles and their ignore files)."""
    secret_values: list[str] = field(default_factory=list)
    """The secret values the run used: none may be in the compose file or `build/`."""


def _escape(value: Any) -> Any:
    """Every string with `$` doubled: compose interpolates `${...}` in every value, and the
    alert rules and scripts carry `$labels`, `$$` and shell variables."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _header(stdin: str) -> dict[str, str]:
    header = stdin.split("#!", 1)[0]
    return dict(re.findall(r"^([A-Z0-9_]+)='?([^'\n]*)'?$", header, re.MULTILINE))


def _relative(path: Path, base: Path) -> str:
    """`path` for the compose file in `base`: relative when both are in the checkout (the file
    moves with it), else absolute."""
    if not base.is_relative_to(ROOT):
        return str(path)
    rel = os.path.relpath(path, base)
    return rel if rel.startswith(".") else f"./{rel}"


ROUTED = ("envs", "uploads")
"""The container inputs whose secret entries go to files in `secrets/`; a secret anywhere else
in a container is refused."""


def _is_secret_entry(entry: Any, secret_values: Sequence[str]) -> bool:
    """An environment entry or upload that is or holds a secret: by the SDK's secret markers,
    or (a second net) by holding one of the secret values the run used."""
    value = reveal(entry)
    texts = [str(v) for v in value.values()] if isinstance(value, dict) else [str(value)]
    return holds_secret(entry) or any(s and s in t for s in secret_values for t in texts)


def translate(
    declared: Sequence[Declared],
    *,
    project: str,
    secret_values: Sequence[str],
    out_dir: Path,
) -> Compose:
    """The compose project of the Docker containers in `declared`; an upload or environment
    entry that is a secret (its marker) or holds one of `secret_values` becomes a secret file,
    and a secret in any other container input is refused (`RenderError`)."""
    containers = [r for r in declared if r.type == CONTAINER]
    if not containers:
        raise RenderError(
            "the stack declares no Docker containers (its target is k3s?): "
            "`bin/picluster manifests` writes its Kubernetes objects"
        )
    (network,) = [r for r in declared if r.type == NETWORK]
    prefix = str(network.value("name")).removesuffix("-app")
    by_urn = {r.urn: r for r in declared}
    volume_keys = {
        str(r.value("name")): str(r.value("name")).removeprefix(f"{prefix}-")
        for r in declared
        if r.type == VOLUME
    }
    result = Compose(document={}, secret_values=list(secret_values))
    builds: dict[str, dict[str, Any]] = {}
    for command in (r for r in declared if r.type == BUILD):
        fields = _header(str(command.value("stdin") or ""))
        ref, context = fields["REF"], ROOT / fields["CONTEXT"]
        build: dict[str, Any] = {"context": _relative(context, out_dir)}
        if fields.get("DOCKERFILE_B64"):
            name = ref.split("/")[-1].split(":")[0]
            dockerfile = f"{BUILD_DIR}/{name}/Dockerfile"
            result.build_files[dockerfile] = base64.b64decode(fields["DOCKERFILE_B64"]).decode()
            ignore = base64.b64decode(fields.get("IGNORE_B64", "")).decode()
            result.build_files[f"{dockerfile}.dockerignore"] = ignore
            # Outside the context, as image-build.sh puts it: BuildKit then reads the ignore file
            # next to it (`<Dockerfile>.dockerignore`), not the folder's own `.dockerignore`.
            build["dockerfile"] = str(out_dir / dockerfile)
        builds[ref] = build

    services: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    compose_secrets: dict[str, Any] = {}
    secret_names: dict[str, str] = {}  # content -> file name

    def secret_file(basename: str, content: str) -> str:
        if content not in secret_names:
            name = _slug(basename) or "secret"
            while name in result.secret_files:
                name = f"{name}-{len(result.secret_files)}"
            secret_names[content] = name
            result.secret_files[name] = content
            compose_secrets[name] = {"file": f"./{SECRETS_DIR}/{name}"}
        return secret_names[content]

    for container in containers:
        service = str(container.value("name")).removeprefix(f"{prefix}-")
        for key, value in container.inputs.items():
            if key not in ROUTED and holds_secret(value):
                raise RenderError(
                    f"the container {service} would carry a secret value in its {key}; "
                    "nothing was written"
                )
        spec: dict[str, Any] = {"image": container.value("image")}
        if spec["image"] in builds:
            spec["build"] = builds[spec["image"]]
        for key, compose_key in (("entrypoints", "entrypoint"), ("command", "command")):
            if container.value(key):
                spec[compose_key] = list(container.value(key))
        for key, compose_key in (("user", "user"), ("pidMode", "pid")):
            if container.value(key):
                spec[compose_key] = container.value(key)
        environment: dict[str, str] = {}
        secret_env: list[str] = []
        for entry in container.inputs.get("envs") or []:
            if _is_secret_entry(entry, secret_values):
                secret_env.append(str(reveal(entry)))
            else:
                key, _, value = str(reveal(entry)).partition("=")
                environment[key] = value
        if environment:
            spec["environment"] = environment
        if secret_env:
            env_file = f"{service}.env"
            result.secret_files[env_file] = "".join(f"{e}\n" for e in secret_env)
            spec["env_file"] = [f"./{SECRETS_DIR}/{env_file}"]
        (attached,) = container.value("networksAdvanced")
        spec["networks"] = {NETWORK_KEY: {"aliases": list(attached.get("aliases") or [])}}
        ports = [
            f"{p['ip']}:{p['external']}:{p['internal']}" for p in container.value("ports") or []
        ]
        if ports:
            spec["ports"] = ports
        mounts = []
        for volume in container.value("volumes") or []:
            source = volume.get("volumeName")
            source = volume_keys[source] if source else volume["hostPath"]
            mount = f"{source}:{volume['containerPath']}"
            mounts.append(f"{mount}:ro" if volume.get("readOnly") else mount)
        if mounts:
            spec["volumes"] = mounts
        for marked in container.inputs.get("uploads") or []:
            upload = reveal(marked)
            path, content = upload["file"], upload["content"]
            if _is_secret_entry(marked, secret_values):
                name = secret_file(Path(path).name, content)
                spec.setdefault("secrets", []).append({"source": name, "target": path})
            else:
                name = f"{service}-{_slug(path)}"
                configs[name] = {"content": content}
                spec.setdefault("configs", []).append({"source": name, "target": path})
        health = container.value("healthcheck")
        if health:
            spec["healthcheck"] = {
                "test": list(health["tests"]),
                "interval": health["interval"],
                "timeout": health["timeout"],
                "retries": health["retries"],
                "start_period": health["startPeriod"],
            }
        depends_on: dict[str, Any] = {}
        for urn in container.dependencies:
            dependency = by_urn.get(urn)
            if dependency is None or dependency.type != CONTAINER:
                continue
            if dependency.value("attach"):
                condition = "service_completed_successfully"
            elif dependency.value("wait"):
                condition = "service_healthy"
            else:
                condition = "service_started"
            name = str(dependency.value("name")).removeprefix(f"{prefix}-")
            depends_on[name] = {"condition": condition}
        if depends_on:
            spec["depends_on"] = dict(sorted(depends_on.items()))
        labels = {label["label"]: label["value"] for label in container.value("labels") or []}
        if labels:
            spec["labels"] = labels
        spec["restart"] = container.value("restart")
        spec["logging"] = {
            "driver": container.value("logDriver"),
            "options": dict(container.value("logOpts") or {}),
        }
        services[service] = spec

    document: dict[str, Any] = {
        "name": project,
        "services": services,
        "networks": {NETWORK_KEY: {"driver": network.value("driver") or "bridge"}},
    }
    if volume_keys:
        document["volumes"] = {key: {} for key in sorted(volume_keys.values())}
    if configs:
        document["configs"] = configs
    if compose_secrets:
        document["secrets"] = compose_secrets
    result.document = _escape(document)
    return result


def _read_or_generate(folder: Path) -> dict[str, str]:
    """The passwords in `folder`, generated (letters and digits, as pulumi-random's) when absent."""
    values = {}
    for key, file in GENERATED.items():
        path = folder / file
        if path.is_file():
            values[key] = path.read_text()
        else:
            values[key] = "".join(
                secrets.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                for _ in range(32)
            )
    return values


def render(stack: str, out: Path, stack_file: Path | None = None) -> tuple[Compose, dict[str, str]]:
    """The stack's compose project, with the passwords in `out`'s `secrets/` (or new ones)."""
    passwords = _read_or_generate(out.parent / SECRETS_DIR)
    declaration = declare(stack, given_secrets=passwords, stack_file=stack_file)
    compose = translate(
        declaration.resources,
        project=f"picluster-{stack}-compose".lower(),
        secret_values=list(declaration.secrets),
        out_dir=out.parent.resolve(),
    )
    return compose, passwords


def document_text(compose: Compose) -> str:
    """The compose file's text."""
    header = (
        "# Generated by `bin/picluster compose` from the picluster program's Docker target;\n"
        "# run it again after a config change rather than editing this file.\n"
    )
    return header + yaml.safe_dump(compose.document, sort_keys=False, width=100)


def write(compose: Compose, passwords: Mapping[str, str], out: Path) -> None:
    """The compose file, `secrets/` (0700, with its own `.gitignore`) and `build/`. Nothing is
    written when a secret value would be outside `secrets/` (`RenderError`)."""
    refuse_leaks({out.name: document_text(compose), **compose.build_files}, compose.secret_values)
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    secret_dir = folder / SECRETS_DIR
    secret_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_dir.chmod(0o700)
    (secret_dir / ".gitignore").write_text("*\n")
    files = {**{GENERATED[k]: v for k, v in passwords.items()}, **compose.secret_files}
    for name, content in files.items():
        path = secret_dir / name
        # env files are read by compose; the others are bind-mounted, read in the container by
        # its own user (grafana 472, nobody...): 0644, in a folder only the owner can enter.
        mode = 0o600 if name.endswith(".env") else 0o644
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content)
        path.chmod(mode)
    for relative, content in compose.build_files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    out.write_text(document_text(compose))


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or f"picluster-{args.stack}-compose/docker-compose.yml")
    try:
        compose, passwords = render(args.stack, out)
        write(compose, passwords, out)
    except RenderError as error:
        print(f"bin/picluster compose: {error}", file=sys.stderr)
        return 1
    services = compose.document["services"]
    print(f"wrote {out} ({len(services)} services) and {out.parent / SECRETS_DIR}/ (secrets)")
    print(f"start it with: docker compose -f {out} up -d --wait")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "compose",
        help="the local twin as a docker-compose.yml (secrets in files next to it)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("-s", "--stack", default="local", help="the stack (default: local)")
    parser.add_argument(
        "--out",
        help="the compose file to write (default: ./picluster-STACK-compose/docker-compose.yml)",
        default=None,
    )
    parser.set_defaults(func=run)
