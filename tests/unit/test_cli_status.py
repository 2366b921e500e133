"""`bin/picluster status`, `logs` and the shared helpers: what is judged unhealthy and how it is
shown, from the JSON Docker, Kubernetes and Alertmanager give (their documented shapes)."""

from __future__ import annotations

import io
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cli import alerts, logs, stack, status
from cli.docker_stack import parse_inspect
from cli.services import services
from cli.status import Report
from components.config import validate

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def local(tmp_path: Path, **config: Any) -> stack.Stack:
    settings = validate({"target": "docker", **config}, secret_values=False, project_dir=tmp_path)
    return stack.Stack("local", settings, tmp_path)


def inspect_line(name: str, state: str, code: int, health: str, restarts: int, policy: str) -> str:
    return f"/{name}\t{state}\t{code}\t{health}\t{restarts}\t{policy}"


def test_containers_are_judged_by_state_health_and_restart_policy(tmp_path: Path) -> None:
    stack_ = local(tmp_path)
    text = "\n".join(
        [
            inspect_line("picluster-local-postgres", "running", 0, "healthy", 0, "unless-stopped"),
            inspect_line("picluster-local-api-1", "exited", 137, "unhealthy", 2, "unless-stopped"),
            inspect_line("picluster-local-frontend", "running", 0, "starting", 0, "unless-stopped"),
            inspect_line("picluster-local-api-migrate-0a1b2c", "exited", 0, "", 0, "no"),
            inspect_line("picluster-local-grafana", "running", 0, "unhealthy", 5, "unless-stopped"),
        ]
    )
    found = parse_inspect(stack_, text, services(stack_))
    assert [(c.service, c.problem) for c in found] == [
        ("postgres", None),
        ("api", "picluster-local-api-1 is exited (exit code 137)"),
        ("frontend", "picluster-local-frontend has not passed its health check yet"),
        ("api", None),  # a migration that exited 0 is done
        ("grafana", "picluster-local-grafana is unhealthy"),
    ]
    failed = parse_inspect(stack_, inspect_line("x-api-migrate-1", "exited", 3, "", 0, "no"), {})
    assert failed[0].problem == "x-api-migrate-1 exited with code 3"


def test_the_container_table_is_aligned(tmp_path: Path) -> None:
    stack_ = local(tmp_path)
    text = "\n".join(
        [
            inspect_line("picluster-local-postgres", "running", 0, "healthy", 0, "unless-stopped"),
            inspect_line("picluster-local-api-1", "exited", 1, "", 12, "unless-stopped"),
        ]
    )
    table = status.format_containers(parse_inspect(stack_, text, services(stack_)))
    assert table.splitlines() == [
        "  SERVICE   CONTAINER                 STATE       HEALTH   RESTARTS",
        "  postgres  picluster-local-postgres  running     healthy  0",
        "  api       picluster-local-api-1     exited (1)  -        12",
    ]


def test_missing_containers_are_named_and_an_empty_daemon_is_one_problem(tmp_path: Path) -> None:
    stack_ = local(tmp_path, monitoring={"enabled": False})
    assert status.container_problems(stack_, []) == [
        "no container of the stack on the daemon: is it up (`bin/pulumi up -s local`)?"
    ]
    line = inspect_line("picluster-local-postgres", "running", 0, "healthy", 0, "unless-stopped")
    present = parse_inspect(stack_, line, services(stack_))
    assert status.container_problems(stack_, present) == [
        "no container picluster-local-api-1",
        "no container picluster-local-frontend",
        "no container picluster-local-postgres-backup",  # backups are on by default
    ]


def node(name: str, ready: str, role: str | None) -> dict[str, Any]:
    labels = {"node-role.kubernetes.io/control-plane": "true"} if role == "server" else {}
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "nodeInfo": {"kubeletVersion": "v1.31.4+k3s1"},
        },
    }


def test_nodes_not_ready_or_not_in_the_cluster_are_problems(tmp_path: Path) -> None:
    config = {
        "target": "k3s",
        "ssh": {},
        "k3s": {"version": "v1.31.4+k3s1"},
        "nodes": [
            {"name": "pi-1", "host": "10.0.0.1", "role": "server"},
            {"name": "pi-2", "host": "10.0.0.2", "role": "agent"},
            {"name": "pi-3", "host": "10.0.0.3", "role": "agent"},
        ],
    }
    prod = stack.Stack("prod", validate(config, secret_values=False, project_dir=tmp_path))
    nodes = [node("pi-1", "True", "server"), node("pi-2", "Unknown", None)]
    assert status.format_nodes(nodes).splitlines() == [
        "  NODE  ROLE    STATUS    VERSION",
        "  pi-1  server  Ready     v1.31.4+k3s1",
        "  pi-2  agent   NotReady  v1.31.4+k3s1",
    ]
    assert status.node_problems(prod, nodes) == [
        "node pi-2 is not Ready",
        "node pi-3 (picluster:nodes) is not in the cluster",
    ]


