"""Run the real Pulumi program, or one component, under Pulumi's mocks and record what the engine
would see.

The runner, the recording monitor and the secret markers are the operator CLI's
(`cli/program.py`, which renders the same program for `bin/picluster manifests|compose`); this
module adds what the tests check. `RecordingMonitor` keeps every RegisterResource request:
type, name, parent, dependencies, provider, `protect`, `retainOnDelete`,
`additionalSecretOutputs`, and the inputs with their secret markers intact. Like the engine,
it marks a resource's `additionalSecretOutputs` secret in the state it returns. No Pulumi CLI,
plugin or network is involved: the mocks answer for the providers.

The engine's rules the mocks skip are applied from `tests/engine_rules.py`: every run is refused,
as the engine would, when a resource falls back to a disabled default provider, and two runs
compared with `engine_rules.plan` give what the engine would create, update, replace or delete.
"""

from __future__ import annotations

import base64
import hashlib
import re
import runpy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings

from cli import program
from cli.program import SECRET_SIG as SECRET_SIG
from cli.program import SIG_KEY as SIG_KEY
from cli.program import is_secret as _is_secret
from components.app_model import ImageSource
from components.config import ConfigError
from components.image_build import TunnelPush
from components.pi_node import SshTarget
from tests.engine_rules import (
    EngineRefusalError,
    default_provider_refusals,
    disabled_default_providers,
)

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "__main__.py"
PROJECT = "picluster"
TEST_IMAGES = ImageSource(repository="picluster-test", project_dir=ROOT)
"""Where the unit tests' built images are named from; folders relative to the checkout."""
TEST_PUSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nunit-push\n-----END OPENSSH PRIVATE KEY-----\n"
)


def tunnel_push() -> TunnelPush:
    """Where a K3s app under test pushes the images it builds: the in-cluster registry, through
    an SSH tunnel to a first server at 10.0.0.10 (the key a secret)."""
    return TunnelPush(
        server=SshTarget(
            host="10.0.0.10", port=22, user="pi", private_key=pulumi.Output.secret(TEST_PUSH_KEY)
        ),
        platforms=("linux/arm64",),
    )


def walk_strings(value: Any, *, in_secret: bool = False) -> Iterator[tuple[str, bool]]:
    """Every string inside `value`, with whether it sits inside a secret."""
    if _is_secret(value):
        yield from walk_strings(value.get("value"), in_secret=True)
    elif isinstance(value, str):
        yield value, in_secret
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from walk_strings(k, in_secret=in_secret)
            yield from walk_strings(v, in_secret=in_secret)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from walk_strings(item, in_secret=in_secret)


def unwrap(value: Any) -> Any:
    """`value` with secret markers removed, for asserting on content."""
    if _is_secret(value):
        return unwrap(value.get("value"))
    if isinstance(value, Mapping):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(v) for v in value]
    return value


@dataclass
class Registration:
    """One RegisterResource request, as the engine receives it."""

    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    """Deserialized inputs; secret values keep their marker (see `walk_strings`)."""
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    provider: str
    providers: dict[str, str]
    protect: bool
    retain_on_delete: bool
    additional_secret_outputs: list[str]
    delete_before_replace: bool
    replace_on_changes: list[str]
    ignore_changes: list[str]

    def plain_strings(self) -> list[str]:
        """Every input string not marked secret."""
        return [s for s, secret in walk_strings(self.inputs) if not secret]

    def secret_strings(self) -> list[str]:
        """Every input string marked secret."""
        return [s for s, secret in walk_strings(self.inputs) if secret]

    def value(self, key: str) -> Any:
        """Input `key` without secret markers."""
        return unwrap(self.inputs.get(key))

    def is_secret(self, key: str) -> bool:
        """Whether input `key` as a whole is a secret."""
        return _is_secret(self.inputs.get(key))


MOCK_CA = b"CA-DATA"
"""The bytes of the cluster's server CA under the mocks."""
MOCK_CA_HASH = hashlib.sha256(MOCK_CA).hexdigest()
"""Its hash, which the full join token carries."""

