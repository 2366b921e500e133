"""Alert delivery under mocks: the `monitoring.alerts` contract, Alertmanager's rendered
configuration, and the objects both targets declare for it, with the receivers' secrets kept
secret (never in a ConfigMap, an uploaded plain file, an environment variable or an argument)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from components import alertmanager_config, versions
from components.alertmanager_config import Receiver, SecretFile
from components.alertmanager_config import alertmanager_config as render
from components.config import AlertsConfig, ConfigError, validate
from components.secrets import ntfy_url
from tests.engine_rules import Action, plan
from tests.harness import Registration, Run, run_main, stack_file_config, unwrap

PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-alerts-test-key\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
SECRETS = {
    "alertsWebhookUrl": "https://hooks.example.com/picluster/wh-S3CRET-1",
    "alertsWebhookToken": "wh-T0KEN-2",
    "alertsNtfyUrl": "https://ntfy.sh/picluster-topic-S3CRET-3",
    "alertsNtfyToken": "tk_ntfy-T0KEN-4",
    "alertsSlackWebhookUrl": "https://hooks.slack.com/services/T000/B000/slack-S3CRET-5",
    "alertsSmtpPassword": "smtp-Pa55-6",
    "alertsHeartbeatUrl": "https://hc-ping.com/heartbeat-S3CRET-7",
}
ALERTS = {
    "webhook": {},
    "ntfy": {"minSeverity": "critical"},
    "slack": {"channel": "#alerts"},
    "email": {
        "to": ["ops@example.com", "oncall@example.com"],
        "from": "picluster@example.com",
        "smarthost": "smtp.example.com:587",
        "username": "picluster",
    },
}
FRAGMENTS = ("S3CRET", "T0KEN", "Pa55")
"""A piece of every secret value above: none may appear outside a secret."""


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    return caught.value.problems


def alerts_of(raw: dict[str, Any]) -> AlertsConfig:
    return AlertsConfig.model_validate(raw)


# --- the config contract -----------------------------------------------------------------------


def test_defaults_give_no_receiver_and_a_small_volume() -> None:
    settings = validate({"target": "docker"})
    alerts = settings.monitoring.alerts
    assert alerts.storage == "128Mi"
    assert (alerts.webhook, alerts.ntfy, alerts.slack, alerts.email) == (None, None, None, None)
    assert settings.docker.ports.alertmanager == 9093


def test_every_receiver_with_its_secrets_is_valid() -> None:
    settings = validate({"target": "docker", "monitoring": {"alerts": ALERTS}, **SECRETS})
    email = settings.monitoring.alerts.email
    assert email is not None and email.from_ == "picluster@example.com"


@pytest.mark.parametrize(
    ("raw", "key", "hint"),
    [
        (
            {"monitoring": {"alerts": {"slack": {"channel": "#ops"}}}},
            "picluster:monitoring.alerts.slack",
            "pulumi config set --secret alertsSlackWebhookUrl",
        ),
        (
            {"monitoring": {"alerts": {"webhook": {}}}},
            "picluster:monitoring.alerts.webhook",
            "picluster:alertsWebhookUrl",
        ),
        (
            {"monitoring": {"alerts": {"ntfy": {}}}},
            "picluster:monitoring.alerts.ntfy",
            "https://ntfy.sh/<your-topic>",
        ),
        ({"alertsNtfyToken": "tk_x"}, "picluster:alertsNtfyToken", "alertsNtfyUrl is not"),
        ({"alertsWebhookToken": "x"}, "picluster:alertsWebhookToken", "alertsWebhookUrl is not"),
        (
            {"alertsSmtpPassword": "x"},
            "picluster:alertsSmtpPassword",
            "monitoring.alerts.email.username",
        ),
        (
            {"monitoring": {"alerts": {"email": {**ALERTS["email"]}}}},
            "picluster:monitoring.alerts.email.username",
            "alertsSmtpPassword",
        ),
        (
            {"monitoring": {"alerts": {"email": {**ALERTS["email"], "to": ["not-an-address"]}}}},
            "picluster:monitoring.alerts.email.to[0]",
            "is not an e-mail address",
        ),
        (
            {"monitoring": {"alerts": {"email": {**ALERTS["email"], "smarthost": "smtp"}}}},
            "picluster:monitoring.alerts.email.smarthost",
            "host:port",
        ),
        (
            {"monitoring": {"alerts": {"webhook": {"minSeverity": "page"}}}},
            "picluster:monitoring.alerts.webhook.minSeverity",
            "'page' is not valid here; give warning or critical",
        ),
        (
            {"monitoring": {"alerts": {"pagerduty": {}}}},
            "picluster:monitoring.alerts.pagerduty",
            "valid keys here are email, ntfy, slack, storage, webhook",
        ),
        ({"docker": {"ports": {"alertmanager": 0}}}, "picluster:docker.ports.alertmanager", ""),
        (
            {"app": {"services": [{"name": "alertmanager", "image": "x:1", "port": 1}]}},
            "picluster:app.services[0].name",
            "used by picluster itself",
        ),
    ],
)
def test_bad_alert_config_names_the_key(raw: dict[str, Any], key: str, hint: str) -> None:
    problems = problems_of({"target": "docker", **raw})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}:"), problems
    assert hint in problems[0], problems


def test_a_secret_url_that_is_not_one_is_refused_without_repeating_it() -> None:
    problems = problems_of({"target": "docker", "alertsSlackWebhookUrl": "hooks S3CRET"})
    assert problems == [
        "picluster:alertsSlackWebhookUrl: is not an http:// or https:// URL "
        "(the value is not shown)"
    ]


def test_ntfy_url_asks_for_the_alertmanager_template_and_keeps_other_parameters() -> None:
    assert ntfy_url("https://ntfy.sh/topic") == "https://ntfy.sh/topic?template=alertmanager"
    assert (
        ntfy_url("https://n.lan/t?priority=high&template=x")
        == "https://n.lan/t?priority=high&template=alertmanager"
    )


# --- the rendered alertmanager.yml -------------------------------------------------------------


def _receivers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in config["receivers"]}


def _route_for(config: dict[str, Any], matcher: str) -> dict[str, Any]:
    return next(r for r in config["route"]["routes"] if r["matchers"] == [matcher])


def test_without_receivers_alerts_stay_in_alertmanager_and_watchdog_goes_nowhere() -> None:
    config = yaml.safe_load(render(AlertsConfig(), ()))
    receivers = _receivers(config)
    assert set(receivers) == {"critical", "warning", "null"}
    assert all(set(r) == {"name"} for r in receivers.values()), receivers
    assert _route_for(config, 'alertname="Watchdog"')["receiver"] == "null"


def test_watchdog_goes_to_the_heartbeat_only_and_first_in_the_tree() -> None:
    alerts = alerts_of(ALERTS)
    config = yaml.safe_load(render(alerts, set(SecretFile)))
    routes = config["route"]["routes"]
    assert routes[0]["matchers"] == ['alertname="Watchdog"']
    assert routes[0]["receiver"] == "heartbeat"
    assert "continue" not in routes[0]  # so it never falls through to a person
    heartbeat = _receivers(config)["heartbeat"]
    assert heartbeat["webhook_configs"] == [
        {"url_file": "/etc/alertmanager/secrets/heartbeat-url", "send_resolved": False}
    ]
    assert set(heartbeat) == {"name", "webhook_configs"}


def test_severity_routes_repeat_critical_more_often_than_warnings() -> None:
    config = yaml.safe_load(render(AlertsConfig(), ()))
    critical = _route_for(config, 'severity="critical"')
    warning = _route_for(config, 'severity="warning"')
    assert (critical["receiver"], critical["repeat_interval"]) == ("critical", "4h")
    assert (warning["receiver"], warning["repeat_interval"]) == ("warning", "24h")
    assert config["route"]["receiver"] == "warning"
    assert config["route"]["group_by"] == ["alertname", "service"]


def test_min_severity_critical_keeps_a_receiver_out_of_the_warnings() -> None:
    config = yaml.safe_load(render(alerts_of(ALERTS), set(SecretFile)))
    receivers = _receivers(config)
    critical_urls = [w["url_file"] for w in receivers["critical"]["webhook_configs"]]
    warning_urls = [w["url_file"] for w in receivers["warning"]["webhook_configs"]]
    assert critical_urls == [SecretFile.WEBHOOK_URL.path, SecretFile.NTFY_URL.path]
    assert warning_urls == [SecretFile.WEBHOOK_URL.path]
    for name in ("critical", "warning"):
        assert "slack_configs" in receivers[name] and "email_configs" in receivers[name]


def test_every_secret_is_a_file_reference_and_tokens_are_bearer_credentials() -> None:
    text = render(alerts_of(ALERTS), set(SecretFile))
    config = yaml.safe_load(text)
    critical = _receivers(config)["critical"]
    webhook, ntfy = critical["webhook_configs"]
    assert webhook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/alertmanager/secrets/webhook-token",
    }
    assert ntfy["http_config"]["authorization"]["credentials_file"] == (
        "/etc/alertmanager/secrets/ntfy-token"
    )
    assert critical["slack_configs"][0]["api_url_file"] == SecretFile.SLACK_WEBHOOK_URL.path
    assert critical["slack_configs"][0]["channel"] == "#alerts"
    email = critical["email_configs"][0]
    assert email["auth_password_file"] == SecretFile.SMTP_PASSWORD.path
    assert email["to"] == "ops@example.com, oncall@example.com"
    for forbidden in ("url:", "api_url:", "auth_password:", "credentials:"):
        assert forbidden not in text


def test_inhibition_silences_warnings_under_a_critical_alert_and_a_failing_probe() -> None:
    config = yaml.safe_load(render(AlertsConfig(), ()))
    assert config["inhibit_rules"] == [
        {
            "source_matchers": ['severity="critical"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["instance"],
        },
        {
            "source_matchers": ['alertname="ProbeFailing"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["service"],
        },
    ]


def test_webhook_without_a_token_has_no_authorization() -> None:
    config = yaml.safe_load(render(AlertsConfig(), {SecretFile.WEBHOOK_URL}))
    (webhook,) = _receivers(config)["warning"]["webhook_configs"]
    assert "http_config" not in webhook


# --- both targets, the whole program -----------------------------------------------------------


def _local() -> Run:
    return run_main(
        {"target": "docker", "monitoring": {"alerts": ALERTS}, **SECRETS},
        secret_keys=tuple(SECRETS),
    )


def _prod() -> Run:
    return run_main(
        {
            **stack_file_config("prod"),
            "monitoring": {"alerts": ALERTS},
            "sshPrivateKey": PRIVATE_KEY,
            **SECRETS,
        },
        stack="prod",
        secret_keys=("sshPrivateKey", *SECRETS),
    )


@pytest.fixture(scope="module")
def local() -> Run:
    return _local()


@pytest.fixture(scope="module")
def prod() -> Run:
    return _prod()


def _kube(run: Run, kind: str, name: str) -> Registration:
    found = [
        r
        for r in run.registrations
        if r.type.startswith("kubernetes:")
        and r.value("kind") == kind
        and r.value("metadata")["name"] == name
    ]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _container(run: Run, name: str) -> Registration:
    return run.named(name)


@pytest.mark.parametrize("target", ["local", "prod"])
def test_secret_values_appear_only_inside_secrets(
    target: str, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(target)
    seen = set()
    for registration in run.registrations:
        for text in registration.plain_strings():
            assert not any(f in text for f in FRAGMENTS), f"{registration.name}: plain secret"
        secret_texts = registration.secret_strings()
        if registration.type.startswith("kubernetes:") and registration.value("kind") != "Secret":
            # Marked secret or not, a value in a Deployment or ConfigMap is readable by whoever
            # may read those: only the Secret object may carry one.
            assert not any(f in t for t in secret_texts for f in FRAGMENTS), registration.name
        seen.update(v for v in SECRETS.values() if any(v in t for t in secret_texts))
    # Each secret is used, as a secret (the ntfy URL with its template parameter added).
    assert seen == set(SECRETS.values())


def test_k3s_runs_a_small_restricted_alertmanager_on_its_own_volume(prod: Run) -> None:
    deployment = unwrap(_kube(prod, "Deployment", "alertmanager").inputs)
    assert deployment["metadata"]["namespace"] == "monitoring"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == versions.ALERTMANAGER
    assert container["resources"]["requests"]["memory"] == "40Mi"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "env" not in container
    # Its links (notifications' "view in Alertmanager") open on the laptop's forward.
    assert container["args"] == alertmanager_config.alertmanager_args(
        external_url="http://127.0.0.1:9093/"
    )
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["secrets"]["mountPath"] == "/etc/alertmanager/secrets"
    assert "subPath" not in mounts["secrets"]  # rotated secrets reach the files in place
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "alertmanager-data"
    assert volumes["secrets"]["secret"]["secretName"] == "alertmanager"
    assert volumes["config"]["configMap"]["name"] == "alertmanager"
    claim = unwrap(_kube(prod, "PersistentVolumeClaim", "alertmanager-data").inputs)
    assert claim["spec"]["resources"]["requests"]["storage"] == "128Mi"
    service = unwrap(_kube(prod, "Service", "alertmanager").inputs)
    assert [p["port"] for p in service["spec"]["ports"]] == [9093]


def test_k3s_secret_holds_one_file_per_secret_and_the_configmap_only_paths(prod: Run) -> None:
    secret = _kube(prod, "Secret", "alertmanager")
    assert secret.is_secret("stringData")
    data = unwrap(secret.inputs)["stringData"]
    assert set(data) == {file.value for file in SecretFile}
    assert data["ntfy-url"] == SECRETS["alertsNtfyUrl"] + "?template=alertmanager"
    assert data["smtp-password"] == SECRETS["alertsSmtpPassword"]
    config_map = unwrap(_kube(prod, "ConfigMap", "alertmanager").inputs)
    assert set(config_map["data"]) == {"alertmanager.yml"}
    rendered = yaml.safe_load(config_map["data"]["alertmanager.yml"])
    assert {r["name"] for r in rendered["receivers"]} == {r.value for r in Receiver}


@pytest.mark.parametrize("target", ["local", "prod"])
def test_prometheus_sends_its_alerts_to_alertmanager(
    target: str, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(target)
    if target == "prod":
        text = unwrap(_kube(run, "ConfigMap", "prometheus").inputs)["data"]["prometheus.yml"]
    else:
        uploads = unwrap(_container(run, "monitoring-prometheus").inputs)["uploads"]
        text = next(u["content"] for u in uploads if u["file"].endswith("prometheus.yml"))
    assert yaml.safe_load(text)["alerting"] == {
        "alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]
    }


def test_docker_alertmanager_gets_config_as_plain_file_and_secrets_as_secret_uploads(
    local: Run,
) -> None:
    container = _container(local, "monitoring-alertmanager")
    assert container.is_secret("uploads")
    uploads = {u["file"]: u["content"] for u in unwrap(container.inputs)["uploads"]}
    assert set(uploads) == {
        alertmanager_config.CONFIG_FILE,
        *(file.path for file in SecretFile),
    }
    assert uploads[SecretFile.HEARTBEAT_URL.path] == SECRETS["alertsHeartbeatUrl"]
    config = yaml.safe_load(uploads[alertmanager_config.CONFIG_FILE])
    assert _receivers(config)["heartbeat"]
    inputs = unwrap(container.inputs)
    assert inputs["envs"] == []
    assert "--web.external-url=http://127.0.0.1:9093/" in inputs["command"]
    assert [v["containerPath"] for v in inputs["volumes"]] == ["/alertmanager"]
    assert local.outputs["alertmanagerUrl"].value == "http://127.0.0.1:9093/"


def test_prod_exports_the_forwarded_alertmanager_url_and_the_forward_command(prod: Run) -> None:
    # The laptop's end of `bin/picluster forward`, not an in-cluster name a laptop cannot resolve.
    assert prod.outputs["alertmanagerUrl"].value == "http://127.0.0.1:9093/"
    assert not prod.outputs["alertmanagerUrl"].secret
    assert prod.outputs["forwardCommand"].value == "bin/picluster forward -s prod"


def test_without_alert_secrets_k3s_declares_no_alertmanager_secret() -> None:
    run = run_main(
        {**stack_file_config("prod"), "sshPrivateKey": PRIVATE_KEY},
        stack="prod",
        secret_keys=("sshPrivateKey",),
    )
    secrets = [
        r
        for r in run.registrations
        if r.type.startswith("kubernetes:")
        and r.value("kind") == "Secret"
        and r.value("metadata")["name"] == "alertmanager"
    ]
    assert secrets == []
    pod = unwrap(_kube(run, "Deployment", "alertmanager").inputs)["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"config", "data"}


def test_a_rotated_receiver_secret_updates_the_secret_alone_on_k3s(prod: Run) -> None:
    # Alertmanager reads the files at each notification and the mount has no subPath, so the
    # kubelet's refresh is enough: no checksum of the secrets in the pod template, no restart.
    rotated = run_main(
        {
            **stack_file_config("prod"),
            "monitoring": {"alerts": ALERTS},
            "sshPrivateKey": PRIVATE_KEY,
            **SECRETS,
            "alertsSlackWebhookUrl": "https://hooks.slack.com/services/T000/B000/slack-S3CRET-8",
        },
        stack="prod",
        secret_keys=("sshPrivateKey", *SECRETS),
    )
    changes = plan(prod.registrations, rotated.registrations)
    found = {a.value: sorted(changes.labels(a)) for a in Action if changes.labels(a)}
    assert found == {"update": ["Secret monitoring-alertmanager"]}, changes.summary()
