"""What the commands know about a stack: its settings (Pulumi.<stack>.yaml, validated as the
program validates them, secret values left out), its outputs (`pulumi stack output`), and the
names it gives what it runs.

Outputs come from `bin/pulumi stack output --stack STACK --json` (the wrapper picks the stack's
passphrase file) or, where the checkout has no `bin/pulumi`, from `pulumi` with the caller's
environment. `--show-secrets` is asked only by what needs a secret output (the kubeconfig); a
secret output then lives in this process and in 0600 files it removes, never in an argv.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import NAMESPACE, SECRET_KEYS, Settings, Target, validate

ROOT = Path(__file__).resolve().parents[1]
PULUMI_SECONDS = 120.0


class StackError(Exception):
    """A stack the commands cannot read; the message says why and what to do."""


def stack_file(stack: str, root: Path = ROOT) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def raw_settings(stack: str, root: Path = ROOT) -> dict[str, Any]:
    """The `picluster:` keys of Pulumi.<stack>.yaml, unprefixed; a secret's value is its
    encrypted form (`{secure: ...}`), never decrypted here."""
    path = stack_file(stack, root)
    if not path.is_file():
        known = sorted(p.name.split(".")[1] for p in root.glob("Pulumi.*.yaml"))
        raise StackError(
            f"no {path.name}: name a stack of this project ({', '.join(known) or 'none yet'})"
        )
    config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    prefix = f"{NAMESPACE}:"
    return {k.removeprefix(prefix): v for k, v in config.items() if k.startswith(prefix)}


def settings(stack: str, root: Path = ROOT) -> Settings:
    """The stack's validated settings (one ConfigError naming every bad key, as `pulumi up`)."""
    raw = raw_settings(stack, root)
    for key in SECRET_KEYS:
        if key in raw:
            raw[key] = None  # set; its value is neither read nor needed to check the rest
    return validate(raw, secret_values=False, project_dir=root)


@dataclass(frozen=True)
class Stack:
    """A stack as the commands see it."""

    name: str
    settings: Settings
    root: Path = ROOT

    @property
    def target(self) -> Target:
        return self.settings.target

    @property
    def docker_prefix(self) -> str:
        """What the Docker target prefixes its container, network and volume names with
        (components/stack_args.py `docker_platform`)."""
        return f"picluster-{self.name}"

    @property
    def docker_network(self) -> str:
        """The app network every container of the stack is on (components/on_docker/app.py)."""
        return f"{self.docker_prefix}-app"

    @property
    def docker_host(self) -> str | None:
        """`docker.host` when the stack file sets it; None: the caller's DOCKER_HOST or Docker
        context, as the docker CLI chooses."""
        docker = self.settings.docker
        return docker.host if "host" in docker.model_fields_set else None

    def docker_argv(self, *args: str) -> list[str]:
        """`docker ARGS` against the stack's daemon: `docker.host` when the stack file sets it,
        else the caller's DOCKER_HOST or Docker context, as the docker CLI chooses."""
        host = self.docker_host
        return ["docker", *(("--host", host) if host else ()), *args]

    def pulumi_argv(self, *args: str) -> list[str]:
        wrapper = self.root / "bin" / "pulumi"
        program = str(wrapper) if wrapper.is_file() and os.access(wrapper, os.X_OK) else "pulumi"
        return [program, *args]

    def outputs(self, *, show_secrets: bool = False) -> dict[str, Any]:
        """The stack's outputs; a secret one is `[secret]` unless `show_secrets`."""
        argv = self.pulumi_argv("stack", "output", "--stack", self.name, "--json")
        if show_secrets:
            argv.append("--show-secrets")
        try:
            result = subprocess.run(
                argv,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=PULUMI_SECONDS,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise StackError(
                "no `pulumi` on PATH (README: Prerequisites), which reads the stack's outputs"
            ) from None
        except subprocess.TimeoutExpired:
            raise StackError(
                f"`{' '.join(argv)}` gave no answer in {PULUMI_SECONDS:.0f} s"
            ) from None
        if result.returncode != 0:
            raise StackError(
                f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        outputs = json.loads(result.stdout or "{}")
        if not isinstance(outputs, dict):
            raise StackError(f"`{' '.join(argv)}` printed no outputs object")
        return outputs


def load(stack: str, root: Path | None = None) -> Stack:
    """The stack named `stack` of the project at `root` (default: this checkout), its settings
    validated (ConfigError, StackError)."""
    where = root if root is not None else ROOT
    return Stack(stack, settings(stack, where), where)


def add_stack_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "-s", "--stack", default=default, help=f"the Pulumi stack (default: {default})"
    )


@contextmanager
def private_file(content: str, name: str) -> Iterator[Path]:
    """`content` (a secret: a kubeconfig, a key) in a 0600 file of a 0700 directory, removed
    when the block ends however it ends."""
    with tempfile.TemporaryDirectory(prefix="picluster-") as directory:
        path = Path(directory) / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(content)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)


@contextmanager
def kubeconfig(stack: Stack, outputs: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """The cluster's kubeconfig (the stack output `kubeconfig`, a secret; read now unless
    `outputs` were read with secrets shown) in a private file."""
    if stack.target is not Target.K3S:
        raise StackError(f"stack {stack.name} runs on Docker: it has no cluster")
    if outputs is None:
        outputs = stack.outputs(show_secrets=True)
    config = outputs.get("kubeconfig")
    if not isinstance(config, str) or not config.strip():
        raise StackError(
            f"stack {stack.name} has no kubeconfig output yet: run `bin/pulumi up -s {stack.name}`"
        )
    with private_file(config, "kubeconfig") as path:
        yield path


def urls(outputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The stack's URL outputs (`frontendUrl`, `grafanaUrl`, ...), in the program's order."""
    return [(k, v) for k, v in outputs.items() if k.endswith("Url") and isinstance(v, str)]
