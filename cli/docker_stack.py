"""The local stack's containers as the Docker daemon reports them.

Every container the Docker target creates is on the stack's app network
`picluster-<stack>-app` and named `picluster-<stack>-<name>` (components/on_docker), so that is
how they are found: `docker ps --all --filter network=...`, the prefix checked too. Only the
fields shown are read (`docker inspect --format`): a container's environment holds secrets
(DATABASE_URL) and never leaves Docker.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from cli.services import Service, docker_service_of, services
from cli.stack import Stack, StackError

DOCKER_SECONDS = 60.0
_INSPECT = (
    "{{.Name}}\t{{.State.Status}}\t{{.State.ExitCode}}\t"
    "{{if .State.Health}}{{.State.Health.Status}}{{end}}\t{{.RestartCount}}\t"
    "{{.HostConfig.RestartPolicy.Name}}"
)


@dataclass(frozen=True)
class Container:
    """One container of the stack, as `docker inspect` reports it."""

    name: str
    service: str
    state: str
    """created, running, restarting, exited, paused, dead."""
    exit_code: int
    health: str
    """healthy, unhealthy, starting, or empty when the container has no health check."""
    restarts: int
    run_once: bool
    """A one-shot container (a migration): restart policy `no`, done when it exited 0."""

    @property
    def problem(self) -> str | None:
        """What is wrong with it, in a few words, or None."""
        if self.run_once:
            if self.state == "exited" and self.exit_code != 0:
                return f"{self.name} exited with code {self.exit_code}"
            return None
        if self.state != "running":
            code = f" (exit code {self.exit_code})" if self.state == "exited" else ""
            return f"{self.name} is {self.state}{code}"
        if self.health == "unhealthy":
            return f"{self.name} is unhealthy"
        if self.health == "starting":
            return f"{self.name} has not passed its health check yet"
        return None

    @property
    def shown_state(self) -> str:
        if self.state == "exited":
            return f"exited ({self.exit_code})"
        return self.state


def docker(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker ARGS` against the stack's daemon, captured (not checked)."""
    argv = stack.docker_argv(*args)
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=DOCKER_SECONDS, check=False
        )
    except FileNotFoundError:
        raise StackError("no `docker` on PATH (README: Prerequisites)") from None
    except subprocess.TimeoutExpired:
        raise StackError(f"`{' '.join(argv)}` gave no answer in {DOCKER_SECONDS:.0f} s") from None


def daemon_version(stack: Stack) -> str:
    """The daemon's version; StackError saying why when it does not answer."""
    result = docker(stack, "version", "--format", "{{.Server.Version}}")
    if result.returncode != 0 or not result.stdout.strip():
        detail = result.stderr.strip().splitlines()[-1:] or ["no answer"]
        raise StackError(f"the Docker daemon does not answer: {detail[0]}")
    return result.stdout.strip()


def parse_inspect(stack: Stack, text: str, known: dict[str, Service]) -> list[Container]:
    """Containers from `docker inspect --format _INSPECT` lines."""
    found: list[Container] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, state, code, health, restarts, policy = line.split("\t")
        name = name.removeprefix("/")
        found.append(
            Container(
                name=name,
                service=docker_service_of(stack, name, known),
                state=state,
                exit_code=int(code),
                health=health,
                restarts=int(restarts),
                run_once=policy in ("no", ""),
            )
        )
    return found


def containers(stack: Stack) -> list[Container]:
    """The stack's containers, running or not, sorted by name."""
    listed = docker(
        stack, "ps", "--all", "--filter", f"network={stack.docker_network}", "--format",
        "{{.Names}}",
    )  # fmt: skip
    if listed.returncode != 0:
        raise StackError(f"`docker ps` failed: {listed.stderr.strip()}")
    prefix = f"{stack.docker_prefix}-"
    names = sorted(n for n in listed.stdout.split() if n.startswith(prefix))
    if not names:
        return []
    inspected = docker(stack, "inspect", "--format", _INSPECT, *names)
    if inspected.returncode != 0:
        raise StackError(f"`docker inspect` failed: {inspected.stderr.strip()}")
    return sorted(parse_inspect(stack, inspected.stdout, services(stack)), key=lambda c: c.name)
