"""The configuration contract: bad input stops the program with one message naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components.config import ConfigError, Settings, Target, validate
from tests.harness import run_main, stack_file_config

K3S_BASE: dict[str, Any] = {
    "target": "k3s",
    "ssh": {"user": "pi", "privateKeyPath": "~/.ssh/id_ed25519"},
    "k3s": {"version": "v1.31.4+k3s1"},
    "nodes": [
        {"name": "pi-1", "host": "192.168.1.10", "role": "server"},
        {"name": "pi-2", "host": "192.168.1.11", "role": "agent"},
    ],
}


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    return caught.value.problems


def with_services(*services: dict[str, Any]) -> dict[str, Any]:
    return {"target": "docker", "app": {"services": list(services)}}


def svc(name: str = "api", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "node:22.12.0-alpine", "port": 3000, **extra}


def test_committed_stacks_are_valid() -> None:
    local = validate(stack_file_config("local"))
    prod = validate(stack_file_config("prod"))
    assert local.target is Target.DOCKER
    assert prod.target is Target.K3S
    assert [n.role.value for n in prod.nodes] == ["server", "agent", "agent"]


def test_local_stack_needs_nothing_but_target() -> None:
    assert set(stack_file_config("local")) == {"target"}


def test_defaults_give_the_documented_values() -> None:
    settings = validate({"target": "docker"})
    assert settings.docker.host == "unix:///var/run/docker.sock"
    assert settings.docker.publish_address == "127.0.0.1"
    assert settings.monitoring.enabled is True
    assert settings.monitoring.retention == "15d"
    assert settings.app.services is None  # the demo API is added by the app model


@pytest.mark.parametrize(
    ("raw", "key", "hint"),
    [
        ({}, "picluster:target", "is required"),
        ({"target": "swarm"}, "picluster:target", "'swarm' is not valid here; give docker or k3s"),
        ({"target": "docker", "colour": "red"}, "picluster:colour", "valid keys are target"),
        (
            {"target": "docker", "app": {"frontend": {"imag": "x"}}},
            "picluster:app.frontend.imag",
            "valid keys here are build, image, port, replicas, static",
        ),
        (
            {"target": "docker", "monitoring": {"enabled": "maybe"}},
            "picluster:monitoring.enabled",
            "is the text 'maybe'; write true or false",
        ),
        (
            {"target": "docker", "monitoring": {"retention": "forever"}},
            "picluster:monitoring.retention",
            "duration such as",
        ),
        (
            {"target": "docker", "docker": {"publishAddress": "everywhere"}},
            "picluster:docker.publishAddress",
            "IPv4 address",
        ),
        (
            {"target": "docker", "docker": {"host": "/var/run/docker.sock"}},
            "picluster:docker.host",
            "unix:///var/run/docker.sock",
        ),
        (
            {"target": "docker", "docker": {"ports": {"grafana": 0}}},
            "picluster:docker.ports.grafana",
            "0 is out of range; give a whole number from 1 to 65535",
        ),
        (with_services(svc(port=70000)), "picluster:app.services[0].port", "65535"),
        (
            with_services(svc(port="80")),
            "picluster:app.services[0].port",
            "is the text '80'; write the number without quotes: 80",
        ),
        (
            with_services(svc(port="eighty")),
            "picluster:app.services[0].port",
            "is the text 'eighty'; give a whole number",
        ),
        (
            with_services(svc(image="Studio/Api:1.0")),
            "picluster:app.services[0].image",
            "write 'studio/api:1.0'",
        ),
        (
            {"target": "docker", "monitoring": "yes"},
            "picluster:monitoring",
            "should be a mapping with the keys alerts, enabled,",
        ),
        (
            {},
            "picluster:target",
            "or k3s (a K3s cluster on your Raspberry Pis); set it with "
            "`bin/pulumi config set target docker -s <stack>`",
        ),
        (with_services(svc(path="api")), "picluster:app.services[0].path", "'/something'"),
        (with_services(svc(path="/")), "picluster:app.services[0].path", "'/something'"),
        (with_services(svc(image="node")), "picluster:app.services[0].image", "not pinned"),
        (
            with_services(svc(image="node:latest")),
            "picluster:app.services[0].image",
            "not pinned",
        ),
        (with_services(svc(name="Api")), "picluster:app.services[0].name", "lowercase"),
        (
            with_services(svc(env={"DATABASE_URL": "x"})),
            "picluster:app.services[0].env.DATABASE_URL",
            "set by picluster",
        ),
        (
            with_services(svc(), svc(path="/other")),
            "picluster:app.services[1].name",
            "names must be unique",
        ),
        (
            with_services(svc(), svc(name="b", path="/api")),
            "picluster:app.services[1].path",
            "paths must be unique",
        ),
        (
            with_services(svc(name="grafana")),
            "picluster:app.services[0].name",
            "used by picluster itself",
        ),
        ({"target": "docker", "app": {"services": "api"}}, "picluster:app.services", "list"),
        (
            {"target": "docker", "app": {"database": {"storage": "lots"}}},
            "picluster:app.database.storage",
            "storage size",
        ),
        ({"target": "docker", "app": {"domain": "bad domain"}}, "picluster:app.domain", "hostname"),
        ({"target": "docker", "dbPassword": ""}, "picluster:dbPassword", "non-empty"),
    ],
)
def test_bad_input_names_the_key(raw: dict[str, Any], key: str, hint: str) -> None:
    problems = problems_of(raw)
    matching = [p for p in problems if p.startswith(f"{key}: ")]
    assert matching, f"no problem names {key}: {problems}"
    assert hint in matching[0], matching[0]


def test_k3s_base_is_valid() -> None:
    settings = validate(K3S_BASE)
    assert settings.k3s is not None
    assert settings.k3s.version == "v1.31.4+k3s1"


@pytest.mark.parametrize(
    ("change", "key", "hint"),
    [
        ({"k3s": None}, "picluster:k3s", "is required when target is k3s"),
        ({"k3s": {}}, "picluster:k3s.version", "is required"),
        ({"k3s": {"version": "stable"}}, "picluster:k3s.version", "not a pinned K3s release"),
        ({"k3s": {"version": "1.31.4"}}, "picluster:k3s.version", "v1.31.4+k3s1"),
        ({"ssh": None}, "picluster:ssh", "is required when target is k3s"),
        ({"nodes": []}, "picluster:nodes", "is required when target is k3s"),
        (
            {"nodes": [{"name": "pi-1", "host": "10.0.0.1", "role": "agent"}]},
            "picluster:nodes",
            "at least one node with role: server",
        ),
        (
            {
                "nodes": [
                    {"name": "pi-1", "host": "10.0.0.1", "role": "server"},
                    {"name": "pi-2", "host": "10.0.0.2", "role": "server"},
                ]
            },
            "picluster:nodes",
            "odd number",
        ),
        (
            {
                "nodes": [
                    {"name": "pi-1", "host": "10.0.0.1", "role": "server"},
                    {"name": "pi-1", "host": "10.0.0.2", "role": "agent"},
                ]
            },
            "picluster:nodes[1].name",
            "must be unique",
        ),
        (
            {
                "nodes": [
                    {"name": "pi-1", "host": "10.0.0.1", "role": "server"},
                    {"name": "pi-2", "host": "10.0.0.1", "role": "agent", "port": 22},
                ]
            },
            "picluster:nodes[1].host",
            "own host and port",
        ),
        (
            {"nodes": [{"name": "pi-1", "host": "300.1.1.1", "role": "server"}]},
            "picluster:nodes[0].host",
            "'300.1.1.1' is not an IPv4 address or hostname",
        ),
        (
            {"nodes": [{"name": "pi-1", "host": "pi_1.local", "role": "server"}]},
            "picluster:nodes[0].host",
            "is not an IPv4 address or hostname",
        ),
        (
            {"nodes": [{"name": "pi-1", "host": "10.0.0.1", "role": "master"}]},
            "picluster:nodes[0].role",
            "'master' is not valid here; give server or agent",
        ),
        (
            {"nodes": [{"name": "pi-1", "host": "10.0.0.1", "role": "server", "hostKey": "x"}]},
            "picluster:nodes[0].hostKey",
            "OpenSSH public host key",
        ),
        (
            {
                "nodes": [
                    {
                        "name": "pi-1",
                        "host": "10.0.0.1",
                        "role": "server",
                        "hostKey": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7",
                    }
                ]
            },
            "picluster:nodes[0].hostKey",
            "pin the Pi's ed25519 key instead",
        ),
        (
            {"nodes": [{"name": "pi-1", "host": "10.0.0.1", "role": "server", "taints": ["x"]}]},
            "picluster:nodes[0].taints[0]",
            "NoSchedule",
        ),
        (
            {"k3s": {"version": "v1.31.4+k3s1", "disable": ["ingress"]}},
            "picluster:k3s.disable[0]",
            "traefik",
        ),
        (
            {"k3s": {"version": "v1.31.4+k3s1", "disable": ["servicelb", "traefik"]}},
            "picluster:k3s.disable[1]",
            "the game's Ingress (and Grafana's) is served by K3s's Traefik",
        ),
        (
            {"k3s": {"version": "v1.31.4+k3s1", "installUrl": "http://get.k3s.io"}},
            "picluster:k3s.installUrl",
            "is not an installer URL",
        ),
        (
            {"k3s": {"version": "v1.31.4+k3s1", "drainTimeout": 5}},
            "picluster:k3s.drainTimeout",
            "5 is out of range; give a whole number from 30 to 3600",
        ),
        (
            {"k3s": {"version": "v1.31.4+k3s1", "disable": ["local-storage"]}},
            "picluster:k3s.disable[0]",
            "local-path StorageClass",
        ),
        (
            {
                "nodes": [
                    {
                        "name": "pi-1",
                        "host": "10.0.0.1",
                        "role": "server",
                        "labels": {"kubernetes.io/arch": "arm64"},
                    }
                ]
            },
            "picluster:nodes[0].labels",
            "uses a prefix Kubernetes reserves (kubernetes.io)",
        ),
        (
            {
                "nodes": [
                    {
                        "name": "pi-1",
                        "host": "10.0.0.1",
                        "role": "server",
                        "labels": {"game studio/tier": "x"},
                    }
                ]
            },
            "picluster:nodes[0].labels",
            "is not a label key",
        ),
        (
            {
                "nodes": [
                    {
                        "name": "pi-1",
                        "host": "10.0.0.1",
                        "role": "agent",
                        "labels": {"node-role.kubernetes.io/control-plane": "true"},
                    }
                ]
            },
            "picluster:nodes[0].labels",
            "is set by K3s itself on its servers",
        ),
        (
            {
                "nodes": [
                    {
                        "name": "pi-1",
                        "host": "10.0.0.1",
                        "role": "server",
                        "labels": {"tier": "front end"},
                    }
                ]
            },
            "picluster:nodes[0].labels",
            "is not a label value",
        ),
    ],
)
def test_bad_cluster_config_names_the_key(change: dict[str, Any], key: str, hint: str) -> None:
    raw = {**K3S_BASE, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    problems = problems_of(raw)
    matching = [p for p in problems if p.startswith(f"{key}: ")]
    assert matching, f"no problem names {key}: {problems}"
    assert hint in matching[0], matching[0]


def test_same_host_on_other_ports_is_allowed() -> None:
    raw = {
        **K3S_BASE,
        "nodes": [
            {"name": "pi-1", "host": "127.0.0.1", "port": 2222, "role": "server"},
            {"name": "pi-2", "host": "127.0.0.1", "port": 2223, "role": "agent"},
        ],
    }
    assert isinstance(validate(raw), Settings)


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {"target": "docker", "colour": "red", "app": {"services": [svc(port=0, path="x")]}}
    )
    assert any(p.startswith("picluster:colour") for p in problems)
    assert any(p.startswith("picluster:app.services[0].port") for p in problems)
    assert any(p.startswith("picluster:app.services[0].path") for p in problems)


def test_secret_values_are_never_repeated_in_errors() -> None:
    token = "short token"  # fails validation (white space, too short)
    problems = problems_of({**K3S_BASE, "k3sToken": token})
    assert problems == ["picluster:k3sToken: must be at least 16 characters with no white space"]
    assert token not in str(problems)


def test_program_stops_before_any_resource_on_bad_config() -> None:
    with pytest.raises(ConfigError) as caught:
        run_main({"target": "docker", "app": {"services": [svc(port=99999)]}})
    assert "picluster:app.services[0].port" in str(caught.value)


def test_program_declares_nothing_on_bad_config() -> None:
    from tests import harness

    declared: list[str] = []

    original = harness.RecordingMonitor._record

    def spy(self: harness.RecordingMonitor, request: Any) -> harness.Registration:
        declared.append(request.name)
        return original(self, request)

    harness.RecordingMonitor._record = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(ConfigError):
            run_main({"target": "docker", "monitoring": {"retention": "1 year"}})
    finally:
        harness.RecordingMonitor._record = original  # type: ignore[method-assign]
    assert declared == []


def test_plaintext_secret_in_stack_file_gets_a_warning() -> None:
    run = run_main({"target": "docker", "dbPassword": "correct-horse-battery"})
    assert any("picluster:dbPassword is stored in plain text" in w for w in run.warnings)
    secret_run = run_main(
        {"target": "docker", "dbPassword": "correct-horse-battery"}, secret_keys=("dbPassword",)
    )
    assert not any("dbPassword" in w for w in secret_run.warnings)


def test_node_role_labels_and_own_prefixes_are_accepted() -> None:
    nodes = [
        {
            "name": "pi-1",
            "host": "10.0.0.1",
            "role": "server",
            "labels": {"node-role.kubernetes.io/game": "true", "game.studio/tier": "frontend"},
        }
    ]
    settings = validate({**K3S_BASE, "nodes": nodes})
    assert settings.nodes[0].labels["node-role.kubernetes.io/game"] == "true"


# --- hostKey as people have it ------------------------------------------------------------------

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMkz3ZQ9Wm0d7yQ3p2K8Jxq0M1Rf5XzN0o2c9V4hT6bA"


def host_key_of(value: str) -> str | None:
    node = {"name": "pi-1", "host": "10.0.0.1", "role": "server", "hostKey": value}
    raw = {
        "target": "k3s",
        "ssh": {"privateKeyPath": None},
        "sshPrivateKey": "key",
        "nodes": [node],
        "k3s": {"version": "v1.31.4+k3s1"},
    }
    return validate(raw).nodes[0].host_key


@pytest.mark.parametrize(
    "value",
    [
        ED25519,
        f"{ED25519} root@raspberrypi",  # the .pub file's line, with its comment
        f"  {ED25519}  \n",
        f"192.168.1.10 {ED25519}",  # as ssh-keyscan and known_hosts write it
    ],
)
def test_a_host_key_line_is_pinned_without_host_name_or_comment(value: str) -> None:
    assert host_key_of(value) == ED25519


def test_a_host_key_can_be_the_path_of_the_pis_pub_file(tmp_path: Path) -> None:
    pub = tmp_path / "ssh_host_ed25519_key.pub"
    pub.write_text(f"{ED25519} root@pi-server-1\n")
    assert host_key_of(str(pub)) == ED25519
    rsa = tmp_path / "ssh_host_rsa_key.pub"
    rsa.write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7 root@pi\n")
    with pytest.raises(ConfigError) as error:
        host_key_of(str(rsa))
    assert "ssh-rsa key, which cannot be pinned" in str(error.value)
    with pytest.raises(ConfigError) as error:
        host_key_of(str(tmp_path / "missing.pub"))
    assert "nor a readable .pub file" in str(error.value)
