"""The whole program on the Docker target, run under mocks from the committed and other configs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from components.app_model import DEMO_API
from components.images import plan_build
from tests.harness import Registration, Run, mock_image_id, run_main, stack_file_config, unwrap

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/remoteImage:RemoteImage"
NETWORK = "docker:index/network:Network"
DOCKER_PROVIDER = "pulumi:providers:docker"

DB_PASSWORD = "db-Pa55word-with/odd:chars@x"
GRAFANA_PASSWORD = "grafana-adm1n-S3cret"


@pytest.fixture(scope="module")
def local() -> Run:
    return run_main(stack_file_config("local"), stack="local")


def containers(run: Run) -> dict[str, Registration]:
    return {r.name: r for r in run.of_type(CONTAINER)}


def env_of(container: Registration) -> dict[str, str]:
    return dict(str(e).split("=", 1) for e in container.value("envs") or [])


def uploads_of(container: Registration) -> dict[str, str]:
    return {u["file"]: u["content"] for u in container.value("uploads") or []}


def test_local_stack_declares_app_and_monitoring(local: Run) -> None:
    assert set(containers(local)) == {
        "app-postgres",
        "app-postgres-backup",
        "app-api-1",
        "app-frontend",
        "monitoring-prometheus",
        "monitoring-alertmanager",
        "monitoring-grafana",
        "monitoring-node-exporter",
        "monitoring-cadvisor",
        "monitoring-postgres-exporter",
        "monitoring-blackbox-exporter",
    }
    assert local.names("picluster:index:AppStack") == {"app"}
    assert local.names("picluster:index:Monitoring") == {"monitoring"}


def test_every_docker_resource_uses_the_explicit_provider_through_its_component(
    local: Run,
) -> None:
    provider = local.named("docker")
    assert provider.type == DOCKER_PROVIDER
    assert provider.value("host") == "unix:///var/run/docker.sock"
    components = {r.urn: r for r in local.registrations if r.type.startswith("picluster:index:")}
    for resource in local.registrations:
        if not resource.type.startswith("docker:"):
            continue
        assert resource.provider.startswith(provider.urn), resource.name
        assert resource.parent in components, f"{resource.name} is not parented to a component"


def test_components_receive_the_provider(local: Run) -> None:
    provider = local.named("docker")
    for component in ("app", "monitoring"):
        assert local.named(component).providers.get("docker", "").startswith(provider.urn)


def test_all_images_are_pinned_remote_images(local: Run) -> None:
    images = [r.value("name") for r in local.of_type(IMAGE)]
    assert images
    for ref in images:
        tag = ref.rsplit(":", 1)[-1]
        assert ":" in ref and tag != "latest", ref
    # Each container runs the pulled image, not a floating name.
    image_ids = {mock_image_id(ref) for ref in images}
    for container in local.of_type(CONTAINER):
        assert container.value("image") in image_ids, container.name


def test_every_container_is_on_the_private_network_by_name(local: Run) -> None:
    network = local.named("app-network")
    assert network.value("name") == "picluster-local-app"
    for name, container in containers(local).items():
        networks = container.value("networksAdvanced")
        assert networks == [
            {"name": "picluster-local-app", "aliases": [networks[0]["aliases"][0]]}
        ], name
    aliases = {c.value("networksAdvanced")[0]["aliases"][0] for c in local.of_type(CONTAINER)}
    assert {"postgres", "api", "frontend", "prometheus", "grafana"} <= aliases


def test_database_volume_survives_destroy_and_replacement(local: Run) -> None:
    volume = local.named("app-db-data")
    assert volume.retain_on_delete or volume.protect
    db = containers(local)["app-postgres"]
    assert db.value("volumes") == [
        {"volumeName": "picluster-local-db-data", "containerPath": "/var/lib/postgresql/data"}
    ]
    assert volume.urn in db.dependencies


def test_database_is_healthchecked_private_and_password_is_a_secret_file(local: Run) -> None:
    db = containers(local)["app-postgres"]
    assert db.value("image").startswith("sha256:")
    assert local.named("app-image-postgres-17-alpine").value("name") == "postgres:17-alpine"
    assert db.value("healthcheck")["tests"][:2] == ["CMD", "pg_isready"]
    assert db.value("wait") is True
    assert not db.value("ports")
    env = env_of(db)
    assert env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db-password"
    assert "POSTGRES_PASSWORD" not in env
    assert db.is_secret("uploads")


def test_services_start_after_a_healthy_database(local: Run) -> None:
    db = containers(local)["app-postgres"]
    api = containers(local)["app-api-1"]
    assert db.urn in api.dependencies
    assert api.value("restart") == "unless-stopped"
    assert api.value("healthcheck")["tests"][0:2] == ["CMD", "node"]
    assert api.is_secret("envs")
    env = env_of(api)
    assert env["DATABASE_URL"].startswith("postgresql://game:generated-db-password")
    assert env["DATABASE_URL"].endswith("@postgres:5432/game")
    assert env["PORT"] == "3000"
    # The demo API is built from its source folder, not mounted into a stock node image.
    assert "/app/server.js" not in uploads_of(api)
    built = [r.value("name") for r in local.of_type(IMAGE) if "/api:" in str(r.value("name"))]
    assert built == [f"picluster-local/api:{plan_build('api', DEMO_API).tag}"]


def test_frontend_serves_the_placeholder_and_proxies_service_paths(local: Run) -> None:
    frontend = containers(local)["app-frontend"]
    files = uploads_of(frontend)
    assert "Phaser" in files["/usr/share/nginx/html/index.html"]
    conf = files["/etc/nginx/conf.d/default.conf"]
    assert "location ~ ^/api(/|$)" in conf
    assert "http://api:3000" in conf
    assert containers(local)["app-api-1"].urn in frontend.dependencies


def test_a_domain_on_the_docker_stack_still_lets_nginx_answer_by_address(local: Run) -> None:
    # nginx's only server is the catch-all `server_name _`: a request by IP (a phone on the LAN
    # hitting docker.publishAddress) gets the game whatever `app.domain` says.
    config = stack_file_config("local")
    named = run_main(
        {**config, "app": {**config.get("app", {}), "domain": "game.home.arpa"}}, stack="local"
    )
    conf = uploads_of(containers(named)["app-frontend"])["/etc/nginx/conf.d/default.conf"]
    assert conf == uploads_of(containers(local)["app-frontend"])["/etc/nginx/conf.d/default.conf"]
    assert conf.count("server {") == 1 and "    server_name _;" in conf
    assert named.outputs["frontendUrl"].value == local.outputs["frontendUrl"].value


def test_published_ports_bind_to_loopback_by_default(local: Run) -> None:
    published = {
        name: c.value("ports") for name, c in containers(local).items() if c.value("ports")
    }
    assert published == {
        "app-frontend": [{"internal": 80, "external": 8080, "ip": "127.0.0.1"}],
        "monitoring-grafana": [{"internal": 3000, "external": 3000, "ip": "127.0.0.1"}],
        "monitoring-prometheus": [{"internal": 9090, "external": 9090, "ip": "127.0.0.1"}],
        "monitoring-alertmanager": [{"internal": 9093, "external": 9093, "ip": "127.0.0.1"}],
    }


def test_outputs_are_urls_in_plain_and_passwords_as_secrets(local: Run) -> None:
    outputs = local.outputs
    assert outputs["frontendUrl"].value == "http://127.0.0.1:8080/"
    assert outputs["grafanaUrl"].value == "http://127.0.0.1:3000/"
    assert outputs["prometheusUrl"].value == "http://127.0.0.1:9090/"
    assert outputs["alertmanagerUrl"].value == "http://127.0.0.1:9093/"
    for url in ("frontendUrl", "grafanaUrl", "prometheusUrl", "alertmanagerUrl"):
        assert not outputs[url].secret
    assert "forwardCommand" not in outputs, "Docker publishes its ports: nothing to forward"
    for password in ("dbPassword", "grafanaAdminPassword"):
        assert outputs[password].secret


def test_generated_passwords_are_random_passwords(local: Run) -> None:
    passwords = {r.name: r for r in local.of_type("random:index/randomPassword:RandomPassword")}
    assert set(passwords) == {"db-password", "grafana-admin-password"}
    for password in passwords.values():
        assert password.value("length") >= 32


def given_passwords_run(**config: Any) -> Run:
    return run_main(
        {
            "target": "docker",
            "dbPassword": DB_PASSWORD,
            "grafanaAdminPassword": GRAFANA_PASSWORD,
            **config,
        },
        secret_keys=("dbPassword", "grafanaAdminPassword"),
    )


def test_given_passwords_never_appear_in_a_plain_input() -> None:
    run = given_passwords_run()
    assert not run.of_type("random:index/randomPassword:RandomPassword")
    fragments = (DB_PASSWORD, GRAFANA_PASSWORD, "db-Pa55word", "S3cret")
    seen_in_secret = set()
    for resource in run.registrations:
        for text in resource.plain_strings():
            for fragment in fragments:
                assert fragment not in text, f"{resource.name} has a password in a plain input"
        for text in resource.secret_strings():
            seen_in_secret.update(f for f in (DB_PASSWORD, GRAFANA_PASSWORD) if f in text)
    # The passwords are used, only ever as secrets (the database URL carries it URL-encoded).
    assert seen_in_secret == {DB_PASSWORD, GRAFANA_PASSWORD}
    api_env = env_of(containers(run)["app-api-1"])
    assert "db-Pa55word-with%2Fodd%3Achars%40x@postgres" in api_env["DATABASE_URL"]
    assert run.outputs["dbPassword"].secret and run.outputs["dbPassword"].value == DB_PASSWORD


def test_other_service_lists_render_every_service_and_replica() -> None:
    run = given_passwords_run(
        app={
            "services": [
                {
                    "name": "lobby",
                    "image": "ghcr.io/studio/lobby:1.4.2",
                    "port": 8081,
                    "replicas": 2,
                    "env": {"LOG_LEVEL": "debug"},
                    "healthPath": "/lobby/healthz",
                    "metricsPath": "/metrics",
                },
                {
                    "name": "scores",
                    "image": "ghcr.io/studio/scores:2.0.0",
                    "port": 9000,
                    "path": "/api/scores",
                },
            ]
        },
        docker={"publishAddress": "0.0.0.0", "ports": {"frontend": 80}},
    )
    found = containers(run)
    assert {"app-lobby-1", "app-lobby-2", "app-scores-1"} <= set(found)
    assert "app-api-1" not in found
    assert env_of(found["app-lobby-2"])["LOG_LEVEL"] == "debug"
    assert found["app-lobby-1"].value("networksAdvanced")[0]["aliases"] == ["lobby"]
    assert "/app/server.js" not in uploads_of(found["app-lobby-1"])
    conf = uploads_of(found["app-frontend"])["/etc/nginx/conf.d/default.conf"]
    assert "location ~ ^/lobby(/|$)" in conf
    assert "location ~ ^/api/scores(/|$)" in conf
    assert found["app-frontend"].value("ports") == [
        {"internal": 80, "external": 80, "ip": "0.0.0.0"}
    ]
    prometheus = uploads_of(found["monitoring-prometheus"])["/etc/prometheus/prometheus.yml"]
    jobs = {j["job_name"]: j for j in yaml.safe_load(prometheus)["scrape_configs"]}
    probes = {c["labels"]["service"]: c["targets"][0] for c in jobs["probe"]["static_configs"]}
    assert probes == {
        "frontend": "http://frontend:80/healthz",
        "lobby": "http://lobby:8081/lobby/healthz",
        "scores": "scores:9000",
    }
    assert jobs["services"]["dns_sd_configs"] == [{"names": ["lobby"], "type": "A", "port": 8081}]


def test_user_frontend_image_replaces_the_placeholder_page() -> None:
    run = given_passwords_run(app={"frontend": {"image": "ghcr.io/studio/game-web:3.1.0"}})
    frontend = containers(run)["app-frontend"]
    files = uploads_of(frontend)
    assert "/usr/share/nginx/html/index.html" not in files
    assert "/etc/nginx/conf.d/default.conf" in files
    images = {r.value("name") for r in run.of_type(IMAGE)}
    assert "ghcr.io/studio/game-web:3.1.0" in images
    assert "nginx:1.27.3-alpine" not in images


def test_monitoring_disabled_removes_it_all() -> None:
    run = given_passwords_run(monitoring={"enabled": False})
    assert not run.of_type("picluster:index:Monitoring")
    assert all(not r.name.startswith("monitoring") for r in run.registrations)
    assert {"grafanaUrl", "prometheusUrl", "grafanaAdminPassword"}.isdisjoint(run.outputs)
    assert "frontendUrl" in run.outputs


def test_stack_name_prefixes_daemon_objects() -> None:
    run = run_main({"target": "docker"}, stack="qa")
    assert {c.value("name") for c in run.of_type(CONTAINER)} >= {
        "picluster-qa-postgres",
        "picluster-qa-frontend",
    }
    assert unwrap(run.named("app-db-data").inputs)["name"] == "picluster-qa-db-data"


def test_remote_docker_host_on_a_pi() -> None:
    run = run_main({"target": "docker", "docker": {"host": "ssh://pi@192.168.1.10"}})
    provider = run.named("docker")
    assert provider.value("host") == "ssh://pi@192.168.1.10"
    assert "BatchMode=yes" in provider.value("sshOpts")
