"""The stack's Pulumi program run in-process, with no engine, Pis, cluster or daemon: what it
declares, for `bin/picluster manifests` and `bin/picluster compose`.

The project's own `__main__.py` runs under the Pulumi SDK's mocks (`pulumi.runtime.set_mocks`),
with the stack's configuration from `Pulumi.<stack>.yaml`, and every RegisterResource request is
kept with its inputs, each secret marker where the program put it (`marked_inputs`), and its
dependencies. So what the two commands write is what the Docker and Kubernetes renderers declare
for `pulumi up`, not a second description of the app. Nothing runs: the mocks answer for the
providers with placeholders (a kubeconfig with no credentials, a build that prints a placeholder
digest, generated passwords that are never used).

Secret configuration (`secure:` values in the stack file) is read with
`bin/pulumi config --show-secrets` only when the stack sets some; the SSH sign-in, which no
rendered object uses, is taken out (`_render_config`): the key is a placeholder, its passphrase
is never read, the ssh-agent never asked.

The runner (`run_under_mocks`, `RecordingMonitor`, `EngineLog`) is also the tests' own:
`tests/harness.py` builds on it and adds what the tests check, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import runpy
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from components.config import EXIT_ERROR_SHOWN, SECRET_KEYS, ConfigError

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "picluster"
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
"""What a mocked image push reports; the commands write the content tag instead."""
GENERATED_PREFIX = "render-placeholder-"
"""A generated password's value under the mocks: this, then the resource's name."""
SSH_KEY_PLACEHOLDER = "picluster-render: no SSH key is read to render objects"

SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key

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
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


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


def secret_strings(value: Any, *, in_secret: bool = False) -> Iterator[str]:
    """Every string inside a secret marker in `value` (keys included)."""
    if is_secret(value):
        yield from secret_strings(value.get("value"), in_secret=True)
    elif isinstance(value, str):
        if in_secret:
            yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from secret_strings(k, in_secret=in_secret)
            yield from secret_strings(v, in_secret=in_secret)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from secret_strings(item, in_secret=in_secret)


def marked_inputs(struct: Any) -> dict[str, Any]:
    """A RegisterResource request's inputs with each secret marker where the program put it.

    The SDK's `rpc.deserialize_properties` lifts a nested secret to the top-level property (a
    Deployment's whole `spec` turns secret for one secret annotation), which would make every
    value beside it look secret; the request itself has the marker on the value alone. Numbers
    stay floats (`reveal` makes whole ones integers)."""
    return dict(json_format.MessageToDict(struct))


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


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """A MockMonitor that keeps each RegisterResource request (as `_record` makes it) and, as
    the engine does, returns the outputs named in `additionalSecretOutputs` as secrets.
    `tests/harness.py` records more of each request by overriding `_record`."""

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Any] = []

    def _record(self, request: Any) -> Any:
        return Declared(
            type=request.type,
            name=request.name,
            urn=self.make_urn(request.parent, request.type, request.name),
            inputs=marked_inputs(request.object),
            dependencies=tuple(request.dependencies),
        )

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(self._record(request))
        response = super().RegisterResource(request)
        secret_outputs = list(request.additionalSecretOutputs)
        if not secret_outputs or request.type == "pulumi:pulumi:Stack":
            return response
        state = rpc.deserialize_properties(response.object, keep_unknowns=True)
        for key in secret_outputs:
            if key in state and not is_secret(state[key]):
                state[key] = {SIG_KEY: SECRET_SIG, "value": state[key]}
        response.object.CopyFrom(_sync_await(rpc.serialize_properties(state, {})))
        return response


class EngineLog:
    """What the program logs through the engine: warnings (errors included), errors and infos."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.infos: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        self.infos.append(msg)

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)

    def error(self, msg: str) -> None:
        self.warnings.append(msg)
        self.errors.append(msg)