K3S_KUBECONFIG = f"""apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {base64.b64encode(MOCK_CA).decode()}
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: Q0VSVC1EQVRB
    client-key-data: S0VZLURBVEE=
"""
"""What K3s writes to /etc/rancher/k3s/k3s.yaml (certificates shortened)."""


def mock_image_id(ref: str) -> str:
    """The image id the mocks give the pulled image `ref`."""
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def mock_digest(ref: str) -> str:
    """The digest the mocks' registry serves for the pushed reference `ref`."""
    return "sha256:" + hashlib.sha256(f"pushed {ref}".encode()).hexdigest()


def mock_build_stdout(stdin: str) -> str:
    """The stdout of image-build.sh run with `stdin` under the mocks: the summary, and for a push
    (MODE tunnel or registry) the digest line before it."""
    header = dict(re.findall(r"^([A-Z_]+)='?([^'\n]*)'?$", stdin.split("#!")[0], re.MULTILINE))
    ref = header.get("REF", "")
    if header.get("MODE") in {"tunnel", "registry"}:
        digest = mock_digest(ref)
        return f"picluster image-build: digest {digest}\npicluster image-build: {ref} pushed\n"
    return f"picluster image-build: {ref} built\n"


class ProgramMocks(pulumi_mocks.Mocks):
    """Answers for the providers: echo the inputs and add what the real provider computes.

    `stdouts` gives the stdout a remote command really printed, by resource name (a replay on
    simulated Pis feeds each step's real output back, as the engine does); any other command gets
    a made-up summary. A one-shot container (`attach`) exits with its `exit_codes` entry, by
    resource name, else 0.
    """

    def __init__(
        self,
        stdouts: Mapping[str, str] | None = None,
        exit_codes: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.stdouts = dict(stdouts or {})
        self.exit_codes = dict(exit_codes or {})

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        state = dict(args.inputs)
        if args.typ == "command:remote:Command" and args.name in self.stdouts:
            state["stdout"] = self.stdouts[args.name]
            state["stderr"] = ""
            return f"{args.name}-id", state
        if args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = f"generated-{args.name}-{int(state.get('length', 16))}"
        elif args.typ == "command:remote:Command":
            # What the Pi would print: K3s's own kubeconfig for the read step, a summary otherwise.
            # A step that runs with other stdin prints something else (a re-run reports what it
            # did), so steps that follow another one see it ran, as they would on real Pis.
            stdin = str(unwrap(args.inputs.get("stdin")) or "")
            run_id = hashlib.sha256(stdin.encode()).hexdigest()[:12]
            summary = f"picluster step: no changes (run {run_id})"
            if args.name.endswith("-kubeconfig"):
                state["stdout"] = K3S_KUBECONFIG
            else:
                state["stdout"] = summary
            state["stderr"] = ""
        elif args.typ == "command:local:Command":
            # What image-build.sh prints (the only local command): a push names the digest the
            # registry served, here a hash of the reference, as content-addressed as the real one.
            stdin = str(unwrap(args.inputs.get("stdin")) or "")
            state["stdout"] = mock_build_stdout(stdin)
            state["stderr"] = ""
        elif args.typ == "docker:index/container:Container" and args.inputs.get("attach"):
            # The provider waits for an attached container to exit and reads its exit code.
            state["exitCode"] = self.exit_codes.get(args.name, 0)
        elif args.typ.startswith("kubernetes:") and isinstance(state.get("metadata"), dict):
            # The API server gives every object a uid when it is created.
            uid = hashlib.sha256(f"{args.typ}/{args.name}".encode()).hexdigest()[:32]
            state["metadata"] = {**state["metadata"], "uid": uid}
        elif args.typ == "docker:index/remoteImage:RemoteImage":
            state["imageId"] = mock_image_id(args.inputs["name"])
            state["repoDigest"] = f"{args.inputs['name']}@sha256:{'0' * 64}"
        return f"{args.name}-id", state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list[tuple[str, str]] | None]:
        return {}, None


