"""The default app's own files, run for real: the demo API under Node.js, nginx's config."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.app_model import build_app
from components.config import AppConfig
from components.nginx import DOCKER_RESOLVER, nginx_conf
from tests.harness import TEST_IMAGES

SERVER_JS = Path(__file__).resolve().parents[2] / "components" / "assets" / "demo-api" / "server.js"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def database_stand_in() -> Iterator[int]:
    """A TCP listener on loopback standing in for PostgreSQL's port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def start_api(db_port: int) -> tuple[subprocess.Popen[bytes], int]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    port = free_port()
    process = subprocess.Popen(
        [node, str(SERVER_JS)],
        env={
            "PORT": str(port),
            "ROUTE_PREFIX": "/api",
            "DATABASE_URL": f"postgresql://game:pw@127.0.0.1:{db_port}/game",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail("demo API did not start listening within 10 s")


def test_demo_api_answers_under_its_route_and_counts_requests(database_stand_in: int) -> None:
    process, port = start_api(database_stand_in)
    try:
        status, body = get(f"http://127.0.0.1:{port}/api/hello")
        assert status == 200
        assert json.loads(body)["message"].startswith("Hello")
        status, body = get(f"http://127.0.0.1:{port}/api/health")
        assert (status, json.loads(body)["database"]) == (200, True)
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404
        status, metrics = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'http_requests_total{route="hello",code="200"} 1' in metrics
        assert 'http_requests_total{route="other",code="404"} 1' in metrics
        assert "http_request_duration_seconds_count 3" in metrics
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_demo_api_health_reports_an_unreachable_database() -> None:
    process, port = start_api(free_port())  # nothing listens there
    try:
        status, body = get(f"http://127.0.0.1:{port}/api/health")
        assert status == 503
        assert json.loads(body) == {"status": "degraded", "database": False}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_nginx_accepts_the_generated_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    app = build_app(
        AppConfig.model_validate(
            {
                "services": [
                    {"name": "api", "image": "node:22.12.0-alpine", "port": 3000},
                    {
                        "name": "chat-ws",
                        "image": "node:22.12.0-alpine",
                        "port": 3001,
                        "path": "/ws/chat",
                    },
                ]
            }
        ),
        TEST_IMAGES,
    )
    (tmp_path / "default.conf").write_text(nginx_conf(app, resolver=DOCKER_RESOLVER))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{ access_log off; include {tmp_path}/default.conf; }}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
