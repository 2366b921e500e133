"""The K3s control plane under Prometheus: the API server and etcd jobs, their keep-lists, and
their alerts.

One K3s server process serves the same exposition on every metrics endpoint (kubelet, API
server, embedded etcd: one registry), so what keeps each series in exactly one job is the jobs'
keep-lists. `fixtures/k3s_all_in_one.prom` stands in for that exposition (its header says where
each part comes from); a real Prometheus scrapes it through the rendered rules.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.app_model import build_app
from components.config import AppConfig, MonitoringConfig
from components.on_kubernetes.control_plane import DROPPED_LATENCY_BUCKETS
from components.on_kubernetes.platform import KubernetesPlatform
from components.on_kubernetes.prometheus import prometheus_config
from tests import real_prometheus
from tests.harness import TEST_IMAGES
from tests.unit.test_monitoring_assets import ALERTS, DASHBOARDS, PROMTOOL, needs_promtool

FIXTURE = Path(__file__).parent / "fixtures" / "k3s_all_in_one.prom"
# The jobs that scrape the one K3s process. cAdvisor (/metrics/cadvisor) is the kubelet's own
# registry of container series, not the shared one, so it is not among them.
K3S_PROCESS_JOBS = ("kubelet", "apiserver", "etcd")
# Series Prometheus itself adds to every target.
SYNTHETIC = re.compile(r"up|scrape_.*")
CONTROL_PLANE_DASHBOARD = DASHBOARDS / "kubernetes" / "control-plane.json"
CONTROL_PLANE_GROUP = "picluster-control-plane"

needs_prometheus = pytest.mark.skipif(
    real_prometheus.PROMETHEUS is None,
    reason="prometheus not on PATH (Debian: apt-get install prometheus)",
)


def _jobs() -> dict[str, dict[str, Any]]:
    app = build_app(AppConfig(), TEST_IMAGES)
    text = prometheus_config(app, MonitoringConfig(), KubernetesPlatform())
    return {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}


def _names() -> set[str]:
    names = set()
    for line in FIXTURE.read_text().splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)[0])  # type: ignore[index]
    return names


def _keep_regex(job: dict[str, Any]) -> str:
    first = job["metric_relabel_configs"][0]
    assert first["action"] == "keep" and first["source_labels"] == ["__name__"], job["job_name"]
    return str(first["regex"])


# --- the jobs ----------------------------------------------------------------------------------


def test_apiserver_job_scrapes_the_kubernetes_service_with_the_token() -> None:
    job = _jobs()["apiserver"]
    assert job["scheme"] == "https"
    assert job["kubernetes_sd_configs"] == [
        {"role": "endpointslice", "namespaces": {"names": ["default"]}}
    ]
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep" and keep["regex"] == "kubernetes;https"
    assert job["authorization"]["credentials_file"].endswith("/serviceaccount/token")
    assert job["tls_config"]["ca_file"].endswith("/serviceaccount/ca.crt")
    assert "insecure_skip_verify" not in job["tls_config"]


def test_etcd_job_scrapes_only_etcd_members_on_the_exposed_port() -> None:
    job = _jobs()["etcd"]
    rules = job["relabel_configs"]
    keep = next(r for r in rules if r.get("action") == "keep")
    assert keep["source_labels"] == ["__meta_kubernetes_node_label_node_role_kubernetes_io_etcd"]
    assert keep["regex"] == "true"
    address = next(r for r in rules if r.get("target_label") == "__address__")
    assert address["source_labels"] == ["__meta_kubernetes_node_address_InternalIP"]
    assert address["replacement"] == "$1:2381"
    assert job.get("scheme", "http") == "http"


def test_keep_lists_share_no_name_of_the_k3s_exposition() -> None:
    jobs = _jobs()
    regexes = {name: _keep_regex(jobs[name]) for name in K3S_PROCESS_JOBS}
    for name in sorted(_names()):
        keeping = [job for job, regex in regexes.items() if re.fullmatch(regex, name)]
        assert len(keeping) <= 1, f"{name} is kept by {keeping}"


# --- a real Prometheus on the K3s exposition ---------------------------------------------------


@contextmanager
def _served(body: bytes) -> Iterator[int]:
    """Every path answers `body`, as every endpoint of a K3s server does."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Metric names a real Prometheus stored per job after scraping the exposition."""
    if real_prometheus.PROMETHEUS is None:
        pytest.skip("prometheus not on PATH (Debian: apt-get install prometheus)")
    jobs = _jobs()
    with _served(FIXTURE.read_bytes()) as port:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                real_prometheus.as_static(jobs[name], f"127.0.0.1:{port}")
                for name in K3S_PROCESS_JOBS
            ],
        }
        workdir = tmp_path_factory.mktemp("prometheus")
        with real_prometheus.running(config, workdir) as prometheus:
            prometheus.wait_for_scrapes(set(K3S_PROCESS_JOBS), scrapes=1, timeout=30)
            found = prometheus.query('group by (__name__, job) ({__name__=~".+"})')
            buckets = prometheus.query(
                'group by (verb, le) (apiserver_request_duration_seconds_bucket{job="apiserver"})'
            )
    per_job: dict[str, set[str]] = {name: set() for name in K3S_PROCESS_JOBS}
    for series in found:
        if not SYNTHETIC.fullmatch(series["metric"]["__name__"]):
            per_job[series["metric"]["job"]].add(series["metric"]["__name__"])
    per_job["apiserver-buckets"] = {f"{b['metric']['verb']} {b['metric']['le']}" for b in buckets}
    return per_job


