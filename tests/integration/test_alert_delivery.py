"""Alert delivery for real: `amtool check-config` on rendered configurations, and firing rules
travelling from a real Prometheus through a real Alertmanager to local HTTP receivers.

Binaries: `alertmanager` and `amtool` at the pinned image's version (`tools/alertmanager/build.sh`
builds them from the Go module proxy into a cache), the distribution's `amtool`
(`prometheus-alertmanager`: 0.25 on Debian bookworm) for the configurations it can read, and the
distribution's `prometheus`.
Without them the tests skip, or fail under PICLUSTER_REQUIRE_INTEGRATION=1. Every process binds
to loopback on a free port and is stopped at the end; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from components import alertmanager_config, monitoring_config, versions
from components.alertmanager_config import SECRET_DIR, RouteTimes, SecretFile
from components.config import AlertsConfig
from components.secrets import ntfy_url
from tests.availability import INTEGRATION, unavailable

pytestmark = pytest.mark.integration

PINNED = versions.ALERTMANAGER.rsplit(":", 1)[1]
SYSTEM_AMTOOL = Path("/usr/bin/amtool")
PROMETHEUS = Path("/usr/bin/prometheus")

EMAIL = {
    "to": ["ops@example.com"],
    "from": "picluster@example.com",
    "smarthost": "smtp.example.com:587",
}
# (monitoring.alerts, the secret files the stack sets): what a user may configure.
COMBOS: dict[str, tuple[dict[str, Any], set[SecretFile]]] = {
    "none": ({}, set()),
    "webhook": ({}, {SecretFile.WEBHOOK_URL}),
    "webhook-token": (
        {"webhook": {"minSeverity": "critical"}},
        {SecretFile.WEBHOOK_URL, SecretFile.WEBHOOK_TOKEN},
    ),
    "ntfy-token": ({"ntfy": {}}, {SecretFile.NTFY_URL, SecretFile.NTFY_TOKEN}),
    "slack": ({"slack": {"channel": "#alerts"}}, {SecretFile.SLACK_WEBHOOK_URL}),
    "email": ({"email": EMAIL}, set()),
    "email-auth": (
        {"email": {**EMAIL, "username": "picluster", "requireTls": False}},
        {SecretFile.SMTP_PASSWORD},
    ),
    "slack-email": (
        {"slack": {"minSeverity": "critical"}, "email": EMAIL},
        {SecretFile.SLACK_WEBHOOK_URL},
    ),
    "heartbeat": ({}, {SecretFile.HEARTBEAT_URL}),
    "everything": (
        {
            "webhook": {},
            "ntfy": {"minSeverity": "critical"},
            "slack": {},
            "email": {**EMAIL, "username": "picluster"},
        },
        set(SecretFile),
    ),
}
URL_FILE_FIELDS = {SecretFile.WEBHOOK_URL, SecretFile.NTFY_URL, SecretFile.HEARTBEAT_URL}
"""Secrets rendered as a webhook's `url_file`, which Alertmanager has only since 0.26."""


def pinned_bin() -> Path:
    """Where tools/alertmanager/build.sh puts the pinned version's binaries."""
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    cache = os.environ.get(
        "PICLUSTER_ALERTMANAGER_CACHE", str(default_cache / "picluster" / "alertmanager")
    )
    return Path(cache) / PINNED / "bin"


def pinned(binary: str) -> Path:
    path = pinned_bin() / binary
    if not os.access(path, os.X_OK):
        unavailable(
            f"{path} is missing: run tools/alertmanager/build.sh (needs Go and the module proxy)",
            INTEGRATION,
        )
    return path


def system(path: Path, package: str) -> Path:
    if not os.access(path, os.X_OK):
        unavailable(f"{path} is missing: apt-get install {package}", INTEGRATION)
    return path


def render(combo: str) -> str:
    alerts, files = COMBOS[combo]
    return alertmanager_config.alertmanager_config(AlertsConfig.model_validate(alerts), files)