def pod(name: str, phase: str, ready: list[bool], **extra: Any) -> dict[str, Any]:
    statuses = [
        {"name": f"c{i}", "ready": r, "restartCount": i, "state": extra.get("state", {})}
        for i, r in enumerate(ready)
    ]
    return {
        "metadata": {"name": name, "namespace": "game", **extra.get("metadata", {})},
        "spec": {"containers": [{"name": f"c{i}"} for i in range(len(ready))], "nodeName": "pi-1"},
        "status": {"phase": phase, "containerStatuses": statuses},
    }


def test_pods_show_kubectl_like_status_and_only_pods_that_should_run_count() -> None:
    crashing = pod("api-1", "Running", [False], state={"waiting": {"reason": "CrashLoopBackOff"}})
    job = {"ownerReferences": [{"kind": "Job", "name": "postgres-backup-1"}]}
    pods = [
        pod("frontend-1", "Running", [True, True]),
        crashing,
        pod("postgres-backup-1-x", "Succeeded", [False], metadata=job),
        pod("postgres-backup-2-x", "Failed", [False], metadata=job),
        pod("api-2", "Pending", []),
    ]
    assert status.format_pods(pods).splitlines() == [
        "  NAMESPACE  POD                  READY  STATUS            RESTARTS  NODE",
        "  game       frontend-1           2/2    Running           1         pi-1",
        "  game       api-1                0/1    CrashLoopBackOff  0         pi-1",
        "  game       postgres-backup-1-x  0/1    Completed         0         pi-1",
        "  game       postgres-backup-2-x  0/1    Failed            0         pi-1",
        "  game       api-2                0/0    Pending           0         pi-1",
    ]
    assert status.pod_problems(pods) == ["pod game/api-1 is CrashLoopBackOff (0/1 ready)"]


def test_workloads_short_of_ready_pods_and_failed_jobs_are_problems() -> None:
    workloads = [
        {"kind": "Deployment", "metadata": {"name": "api"}, "spec": {"replicas": 2},
         "status": {"readyReplicas": 1}},
        {"kind": "Deployment", "metadata": {"name": "frontend"}, "spec": {"replicas": 1},
         "status": {"readyReplicas": 1}},
        {"kind": "StatefulSet", "metadata": {"name": "postgres"}, "spec": {"replicas": 1},
         "status": {}},
        {"kind": "DaemonSet", "metadata": {"name": "node-exporter"},
         "status": {"desiredNumberScheduled": 3, "numberReady": 3}},
        {"kind": "Job", "metadata": {"name": "postgres-backup-2"},
         "status": {"conditions": [{"type": "Failed", "status": "True"}]}},
    ]  # fmt: skip
    assert status.workload_problems(workloads) == [
        "deployment/api: 1 of 2 ready",
        "statefulset/postgres: 0 of 1 ready",
        "job/postgres-backup-2 failed",
    ]


def alert(name: str, severity: str, started: str, state: str = "active") -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": severity, "instance": "pi-1"},
        "annotations": {"summary": f"{name}\n  happened"},
        "startsAt": started,
        "status": {"state": state, "silencedBy": [], "inhibitedBy": []},
    }


def test_alerts_newest_first_and_only_active_real_ones_fire() -> None:
    found = [
        alert("Watchdog", "none", "2026-11-30T09:00:00Z"),
        alert("NodeDown", "critical", "2026-11-30T11:58:00.123Z"),
        alert("DiskFilling", "warning", "2026-11-30T11:00:00Z", state="suppressed"),
    ]
    assert alerts.format_alerts(found, NOW).splitlines() == [
        "  SINCE  STATE       SEVERITY  ALERT        WHERE  SUMMARY",
        "  119s   firing      critical  NodeDown     pi-1   NodeDown happened",
        "  60m    suppressed  warning   DiskFilling  pi-1   DiskFilling happened",
        "  3h     firing      none      Watchdog     pi-1   Watchdog happened",
    ]
    assert [a["labels"]["alertname"] for a in alerts.firing(found)] == ["NodeDown"]
    many = [alert(f"A{i}", "warning", f"2026-11-30T11:{i:02d}:00Z") for i in range(12)]
    shown = alerts.format_alerts(many, NOW).splitlines()
    assert shown[1].split()[3] == "A11" and shown[-1] == "  ... and 2 older"


