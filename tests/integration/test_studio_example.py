"""The example studio on the local Docker target, for real: a game's `dist` folder and two service
folders (`examples/studio`, the README's "Your own game") become a game that answers.

The program runs under mocks with the example's `picluster:app` block on a unique stack. Its
three build commands run with exactly the stdin the program gives them (`bash -s`, as the local
command does), on this machine's daemon; `scores` has a real npm dependency (`pg`), fetched from
the npm registry during the build. The rendered containers are then created as the Docker
provider would (`tests/integration/localstack.py`: the provider cannot be built here), in the
order the program declares: PostgreSQL (its stand-in, `pgimage`), the once-per-release migration
of `scores` (which must exit 0: it creates the table), the services, the frontend with
picluster's nginx config. Through the frontend, as a player's browser would: the game's page, a
score posted to `scores`, the best score read back from `leaderboard`, which asks `scores` by
name.

Behind a TLS-intercepting proxy (this machine's egress), npm needs the proxy's CA: the build
gets the host's bundle through `NODE_EXTRA_CA_CERTS`, as a developer behind such a proxy sets it
(README: Building the studio's images). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.availability import INTEGRATION, unavailable
from tests.harness import ROOT, Registration, run_main
from tests.integration import baseimages, pgimage
from tests.integration.localstack import Stack, docker, wait_until

pytestmark = pytest.mark.integration

APP: dict[str, Any] = yaml.safe_load(
    (ROOT / "examples" / "studio" / "Pulumi.studio.yaml").read_text()
)["config"]["picluster:app"]
PASSWORD = f"studio-{uuid.uuid4().hex}"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
SUMMARY = "picluster image-build: "


@pytest.fixture(scope="module")
def studio() -> Iterator[Stack]:
    for reason in (
        pgimage.unavailable_reason(),
        *(baseimages.unavailable_reason(image) for image in (baseimages.NODE, baseimages.NGINX)),
    ):
        if reason:
            unavailable(reason, INTEGRATION)
    pgimage.ensure_image()
    baseimages.ensure_node()
    baseimages.ensure_nginx()
    config = {"target": "docker", "app": APP, "dbPassword": PASSWORD}
    run = run_main(config, stack=f"studio{uuid.uuid4().hex[:6]}", secret_keys=("dbPassword",))
    prefix = run.named("app-network").value("name").removesuffix("-app")
    stack = Stack(run=run, prefix=prefix)
    built: list[str] = []
    try:
        yield stack
    finally:
        stack.remove()
        built += [r.value("name") for r in run.of_type("docker:index/remoteImage:RemoteImage")]
        for ref in built:
            if ref.startswith(f"{prefix}/"):
                docker("image", "rm", ref, check=False)


def build_all(stack: Stack) -> dict[str, str]:
    """Run every build command of the program; its summary line by resource name."""
    env = dict(os.environ)
    if HOST_CA.is_file():
        env["NODE_EXTRA_CA_CERTS"] = str(HOST_CA)
    summaries: dict[str, str] = {}
    for command in stack.run.of_type("command:local:Command"):
        result = subprocess.run(
            ["bash", "-s"],
            input=str(command.value("stdin")),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith(SUMMARY)]
        summaries[command.name] = lines[-1].removeprefix(SUMMARY)
    return summaries


def containers(stack: Stack) -> dict[str, Registration]:
    return {r.name: r for r in stack.run.of_type("docker:index/container:Container")}


def start(stack: Stack, resource: str) -> str:
    spec = stack.container(resource)
    name = stack.create(resource, image=stack.image_of(spec))
    docker("start", name)
    return name


def healthy(name: str, command: list[str]) -> bool:
    return subprocess.run(["docker", "exec", name, *command], capture_output=True).returncode == 0


def fetch(frontend: str, path: str, *, post: dict[str, Any] | None = None) -> Any:
    """A request through the frontend's nginx, from inside its container (no published port)."""
    argv = ["exec", frontend, "wget", "-q", "-O", "-", "--timeout=10"]
    if post is not None:
        argv += ["--header=content-type: application/json", f"--post-data={json.dumps(post)}"]
    body = docker(*argv, f"http://127.0.0.1:80{path}")
    return body if path == "/" else json.loads(body)


def test_the_example_studio_builds_migrates_and_answers_through_the_frontend(
    studio: Stack,
) -> None:
    started = time.monotonic()
    summaries = build_all(studio)
    assert set(summaries) == {"app-frontend-build", "app-scores-build", "app-leaderboard-build"}
    assert all(s.endswith((" built", " already built")) for s in summaries.values()), summaries
    build_seconds = time.monotonic() - started

    docker("network", "create", studio.network)
    studio.volume("app-db-data")
    db = studio.create("app-postgres", image=pgimage.TAG, stop_signal=pgimage.STOP_SIGNAL)
    docker("start", db)
    probe = studio.container("app-postgres").value("healthcheck")["tests"][1:]
    wait_until(lambda: healthy(db, probe), "PostgreSQL healthy")

    [migration] = [name for name in containers(studio) if "-migrate-" in name]
    migrate = start(studio, migration)
    code = docker("wait", migrate).strip()
    logs = subprocess.run(["docker", "logs", migrate], capture_output=True, text=True).stdout
    assert code == "0", logs
    assert "migrate: scores table ready" in logs
    # The services' containers carry the migration that let them start.
    scores_spec = studio.container("app-scores-1")
    labels = {label["label"]: label["value"] for label in scores_spec.value("labels") or []}
    assert labels["picluster.migration"] == studio.container(migration).value("name")

    services = [start(studio, name) for name in ("app-scores-1", "app-leaderboard-1")]
    frontend = start(studio, "app-frontend")
    for name in (*services, frontend):
        spec_name = next(r for r, c in containers(studio).items() if c.value("name") == name)
        health = studio.container(spec_name).value("healthcheck")["tests"][1:]
        wait_until(lambda n=name, h=health: healthy(n, h), f"{name} healthy")

    assert "Pi Hopper" in fetch(frontend, "/")
    assert fetch(frontend, "/leaderboard/top") == {"best": 0}
    assert fetch(frontend, "/scores", post={"score": 42}) == {"score": 42}
    assert fetch(frontend, "/leaderboard/top") == {"best": 42}
    print(
        f"\nexample studio: built in {build_seconds:.1f} s, answering after "
        f"{time.monotonic() - started:.1f} s"
    )

    # A second run of the builds builds nothing.
    assert all(s.endswith(" already built") for s in build_all(studio).values())
