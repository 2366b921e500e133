"""Checks on the monitoring data files: Grafana dashboards, alert rules and blackbox modules.

These files are handed to Grafana, Prometheus and blackbox-exporter as they are, so a mistake in
them shows up only as an empty panel or a silent alert. The tests load each file, check the
structure the picluster provisioning relies on (datasource uid, unique dashboard uids, alert
severities), and, when `promtool` is installed (Debian package `prometheus`), have it parse every
alert expression and every dashboard query and run small alert unit tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ASSETS = Path(__file__).resolve().parents[2] / "components" / "assets" / "monitoring"
DASHBOARDS = ASSETS / "dashboards"
ALERTS = ASSETS / "alerts.yml"
BLACKBOX = ASSETS / "blackbox.yml"

DATASOURCE_UID = "prometheus"
EXPECTED_DASHBOARD_UIDS = {
    "picluster-host",
    "picluster-containers",
    "picluster-app",
    "picluster-postgres",
    "picluster-cluster",
    "picluster-control-plane",
}
REQUIRED_ALERTS = {
    "TargetDown",
    "HighCpu",
    "MemoryPressure",
    "LowDisk",
    "ContainerHighMemory",
    "ProbeFailing",
    "ProbeSlow",
    "PostgresDown",
    "Watchdog",
}
SEVERITIES = {"warning", "critical"}
WATCHDOG_SEVERITY = "none"
"""Watchdog's alone: Alertmanager routes it to the heartbeat, never to a person."""
# Scrape jobs that picluster's prometheus.yml defines; a query on any other job finds nothing.
# Those below exist on the Kubernetes target only, and only its dashboards (under
# `dashboards/kubernetes/`) may query them.
SCRAPE_JOBS = {"prometheus", "node", "cadvisor", "postgres", "probe", "services"}
KUBERNETES_SCRAPE_JOBS = {"kube-state-metrics", "kubelet", "apiserver", "etcd"}
# Labels that only one target has (Docker's cAdvisor `name`, Kubernetes' `pod` and friends).
# Alert expressions must not match on them, or the alert silently never fires on the other.
TARGET_SPECIFIC_LABELS = ("name", "pod", "container", "namespace", "image", "id")
# Grafana's built-in interval variables, replaced by concrete durations for promtool.
GRAFANA_DURATIONS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}
VARIABLE_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES_RE = re.compile(r"^\s*label_values\((?P<expr>.+),\s*(?P<label>\w+)\s*\)\s*$", re.S)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH (Debian: apt-get install prometheus)",
)

KUBERNETES_DASHBOARDS = DASHBOARDS / "kubernetes"
DASHBOARD_FILES = sorted(DASHBOARDS.rglob("*.json"))


def _load_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name}: top level is not an object"
    return data


def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name}: top level is not a mapping"
    return data


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, descending into the panels a (collapsed) row holds."""
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))


def _data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _walk_panels(dashboard.get("panels", [])) if p.get("type") != "row"]


def _variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("templating", {}).get("list", []))


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else str(query)


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every `label_values(<expr>, ...)` variable."""
    found: list[tuple[str, str]] = []
    for panel in _data_panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel.get('id')} {panel.get('title')!r} ref {target.get('refId')}"
            found.append((where, str(target.get("expr", ""))))
    for variable in _variables(dashboard):
        match = LABEL_VALUES_RE.match(_variable_query(variable))
        if match:
            found.append((f"variable {variable['name']!r}", match["expr"]))
    return found