class RecordingMonitor(program.RecordingMonitor):
    """The CLI's recording monitor (`cli/program.py`: it also marks `additionalSecretOutputs`
    secret, as the engine does), keeping every field of each request the tests check."""

    registrations: list[Registration]

    def _record(self, request: Any) -> Registration:
        inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
        return Registration(
            type=request.type,
            name=request.name,
            urn=self.make_urn(request.parent, request.type, request.name),
            parent=request.parent,
            custom=bool(request.custom),
            inputs=dict(inputs),
            dependencies=list(request.dependencies),
            property_dependencies={
                k: list(v.urns) for k, v in request.propertyDependencies.items()
            },
            provider=request.provider,
            providers=dict(request.providers),
            protect=bool(request.protect),
            retain_on_delete=bool(request.retainOnDelete),
            additional_secret_outputs=list(request.additionalSecretOutputs),
            delete_before_replace=bool(request.deleteBeforeReplace),
            replace_on_changes=list(request.replaceOnChanges),
            ignore_changes=list(request.ignoreChanges),
        )


@dataclass
class StackOutput:
    """A stack output's value and whether it is secret."""

    value: Any
    secret: bool


@dataclass
class Run:
    """What one program run declared."""

    registrations: list[Registration]
    outputs: dict[str, StackOutput] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)
    """What the program logged with `pulumi.log.info`."""

    def of_type(self, type_: str) -> list[Registration]:
        """Registrations of one type token."""
        return [r for r in self.registrations if r.type == type_]

    def named(self, name: str) -> Registration:
        """The one registration called `name`."""
        found = [r for r in self.registrations if r.name == name]
        assert len(found) == 1, f"expected one resource named {name!r}, found {len(found)}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        """The registration with `urn`."""
        return next(r for r in self.registrations if r.urn == urn)

    def names(self, type_: str) -> set[str]:
        """Names of the registrations of one type."""
        return {r.name for r in self.of_type(type_)}


def stack_file_config(stack: str) -> dict[str, Any]:
    """The `picluster:` keys of a committed `Pulumi.<stack>.yaml`, unprefixed."""
    document = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    return {
        key.removeprefix(f"{PROJECT}:"): value
        for key, value in (document.get("config") or {}).items()
        if key.startswith(f"{PROJECT}:")
    }


def run(
    declare: Callable[[], object],
    config: Mapping[str, Any],
    *,
    stack: str = "test",
    secret_keys: tuple[str, ...] = (),
    stdouts: Mapping[str, str] | None = None,
    exit_codes: Mapping[str, int] | None = None,
    recorded: list[Registration] | None = None,
) -> Run:
    """Run `declare` (a Pulumi program) under mocks with the given `picluster:` config
    (unprefixed keys), through the CLI's runner (`cli.program.run_under_mocks`).

    `recorded`, when given, receives the registrations as they come (still there when the
    program fails)."""
    mocks = ProgramMocks(stdouts, exit_codes)
    monitor = RecordingMonitor(mocks)
    if recorded is not None:
        monitor.registrations = recorded
    logger = program.EngineLog()
    result = Run(registrations=monitor.registrations, warnings=logger.warnings, infos=logger.infos)

    async def collect_outputs() -> None:
        root = pulumi_settings.get_root_resource()
        for key, output in getattr(root, "outputs", {}).items():
            out = pulumi.Output.from_input(output)
            result.outputs[key] = StackOutput(
                value=await out.future(), secret=bool(await out.is_secret())
            )

    def body() -> Any:
        declare()
        return collect_outputs()

    try:
        program.run_under_mocks(
            body,
            mocks=mocks,
            monitor=monitor,
            log=logger,
            config=config,
            secret_keys=secret_keys,
            stack=stack,
        )
    except ConfigError as shown:
        # `load_or_exit` logged it as the engine's one error; tests assert on that error.
        assert logger.errors == [str(shown)], logger.errors
        raise
    # What the engine refuses before it runs anything.
    refusals = default_provider_refusals(result.registrations, disabled_default_providers())
    if refusals:
        raise EngineRefusalError("\n".join(refusals))
    return result


def run_main(
    config: Mapping[str, Any], *, stack: str = "test", secret_keys: tuple[str, ...] = ()
) -> Run:
    """Run the project's `__main__.py` under mocks."""
    return run(
        lambda: runpy.run_path(str(MAIN), run_name="__main__"),
        config,
        stack=stack,
        secret_keys=secret_keys,
    )
