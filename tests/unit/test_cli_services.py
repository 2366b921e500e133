"""`bin/picluster` names what the programs declare: SERVICE names and the Docker containers and
Kubernetes workloads they stand for, checked against the local and prod programs under mocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import services, stack
from cli.services import UnknownServiceError, docker_containers, docker_service_of, resolve
from components.config import validate
from tests.harness import run_main, stack_file_config

CONTAINER = "docker:index/container:Container"
WORKLOADS = (
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:DaemonSet",
)
LOCAL: dict[str, Any] = {
    "target": "docker",
    "app": {
        "services": [
            {
                "name": "lobby",
                "image": "ghcr.io/studio/lobby:1.4.2",
                "port": 8081,
                "replicas": 3,
                "migrate": ["node", "migrate.js"],
            },
            {"name": "lobby-v2", "image": "ghcr.io/studio/lobby:2.0.0", "port": 8082},
        ],
        "database": {"backup": {"enabled": True}},
    },
}


def stack_of(name: str, config: dict[str, Any], root: Path) -> stack.Stack:
    return stack.Stack(name, validate(config, secret_values=False, project_dir=root), root)


def test_docker_containers_are_the_ones_the_local_program_declares(tmp_path: Path) -> None:
    run = run_main(LOCAL, stack="studio")
    declared = {
        r.value("name") for r in run.of_type(CONTAINER) if "-migrate-" not in r.value("name")
    }
    assert set(docker_containers(stack_of("studio", LOCAL, tmp_path))) == declared
    assert "picluster-studio-lobby-3" in declared  # replicas are numbered


def test_k3s_workloads_are_the_ones_the_prod_program_declares(tmp_path: Path) -> None:
    config = stack_file_config("prod")
    run = run_main(
        {**config, "sshPrivateKey": "key", "k3sToken": "t" * 24},
        stack="prod",
        secret_keys=("sshPrivateKey", "k3sToken"),
    )
    declared = {
        (r.value("metadata")["name"], r.value("metadata")["namespace"])
        for kind in WORKLOADS
        for r in run.of_type(kind)
        if r.value("metadata")["namespace"] in services.NAMESPACES[:3]
    }
    found = services.services(stack_of("prod", config, tmp_path))
    assert {(s.name, s.namespace) for s in found.values()} == declared


def test_without_monitoring_only_the_app_is_named(tmp_path: Path) -> None:
    config = {**LOCAL, "monitoring": {"enabled": False}}
    assert list(services.services(stack_of("local", config, tmp_path))) == [
        "postgres",
        "lobby",
        "lobby-v2",
        "frontend",
    ]


def test_an_unknown_service_gets_every_valid_name(tmp_path: Path) -> None:
    local = stack_of("local", {"target": "docker"}, tmp_path)
    with pytest.raises(UnknownServiceError) as caught:
        resolve(local, "web")
    assert str(caught.value) == (
        "stack local runs no service 'web'; valid names: postgres, api, frontend, "
        "node-exporter, cadvisor, postgres-exporter, blackbox-exporter, alertmanager, "
        "prometheus, grafana"
    )
    assert resolve(local, "api").replicas == 1
    assert resolve(local, "frontend").replicas is None


def test_a_container_belongs_to_the_longest_service_name_it_matches(tmp_path: Path) -> None:
    local = stack_of("local", LOCAL, tmp_path)
    known = services.services(local)
    assert docker_service_of(local, "picluster-local-lobby-2", known) == "lobby"
    assert docker_service_of(local, "picluster-local-lobby-v2-1", known) == "lobby-v2"
    assert docker_service_of(local, "/picluster-local-lobby-migrate-0a1b2c3d4e5f", known) == "lobby"
    assert docker_service_of(local, "picluster-local-postgres", known) == "postgres"
    assert docker_service_of(local, "picluster-local-backup", known) == "backup"


def test_stack_settings_come_from_the_stack_file_without_secret_values(tmp_path: Path) -> None:
    document = {
        "config": {
            "picluster:target": "k3s",
            "picluster:ssh": {"user": "pi"},
            "picluster:nodes": [{"name": "pi-1", "host": "192.168.1.10", "role": "server"}],
            "picluster:k3s": {"version": "v1.31.4+k3s1"},
            "picluster:sshPrivateKey": {"secure": "v1:abc"},
            "other:key": "x",
        }
    }
    (tmp_path / "Pulumi.prod.yaml").write_text(yaml.safe_dump(document))
    prod = stack.load("prod", tmp_path)
    assert prod.settings.nodes[0].name == "pi-1"
    assert stack.raw_settings("prod", tmp_path)["sshPrivateKey"] == {"secure": "v1:abc"}
    with pytest.raises(stack.StackError, match=r"no Pulumi.nope.yaml: .* \(prod\)"):
        stack.load("nope", tmp_path)
