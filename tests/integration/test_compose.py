"""`bin/picluster compose` for real: the generated file is valid for Docker Compose v2 (`docker
compose config`, the compose plugin built by tools/compose/build.sh), and `docker compose up`
runs the game on this machine's daemon: PostgreSQL with its password from the secret file, the
demo API built from picluster's Dockerfile and reaching the database through the `DATABASE_URL`
env file, the frontend's nginx with its uploaded config, on the published port.

Images no registry serves here are their stand-ins (`pgimage`: `postgres:17-alpine`, by an
override file; `baseimages`: the `node` and `nginx` base images under their pinned names). The
monitoring containers' images (Prometheus, Grafana, exporters) have no stand-in: they are
validated by `config`, not started. Every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import compose
from cli.program import declare
from tests.availability import INTEGRATION, unavailable
from tests.integration import baseimages, pgimage

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compose_unavailable_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if result.returncode != 0:
        return "no docker compose plugin (tools/compose/build.sh builds it)"
    return None


class Project:
    def __init__(self, folder: Path, stack: str) -> None:
        self.folder = folder
        self.stack = stack
        self.file = folder / "docker-compose.yml"
        self.override = folder / "stand-ins.yml"
        self.uploads: dict[str, dict[str, str]] = {}

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-f", str(self.file), "-f", str(self.override), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def require_images() -> None:
    for reason in (
        compose_unavailable_reason(),
        pgimage.unavailable_reason(),
        *(baseimages.unavailable_reason(image) for image in (baseimages.NODE, baseimages.NGINX)),
    ):
        if reason:
            unavailable(reason, INTEGRATION)
    pgimage.ensure_image()
    baseimages.ensure_node()
    baseimages.ensure_nginx()


@contextmanager
def generated(folder: Path, app: dict[str, Any] | None = None) -> Iterator[Project]:
    """`bin/picluster compose` of a docker stack (free ports, `app` when given) in `folder`;
    taken down, volumes and built images included, afterwards."""
    stack = f"compose{uuid.uuid4().hex[:6]}"
    ports = {name: free_port() for name in ("frontend", "grafana", "prometheus", "alertmanager")}
    config: dict[str, Any] = {"picluster:target": "docker", "picluster:docker": {"ports": ports}}
    if app is not None:
        config["picluster:app"] = app
    stack_file = folder / f"Pulumi.{stack}.yaml"
    stack_file.write_text(yaml.safe_dump({"config": config}))
    project = Project(folder, stack)
    rendered, passwords = compose.render(stack, project.file, stack_file)
    compose.write(rendered, passwords, project.file)
    # What the Docker target uploads, by service and path, from the same program run's twin.
    declared = declare(stack, given_secrets=passwords, stack_file=stack_file).resources
    for container in (r for r in declared if r.type == compose.CONTAINER):
        service = str(container.value("name")).split(f"picluster-{stack}-", 1)[1]
        uploads = container.value("uploads") or []
        project.uploads[service] = {u["file"]: u["content"] for u in uploads}
    # The stand-in of postgres:17-alpine, which cannot be pulled here (pgimage.py says how it
    # differs); everything else is the generated file as it is.
    project.override.write_text(
        yaml.safe_dump(
            {
                "services": {
                    name: {"image": pgimage.TAG, "stop_signal": pgimage.STOP_SIGNAL}
                    for name in ("postgres", "postgres-backup")
                }
            }
        )
    )
    try:
        yield project
    finally:
        project.compose("down", "--volumes", "--timeout", "10", timeout=180)
        for service in rendered.document["services"].values():
            if "build" in service:
                subprocess.run(["docker", "image", "rm", service["image"]], capture_output=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    require_images()
    with generated(tmp_path_factory.mktemp("compose")) as project:
        yield project


def test_docker_compose_accepts_the_file(project: Project) -> None:
    result = project.compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert set(resolved["services"]) >= {"postgres", "api-1", "frontend", "prometheus", "grafana"}
    # `config` prints the file re-escaped (`$$`): no `${...}` was interpolated away.
    rules = resolved["configs"]["prometheus-etc-prometheus-alerts-yml"]["content"]
    assert "{{ $$labels." in rules


def test_docker_compose_up_runs_the_game(project: Project) -> None:
    start = time.monotonic()
    up = project.compose("up", "--detach", "--wait", "--wait-timeout", "300", "frontend")
    seconds = time.monotonic() - start
    assert up.returncode == 0, up.stderr[-3000:] + project.compose("logs").stdout[-3000:]
    print(f"docker compose up (build, database, API, frontend): {seconds:.0f} s")
    ps = project.compose("ps", "--format", "json")
    states = {
        entry["Service"]: entry["Health"] or entry["State"]
        for entry in map(json.loads, ps.stdout.splitlines())
    }
    assert states == {"postgres": "healthy", "api-1": "healthy", "frontend": "healthy"}
    config = yaml.safe_load(project.file.read_text().split("\n", 2)[2])
    port = config["services"]["frontend"]["ports"][0].split(":")[1]
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/", timeout=10) as response:
        assert response.status == 200
    # The API answers through nginx, and reaches the database with the secret env file's URL.
    with urllib.request.urlopen(f"{base}/api/health", timeout=10) as response:
        assert json.load(response) == {"status": "ok", "database": True}
    # nginx got the file Pulumi uploads, `$uri` and `$host` as written (compose unescaped `$$`).
    inside = project.compose("exec", "-T", "frontend", "cat", "/etc/nginx/conf.d/default.conf")
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout == project.uploads["frontend"]["/etc/nginx/conf.d/default.conf"]
    assert "$uri" in inside.stdout and "$$" not in inside.stdout


def migrating(script: str) -> dict[str, Any]:
    """The demo API with a migration: `node -e script`."""
    return {
        "services": [
            {
                "name": "api",
                "build": "components/assets/demo-api",
                "port": 3000,
                "path": "/api",
                "healthPath": "/api/hello",
                "env": {"ROUTE_PREFIX": "/api"},
                "migrate": ["node", "-e", script],
            }
        ]
    }


def states(project: Project) -> dict[str, str]:
    ps = project.compose("ps", "--all", "--format", "json")
    return {
        entry["Service"]: entry["Health"] or entry["State"]
        for entry in map(json.loads, ps.stdout.splitlines())
    }


def test_the_services_start_after_their_migration_exited_0(tmp_path: Path) -> None:
    require_images()
    # The migration gets the service's environment, its DATABASE_URL secret included.
    script = "process.exit(process.env.DATABASE_URL.startsWith('postgresql://') ? 0 : 3)"
    with generated(tmp_path, migrating(script)) as project:
        up = project.compose("up", "--detach", "--wait", "--wait-timeout", "300", "frontend")
        assert up.returncode == 0, up.stderr[-3000:]
        found = states(project)
        [migration] = [name for name in found if "-migrate-" in name]
        assert found == {
            "postgres": "healthy",
            migration: "exited",
            "api-1": "healthy",
            "frontend": "healthy",
        }
        inspect = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.ExitCode}}",
             f"picluster-{project.stack}-compose-{migration}-1"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert inspect.stdout.strip() == "0", inspect.stderr


def test_a_failed_migration_leaves_the_services_unstarted(tmp_path: Path) -> None:
    """As `pulumi up` does (MigrationFailedError): the service's containers are not started."""
    require_images()
    with generated(tmp_path, migrating("process.exit(1)")) as project:
        up = project.compose("up", "--detach", "--wait", "--wait-timeout", "300", "frontend")
        assert up.returncode != 0
        assert "didn't complete successfully: exit 1" in up.stderr
        found = states(project)
        assert found.get("api-1") in (None, "created"), found
        assert found.get("frontend") in (None, "created"), found
