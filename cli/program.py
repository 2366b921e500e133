"""The stack's Pulumi program run in-process, with no engine, Pis, cluster or daemon: what it
declares, for `bin/picluster manifests` and `bin/picluster compose`.

The project's own `__main__.py` runs under the Pulumi SDK's mocks (`pulumi.runtime.set_mocks`),
with the stack's configuration from `Pulumi.<stack>.yaml`, and every RegisterResource request is
kept with its inputs, secret markers intact, and its dependencies. So what the two commands write
is what the Docker and Kubernetes renderers declare for `pulumi up`, not a second description of
the app. Nothing runs: the mocks answer for the providers with placeholders (a kubeconfig with no
credentials, a build that prints a placeholder digest, generated passwords that are never used).

Secret configuration (`secure:` values in the stack file) is read with
`bin/pulumi config --show-secrets` only when the stack sets some; the SSH key, which no rendered
object uses, is a placeholder.
"""

from __future__ import annotations

import base64
import json
import os
import runpy
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from components.config import SECRET_KEYS

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "picluster"
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
"""What a mocked image push reports; the commands write the content tag instead."""
GENERATED_PREFIX = "render-placeholder-"
"""A generated password's value under the mocks: this, then the resource's name."""
SSH_KEY_PLACEHOLDER = "picluster-render: no SSH key is read to render objects"

_SECRET_SIG = rpc._special_secret_sig
_SIG_KEY = rpc._special_sig_key

_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [
        {
            "name": "default",
            "cluster": {
                "server": "https://127.0.0.1:6443",
                "certificate-authority-data": base64.b64encode(b"render").decode(),
            },
        }
    ],
    "users": [{"name": "default", "user": {"token": "render"}}],
    "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
    "current-context": "default",
}
"""What the mocked first server prints for K3s's kubeconfig: no credentials, nothing reaches it."""


class RenderError(Exception):
    """The program could not be rendered: one message for the user."""


def is_secret(value: Any) -> bool:
    """Whether `value` is a deserialized secret (a value with the SDK's secret marker)."""
    return isinstance(value, dict) and value.get(_SIG_KEY) == _SECRET_SIG


def reveal(value: Any) -> Any:
    """`value` with every secret marker removed, and whole numbers as integers (the SDK's
    protocol carries every number as a float: a port is 80, not 80.0)."""
    if is_secret(value):
        return reveal(value.get("value"))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [reveal(v) for v in value]
    return value


