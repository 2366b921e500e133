"""The unit tests run the program as on a machine with no Docker CLI configuration and no
ssh-agent, whatever the developer's shell has: `docker.host` then resolves to the default
socket (components/docker_host.py), and no SSH_AUTH_SOCK is probed (components/ssh_auth.py).
A test that needs either sets it itself."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def no_docker_context_or_agent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "SSH_AUTH_SOCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config-unset"))