def check_config(amtool: Path, text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "alertmanager.yml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [str(amtool), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- amtool check-config ----------------------------------------------------------------------


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_pinned_amtool_accepts_every_rendered_config(combo: str, tmp_path: Path) -> None:
    result = check_config(pinned("amtool"), render(combo), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    "combo", sorted(c for c, (_, files) in COMBOS.items() if not files & URL_FILE_FIELDS)
)
def test_system_amtool_accepts_configs_without_url_file(combo: str, tmp_path: Path) -> None:
    amtool = system(SYSTEM_AMTOOL, "prometheus-alertmanager")
    result = check_config(amtool, render(combo), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def amtool_version(amtool: Path) -> tuple[int, ...]:
    output = subprocess.run(
        [str(amtool), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    match = re.search(r"version (\d+)\.(\d+)", output.stdout + output.stderr)
    assert match is not None, output
    return (int(match[1]), int(match[2]))


def test_system_amtool_reads_url_file_only_from_0_26(tmp_path: Path) -> None:
    # Why the pinned amtool is needed: Debian bookworm's 0.25 reads its configuration strictly
    # and has no webhook `url_file` (config/notifiers.go, WebhookConfig, added in 0.26).
    amtool = system(SYSTEM_AMTOOL, "prometheus-alertmanager")
    result = check_config(amtool, render("webhook"), tmp_path)
    if amtool_version(amtool) < (0, 26):
        assert result.returncode != 0
        assert "url_file" in result.stdout + result.stderr
    else:
        assert result.returncode == 0, result.stdout + result.stderr


def test_pinned_amtool_refuses_a_broken_config(tmp_path: Path) -> None:
    # The check is real: a route naming a receiver that does not exist is refused.
    broken = yaml.safe_load(render("none"))
    broken["route"]["routes"][1]["receiver"] = "nobody"
    result = check_config(pinned("amtool"), yaml.safe_dump(broken), tmp_path)
    assert result.returncode != 0
    assert "nobody" in result.stdout + result.stderr


# --- a firing rule reaches the receivers -------------------------------------------------------


@dataclass
class Received:
    """One notification a local receiver got."""

    path: str
    query: dict[str, list[str]]
    authorization: str | None
    body: dict[str, Any]

    @property
    def alertnames(self) -> set[str]:
        if "attachments" in self.body:  # Slack's payload: the alert names are in its title
            title = " ".join(a["title"] for a in self.body["attachments"])
            return set(re.findall(r"Delivery\w+|Watchdog", title))
        return {alert["labels"]["alertname"] for alert in self.body["alerts"]}


@dataclass
class Receivers:
    """A local HTTP server standing in for the webhook, ntfy and heartbeat services."""

    port: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def names_at(self, path: str) -> set[str]:
        return {name for r in self.at(path) for name in r.alertnames}


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    state = Receivers(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            parts = urlsplit(self.path)
            with state.lock:
                state.received.append(
                    Received(
                        path=parts.path,
                        query=parse_qs(parts.query),
                        authorization=self.headers.get("Authorization"),
                        body=body,
                    )
                )
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Mailbox:
    """A local SMTP server standing in for the mail relay: the messages it accepted."""

    port: int
    messages: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def subjects(self) -> list[str]:
        with self.lock:
            return [
                line.removeprefix("Subject: ")
                for message in self.messages
                for line in message.splitlines()
                if line.startswith("Subject: ")
            ]


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """The SMTP commands Alertmanager's e-mail integration sends, answered as a relay would
    (RFC 5321); no STARTTLS, so the receiver under test sets `requireTls: false`."""
    state = Mailbox(port=0)

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(f"{line}\r\n".encode())

        def handle(self) -> None:
            self.reply("220 mailbox.test ESMTP")
            while raw := self.rfile.readline():
                command = raw.decode(errors="replace").strip().upper()
                if command.startswith(("EHLO", "HELO")):
                    self.reply("250 mailbox.test")
                elif command == "DATA":
                    self.reply("354 end with <CRLF>.<CRLF>")
                    lines = []
                    while (line := self.rfile.readline()) not in (b".\r\n", b""):
                        lines.append(line.decode(errors="replace"))
                    with state.lock:
                        state.messages.append("".join(lines))
                    self.reply("250 queued")
                elif command == "QUIT":
                    self.reply("221 bye")
                    return
                else:  # MAIL FROM, RCPT TO, RSET, NOOP
                    self.reply("250 ok")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return f"--- {self.name} log ---\n" + self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.popen.terminate()
    for process in started:
        try:
            process.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait(timeout=15)


def start(processes: list[Process], name: str, args: list[str], tmp_path: Path) -> Process:
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    process = Process(name, popen, log)
    processes.append(process)
    return process


def wait_ready(process: Process, url: str) -> None:
    def ready() -> bool:
        assert process.popen.poll() is None, process.tail()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    wait_for(ready, 60, f"{process.name} at {url}")


# Three rules beside the shipped ones (whose Watchdog fires on its own): a critical and a
# warning about the same Pi, and a warning about another.
DELIVERY_RULES = {
    "groups": [
        {
            "name": "delivery-test",
            "rules": [
                {
                    "alert": name,
                    "expr": "vector(1)",
                    "labels": {"severity": severity, "instance": instance},
                    "annotations": {"summary": name, "description": name},
                }
                for name, severity, instance in (
                    ("DeliveryCritical", "critical", "pi-1:9100"),
                    ("DeliveryWarningSamePi", "warning", "pi-1:9100"),
                    ("DeliveryWarningOtherPi", "warning", "pi-2:9100"),
                )
            ],
        }
    ]
}


def test_firing_rules_reach_their_receivers_through_a_real_alertmanager(
    tmp_path: Path, receivers: Receivers, mailbox: Mailbox, processes: list[Process]
) -> None:
    alertmanager = pinned("alertmanager")
    prometheus = system(PROMETHEUS, "prometheus")
    base = f"http://127.0.0.1:{receivers.port}"

    # The secret files as the Secret or the secret uploads hold them, in a local folder.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    files = {
        SecretFile.WEBHOOK_URL: f"{base}/webhook",
        SecretFile.WEBHOOK_TOKEN: "delivery-token\n",
        SecretFile.NTFY_URL: ntfy_url(f"{base}/ntfy-topic"),
        SecretFile.HEARTBEAT_URL: f"{base}/heartbeat",
        SecretFile.SLACK_WEBHOOK_URL: f"{base}/slack",
    }
    for file, content in files.items():
        (secrets / file.value).write_text(content, encoding="utf-8")
    alerts = AlertsConfig.model_validate(
        {
            "webhook": {},
            "ntfy": {"minSeverity": "critical"},
            "slack": {"channel": "#alerts", "minSeverity": "critical"},
            "email": {
                "to": ["ops@example.com"],
                "from": "picluster@example.com",
                "smarthost": f"127.0.0.1:{mailbox.port}",
                "requireTls": False,
            },
        }
    )
    # Seconds instead of minutes, so the test takes seconds; routes and receivers as rendered.
    times = RouteTimes(group_wait="1s", group_interval="2s")
    config = alertmanager_config.alertmanager_config(alerts, files.keys(), times)
    (tmp_path / "alertmanager.yml").write_text(
        config.replace(SECRET_DIR, str(secrets)), encoding="utf-8"
    )
    am_port = free_port()
    # The rendered arguments, with this test's paths for the configuration and data.
    local_paths = {
        "--config.file": str(tmp_path / "alertmanager.yml"),
        "--storage.path": str(tmp_path / "am-data"),
    }
    args = [
        f"{flag}={local_paths[flag]}" if flag in local_paths else arg
        for arg in alertmanager_config.alertmanager_args()
        for flag in [arg.split("=", 1)[0]]
    ]
    am = start(
        processes,
        "alertmanager",
        [str(alertmanager), *args, f"--web.listen-address=127.0.0.1:{am_port}"],
        tmp_path,
    )
    wait_ready(am, f"http://127.0.0.1:{am_port}/-/ready")

    shutil.copy(monitoring_config.MONITORING_ASSETS / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "delivery.yml").write_text(yaml.safe_dump(DELIVERY_RULES), encoding="utf-8")
    prom_config = {
        "global": {"evaluation_interval": "1s", "scrape_interval": "1m"},
        "rule_files": ["alerts.yml", "delivery.yml"],
        "alerting": alertmanager_config.prometheus_alerting(f"127.0.0.1:{am_port}"),
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config), encoding="utf-8")
    prom_port = free_port()
    prom = start(
        processes,
        "prometheus",
        [
            str(prometheus),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            # Prometheus drops what fires before it has discovered Alertmanager and sends it
            # again after this delay (1m by default): seconds here.
            "--rules.alert.resend-delay=1s",
        ],
        tmp_path,
    )
    wait_ready(prom, f"http://127.0.0.1:{prom_port}/-/ready")

    def delivered() -> bool:
        return (
            "Watchdog" in receivers.names_at("/heartbeat")
            and {"DeliveryCritical", "DeliveryWarningOtherPi"} <= receivers.names_at("/webhook")
            and "DeliveryCritical" in receivers.names_at("/ntfy-topic")
            and "DeliveryCritical" in receivers.names_at("/slack")
            and any("DeliveryCritical" in s for s in mailbox.subjects())
            and any("DeliveryWarningOtherPi" in s for s in mailbox.subjects())
        )

    try:
        wait_for(delivered, 60, "the notifications")
        # Several group intervals more, for anything that should not come to come.
        time.sleep(5)
    except AssertionError as error:
        raise AssertionError(
            f"{error}\n{receivers.received}\n{mailbox.messages}\n{am.tail()}\n{prom.tail()}"
        ) from None

    # The heartbeat gets Watchdog alone; no person ever gets Watchdog.
    assert receivers.names_at("/heartbeat") == {"Watchdog"}
    assert all(r.body["receiver"] == "heartbeat" for r in receivers.at("/heartbeat"))
    # The webhook gets warnings and criticals by severity route, with its bearer token...
    by_receiver = {
        name: r.body["receiver"] for r in receivers.at("/webhook") for name in r.alertnames
    }
    assert by_receiver == {"DeliveryCritical": "critical", "DeliveryWarningOtherPi": "warning"}
    assert {r.authorization for r in receivers.at("/webhook")} == {"Bearer delivery-token"}
    # ...ntfy (minSeverity: critical) only the critical one, through its template, no token.
    assert receivers.names_at("/ntfy-topic") == {"DeliveryCritical"}
    assert all(r.query == {"template": ["alertmanager"]} for r in receivers.at("/ntfy-topic"))
    assert all(r.authorization is None for r in receivers.at("/ntfy-topic"))
    # Slack (minSeverity: critical) likewise, in its channel; e-mail gets both severities.
    assert receivers.names_at("/slack") == {"DeliveryCritical"}
    assert {r.body["channel"] for r in receivers.at("/slack")} == {"#alerts"}
    subjects = mailbox.subjects()
    assert len(subjects) == 2, subjects
    assert not any("Watchdog" in s or "DeliveryWarningSamePi" in s for s in subjects)
    # The warning about the Pi that has a critical alert reached Alertmanager, which holds it
    # back: inhibited, not lost.
    everything = http_get_json(f"http://127.0.0.1:{am_port}/api/v2/alerts")
    state = {a["labels"]["alertname"]: a["status"] for a in everything}
    assert state["DeliveryWarningSamePi"]["state"] == "suppressed"
    assert state["DeliveryWarningSamePi"]["inhibitedBy"]
    assert state["DeliveryCritical"]["state"] == "active"
    assert all(
        "DeliveryWarningSamePi" not in receivers.names_at(path)
        for path in ("/webhook", "/ntfy-topic", "/heartbeat", "/slack")
    )
