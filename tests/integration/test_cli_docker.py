"""`bin/picluster status` and `logs` against the local stack's containers on this machine's Docker.

The local program runs under mocks on a unique stack; its containers are created for real as the
Docker provider would (`tests/integration/localstack.py`, with their restart policy, health
check, published ports and labels: the provider cannot be built here): PostgreSQL (its stand-in,
`pgimage`), two replicas of a service (on the `node` stand-in, a one-line HTTP server as their
command), the frontend (the `nginx` stand-in, with picluster's nginx config). Then the CLI, run
in-process on a project directory holding only that stack's file: healthy first, then a stopped
replica and a removed container make it say so and exit 1; logs come from both replicas,
prefixed. A second stack with monitoring runs a real Alertmanager (the pinned binary,
`tools/alertmanager/build.sh`, in the `node` stand-in) on its published port; an alert posted
to it is what `status` lists and counts. Every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import stack as cli_stack
from cli.__main__ import main
from tests.availability import INTEGRATION, unavailable
from tests.harness import run_main
from tests.integration import baseimages, pgimage
from tests.integration.localstack import Stack, docker, wait_until
from tests.integration.test_alert_delivery import pinned

pytestmark = pytest.mark.integration

SERVER = (
    "require('http').createServer((q,r)=>r.end('ok')).listen(8081,"
    "()=>console.log('lobby listening on '+require('os').hostname()))"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(name: str, *, monitoring: bool) -> dict[str, Any]:
    return {
        "target": "docker",
        "docker": {
            "ports": {"frontend": free_port(), "alertmanager": free_port()},
        },
        "monitoring": {"enabled": monitoring},
        "app": {
            "services": [
                {
                    "name": "lobby",
                    "image": "node:22.12.0-alpine",
                    "port": 8081,
                    "replicas": 2,
                    "healthPath": "/lobby/healthz",
                }
            ],
            "database": {"backup": {"enabled": False}},
        },
        "dbPassword": f"pw-{name}",
    }


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory the CLI reads stack files from (and no bin/pulumi)."""
    monkeypatch.setattr(cli_stack, "ROOT", tmp_path)
    return tmp_path


def write_stack_file(project: Path, name: str, values: dict[str, Any]) -> None:
    document = {
        "config": {
            f"picluster:{k}": {"secure": "v1:not-read"} if k == "dbPassword" else v
            for k, v in values.items()
        }
    }
    (project / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(document))


def require_images() -> None:
    for reason in (
        pgimage.unavailable_reason(),
        *(baseimages.unavailable_reason(image) for image in (baseimages.NODE, baseimages.NGINX)),
    ):
        if reason:
            unavailable(reason, INTEGRATION)
    pgimage.ensure_image()
    baseimages.ensure_node()
    baseimages.ensure_nginx()


def start_stack(values: dict[str, Any], name: str) -> Stack:
    run = run_main(values, stack=name, secret_keys=("dbPassword",))
    stack = Stack(run=run, prefix=f"picluster-{name}")
    docker("network", "create", stack.network)
    return stack


def inspect(name: str) -> dict[str, Any]:
    return json.loads(docker("inspect", "--format", "{{json .State}}", name))


def healthy(names: list[str]) -> bool:
    return all((inspect(n).get("Health") or {}).get("Status") == "healthy" for n in names)


