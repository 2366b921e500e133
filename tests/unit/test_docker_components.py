"""AppStack and Monitoring on their own, on a Docker provider, under mocks."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker
import yaml

from components.app_model import build_app
from components.app_stack import AppStack, AppStackArgs
from components.config import AppConfig, MonitoringConfig
from components.monitoring import Monitoring, MonitoringArgs
from components.on_docker.containers import DockerPlatform
from components.secrets import StackSecrets
from tests.harness import TEST_IMAGES, Run, run

PLATFORM = DockerPlatform(
    publish_address="127.0.0.1",
    frontend_port=8080,
    grafana_port=3000,
    prometheus_port=9090,
    alertmanager_port=9093,
    name_prefix="picluster-unit",
)
APP = build_app(
    AppConfig.model_validate(
        {
            "services": [
                {"name": "match", "image": "node:22.12.0-alpine", "port": 4000, "replicas": 3},
            ],
            "database": {"name": "arena", "user": "arena"},
        }
    ),
    TEST_IMAGES,
)


def fixed_secrets() -> StackSecrets:
    return StackSecrets(
        db_password=pulumi.Output.secret("unit-db-pw"),
        grafana_admin_password=pulumi.Output.secret("unit-grafana-pw"),
        database_url=pulumi.Output.secret("postgresql://arena:unit-db-pw@postgres:5432/arena"),
    )


def app_only() -> None:
    provider = docker.Provider("unit-docker", host="unix:///var/run/docker.sock")
    AppStack(
        "game",
        AppStackArgs(app=APP, secrets=fixed_secrets(), platform=PLATFORM),
        pulumi.ResourceOptions(providers=[provider]),
    )


def monitoring_only() -> None:
    provider = docker.Provider("unit-docker", host="unix:///var/run/docker.sock")
    Monitoring(
        "watch",
        MonitoringArgs(
            app=APP,
            secrets=fixed_secrets(),
            settings=MonitoringConfig.model_validate({"retention": "7d", "scrapeInterval": "15s"}),
            platform=PLATFORM,
            network_name="picluster-unit-app",
        ),
        pulumi.ResourceOptions(providers=[provider]),
    )


def uploads(run: Run, name: str) -> dict[str, str]:
    return {u["file"]: u["content"] for u in run.named(name).value("uploads")}


def test_app_stack_alone_children_are_named_after_it_and_parented() -> None:
    result = run(app_only, {})
    component = result.named("game")
    assert component.type == "picluster:index:AppStack"
    children = [r for r in result.registrations if r.parent == component.urn]
    assert {c.name for c in children if c.type == "docker:index/container:Container"} == {
        "game-postgres",
        "game-match-1",
        "game-match-2",
        "game-match-3",
        "game-frontend",
        "game-postgres-backup",
    }
    assert all(c.name.startswith("game-") for c in children)
    db = result.named("game-postgres")
    env = dict(e.split("=", 1) for e in db.value("envs"))
    assert env["POSTGRES_DB"] == "arena" and env["POSTGRES_USER"] == "arena"


def test_app_stack_replicas_share_one_image_pull_and_alias() -> None:
    result = run(app_only, {})
    node_images = [
        r
        for r in result.of_type("docker:index/remoteImage:RemoteImage")
        if r.value("name") == "node:22.12.0-alpine"
    ]
    assert len(node_images) == 1
    for i in (1, 2, 3):
        replica = result.named(f"game-match-{i}")
        assert replica.value("networksAdvanced")[0]["aliases"] == ["match"]
        assert replica.value("name") == f"picluster-unit-match-{i}"


def test_monitoring_alone_configures_prometheus_from_settings() -> None:
    result = run(monitoring_only, {})
    prometheus = result.named("watch-prometheus")
    assert "--storage.tsdb.retention.time=7d" in prometheus.value("command")
    # Capped by size too: 80% of monitoring.storage (default 10Gi).
    assert "--storage.tsdb.retention.size=8192MB" in prometheus.value("command")
    config = yaml.safe_load(uploads(result, "watch-prometheus")["/etc/prometheus/prometheus.yml"])
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert jobs == {"prometheus", "node", "cadvisor", "postgres", "probe"}
    probe = next(j for j in config["scrape_configs"] if j["job_name"] == "probe")
    targets = {c["labels"]["service"]: c for c in probe["static_configs"]}
    assert targets["match"]["targets"] == ["match:4000"]
    assert targets["match"]["labels"]["__param_module"] == "tcp_connect"
    assert targets["frontend"]["labels"]["__param_module"] == "http_2xx"
    alerts = uploads(result, "watch-prometheus")["/etc/prometheus/alerts.yml"]
    assert "ProbeFailing" in alerts and "HighCpu" in alerts


def test_monitoring_alone_provisions_grafana_with_dashboards_and_secret_password() -> None:
    result = run(monitoring_only, {})
    grafana = result.named("watch-grafana")
    files = uploads(result, "watch-grafana")
    dashboards = [p for p in files if p.startswith("/etc/grafana/dashboards/")]
    assert {p.rsplit("/", 1)[-1] for p in dashboards} >= {
        "host.json",
        "containers.json",
        "app.json",
        "postgres.json",
    }
    datasource = yaml.safe_load(files["/etc/grafana/provisioning/datasources/picluster.yml"])
    assert datasource["datasources"][0]["uid"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert grafana.is_secret("uploads")
    env = dict(e.split("=", 1) for e in grafana.value("envs"))
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana-admin-password"
    for resource in result.registrations:
        assert not any("unit-grafana-pw" in s for s in resource.plain_strings())
        assert not any("unit-db-pw" in s for s in resource.plain_strings())


def test_monitoring_joins_the_given_network_and_reads_host_metrics_read_only() -> None:
    result = run(monitoring_only, {})
    node_exporter = result.named("watch-node-exporter")
    assert node_exporter.value("pidMode") == "host"
    assert all(v["readOnly"] for v in node_exporter.value("volumes"))
    for container in result.of_type("docker:index/container:Container"):
        assert container.value("networksAdvanced")[0]["name"] == "picluster-unit-app"
