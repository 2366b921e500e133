"""What alert delivery looks like on any target: Alertmanager's configuration, rendered from
`monitoring.alerts`, and the block that points Prometheus at it.

The rendered `alertmanager.yml` never holds a secret: every URL that carries a token, every token
and the SMTP password is a file under `SECRET_DIR` (`url_file`, `api_url_file`,
`credentials_file`, `auth_password_file`), which Alertmanager reads each time it sends. So the
configuration can live in a ConfigMap or a plain uploaded file, and the secrets in a Kubernetes
Secret or a secret upload. `url_file` on webhooks needs Alertmanager 0.26 or later
(the pinned image is `versions.ALERTMANAGER`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import yaml

from components.config import AlertsConfig

ALERTMANAGER: Final = "alertmanager"
ALERTMANAGER_PORT: Final = 9093
CONFIG_DIR: Final = "/etc/alertmanager/config"
CONFIG_FILE: Final = f"{CONFIG_DIR}/alertmanager.yml"
SECRET_DIR: Final = "/etc/alertmanager/secrets"  # noqa: S105 - a path, not a value
DATA_DIR: Final = "/alertmanager"

WATCHDOG: Final = "Watchdog"
"""The rule that always fires (alerts.yml): its notifications are the pipeline's heartbeat."""


class SecretFile(StrEnum):
    """A receiver secret's file name under `SECRET_DIR`, by the config key it comes from."""

    WEBHOOK_URL = "webhook-url"
    WEBHOOK_TOKEN = "webhook-token"  # noqa: S105 - a file name
    NTFY_URL = "ntfy-url"
    NTFY_TOKEN = "ntfy-token"  # noqa: S105 - a file name
    SLACK_WEBHOOK_URL = "slack-webhook-url"
    SMTP_PASSWORD = "smtp-password"  # noqa: S105 - a file name
    HEARTBEAT_URL = "heartbeat-url"

    @property
    def path(self) -> str:
        """Where the file is inside the Alertmanager container."""
        return f"{SECRET_DIR}/{self.value}"


SECRET_FILE_KEYS: Final = {
    "alertsWebhookUrl": SecretFile.WEBHOOK_URL,
    "alertsWebhookToken": SecretFile.WEBHOOK_TOKEN,
    "alertsNtfyUrl": SecretFile.NTFY_URL,
    "alertsNtfyToken": SecretFile.NTFY_TOKEN,
    "alertsSlackWebhookUrl": SecretFile.SLACK_WEBHOOK_URL,
    "alertsSmtpPassword": SecretFile.SMTP_PASSWORD,
    "alertsHeartbeatUrl": SecretFile.HEARTBEAT_URL,
}
"""Which stack secret goes into which file."""


class Receiver(StrEnum):
    """Alertmanager receivers picluster declares."""

    CRITICAL = "critical"
    WARNING = "warning"
    HEARTBEAT = "heartbeat"
    NULL = "null"
    """No integrations: alerts routed here are only seen in Alertmanager's UI and API."""


@dataclass(frozen=True, kw_only=True)
class RouteTimes:
    """How long Alertmanager waits before it first notifies a group, and between updates."""

    group_wait: str = "30s"
    group_interval: str = "5m"
    critical_repeat: str = "4h"
    """Still firing: a critical alert is repeated this often, a page that stays on the phone."""
    warning_repeat: str = "24h"
    """Still firing: a warning is repeated once a day, so it is not forgotten nor noisy."""
    heartbeat_repeat: str = "5m"
    """Watchdog's notification period: the dead man's switch expects one this often."""


GROUP_BY: Final = ("alertname", "service")
"""One notification per alert and service: every node's HighCpu together, each service's probe
failures apart (the rules' `service` label is on probe and service-scrape alerts only)."""


def _bearer(token: SecretFile, secret_files: Collection[str]) -> dict[str, Any]:
    if token not in secret_files:
        return {}
    return {"http_config": {"authorization": {"type": "Bearer", "credentials_file": token.path}}}