def test_firing_alerts_and_an_unanswering_alertmanager_make_status_unhealthy() -> None:
    report = Report()
    status._alerts(report, lambda: [alert("NodeDown", "critical", "2026-11-30T11:00:00Z")] * 2)
    assert report.problems == ["2 alerts firing (NodeDown)"]

    def refuse() -> list[dict[str, Any]]:
        raise stack.StackError("Alertmanager does not answer at http://x: refused")

    status._alerts(report, refuse)
    assert report.problems[-1] == "Alertmanager does not answer"
    assert report.sections[-1] == ("ALERTS", "  Alertmanager does not answer at http://x: refused")


def test_the_summary_is_one_line_naming_the_first_problems() -> None:
    assert status.summary(["a", "b"]) == "not healthy: a; b"
    assert status.summary(list("abcdef")) == "not healthy: a; b; c; d (+2 more)"


def test_alertmanager_is_asked_where_each_target_serves_it(tmp_path: Path) -> None:
    stack_ = local(tmp_path, docker={"publishAddress": "0.0.0.0", "ports": {"alertmanager": 19093}})
    assert alerts.docker_url(stack_) == "http://127.0.0.1:19093/api/v2/alerts"
    assert not alerts.remote_loopback(stack_)
    remote = local(tmp_path, docker={"host": "ssh://pi@192.168.1.20"})
    assert alerts.remote_loopback(remote)  # 127.0.0.1 there is the Pi's: asked from inside
    assert alerts.proxy_path() == (
        "/api/v1/namespaces/monitoring/services/alertmanager:9093/proxy/api/v2/alerts"
    )


def test_outputs_come_from_bin_pulumi_when_there_and_secrets_only_when_asked(
    tmp_path: Path,
) -> None:
    stack_ = local(tmp_path)
    assert stack_.pulumi_argv("x") == ["pulumi", "x"]
    wrapper = tmp_path / "bin" / "pulumi"
    wrapper.parent.mkdir()
    # A stand-in for bin/pulumi that prints its arguments as the outputs object.
    wrapper.write_text('#!/bin/sh\nprintf \'{"args": "%s", "frontendUrl": "http://x/"}\' "$*"\n')
    wrapper.chmod(0o755)
    assert stack_.outputs()["args"] == "stack output --stack local --json"
    shown = stack_.outputs(show_secrets=True)
    assert shown["args"] == "stack output --stack local --json --show-secrets"
    assert stack.urls(shown) == [("frontendUrl", "http://x/")]


def test_docker_uses_the_stack_files_host_only_when_it_sets_one(tmp_path: Path) -> None:
    assert local(tmp_path).docker_argv("ps") == ["docker", "ps"]
    remote = local(tmp_path, docker={"host": "ssh://pi@192.168.1.20"})
    assert remote.docker_argv("ps") == ["docker", "--host", "ssh://pi@192.168.1.20", "ps"]


def test_a_secret_file_is_private_and_removed_afterwards() -> None:
    with stack.private_file("apiVersion: v1\n", "kubeconfig") as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.read_text() == "apiVersion: v1\n"
    assert not path.exists() and not path.parent.exists()
    with pytest.raises(RuntimeError), stack.private_file("x", "k") as path:
        raise RuntimeError
    assert not path.exists()


def test_logs_prefix_every_line_with_its_replica_and_keep_the_worst_exit() -> None:
    out = io.StringIO()
    code = logs.stream(
        [
            ("api-1", [sys.executable, "-c", "print('one'); print('two')"]),
            (
                "api-10",
                [sys.executable, "-c", "import sys; print('bad', file=sys.stderr); exit(3)"],
            ),
        ],
        out,
    )
    assert code == 3
    assert sorted(out.getvalue().splitlines()) == [
        "api-1  | one",
        "api-1  | two",
        "api-10 | bad",
    ]


def test_logs_take_durations_only() -> None:
    parser = logs.argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    logs.register(subparsers)
    args = parser.parse_args(["logs", "api", "--since", "10m", "-f", "-n", "5"])
    assert (args.service, args.since, args.follow, args.tail, args.stack) == (
        "api", "10m", True, 5, "local",
    )  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["logs", "api", "--since", "yesterday"])
