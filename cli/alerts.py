"""The last alerts, from Alertmanager's API (`GET /api/v2/alerts`, prometheus/alertmanager
api/v2/openapi.yaml: a list of gettableAlert with labels, annotations, startsAt and
status.state active|suppressed|unprocessed).

Docker: through the port the stack publishes (`docker.publishAddress`:`docker.ports.alertmanager`);
on a remote daemon (`docker.host` ssh:// or tcp://) whose published address is its own loopback,
from inside the container (`docker exec ... wget`, which the Alertmanager image has).
K3s: through the API server's service proxy
(`/api/v1/namespaces/monitoring/services/alertmanager:9093/proxy/...`), so nothing needs to be
forwarded first.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cli.kube import Kubectl
from cli.output import table
from cli.services import K3S_MONITORING
from cli.stack import Stack, StackError
from components import alertmanager_config

API_PATH = "api/v2/alerts"
SHOWN = 10
"""The newest alerts shown; `amtool alert` or Alertmanager's page has the rest."""
QUIET_SEVERITIES = frozenset({"none", "info"})
"""Alerts that say nothing is wrong: the always-firing Watchdog (severity none)."""
HTTP_SECONDS = 10.0


def docker_url(stack: Stack) -> str:
    """Alertmanager's API on the port the Docker target publishes."""
    docker = stack.settings.docker
    address = docker.publish_address
    if address == "0.0.0.0":  # noqa: S104 - published on every address: loopback is one
        address = "127.0.0.1"
    return f"http://{address}:{docker.ports.alertmanager}/{API_PATH}"


def remote_loopback(stack: Stack) -> bool:
    """Whether the published port is on another machine's loopback, out of this one's reach."""
    host = stack.docker_host or ""
    address = stack.settings.docker.publish_address
    return host.startswith(("ssh://", "tcp://")) and address.startswith("127.")


def from_container(stack: Stack) -> list[dict[str, Any]]:
    """The alerts asked from inside the Alertmanager container."""
    container = f"{stack.docker_prefix}-{alertmanager_config.ALERTMANAGER}"
    url = f"http://127.0.0.1:{alertmanager_config.ALERTMANAGER_PORT}/{API_PATH}"
    argv = stack.docker_argv("exec", container, "wget", "-q", "-O", "-", url)
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=HTTP_SECONDS * 3, check=False
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        raise StackError(f"Alertmanager does not answer in {container}: {error}") from None
    if result.returncode != 0:
        raise StackError(f"Alertmanager does not answer in {container}: {result.stderr.strip()}")
    try:
        return _alert_list(result.stdout)
    except ValueError as error:
        raise StackError(
            f"Alertmanager's answer in {container} is not its alert list: {error}"
        ) from None


def from_docker(stack: Stack) -> list[dict[str, Any]]:
    """The alerts of the Docker target, wherever its daemon is."""
    return from_container(stack) if remote_loopback(stack) else from_url(docker_url(stack))


def from_url(url: str) -> list[dict[str, Any]]:
    """The alerts at `url`; StackError saying why when Alertmanager does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_SECONDS) as response:  # noqa: S310 - http only
            return _alert_list(response.read().decode())
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise StackError(f"Alertmanager does not answer at {url}: {reason}") from None


def proxy_path() -> str:
    name = alertmanager_config.ALERTMANAGER
    namespace = K3S_MONITORING[name]
    port = alertmanager_config.ALERTMANAGER_PORT
    return f"/api/v1/namespaces/{namespace}/services/{name}:{port}/proxy/{API_PATH}"


def from_cluster(kubectl: Kubectl) -> list[dict[str, Any]]:
    """The alerts through the API server's service proxy."""
    path = proxy_path()
    result = kubectl.run("get", "--raw", path)
    if result.returncode != 0:
        raise StackError(
            f"Alertmanager does not answer through the API server ({path}): {result.stderr.strip()}"
        )
    try:
        return _alert_list(result.stdout)
    except ValueError as error:
        raise StackError(
            f"Alertmanager's answer at {path} is not its alert list: {error}"
        ) from None


def _alert_list(text: str) -> list[dict[str, Any]]:
    alerts = json.loads(text)
    if not isinstance(alerts, list):
        raise ValueError("not a JSON list")
    return [a for a in alerts if isinstance(a, dict)]


def _started(alert: dict[str, Any]) -> datetime:
    text = str(alert.get("startsAt") or "")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def firing(alerts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts that say something is wrong: active (not silenced or inhibited), and not of a
    quiet severity (the Watchdog, which always fires to prove the pipeline works)."""
    return [
        a
        for a in alerts
        if (a.get("status") or {}).get("state") == "active"
        and (a.get("labels") or {}).get("severity") not in QUIET_SEVERITIES
    ]


def _ago(started: datetime, now: datetime) -> str:
    seconds = max(0, int((now - started).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def format_alerts(alerts: Sequence[dict[str, Any]], now: datetime) -> str:
    """The newest `SHOWN` alerts as a table (since, state, severity, name, summary)."""
    if not alerts:
        return "  none"
    newest = sorted(alerts, key=_started, reverse=True)
    rows: list[list[str]] = []
    for alert in newest[:SHOWN]:
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        state = str((alert.get("status") or {}).get("state") or "?")
        summary = annotations.get("summary") or annotations.get("description") or ""
        where = labels.get("instance") or labels.get("node") or labels.get("service") or ""
        rows.append(
            [
                _ago(_started(alert), now),
                "firing" if state == "active" else state,
                str(labels.get("severity") or "-"),
                str(labels.get("alertname") or "?"),
                str(where),
                " ".join(str(summary).split()),
            ]
        )
    text = table(["SINCE", "STATE", "SEVERITY", "ALERT", "WHERE", "SUMMARY"], rows)
    if len(newest) > SHOWN:
        text += f"\n  ... and {len(newest) - SHOWN} older"
    return text