def cli(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture
def app(project: Path) -> Iterator[tuple[str, Stack]]:
    """The app of a local stack, every container created, started and healthy."""
    require_images()
    name = f"opscli{uuid.uuid4().hex[:6]}"
    values = config(name, monitoring=False)
    write_stack_file(project, name, values)
    stack = start_stack(values, name)
    try:
        stack.volume("app-db-data")
        started = [
            stack.create(
                "app-postgres", image=pgimage.TAG, stop_signal=pgimage.STOP_SIGNAL, runtime=True
            )
        ]
        docker("start", started[0])
        for replica in ("app-lobby-1", "app-lobby-2"):
            started.append(
                stack.create(
                    replica,
                    image=baseimages.NODE.tag,
                    command=["node", "-e", SERVER],
                    runtime=True,
                )
            )
        started.append(stack.create("app-frontend", image=baseimages.NGINX.tag, runtime=True))
        for container in started[1:]:
            docker("start", container)
        try:
            wait_until(lambda: healthy(started), "every container healthy", timeout=120)
        except AssertionError as error:
            error.add_note(str({n: inspect(n).get("Health") for n in started}))
            raise
        yield name, stack
    finally:
        stack.remove()


def test_status_and_logs_of_a_healthy_then_broken_local_stack(
    app: tuple[str, Stack], capfd: pytest.CaptureFixture[str]
) -> None:
    name, stack = app
    prefix = stack.prefix
    code, out, err = cli(capfd, "status", "-s", name)
    assert code == 0, out + err
    rows = [line.split() for line in out.split("CONTAINERS\n", 1)[1].split("\n\n")[0].splitlines()]
    assert rows == [
        ["SERVICE", "CONTAINER", "STATE", "HEALTH", "RESTARTS"],
        ["frontend", f"{prefix}-frontend", "running", "healthy", "0"],
        ["lobby", f"{prefix}-lobby-1", "running", "healthy", "0"],
        ["lobby", f"{prefix}-lobby-2", "running", "healthy", "0"],
        ["postgres", f"{prefix}-postgres", "running", "healthy", "0"],
    ]
    assert out.rstrip().endswith("healthy")
    # No bin/pulumi here and no state: the URLs section says why, which is no health problem.
    assert "URLS\n  " in out

    code, out, err = cli(capfd, "logs", "lobby", "-s", name)
    assert code == 0, err
    lines = sorted(out.splitlines())
    ids = {r: docker("inspect", "--format", "{{.Config.Hostname}}", f"{prefix}-{r}").strip()
           for r in ("lobby-1", "lobby-2")}  # fmt: skip
    assert lines == [
        f"lobby-1 | lobby listening on {ids['lobby-1']}",
        f"lobby-2 | lobby listening on {ids['lobby-2']}",
    ]

    code, out, err = cli(capfd, "logs", "lobbby", "-s", name)
    assert code == 2
    assert err.strip() == (
        f"bin/picluster logs: stack {name} runs no service 'lobbby'; valid names: postgres, "
        "lobby, frontend"
    )

    docker("stop", "--time", "2", f"{prefix}-lobby-2")
    docker("rm", "--force", f"{prefix}-frontend")
    code, out, err = cli(capfd, "status", "-s", name)
    assert code == 1
    rows = [line.split() for line in out.split("CONTAINERS\n", 1)[1].split("\n\n")[0].splitlines()]
    assert [r[:3] for r in rows[1:]] == [
        ["lobby", f"{prefix}-lobby-1", "running"],
        ["lobby", f"{prefix}-lobby-2", "exited"],
        ["postgres", f"{prefix}-postgres", "running"],
    ]
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"not healthy: {prefix}-lobby-2 is exited (exit code ")
    )
    assert err.strip().endswith(f"; no container {prefix}-frontend")


def test_status_lists_the_alerts_alertmanager_holds(
    project: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    require_images()
    binary = pinned("alertmanager")
    name = f"opscli{uuid.uuid4().hex[:6]}"
    values = config(name, monitoring=True)
    write_stack_file(project, name, values)
    stack = start_stack(values, name)
    port = values["docker"]["ports"]["alertmanager"]
    try:
        stack.volume("monitoring-alertmanager-data")
        spec = stack.container("monitoring-alertmanager")
        # The pinned Alertmanager binary in the node stand-in (a Debian bookworm userland), as
        # the image's entrypoint /bin/alertmanager runs it with the rendered arguments.
        container = stack.create(
            "monitoring-alertmanager",
            image=baseimages.NODE.tag,
            command=["/usr/local/bin/alertmanager", *spec.value("command")],
            runtime=True,
        )
        docker("cp", str(binary), f"{container}:/usr/local/bin/alertmanager")
        docker("start", container)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: ready(f"{base}/-/ready"), "Alertmanager ready", timeout=60)
        alert = [
            {
                "labels": {
                    "alertname": "OpsCliDiskFull",
                    "severity": "critical",
                    "instance": "pi-1",
                },
                "annotations": {"summary": "raised by the CLI test"},
            }
        ]
        request = urllib.request.Request(
            f"{base}/api/v2/alerts",
            data=json.dumps(alert).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()

        code, out, err = cli(capfd, "status", "-s", name)
        assert code == 1
        section = out.split("ALERTS (newest first)\n", 1)[1].splitlines()
        assert section[0].split() == ["SINCE", "STATE", "SEVERITY", "ALERT", "WHERE", "SUMMARY"]
        assert section[1].split()[1:] == [
            "firing", "critical", "OpsCliDiskFull", "pi-1", "raised", "by", "the", "CLI", "test",
        ]  # fmt: skip
        # Alertmanager's own health check (wget, which the stand-in lacks), ten containers of
        # the stack missing (only Alertmanager was created), then the alert: the line names the
        # first four problems and counts the rest.
        summary = err.strip().splitlines()[-1]
        assert summary.startswith(f"not healthy: {stack.prefix}-alertmanager ")
        assert f"; no container {stack.prefix}-postgres; " in summary
        assert summary.endswith(" (+8 more)")
    finally:
        stack.remove()


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