def _integrations(
    alerts: AlertsConfig, secret_files: Collection[str], severity: str
) -> dict[str, list[dict[str, Any]]]:
    """The integrations of the receiver for `severity` (critical also gets the warning ones'
    receivers, since `min_severity: warning` means "warning and above")."""

    def wanted(min_severity: str) -> bool:
        return min_severity == "warning" or severity == "critical"

    integrations: dict[str, list[dict[str, Any]]] = {}
    webhooks: list[dict[str, Any]] = []
    if SecretFile.WEBHOOK_URL in secret_files and wanted(
        alerts.webhook.min_severity if alerts.webhook else "warning"
    ):
        webhooks.append(
            {
                "url_file": SecretFile.WEBHOOK_URL.path,
                "send_resolved": True,
                **_bearer(SecretFile.WEBHOOK_TOKEN, secret_files),
            }
        )
    if SecretFile.NTFY_URL in secret_files and wanted(
        alerts.ntfy.min_severity if alerts.ntfy else "warning"
    ):
        # The URL file carries `?template=alertmanager` (components/secrets.py): ntfy's built-in
        # reader of Alertmanager's webhook payload turns it into a titled message.
        webhooks.append(
            {
                "url_file": SecretFile.NTFY_URL.path,
                "send_resolved": True,
                **_bearer(SecretFile.NTFY_TOKEN, secret_files),
            }
        )
    if webhooks:
        integrations["webhook_configs"] = webhooks
    if SecretFile.SLACK_WEBHOOK_URL in secret_files and wanted(
        alerts.slack.min_severity if alerts.slack else "warning"
    ):
        slack: dict[str, Any] = {
            "api_url_file": SecretFile.SLACK_WEBHOOK_URL.path,
            "send_resolved": True,
            "title": '{{ template "slack.default.title" . }}',
            "text": "{{ range .Alerts }}{{ .Annotations.description }}\n{{ end }}",
        }
        if alerts.slack is not None and alerts.slack.channel is not None:
            slack["channel"] = alerts.slack.channel
        integrations["slack_configs"] = [slack]
    email = alerts.email
    if email is not None and wanted(email.min_severity):
        mail: dict[str, Any] = {
            "to": ", ".join(email.to),
            "from": email.from_,
            "smarthost": email.smarthost,
            "require_tls": email.require_tls,
            "send_resolved": True,
        }
        if email.username is not None:
            mail["auth_username"] = email.username
            mail["auth_password_file"] = SecretFile.SMTP_PASSWORD.path
        integrations["email_configs"] = [mail]
    return integrations


def alertmanager_config(
    alerts: AlertsConfig, secret_files: Collection[str], times: RouteTimes = RouteTimes()
) -> str:
    """alertmanager.yml for the receivers `alerts` configures and whose secrets are present.

    `secret_files` names the `SecretFile`s that exist; the validated config guarantees a receiver
    block comes with its secret (components/config.py)."""
    heartbeat = SecretFile.HEARTBEAT_URL in secret_files
    receivers: list[dict[str, Any]] = [
        {"name": Receiver.CRITICAL.value, **_integrations(alerts, secret_files, "critical")},
        {"name": Receiver.WARNING.value, **_integrations(alerts, secret_files, "warning")},
        {"name": Receiver.NULL.value},
    ]
    if heartbeat:
        receivers.append(
            {
                "name": Receiver.HEARTBEAT.value,
                "webhook_configs": [
                    {"url_file": SecretFile.HEARTBEAT_URL.path, "send_resolved": False}
                ],
            }
        )
    config = {
        "route": {
            # An alert without a known severity still reaches the people who get warnings.
            "receiver": Receiver.WARNING.value,
            "group_by": list(GROUP_BY),
            "group_wait": times.group_wait,
            "group_interval": times.group_interval,
            "repeat_interval": times.warning_repeat,
            "routes": [
                {
                    # Never to a person: to the dead man's switch, or nowhere.
                    "receiver": (Receiver.HEARTBEAT if heartbeat else Receiver.NULL).value,
                    "matchers": [f'alertname="{WATCHDOG}"'],
                    "group_by": ["alertname"],
                    "group_wait": "0s",
                    "group_interval": "1m",
                    "repeat_interval": times.heartbeat_repeat,
                },
                {
                    "receiver": Receiver.CRITICAL.value,
                    "matchers": ['severity="critical"'],
                    "repeat_interval": times.critical_repeat,
                },
                {
                    "receiver": Receiver.WARNING.value,
                    "matchers": ['severity="warning"'],
                    "repeat_interval": times.warning_repeat,
                },
            ],
        },
        "inhibit_rules": [
            # A critical alert about a node or target silences its warnings (MemoryPressure on
            # a Pi hides its HighCpu; a failing probe hides its slow one).
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": ["instance"],
            },
            # A service that fails its probe is down: its slow probe and its dead scrape target
            # say nothing more.
            {
                "source_matchers": ['alertname="ProbeFailing"'],
                "target_matchers": ['severity="warning"'],
                "equal": ["service"],
            },
        ],
        "receivers": receivers,
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus_alerting(address: str) -> dict[str, Any]:
    """prometheus.yml's `alerting` block: send every firing rule to Alertmanager at `address`."""
    return {"alertmanagers": [{"static_configs": [{"targets": [address]}]}]}


def alertmanager_args(*, external_url: str | None = None) -> list[str]:
    """Alertmanager's command-line arguments, the same on both targets."""
    args = [
        f"--config.file={CONFIG_FILE}",
        f"--storage.path={DATA_DIR}",
        # One replica: no gossip port, no cluster peers to look for.
        "--cluster.listen-address=",
    ]
    if external_url is not None:
        args.append(f"--web.external-url={external_url}")
    return args
