"""`bin/picluster manifests [-s STACK] [--out DIR]`: the Kubernetes objects picluster deploys for
the stack's app and monitoring, as YAML for `kubectl apply`.

The objects are what the program declares for `pulumi up` (`cli/program.py` runs it under the
SDK's mocks: no engine, cluster or Pi), one file each, named `NN-kind-namespace-name.yaml` so that
`kubectl apply -f DIR` creates Namespaces first and Ingresses last. Three things differ, each for
a reason:

- Secrets are left out: no password lands in a file. `DIR/secrets.txt` lists each Secret, its
  namespace, its keys, what each value is and the pods that read it, as `kubectl create secret`
  commands reading files the user writes. Which values are secret is decided by Pulumi's secret
  markers, not by searching text: a Secret's value is never written, only a placeholder chosen
  by which key it is (the config key or generated password it equals, or the key's own
  description); any other object carrying a secret is refused. A last check searches every file
  about to be written for each secret value, as is, percent-encoded and base64-encoded.
- An image picluster builds from a folder is named by its content tag; the Pulumi path pins the
  digest its push returned. `manifests` builds nothing: `secrets.txt` names the images to build and
  push (or `bin/pulumi up` does it).
- The pod annotation `checksum/secrets` (a hash of the secrets' values, which rolls the pods when
  one changes under Pulumi) is dropped: it would be a hash of placeholders.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cli.program import (
    PLACEHOLDER_DIGEST,
    Declared,
    RenderError,
    declare,
    holds_secret,
    refuse_leaks,
    reveal,
)
from components.alertmanager_config import SecretFile
from components.app_model import SecretKey
from components.on_kubernetes.pods import SECRET_CHECKSUM_ANNOTATION

KUBERNETES = "kubernetes:"
ORDER = {
    "Namespace": 0,
    "StatefulSet": 2,
    "Deployment": 2,
    "DaemonSet": 2,
    "CronJob": 2,
    "Job": 2,
    "Ingress": 3,
}
"""Apply order by kind (the file-name prefix); everything else is 1: what the pods read first."""
WRITTEN = re.compile(r"^\d\d-.+\.yaml$")
SECRETS_FILE = "secrets.txt"
KEY_DESCRIPTIONS = {
    SecretKey.DATABASE_URL.value: (
        "postgresql://USER:PASSWORD@HOST:PORT/NAME, the app's database (picluster:app.db) with "
        "its password, db-password's value, percent-encoded"
    ),
    SecretFile.NTFY_URL.value: (
        "<picluster:alertsNtfyUrl> with the query parameter template=alertmanager added"
    ),
}
"""What a Secret key holds when its value is none of the stack's secrets as is: the program
composes it (components/secrets.py `stack_secrets`, `ntfy_url`). The other receiver files
(components/alertmanager_config.py SECRET_FILE_KEYS) hold their config key's value as is."""


@dataclass(frozen=True)
class SecretNeeded:
    """A Secret left out of the files: what the pods need created."""

    name: str
    namespace: str
    keys: dict[str, str]
    """Each key and what its value is (a placeholder such as `<picluster:dbPassword>`, or the
    key's description); never the value."""
    readers: tuple[str, ...]
    """`Kind/name` of the workloads whose pods mount or read it."""


@dataclass(frozen=True)
class BuiltImage:
    """An image picluster builds from a folder."""

    ref: str
    context: str


@dataclass(frozen=True)
class Rendered:
    """What `manifests` writes."""

    objects: list[dict[str, Any]]
    secrets: list[SecretNeeded]
    builds: list[BuiltImage]
    secret_values: list[str]
    """The secret values the run used (the last check: none is in a written file)."""


