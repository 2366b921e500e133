"""The local stack's containers created on this machine's Docker as the Docker provider would.

The program runs under mocks (`tests/harness.py`); `Stack` then creates a rendered container for
real: `docker create` with the rendered name, image, command, user, network and aliases, volumes,
labels and environment, then each `upload` copied in as a tar entry of mode 0644 at `/`, as
terraform-provider-docker's resource_docker_container_funcs.go does. The pulumi-docker provider
cannot be built here (shared/ENGINE_NOTES.md), so this is how the tests run what the Docker
target declares. Images that cannot be pulled are replaced by their stand-ins (`pgimage`,
`baseimages`), named where they are used.
"""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import versions
from tests.harness import Registration, Run, mock_image_id
from tests.integration import pgimage

TIMEOUT = 60.0


def docker(*args: str, input: bytes | None = None, check: bool = True) -> str:
    result = subprocess.run(
        ["docker", *args], input=input, capture_output=True, timeout=180, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr.decode()}")
    return result.stdout.decode()


@dataclass
class Stack:
    """The rendered local stack's database side, created for real under a unique prefix."""

    run: Run
    prefix: str
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="picluster-drill-")))

    @property
    def network(self) -> str:
        return f"{self.prefix}-app"

    def container(self, resource: str) -> Registration:
        return self.run.named(resource)

    def image_of(self, container: Registration) -> str:
        by_id = {
            mock_image_id(r.value("name")): r.value("name")
            for r in self.run.of_type("docker:index/remoteImage:RemoteImage")
        }
        return by_id[container.value("image")]

    def create(
        self,
        resource: str,
        *,
        image: str,
        command: list[str] | None = None,
        stop_signal: str | None = None,
        runtime: bool = False,
    ) -> str:
        """`docker create` + uploads, as the Docker provider does, of `image` (the stand-in of the
        rendered one, which cannot be pulled here); the container's name. With `runtime`, also
        the rendered restart policy, health check, published ports and labels (`runtime_args`)."""
        spec = self.container(resource)
        name = spec.value("name")
        env_file = self.workdir / f"{name}.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{e}\n" for e in spec.value("envs") or []))
        argv = ["create", "--name", name, "--env-file", str(env_file)]
        for network in spec.value("networksAdvanced"):
            argv += ["--network", network["name"]]
            argv += [f"--network-alias={alias}" for alias in network.get("aliases") or []]
        for volume in spec.value("volumes") or []:
            argv += ["--volume", f"{volume['volumeName']}:{volume['containerPath']}"]
        if spec.value("user"):
            argv += ["--user", spec.value("user")]
        if stop_signal:
            argv += ["--stop-signal", stop_signal]
        if runtime:
            argv += runtime_args(spec)
        argv += [image, *(command or spec.value("command") or [])]
        docker(*argv)
        self.containers.append(name)
        uploads = spec.value("uploads") or []
        if uploads:
            docker("cp", "-", f"{name}:/", input=tar_of({u["file"]: u["content"] for u in uploads}))
        return name

    def volume(self, resource: str) -> str:
        name = self.run.named(resource).value("name")
        docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def postgres(self, resource: str, *, command: list[str] | None = None) -> str:
        """Create a container of the rendered pinned postgres image, from its stand-in."""
        assert self.image_of(self.container(resource)) == versions.POSTGRES
        return self.create(
            resource, image=pgimage.TAG, command=command, stop_signal=pgimage.STOP_SIGNAL
        )

    def remove(self) -> None:
        for name in reversed(self.containers):
            docker("rm", "--force", "--volumes", name, check=False)
        docker("network", "rm", self.network, check=False)
        for name in self.volumes:
            docker("volume", "rm", "--force", name, check=False)
        # The env files hold the database's password.
        shutil.rmtree(self.workdir, ignore_errors=True)


def runtime_args(spec: Registration) -> list[str]:
    """`docker create` options for the container's restart policy, health check, published ports
    and labels, as the provider sets them (resource_docker_container_funcs.go: RestartPolicy,
    Healthcheck, PortBindings, Labels). The CLI takes a health check as one shell command
    (CMD-SHELL): the rendered exec form is joined with shell quoting, the same command. Numbers
    arrive as floats (the registration's protobuf Struct), ports and retries are integers."""
    argv: list[str] = []
    if spec.value("restart"):
        argv += ["--restart", spec.value("restart")]
    check = spec.value("healthcheck")
    if check:
        kind, *test = check["tests"]
        assert kind == "CMD", check
        argv += [
            "--health-cmd", shlex.join(test),
            "--health-interval", check["interval"],
            "--health-timeout", check["timeout"],
            "--health-retries", str(int(check["retries"])),
            "--health-start-period", check["startPeriod"],
        ]  # fmt: skip
    for port in spec.value("ports") or []:
        external, internal = int(port["external"]), int(port["internal"])
        argv += ["--publish", f"{port['ip']}:{external}:{internal}"]
    for label in spec.value("labels") or []:
        argv += ["--label", f"{label['label']}={label['value']}"]
    return argv


def tar_of(files: dict[str, str], mode: int = 0o644) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def wait_until(check: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")