def holds_secret(value: Any) -> bool:
    """Whether any part of `value` is a secret."""
    if is_secret(value):
        return True
    if isinstance(value, Mapping):
        return any(holds_secret(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(holds_secret(v) for v in value)
    return False


@dataclass(frozen=True)
class Declared:
    """One resource the program declared."""

    type: str
    name: str
    urn: str
    inputs: Mapping[str, Any]
    """Deserialized inputs; secret values keep their marker (`is_secret`, `reveal`)."""
    dependencies: tuple[str, ...]
    """URNs it depends on (explicit and through its inputs)."""

    def value(self, key: str) -> Any:
        """Input `key` without secret markers."""
        return reveal(self.inputs.get(key))


class _Mocks(pulumi_mocks.Mocks):
    """Placeholders for what the providers would compute."""

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        state = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = f"{GENERATED_PREFIX}{args.name}"
        elif args.typ == "command:remote:Command":
            kubeconfig = args.name.endswith("-kubeconfig")
            state["stdout"] = yaml.safe_dump(_KUBECONFIG) if kubeconfig else "rendered"
            state["stderr"] = ""
        elif args.typ == "command:local:Command":
            # image-build.sh's summary; a push also names the digest the pods would pin.
            state["stdout"] = f"picluster image-build: digest {PLACEHOLDER_DIGEST}\n"
            state["stderr"] = ""
        elif args.typ == "docker:index/remoteImage:RemoteImage":
            # The container's `image` is the image's id: here its reference, to read it back.
            state["imageId"] = args.inputs["name"]
            state["repoDigest"] = f"{args.inputs['name']}@{PLACEHOLDER_DIGEST}"
        elif args.typ == "docker:index/container:Container" and args.inputs.get("attach"):
            state["exitCode"] = 0
        return f"{args.name}-id", state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list[tuple[str, str]] | None]:
        return {}, None


class _Recorder(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.declared: list[Declared] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        if request.type != "pulumi:pulumi:Stack":
            self.declared.append(
                Declared(
                    type=request.type,
                    name=request.name,
                    urn=self.make_urn(request.parent, request.type, request.name),
                    inputs=dict(rpc.deserialize_properties(request.object, keep_unknowns=True)),
                    dependencies=tuple(request.dependencies),
                )
            )
        return super().RegisterResource(request)


class _Log:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def stack_config(stack: str, path: Path | None = None) -> tuple[dict[str, Any], frozenset[str]]:
    """The stack file's `picluster:` keys (unprefixed) and which of them are `secure:`.
    `path`: another stack file than the checkout's `Pulumi.<stack>.yaml` (the tests')."""
    path = path or ROOT / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise RenderError(
            f"no stack file {path.name} in {ROOT}: create the stack first "
            f"(bin/pulumi stack init {stack}, then its config; README: Configuration reference)"
        )
    document = yaml.safe_load(path.read_text()) or {}
    config: dict[str, Any] = {}
    secure: set[str] = set()
    for key, value in (document.get("config") or {}).items():
        if not key.startswith(f"{PROJECT}:"):
            continue
        short = key.removeprefix(f"{PROJECT}:")
        if isinstance(value, dict) and set(value) == {"secure"}:
            secure.add(short)
        config[short] = value
    return config, frozenset(secure)


def pulumi_command() -> list[str]:
    """`bin/pulumi` when the checkout has it (it picks the stack's passphrase), else `pulumi`."""
    wrapper = ROOT / "bin" / "pulumi"
    return [str(wrapper)] if wrapper.exists() else ["pulumi"]


def decrypted_secrets(stack: str, keys: frozenset[str]) -> dict[str, str]:
    """The stack's secret config `keys`, decrypted by the Pulumi CLI (held in memory only)."""
    argv = [*pulumi_command(), "config", "--show-secrets", "--json", "--stack", stack]
    try:
        result = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )
    except FileNotFoundError:
        result = None
    if result is None or result.returncode != 0:
        raise RenderError(
            f"the stack {stack} sets secrets ({', '.join(f'{PROJECT}:{k}' for k in sorted(keys))})"
            " that only the Pulumi CLI can decrypt, and `"
            + " ".join(argv[:2])
            + " config --show-secrets` failed"
            + (f": {result.stderr.strip().splitlines()[-1]}" if result and result.stderr else "")
        )
    values = json.loads(result.stdout)
    return {k: str(values[f"{PROJECT}:{k}"]["value"]) for k in keys if f"{PROJECT}:{k}" in values}


def _encode(config: Mapping[str, Any]) -> dict[str, str]:
    return {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


@contextmanager
def _in_project() -> Iterator[None]:
    """Pulumi runs the program in the project directory: build folders are relative to it."""
    before = Path.cwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(before)


@dataclass(frozen=True)
class Declaration:
    """What one run of the program declared, and the secret values it was given."""

    resources: list[Declared]
    secrets: dict[str, str]
    """Each secret value the run used -> how to name it to a user (`<picluster:dbPassword>`,
    `<db-password>` for a generated one): none of them may be written into a plain file."""


def declare(
    stack: str,
    *,
    given_secrets: Mapping[str, str] | None = None,
    stack_file: Path | None = None,
) -> Declaration:
    """Every resource the stack's program declares, without running any of it.

    `given_secrets` set secret config keys (e.g. the passwords a compose file's secrets hold);
    they win over the stack's own. `stack_file`: see `stack_config`.
    """
    config, secure = stack_config(stack, stack_file)
    given = dict(given_secrets or {})
    to_decrypt = secure - set(given) - {"sshPrivateKey"}
    secrets = {**(decrypted_secrets(stack, to_decrypt) if to_decrypt else {}), **given}
    # A secret key set in plain text in the stack file (the program warns) is a secret still.
    secrets.update({k: str(config[k]) for k in SECRET_KEYS if k in config and k not in secure})
    secrets.update({k: v for k, v in given.items()})
    if config.get("nodes"):
        secrets.setdefault("sshPrivateKey", SSH_KEY_PLACEHOLDER)
    plain = {k: v for k, v in config.items() if k not in secure and k not in secrets}
    values = {**plain, **secrets}

    pulumi_settings.ROOT.set(None)
    mocks = _Mocks()
    recorder = _Recorder(mocks)
    log = _Log()
    pulumi.runtime.set_mocks(
        mocks,
        project=PROJECT,
        stack=stack,
        preview=False,
        monitor=recorder,
        logger=log,  # type: ignore[arg-type]
    )
    pulumi.runtime.set_all_config(_encode(values), secret_keys=[f"{PROJECT}:{k}" for k in secrets])
    main = str(ROOT / "__main__.py")

    def program() -> None:
        runpy.run_path(main, run_name="__main__")

    try:
        with _in_project():
            _sync_await(run_pulumi_func(program))
    except pulumi.RunError as error:  # a ConfigError: one message naming each key
        raise RenderError(str(error)) from None
    if log.errors:
        raise RenderError("\n".join(log.errors))
    named = {value: f"<{PROJECT}:{key}>" for key, value in secrets.items() if value}
    for resource in recorder.declared:
        if resource.type == "random:index/randomPassword:RandomPassword":
            named[f"{GENERATED_PREFIX}{resource.name}"] = f"<{resource.name}>"
    return Declaration(recorder.declared, named)