def _concrete(expr: str) -> str:
    """The expression with Grafana variables replaced, as Prometheus would receive it."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return GRAFANA_DURATIONS.get(name, ".*")

    return VARIABLE_RE.sub(replace, expr)


def _alert_rules() -> list[dict[str, Any]]:
    groups = _load_yaml(ALERTS).get("groups")
    assert isinstance(groups, list) and groups, "alerts.yml has no groups"
    rules: list[dict[str, Any]] = []
    for group in groups:
        assert group.get("name"), f"a group in alerts.yml has no name: {group!r}"
        assert group.get("rules"), f"group {group['name']!r} has no rules"
        rules.extend(group["rules"])
    return rules


def _run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# --- dashboards -------------------------------------------------------------------------------


def test_expected_dashboards_are_present() -> None:
    uids = {_load_json(path).get("uid") for path in DASHBOARD_FILES}
    assert uids >= EXPECTED_DASHBOARD_UIDS


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_has_provisioning_fields(path: Path) -> None:
    dashboard = _load_json(path)
    assert isinstance(dashboard.get("uid"), str) and dashboard["uid"]
    assert len(dashboard["uid"]) <= 40, "Grafana rejects uids longer than 40 characters"
    assert isinstance(dashboard.get("title"), str) and dashboard["title"]
    assert dashboard.get("schemaVersion") == 39
    assert "picluster" in dashboard.get("tags", [])
    assert dashboard.get("time") == {"from": "now-1h", "to": "now"}
    assert dashboard.get("refresh") == "30s"
    # A fixed numeric id would clash with Grafana's own ids on provisioning.
    assert dashboard.get("id") is None


def test_dashboard_uids_and_titles_are_unique() -> None:
    dashboards = [_load_json(path) for path in DASHBOARD_FILES]
    uids = [d["uid"] for d in dashboards]
    titles = [d["title"] for d in dashboards]
    assert len(uids) == len(set(uids)), f"duplicate uid in {uids}"
    assert len(titles) == len(set(titles)), f"duplicate title in {titles}"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_panel_queries_the_prometheus_datasource(path: Path) -> None:
    dashboard = _load_json(path)
    panels = _data_panels(dashboard)
    assert panels, f"{path.name} has no panels"
    for panel in panels:
        where = f"{path.name} panel {panel.get('title')!r}"
        assert panel.get("datasource", {}).get("uid") == DATASOURCE_UID, where
        assert panel.get("datasource", {}).get("type") == "prometheus", where
        targets = panel.get("targets", [])
        assert any(str(t.get("expr", "")).strip() for t in targets), f"{where}: no expr"
        for target in targets:
            if "datasource" in target:
                assert target["datasource"].get("uid") == DATASOURCE_UID, where


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_panel_ids_are_unique_and_placed(path: Path) -> None:
    panels = list(_walk_panels(_load_json(path).get("panels", [])))
    ids = [p.get("id") for p in panels]
    assert None not in ids and len(ids) == len(set(ids)), f"{path.name}: panel ids {ids}"
    for panel in panels:
        pos = panel.get("gridPos", {})
        assert {"h", "w", "x", "y"} <= pos.keys(), f"{path.name}: {panel.get('title')!r}"
        assert pos["x"] + pos["w"] <= 24, f"{path.name}: {panel.get('title')!r} overflows"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_template_variables_are_defined_and_use_prometheus(path: Path) -> None:
    dashboard = _load_json(path)
    defined = set()
    for variable in _variables(dashboard):
        defined.add(variable["name"])
        if variable.get("type") == "query":
            assert variable.get("datasource", {}).get("uid") == DATASOURCE_UID, variable["name"]
            assert _variable_query(variable).strip(), variable["name"]
    for where, expr in _dashboard_exprs(dashboard):
        for match in VARIABLE_RE.finditer(expr):
            name = match.group(1) or match.group(2)
            assert name in defined or name in GRAFANA_DURATIONS, (
                f"{path.name} {where}: ${name} is not a template variable"
            )


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_queries_use_known_scrape_jobs(path: Path) -> None:
    known = SCRAPE_JOBS
    if path.is_relative_to(KUBERNETES_DASHBOARDS):
        known = SCRAPE_JOBS | KUBERNETES_SCRAPE_JOBS
    for where, expr in _dashboard_exprs(_load_json(path)):
        for job in re.findall(r'\bjob\s*=\s*"([^"]*)"', expr):
            assert job in known, f"{path.name} {where}: unknown job {job!r}"


def test_dashboard_file_names_are_unique_across_folders() -> None:
    # Grafana's dashboards ConfigMap on Kubernetes is keyed by file name.
    names = [path.name for path in DASHBOARD_FILES]
    assert len(names) == len(set(names)), f"duplicate dashboard file names in {names}"


def test_walk_panels_descends_into_collapsed_rows() -> None:
    nested = {"type": "timeseries", "title": "inner"}
    dashboard = {"panels": [{"type": "row", "collapsed": True, "panels": [nested]}]}
    assert _data_panels(dashboard) == [nested]


# --- alert rules ------------------------------------------------------------------------------


def test_every_alert_rule_is_complete() -> None:
    rules = _alert_rules()
    for rule in rules:
        name = rule.get("alert")
        assert isinstance(name, str) and name, f"rule without an alert name: {rule!r}"
        assert str(rule.get("expr", "")).strip(), f"{name}: empty expr"
        severity = rule.get("labels", {}).get("severity")
        if name == "Watchdog":
            assert severity == WATCHDOG_SEVERITY, f"{name}: severity"
        else:
            assert severity in SEVERITIES, f"{name}: severity"
        annotations = rule.get("annotations", {})
        assert str(annotations.get("summary", "")).strip(), f"{name}: no summary"
        assert str(annotations.get("description", "")).strip(), f"{name}: no description"


def test_alert_names_are_unique_and_required_ones_exist() -> None:
    names = [rule["alert"] for rule in _alert_rules()]
    assert len(names) == len(set(names)), f"duplicate alert names in {names}"
    missing = REQUIRED_ALERTS - set(names)
    assert not missing, f"missing alerts: {sorted(missing)}"


def test_alert_expressions_match_only_on_labels_both_targets_have() -> None:
    pattern = re.compile(r"\b(" + "|".join(TARGET_SPECIFIC_LABELS) + r")\s*(=~|!~|!=|=)")
    for rule in _alert_rules():
        match = pattern.search(str(rule["expr"]))
        assert match is None, f"{rule['alert']}: matches on target-specific label {match[1]!r}"


@needs_promtool
def test_promtool_accepts_alert_rules() -> None:
    result = _run_promtool("check", "rules", str(ALERTS), cwd=ASSETS)
    assert result.returncode == 0, result.stdout + result.stderr


# Series are given per minute; `for:` durations must elapse before an alert fires. promtool
# compares the complete list of alerts firing at each eval_time, labels and rendered annotations
# alike, so a series that must not alert (no memory limit, tmpfs, failing-but-slow probe) fails the
# test if it does.
ALERT_UNIT_TESTS: dict[str, Any] = {
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                # A container with a limit at 95% fires; one without a limit (0) never does.
                {
                    "series": 'container_memory_working_set_bytes{job="cadvisor",'
                    'instance="cadvisor:8080",name="api"}',
                    "values": "95x15",
                },
                {
                    "series": 'container_spec_memory_limit_bytes{job="cadvisor",'
                    'instance="cadvisor:8080",name="api"}',
                    "values": "100x15",
                },
                {
                    "series": 'container_memory_working_set_bytes{job="cadvisor",'
                    'instance="cadvisor:8080",name="db"}',
                    "values": "95x15",
                },
                {
                    "series": 'container_spec_memory_limit_bytes{job="cadvisor",'
                    'instance="cadvisor:8080",name="db"}',
                    "values": "0x15",
                },
                # The same on Kubernetes, where cAdvisor labels by namespace, pod and container.
                {
                    "series": 'container_memory_working_set_bytes{job="cadvisor",'
                    'instance="pi1:10250",namespace="picluster",pod="api-7d9f",container="api"}',
                    "values": "95x15",
                },
                {
                    "series": 'container_spec_memory_limit_bytes{job="cadvisor",'
                    'instance="pi1:10250",namespace="picluster",pod="api-7d9f",container="api"}',
                    "values": "100x15",
                },
                # A full tmpfs is ignored; a full root filesystem fires.
                {
                    "series": 'node_filesystem_avail_bytes{job="node",instance="pi1:9100",'
                    'device="/dev/mmcblk0p2",fstype="ext4",mountpoint="/"}',
                    "values": "5x15",
                },
                {
                    "series": 'node_filesystem_size_bytes{job="node",instance="pi1:9100",'
                    'device="/dev/mmcblk0p2",fstype="ext4",mountpoint="/"}',
                    "values": "100x15",
                },
                {
                    "series": 'node_filesystem_avail_bytes{job="node",instance="pi1:9100",'
                    'device="tmpfs",fstype="tmpfs",mountpoint="/run"}',
                    "values": "0x15",
                },
                {
                    "series": 'node_filesystem_size_bytes{job="node",instance="pi1:9100",'
                    'device="tmpfs",fstype="tmpfs",mountpoint="/run"}',
                    "values": "100x15",
                },
                # The API probe fails (and is slow); the frontend probe is slow but succeeds.
                {
                    "series": 'probe_success{job="probe",instance="http://api:3000/health",'
                    'service="api"}',
                    "values": "0x15",
                },
                {
                    "series": 'probe_duration_seconds{job="probe",'
                    'instance="http://api:3000/health",service="api"}',
                    "values": "5x15",
                },
                {
                    "series": 'probe_success{job="probe",instance="http://frontend:80/",'
                    'service="frontend"}',
                    "values": "1x15",
                },
                {
                    "series": 'probe_duration_seconds{job="probe",'
                    'instance="http://frontend:80/",service="frontend"}',
                    "values": "2x15",
                },
                # One idle core (+60 idle seconds a minute) and one fully busy core.
                {
                    "series": 'node_cpu_seconds_total{job="node",instance="pi1:9100",'
                    'cpu="0",mode="idle"}',
                    "values": "0+60x20",
                },
                {
                    "series": 'node_cpu_seconds_total{job="node",instance="pi2:9100",'
                    'cpu="0",mode="idle"}',
                    "values": "0+0x20",
                },
                {
                    "series": 'pg_up{job="postgres",instance="postgres-exporter:9187"}',
                    "values": "0x5",
                },
            ],
            "alert_rule_test": [
                {
                    # Always firing, with nothing to scrape at all: the pipeline's heartbeat.
                    "eval_time": "1m",
                    "alertname": "Watchdog",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "none"},
                            "exp_annotations": {
                                "summary": "The alerting pipeline is alive",
                                "description": "This alert always fires. Its notifications"
                                " reaching the heartbeat URL show that Prometheus evaluates"
                                " rules and Alertmanager delivers them.",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "10m",
                    "alertname": "ContainerHighMemory",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "job": "cadvisor",
                                "instance": "cadvisor:8080",
                                "name": "api",
                            },
                            "exp_annotations": {
                                "summary": "Container api is near its memory limit",
                                "description": "Container api on cadvisor:8080 uses 95% of its"
                                " memory limit (above 90%) and risks being OOM-killed.",
                            },
                        },
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "job": "cadvisor",
                                "instance": "pi1:10250",
                                "namespace": "picluster",
                                "pod": "api-7d9f",
                                "container": "api",
                            },
                            "exp_annotations": {
                                "summary": "Container api-7d9f/api is near its memory limit",
                                "description": "Container picluster/api-7d9f/api on pi1:10250"
                                " uses 95% of its memory limit (above 90%) and risks being"
                                " OOM-killed.",
                            },
                        },
                    ],
                },
                {
                    "eval_time": "15m",
                    "alertname": "LowDisk",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "job": "node",
                                "instance": "pi1:9100",
                                "device": "/dev/mmcblk0p2",
                                "fstype": "ext4",
                                "mountpoint": "/",
                            },
                            "exp_annotations": {
                                "summary": "Low disk space on pi1:9100 at /",
                                "description": "Filesystem /dev/mmcblk0p2 mounted at / on"
                                " pi1:9100 has only 5% free (below 10%).",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "10m",
                    "alertname": "ProbeFailing",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "job": "probe",
                                "instance": "http://api:3000/health",
                                "service": "api",
                            },
                            "exp_annotations": {
                                "summary": "Service api is failing its probe",
                                "description": "The blackbox probe of api at"
                                " http://api:3000/health has failed for more than 2 minutes.",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "10m",
                    "alertname": "ProbeSlow",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "job": "probe",
                                "instance": "http://frontend:80/",
                                "service": "frontend",
                            },
                            "exp_annotations": {
                                "summary": "Service frontend responds slowly",
                                "description": "The blackbox probe of frontend at"
                                " http://frontend:80/ has taken 2s (over 1s) for more than"
                                " 5 minutes.",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "20m",
                    "alertname": "HighCpu",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning", "instance": "pi2:9100"},
                            "exp_annotations": {
                                "summary": "High CPU usage on pi2:9100",
                                "description": "CPU on pi2:9100 has been 100.0% busy (above"
                                " 85%) for more than 10 minutes.",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "3m",
                    "alertname": "PostgresDown",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "job": "postgres",
                                "instance": "postgres-exporter:9187",
                            },
                            "exp_annotations": {
                                "summary": "PostgreSQL behind postgres-exporter:9187 is down",
                                "description": "postgres-exporter at postgres-exporter:9187"
                                " cannot connect to PostgreSQL (pg_up == 0) for more than"
                                " 1 minute.",
                            },
                        }
                    ],
                },
            ],
        }
    ],
}


@needs_promtool
def test_alerts_fire_only_when_they_should(tmp_path: Path) -> None:
    suite = {"rule_files": [str(ALERTS)], **ALERT_UNIT_TESTS}
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    result = _run_promtool("test", "rules", str(test_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules: list[dict[str, str]] = []
    for path in DASHBOARD_FILES:
        dashboard = _load_json(path)
        prefix = re.sub(r"\W", "_", dashboard["uid"])
        for index, (where, expr) in enumerate(_dashboard_exprs(dashboard)):
            # The record name carries the dashboard and panel so promtool's error points at it.
            label = re.sub(r"\W+", "_", where).strip("_")
            rules.append({"record": f"dashboard:{prefix}:{index}_{label}", "expr": _concrete(expr)})
    assert rules, "no dashboard queries found"
    rule_file = tmp_path / "dashboard_queries.yml"
    groups = {"groups": [{"name": "dashboard-queries", "rules": rules}]}
    rule_file.write_text(yaml.safe_dump(groups, sort_keys=False), encoding="utf-8")
    result = _run_promtool("check", "rules", str(rule_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- blackbox ---------------------------------------------------------------------------------


def test_blackbox_has_http_and_tcp_modules() -> None:
    modules = _load_yaml(BLACKBOX).get("modules", {})
    http = modules.get("http_2xx", {})
    assert http.get("prober") == "http"
    assert http.get("timeout") == "5s"
    assert http.get("http", {}).get("preferred_ip_protocol") == "ip4"
    tcp = modules.get("tcp_connect", {})
    assert tcp.get("prober") == "tcp"
    assert tcp.get("timeout") == "5s"