def _strip_digests(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(f"@{PLACEHOLDER_DIGEST}", "")
    if isinstance(value, dict):
        return {k: _strip_digests(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_digests(v) for v in value]
    return value


def _drop_secret_checksums(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _drop_secret_checksums(v)
            for k, v in value.items()
            if k != SECRET_CHECKSUM_ANNOTATION
        }
    if isinstance(value, list):
        return [_drop_secret_checksums(v) for v in value]
    return value


def _secret_names(value: Any) -> set[str]:
    """Secret names a pod spec refers to (volumes, env, envFrom)."""
    found: set[str] = set()
    if isinstance(value, dict):
        if isinstance(value.get("secretName"), str):
            found.add(value["secretName"])
        for key in ("secretKeyRef", "secretRef"):
            ref = value.get(key)
            if isinstance(ref, dict) and isinstance(ref.get("name"), str):
                found.add(ref["name"])
        for item in value.values():
            found |= _secret_names(item)
    elif isinstance(value, list):
        for item in value:
            found |= _secret_names(item)
    return found


def _builds(declared: Iterable[Declared]) -> list[BuiltImage]:
    builds = []
    for resource in declared:
        if resource.type != "command:local:Command":
            continue
        header = str(resource.value("stdin") or "").split("#!", 1)[0]
        fields = dict(re.findall(r"^([A-Z0-9_]+)='?([^'\n]*)'?$", header, re.MULTILINE))
        builds.append(BuiltImage(ref=fields.get("REF", "?"), context=fields.get("CONTEXT", "?")))
    return builds


def _placeholder(key: str, value: Any, known: dict[str, str]) -> str:
    """What a Secret's `key` holds, never its `value`: the name of the stack secret it equals
    (`<picluster:dbPassword>`, `<db-password>` for a generated one), else the key's
    description, else `<KEY>` (a value the program composes)."""
    if isinstance(value, str) and value in known:
        return known[value]
    return KEY_DESCRIPTIONS.get(key, f"<{key}>")


def render(stack: str, stack_file: Path | None = None) -> Rendered:
    """The stack's Kubernetes objects but Secrets, the Secrets to create, the images to build."""
    declaration = declare(stack, stack_file=stack_file)
    declared = declaration.resources
    objects = [r for r in declared if r.type.startswith(KUBERNETES)]
    if not objects:
        raise RenderError(
            f"the stack {stack} deploys nothing to Kubernetes (its target is docker?): "
            "`bin/picluster compose` writes its docker-compose.yml"
        )
    known = declaration.secrets
    kept: list[dict[str, Any]] = []
    secret_objects: list[tuple[dict[str, Any], dict[str, str]]] = []
    for resource in objects:
        if resource.value("kind") == "Secret":
            meta = _strip_digests(reveal(resource.inputs.get("metadata")))
            values = {**reveal(resource.inputs.get("stringData") or {})}
            values.update(reveal(resource.inputs.get("data") or {}))
            shapes = {key: _placeholder(key, value, known) for key, value in values.items()}
            secret_objects.append((meta, shapes))
            continue
        inputs = _drop_secret_checksums(dict(resource.inputs))
        if holds_secret(inputs):  # a secret in a plain object: refuse rather than write it
            raise RenderError(
                f"{resource.value('kind')}/{resource.value('metadata')['name']} would carry a "
                "secret value; nothing was written"
            )
        kept.append(_strip_digests(reveal(inputs)))
    secrets = []
    for meta, shapes in secret_objects:
        readers = tuple(
            f"{m['kind']}/{m['metadata']['name']}"
            for m in kept
            if m["metadata"].get("namespace") == meta.get("namespace")
            and meta["name"] in _secret_names(m.get("spec"))
        )
        namespace = meta.get("namespace", "default")
        secrets.append(SecretNeeded(meta["name"], namespace, shapes, readers))
    return Rendered(
        objects=kept, secrets=secrets, builds=_builds(declared), secret_values=list(known)
    )


def file_name(manifest: dict[str, Any]) -> str:
    """`NN-kind-namespace-name.yaml`: apply order, then the provider's own render naming
    (pulumi-kubernetes provider.go renderPathForResource: kind, namespace or `default`, name)."""
    meta = manifest["metadata"]
    kind = manifest["kind"]
    return (
        f"{ORDER.get(kind, 1):02d}-{kind.lower()}-"
        f"{meta.get('namespace') or 'default'}-{meta['name']}.yaml"
    )


def secrets_text(stack: str, rendered: Rendered) -> str:
    """`secrets.txt`: the Secrets to create before the pods can start, and the images to push."""
    lines = [
        f"# The Secrets the pods of stack {stack} read, left out of these files (no password is",
        "# written here). Write each value into a file (no trailing newline: printf '%s'), then:",
        "",
    ]
    for secret in rendered.secrets:
        readers = ", ".join(secret.readers) or "no pod (kept for its owner)"
        lines.append(f"# {secret.namespace}/{secret.name}, read by {readers}:")
        for key, shape in secret.keys.items():
            lines.append(f"#   {key}: {shape}")
        files = " ".join(f"--from-file={key}=./{secret.name}.{key}" for key in secret.keys)
        lines += [f"kubectl create secret generic {secret.name} -n {secret.namespace} {files}", ""]
    lines.append("# The same <name> is the same value everywhere; in a URL, percent-encode it.")
    if rendered.builds:
        lines += [
            "",
            "# Images picluster builds from a folder (not built by `manifests`): build and",
            "# push each where the nodes pull it from, or let `bin/pulumi up` do it:",
        ]
        lines += [f"#   {b.ref}  from  {b.context}" for b in rendered.builds]
    return "\n".join(lines) + "\n"


def write(rendered: Rendered, out: Path, stack: str) -> list[Path]:
    """Write the objects and `secrets.txt` into `out`; files a previous run wrote there and this
    one does not are removed (an object the stack no longer has). Nothing is written when a
    secret value would be (`RenderError`)."""
    files = {file_name(m): yaml.safe_dump(m, sort_keys=False) for m in rendered.objects}
    files[SECRETS_FILE] = secrets_text(stack, rendered)
    refuse_leaks(files, rendered.secret_values)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if WRITTEN.match(stale.name):
            stale.unlink()
    written = []
    for name, text in files.items():
        path = out / name
        path.write_text(text)
        if name != SECRETS_FILE:
            written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or f"picluster-{args.stack}-manifests")
    try:
        written = write(render(args.stack), out, args.stack)
    except RenderError as error:
        print(f"bin/picluster manifests: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} objects to {out}/ (Secrets left out: see {out}/{SECRETS_FILE})")
    print(f"kubectl apply -f {out}/, then create the Secrets it lists (the pods wait for them)")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "manifests",
        help="the stack's Kubernetes objects as YAML for kubectl (Secrets left out)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("-s", "--stack", default="prod", help="the stack (default: prod)")
    parser.add_argument(
        "--out", help="the folder to write (default: ./picluster-STACK-manifests)", default=None
    )
    parser.set_defaults(func=run)
