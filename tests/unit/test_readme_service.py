"""The README's minimal service ("The service contract") does what the contract asks: it is a
valid `build` folder, listens on `PORT`, answers its `healthPath` under its prefix, and stops
within Docker's 10 s after SIGTERM. Run with this machine's `node` (the folder's own code, no
image needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from components.config import validate
from components.images import BuildKind, plan_build
from tests.harness import ROOT

README = (ROOT / "README.md").read_text()


def minimal_service(folder: Path) -> Path:
    section = README[README.index("A minimal service, the whole folder") :]
    [code] = re.findall(r"```js\n(.*?)```", section[: section.index("\n### ")], re.S)
    folder.mkdir(parents=True)
    (folder / "server.js").write_text(code)
    (folder / "package.json").write_text(json.dumps({"name": "hello", "main": "server.js"}))
    return folder


def test_the_minimal_service_is_a_valid_build_folder(tmp_path: Path) -> None:
    minimal_service(tmp_path / "services" / "hello")
    service = {"name": "hello", "build": "services/hello", "port": 3000}
    service["healthPath"] = "/hello/health"
    settings = validate({"target": "docker", "app": {"services": [service]}}, project_dir=tmp_path)
    assert settings.app.services
    assert plan_build("hello", tmp_path / "services" / "hello").kind is BuildKind.NODE


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_minimal_service_answers_its_health_path_and_stops_on_sigterm(tmp_path: Path) -> None:
    folder = minimal_service(tmp_path / "hello")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["node", "server.js"], cwd=folder, env={**os.environ, "PORT": str(port)}
    )
    try:
        deadline = time.monotonic() + 10
        body = b""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/hello/health", timeout=2
                ) as r:
                    body = r.read()
                break
            except OSError:
                time.sleep(0.1)
        assert body == b"ok\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