def encode_config(config: Mapping[str, Any]) -> dict[str, str]:
    """`picluster:` config (unprefixed keys) as the engine hands it to the program."""
    return {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def cancel_leftover_tasks() -> None:
    """A failed program leaves tasks behind: on the event loop the runs share (other
    registrations, their applies) and in the runtime's set of outputs to await, which
    `set_mocks` does not reset (MockSettings keeps `outputs`). Cancel and forget them, or the
    next run would await the failed ones and fail with this run's error."""
    loop = asyncio.get_event_loop()
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    runtime: Any = pulumi_settings.SETTINGS  # contextproperty attributes, unseen by the checker
    with runtime.lock:
        runtime.outputs.clear()


def run_under_mocks(
    program: Callable[[], Any],
    *,
    mocks: pulumi_mocks.Mocks,
    monitor: RecordingMonitor,
    log: EngineLog,
    config: Mapping[str, Any],
    secret_keys: Iterable[str] = (),
    stack: str,
) -> None:
    """Run `program` (what `run_pulumi_func` runs) under `mocks` with the `picluster:` `config`
    (unprefixed keys; `secret_keys` are secret), `monitor` recording what it declares.

    A bad configuration raises its `ConfigError`: the program's `load_or_exit` logs it as the
    engine's error and exits with "message shown" (`EXIT_ERROR_SHOWN`), which under the mocks
    is a `SystemExit` whose cause is the error. Any other failure is raised as it comes."""
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(
        mocks,
        project=PROJECT,
        stack=stack,
        preview=False,
        monitor=monitor,
        logger=log,  # type: ignore[arg-type]
    )
    pulumi.runtime.set_all_config(
        encode_config(config), secret_keys=[f"{PROJECT}:{k}" for k in secret_keys]
    )
    try:
        _sync_await(run_pulumi_func(program))
    except SystemExit as stop:
        cancel_leftover_tasks()
        shown = stop.__cause__
        if stop.code == EXIT_ERROR_SHOWN and isinstance(shown, ConfigError):
            raise shown from None
        raise
    except BaseException:
        cancel_leftover_tasks()
        raise


LEAK_CHECK_MIN = 8
"""The last check (`refuse_leaks`) looks for secret values this long or longer: a shorter one
("game") would be found in unrelated text. Which values are secret is decided by the secret
markers first; this check is the second net."""


def secret_forms(value: str) -> set[str]:
    """`value` as a written file could carry it: as is, percent-encoded (as in a URL's
    password, components/secrets.py), base64-encoded (a Kubernetes Secret's `data`) and
    JSON-escaped."""
    forms = {
        value,
        quote(value, safe=""),
        quote(value),
        base64.b64encode(value.encode()).decode(),
        json.dumps(value)[1:-1],
    }
    return {form for form in forms if form}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def refuse_leaks(files: Mapping[str, str], secret_values: Iterable[str]) -> None:
    """Raise `RenderError` when a file's text (by name -> content) holds one of
    `secret_values` in any of its `secret_forms`: in the text as is, with its white space
    collapsed (YAML folds a long scalar at a space), or in any string of a YAML file read
    back. The message names the file, never the value."""
    forms = {
        " ".join(form.split())
        for value in secret_values
        if len(value) >= LEAK_CHECK_MIN
        for form in secret_forms(value)
    }
    forms.discard("")
    for name, text in files.items():
        haystacks = [text, " ".join(text.split())]
        if name.endswith((".yaml", ".yml")):
            with suppress(yaml.YAMLError):
                haystacks += [" ".join(s.split()) for s in _strings(yaml.safe_load(text))]
        if any(form in haystack for form in forms for haystack in haystacks):
            raise RenderError(f"{name} would carry a secret value; nothing was written")


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


@contextmanager
def _in_project() -> Iterator[None]:
    """Pulumi runs the program in the project directory: build folders are relative to it.
    Without `SSH_AUTH_SOCK`: rendering signs in nowhere, so the program must not probe (or
    refuse) the shell's ssh-agent (components/ssh_auth.py `choose`)."""
    before = Path.cwd()
    agent = os.environ.pop("SSH_AUTH_SOCK", None)
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(before)
        if agent is not None:
            os.environ["SSH_AUTH_SOCK"] = agent


@dataclass(frozen=True)
class Declaration:
    """What one run of the program declared, and the secret values it was given."""

    resources: list[Declared]
    secrets: dict[str, str]
    """Each secret value the run used -> how to name it to a user (`<picluster:dbPassword>`,
    `<db-password>` for a generated one): none of them may be written into a plain file."""


RENDER_DROPPED = ("sshKeyPassphrase",)
"""Secret keys a render never reads: they only sign in to the Pis, which rendering never does."""


def _render_config(
    config: Mapping[str, Any], secure: frozenset[str]
) -> tuple[dict[str, Any], frozenset[str]]:
    """The stack's config as a render runs the program: the SSH sign-in taken out. The key is
    `SSH_KEY_PLACEHOLDER` (no key file is read), its passphrase is never decrypted, and the
    agent is not used (`ssh.agent` false here, `SSH_AUTH_SOCK` unset by `_in_project`), so a
    stack that signs in with a passphrase key or ssh-agent renders as one with a plain key;
    nothing rendered holds any of them. A malformed `ssh` value is left for the
    configuration's own error."""
    config = {k: v for k, v in config.items() if k not in RENDER_DROPPED}
    secure = secure - set(RENDER_DROPPED)
    if config.get("nodes"):
        config["sshPrivateKey"] = SSH_KEY_PLACEHOLDER
        secure = secure - {"sshPrivateKey"}
        ssh = config.get("ssh")
        if isinstance(ssh, Mapping) and ssh.get("agent") is True:
            config["ssh"] = {**ssh, "agent": False}
    return config, secure


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
    config, secure = _render_config(*stack_config(stack, stack_file))
    given = dict(given_secrets or {})
    to_decrypt = secure - set(given)
    secrets = decrypted_secrets(stack, to_decrypt) if to_decrypt else {}
    # A secret key set in plain text in the stack file (the program warns) is a secret still.
    secrets.update({k: str(config[k]) for k in SECRET_KEYS if k in config and k not in secure})
    secrets.update(given)
    plain = {k: v for k, v in config.items() if k not in secure and k not in secrets}

    mocks = _Mocks()
    recorder = RecordingMonitor(mocks)
    log = EngineLog()
    main = str(ROOT / "__main__.py")

    def program() -> None:
        runpy.run_path(main, run_name="__main__")

    try:
        with _in_project():
            run_under_mocks(
                program,
                mocks=mocks,
                monitor=recorder,
                log=log,
                config={**plain, **secrets},
                secret_keys=secrets,
                stack=stack,
            )
    except pulumi.RunError as error:  # a ConfigError: one message naming each key
        raise RenderError(str(error)) from None
    except SystemExit as stop:  # the program stopped after logging why
        shown = "\n".join(log.errors) or f"the program exited with status {stop.code}"
        raise RenderError(shown) from None
    if log.errors:
        raise RenderError("\n".join(log.errors))
    named = {
        value: f"<{PROJECT}:{key}>"
        for key, value in secrets.items()
        if value and key != "sshPrivateKey"
    }
    declared: list[Declared] = recorder.registrations
    for resource in declared:
        if resource.type == "random:index/randomPassword:RandomPassword":
            named[f"{GENERATED_PREFIX}{resource.name}"] = f"<{resource.name}>"
    return Declaration(declared, named)
