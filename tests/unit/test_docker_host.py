"""`docker.host` unset follows the docker CLI: DOCKER_HOST, else the current context
(DOCKER_CONTEXT, else `currentContext` in config.json), else the default socket; checked against
fake `~/.docker` trees laid out as docker/cli's context store writes them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from components import docker_host
from components.config import ConfigError
from tests.harness import Run, run_main, stack_file_config

COLIMA = "unix:///Users/dev/.colima/default/docker.sock"


def docker_tree(
    home: Path, *, current: str | None = None, contexts: dict[str, str] | None = None
) -> Path:
    """`home/.docker` with config.json's currentContext and each context's meta.json at
    contexts/meta/<sha256 of its name>/ (docker/cli cli/context/store/store.go contextdirOf)."""
    root = home / ".docker"
    root.mkdir(parents=True)
    (root / "config.json").write_text(
        json.dumps({"auths": {}, **({"currentContext": current} if current else {})})
    )
    for name, host in (contexts or {}).items():
        meta = root / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
        meta.mkdir(parents=True)
        (meta / "meta.json").write_text(
            json.dumps(
                {
                    "Name": name,
                    "Metadata": {"Description": name},
                    "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}},
                }
            )
        )
    return root


def resolve(**env: str) -> docker_host.ResolvedHost:
    return docker_host.resolve(env)


def test_nothing_configured_is_the_default_socket(tmp_path: Path) -> None:
    assert resolve(HOME=str(tmp_path)).host == "unix:///var/run/docker.sock"
    docker_tree(tmp_path)  # a config.json without currentContext
    assert resolve(HOME=str(tmp_path)).host == "unix:///var/run/docker.sock"


def test_the_current_context_of_config_json(tmp_path: Path) -> None:
    docker_tree(tmp_path, current="colima", contexts={"colima": COLIMA, "other": "tcp://x:1"})
    found = resolve(HOME=str(tmp_path))
    assert found.host == COLIMA
    assert found.source == "Docker context 'colima'"


def test_docker_context_wins_over_config_json_and_docker_host_over_both(tmp_path: Path) -> None:
    docker_tree(
        tmp_path,
        current="colima",
        contexts={"colima": COLIMA, "rootless": "unix:///run/user/1000/docker.sock"},
    )
    home = str(tmp_path)
    assert resolve(HOME=home, DOCKER_CONTEXT="rootless").host == "unix:///run/user/1000/docker.sock"
    assert resolve(HOME=home, DOCKER_CONTEXT="default").host == "unix:///var/run/docker.sock"
    assert (
        resolve(HOME=home, DOCKER_CONTEXT="rootless", DOCKER_HOST="ssh://pi@pi-1").host
        == "ssh://pi@pi-1"
    )
    # An address without a scheme is tcp, as the CLI reads it (opts/hosts.go).
    assert resolve(HOME=home, DOCKER_HOST="10.0.0.5:2375").host == "tcp://10.0.0.5:2375"
    # An empty DOCKER_HOST is no DOCKER_HOST.
    assert resolve(HOME=home, DOCKER_HOST="").host == COLIMA


def test_docker_config_names_the_configuration_directory(tmp_path: Path) -> None:
    root = docker_tree(tmp_path / "elsewhere", current="colima", contexts={"colima": COLIMA})
    assert resolve(HOME=str(tmp_path), DOCKER_CONFIG=str(root)).host == COLIMA


def test_a_missing_context_is_one_error_naming_it(tmp_path: Path) -> None:
    docker_tree(tmp_path, current="gone")
    with pytest.raises(docker_host.DockerHostError, match=r"the Docker context 'gone'"):
        resolve(HOME=str(tmp_path))


# --- the program ---------------------------------------------------------------------------------


def local(config: dict[str, Any] | None = None) -> Run:
    return run_main({**stack_file_config("local"), **(config or {})}, stack="local")


def provider_host(result: Run) -> str:
    return str(result.named("docker").value("host"))


def test_the_program_deploys_to_the_current_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = docker_tree(tmp_path, current="colima", contexts={"colima": COLIMA})
    monkeypatch.setenv("DOCKER_CONFIG", str(root))
    result = local()
    assert provider_host(result) == COLIMA
    builds = result.of_type("command:local:Command")
    assert builds and all(f"DOCKER_HOST={COLIMA}\n" in str(b.value("stdin")) for b in builds)


def test_an_unchanged_default_gives_the_provider_the_same_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user whose daemon is at the default socket: the provider's `host` is what it always
    was, so an existing stack sees no change."""
    assert provider_host(local()) == "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert provider_host(local()) == "unix:///var/run/docker.sock"


def test_an_explicit_docker_host_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.9.9.9:2375")
    explicit = "ssh://pi@192.168.1.10"
    assert provider_host(local({"docker": {"host": explicit}})) == explicit


def test_a_context_picluster_cannot_use_is_one_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "npipe:////./pipe/docker_engine")
    with pytest.raises(ConfigError) as caught:
        local()
    assert str(caught.value).startswith("picluster:docker.host: 'npipe:")
    assert "(from DOCKER_HOST)" in str(caught.value)
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("DOCKER_CONTEXT", "missing")
    with pytest.raises(ConfigError, match=r"picluster:docker.host: the Docker context 'missing'"):
        local()


def daemon_lines(result: Run) -> list[str]:
    return [line for line in result.infos if line.startswith("picluster:docker.host:")]


def test_every_run_says_which_daemon_and_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A different DOCKER_HOST or context re-points the stack at another daemon (an in-place
    update of the provider): each run names the daemon, so the user sees it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    assert daemon_lines(local()) == [
        "picluster:docker.host: the Docker daemon is unix:///var/run/docker.sock "
        "(from the default socket)"
    ]
    monkeypatch.setenv("DOCKER_HOST", "ssh://pi@192.168.1.10")
    assert daemon_lines(local()) == [
        "picluster:docker.host: the Docker daemon is ssh://pi@192.168.1.10 (from DOCKER_HOST)"
    ]
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_tree(tmp_path, contexts={"colima": COLIMA})))
    monkeypatch.setenv("DOCKER_CONTEXT", "colima")
    assert daemon_lines(local()) == [
        f"picluster:docker.host: the Docker daemon is {COLIMA} (from Docker context 'colima')"
    ]
    explicit = "tcp://10.9.9.9:2375"
    assert daemon_lines(local({"docker": {"host": explicit}})) == [
        f"picluster:docker.host: the Docker daemon is {explicit} (from picluster:docker.host)"
    ]


PROD_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nunit\n-----END OPENSSH PRIVATE KEY-----\n"


def test_a_k3s_stack_never_reads_the_docker_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K3s never uses docker.host (only the docker target's provider does): a stale context,
    or one picluster could not use, neither stops nor warns a prod stack."""
    config = {
        **stack_file_config("prod"),
        "ssh": {"user": "pi", "port": 22},
        "sshPrivateKey": PROD_KEY,
    }
    monkeypatch.setenv("DOCKER_CONTEXT", "missing")
    result = run_main(config, stack="prod", secret_keys=("sshPrivateKey",))
    assert result.of_type("command:remote:Command")
    assert not [w for w in result.warnings if "docker.host" in w]
    assert daemon_lines(result) == []
    monkeypatch.delenv("DOCKER_CONTEXT")
    monkeypatch.setenv("DOCKER_HOST", "npipe:////./pipe/docker_engine")
    run_main(config, stack="prod", secret_keys=("sshPrivateKey",))