@needs_prometheus
def test_every_series_of_the_k3s_process_is_stored_by_one_job(stored: dict[str, set[str]]) -> None:
    owners: dict[str, list[str]] = {}
    for job in K3S_PROCESS_JOBS:
        for name in stored[job]:
            owners.setdefault(name, []).append(job)
    twice = {name: jobs for name, jobs in owners.items() if len(jobs) > 1}
    assert not twice, f"stored by more than one job: {twice}"


# --- what the dashboard and the alerts read ----------------------------------------------------

# PromQL tokens: identifiers apart, the metric names among them are what matters.
_PROMQL_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"|\{[^}]*\}|\[[^\]]*\]'  # a string, label matchers, a range
    r"|(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:])"  # a duration (after `offset`)
    r"|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[A-Za-z_:][A-Za-z0-9_:]*|\S"
)
# Words followed by a list of labels, not of expressions.
_LABEL_LIST_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
# Keywords that are neither functions nor metric names.
_PROMQL_KEYWORDS = frozenset({"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"})


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, its `job` matcher or "") of every vector selector in a PromQL expression: an
    identifier that is not a function or aggregation (followed by `(`, `by` or `without`), a
    keyword or a label of `by (...)`, `on (...)` and the like."""
    tokens = _PROMQL_TOKEN.findall(expr)
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in _LABEL_LIST_WORDS:
            i += 1
            if following == "(":
                while i < len(tokens) and tokens[i] != ")":
                    i += 1
            continue
        if (
            re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token)
            and following not in ("(", "by", "without")  # a function, an aggregation
            and token.lower() not in _PROMQL_KEYWORDS
        ):
            job = re.search(r'\bjob\s*=\s*"([^"]*)"', following) if following[:1] == "{" else None
            found.append((token, job[1] if job else ""))
        i += 1
    return found


def _panel_exprs(panels: list[dict[str, Any]]) -> Iterator[str]:
    for panel in panels:
        yield from (str(t["expr"]) for t in panel.get("targets", []) if t.get("expr"))
        yield from _panel_exprs(panel.get("panels", []))


def read_by_dashboard_and_alerts() -> dict[str, set[str]]:
    """Per job, the metric names the control-plane dashboard (panels and variables) and the
    picluster-control-plane alerts query."""
    dashboard = json.loads(CONTROL_PLANE_DASHBOARD.read_text())
    exprs = list(_panel_exprs(dashboard["panels"]))
    for variable in dashboard["templating"]["list"]:
        # Grafana's `label_values(<PromQL>, <label>)`: the PromQL part.
        query = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", str(variable["query"]), re.S)
        exprs.append(query[1] if query else str(variable["query"]))
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    exprs += [
        str(rule["expr"])
        for group in groups
        if group["name"] == CONTROL_PLANE_GROUP
        for rule in group["rules"]
    ]
    read: dict[str, set[str]] = {}
    for expr in exprs:
        for name, job in selectors(expr):
            if SYNTHETIC.fullmatch(name):
                continue
            assert job, f"{name} in {expr!r} names no job: which job must store it?"
            read.setdefault(job, set()).add(name)
    return read


def not_stored(read: dict[str, set[str]], stored: dict[str, set[str]]) -> dict[str, list[str]]:
    """Per job, what is read but not stored."""
    missing = {job: sorted(names - stored.get(job, set())) for job, names in read.items()}
    return {job: names for job, names in missing.items() if names}


def test_selectors_finds_metric_names_and_their_jobs_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job="x", verb!~"WATCH|'
        'CONNECT"}[$__rate_interval]))) / on (instance) group_left () max without (le) '
        '(b_total{code=~"5..", job="y"} offset 5m) > bool 2e-3 and c unless sum(d{job="x"}) by (le)'
    )
    assert selectors(expr) == [("a_bucket", "x"), ("b_total", "y"), ("c", ""), ("d", "x")]


def test_the_dashboard_and_alerts_are_read_from_their_files() -> None:
    read = read_by_dashboard_and_alerts()
    assert set(read) == {"apiserver", "etcd"}
    # One name of each source, to show each was parsed: a panel, a variable's query (only `up`,
    # left out as Prometheus' own), an alert.
    assert "kine_sql_time_seconds_count" in read["apiserver"]  # a panel's
    assert "etcd_disk_wal_fsync_duration_seconds_bucket" in read["etcd"]  # an alert's


@needs_prometheus
def test_each_job_stores_what_the_dashboard_and_alerts_read(stored: dict[str, set[str]]) -> None:
    read = read_by_dashboard_and_alerts()
    assert not not_stored(read, stored), "read by the dashboard or alerts, not stored"
    # A panel on a metric a job drops would fail here: the etcd client's per-type buckets.
    dropped = {"apiserver": {*read["apiserver"], "etcd_request_duration_seconds_bucket"}}
    assert not_stored(dropped, stored) == {"apiserver": ["etcd_request_duration_seconds_bucket"]}
    assert stored["kubelet"] >= {"kubelet_running_pods", "process_resident_memory_bytes"}
    # Per-type etcd client buckets would be thousands of series on their own.
    assert "etcd_request_duration_seconds_bucket" not in stored["apiserver"]
    assert not any(name.startswith("apiserver_") for name in stored["etcd"] | stored["kubelet"])


@needs_prometheus
def test_api_latency_keeps_seven_buckets_and_no_long_running_verb(
    stored: dict[str, set[str]],
) -> None:
    verbs = {entry.split()[0] for entry in stored["apiserver-buckets"]}
    les = {entry.split()[1] for entry in stored["apiserver-buckets"]}
    assert verbs == {"LIST"}  # the WATCH bucket went; LIST stays
    assert {float(le) for le in les} == {0.1, 0.2, 0.4, 1, 2, 5, float("inf")}
    assert not {float(le) for le in les} & {float(x) for x in DROPPED_LATENCY_BUCKETS.split("|")}


# --- alerts ------------------------------------------------------------------------------------

CONTROL_PLANE_ALERTS = {
    "KubeApiServerErrors",
    "KubeApiServerSlow",
    "EtcdNoLeader",
    "EtcdSlowFsync",
    "EtcdFrequentLeaderChanges",
}


def _bucket_series(name: str, labels: str, bounds: dict[str, str]) -> list[dict[str, str]]:
    """One input series per bucket bound, `values` given per bound."""
    return [
        {"series": f'{name}{{{labels},le="{le}"}}', "values": values}
        for le, values in bounds.items()
    ]


# Per minute. API server pi-1: 10% of requests fail with 503; its p99 sits in the 2-5s bucket.
# pi-2: 1% of errors (below 5%), fast. etcd on pi-1 loses its leader and fsyncs in 0.5-1s; pi-2
# fsyncs in under 8ms and changes leader 5 times in an hour, pi-3 once.
CONTROL_PLANE_TESTS: dict[str, Any] = {
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": 'apiserver_request_total{job="apiserver",instance="pi-1:6443",'
                    'code="200",verb="GET"}',
                    "values": "0+90x30",
                },
                {
                    "series": 'apiserver_request_total{job="apiserver",instance="pi-1:6443",'
                    'code="503",verb="GET"}',
                    "values": "0+10x30",
                },
                {
                    "series": 'apiserver_request_total{job="apiserver",instance="pi-2:6443",'
                    'code="200",verb="GET"}',
                    "values": "0+99x30",
                },
                {
                    "series": 'apiserver_request_total{job="apiserver",instance="pi-2:6443",'
                    'code="500",verb="GET"}',
                    "values": "0+1x30",
                },
                *_bucket_series(
                    "apiserver_request_duration_seconds_bucket",
                    'job="apiserver",instance="pi-1:6443",verb="LIST"',
                    {"1": "0+50x30", "2": "0+90x30", "5": "0+100x30", "+Inf": "0+100x30"},
                ),
                *_bucket_series(
                    "apiserver_request_duration_seconds_bucket",
                    'job="apiserver",instance="pi-2:6443",verb="LIST"',
                    {"1": "0+100x30", "2": "0+100x30", "5": "0+100x30", "+Inf": "0+100x30"},
                ),
                # A watch lasts as long as its connection: never counted as slow.
                *_bucket_series(
                    "apiserver_request_duration_seconds_bucket",
                    'job="apiserver",instance="pi-2:6443",verb="WATCH"',
                    {"1": "0x30", "60": "0x30", "+Inf": "0+100x30"},
                ),
                {
                    "series": 'etcd_server_has_leader{job="etcd",instance="pi-1:2381"}',
                    "values": "1 1 0x20",
                },
                {
                    "series": 'etcd_server_has_leader{job="etcd",instance="pi-2:2381"}',
                    "values": "1x30",
                },
                *_bucket_series(
                    "etcd_disk_wal_fsync_duration_seconds_bucket",
                    'job="etcd",instance="pi-1:2381"',
                    {"0.008": "0x30", "0.512": "0+1x30", "1.024": "0+100x30", "+Inf": "0+100x30"},
                ),
                *_bucket_series(
                    "etcd_disk_wal_fsync_duration_seconds_bucket",
                    'job="etcd",instance="pi-2:2381"',
                    {
                        "0.008": "0+100x30",
                        "0.512": "0+100x30",
                        "1.024": "0+100x30",
                        "+Inf": "0+100x30",
                    },
                ),
                {
                    "series": 'etcd_server_leader_changes_seen_total{job="etcd",'
                    'instance="pi-2:2381"}',
                    "values": "0 1 2 3 4 5x60",
                },
                {
                    "series": 'etcd_server_leader_changes_seen_total{job="etcd",'
                    'instance="pi-3:2381"}',
                    "values": "0 1x60",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "20m",
                    "alertname": "KubeApiServerErrors",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "job": "apiserver",
                                "instance": "pi-1:6443",
                            },
                            "exp_annotations": {
                                "summary": "API server pi-1:6443 fails 10% of requests",
                                "description": "10% of the requests to the API server at "
                                "pi-1:6443 have answered with a 5xx code (above 5%) for more "
                                "than 10 minutes.",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "20m",
                    "alertname": "KubeApiServerSlow",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "job": "apiserver",
                                "instance": "pi-1:6443",
                            },
                            "exp_annotations": {
                                "summary": "API server pi-1:6443 answers slowly",
                                "description": "99% of the API server's requests at pi-1:6443 "
                                "(watches and other long-running ones aside) take up to 4.7s "
                                "(above 2s) for more than 15 minutes.",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "5m",
                    "alertname": "EtcdNoLeader",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "job": "etcd",
                                "instance": "pi-1:2381",
                            },
                            "exp_annotations": {
                                "summary": "etcd member pi-1:2381 has no leader",
                                "description": "The etcd member at pi-1:2381 has had no leader "
                                "for more than 1 minute: it accepts no write, and the API "
                                "servers that use it fail.",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "20m",
                    "alertname": "EtcdSlowFsync",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "job": "etcd",
                                "instance": "pi-1:2381",
                            },
                            "exp_annotations": {
                                "summary": "etcd on pi-1:2381 writes its log slowly",
                                "description": "99% of the write-ahead log fsyncs of the etcd "
                                "member at pi-1:2381 take up to 1.019s (above 0.5s) for more "
                                "than 10 minutes; the storage (an SD card?) is too slow or "
                                "failing, and leader elections follow.",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "30m",
                    "alertname": "EtcdFrequentLeaderChanges",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "job": "etcd",
                                "instance": "pi-2:2381",
                            },
                            "exp_annotations": {
                                "summary": "etcd changed leader 5 times in an hour",
                                "description": "The etcd member at pi-2:2381 has seen 5 leader "
                                "changes in the last hour (more than 3): a member's storage or "
                                "network stalls.",
                            },
                        }
                    ],
                },
                # Before the `for:` durations have passed, nothing fires.
                {"eval_time": "3m", "alertname": "KubeApiServerErrors", "exp_alerts": []},
                {"eval_time": "3m", "alertname": "EtcdSlowFsync", "exp_alerts": []},
            ],
        }
    ],
}


def test_control_plane_alerts_exist_and_read_only_their_jobs() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = {
        rule["alert"]: rule
        for group in groups
        if group["name"] == "picluster-control-plane"
        for rule in group["rules"]
    }
    assert set(rules) == CONTROL_PLANE_ALERTS
    for name, rule in rules.items():
        job = "apiserver" if name.startswith("KubeApiServer") else "etcd"
        assert set(re.findall(r'\bjob\s*=\s*"([^"]*)"', rule["expr"])) == {job}, name


@needs_promtool
def test_control_plane_alerts_fire_as_designed(tmp_path: Path) -> None:
    tests = {"rule_files": [str(ALERTS)], **CONTROL_PLANE_TESTS}
    test_file = tmp_path / "control_plane_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
