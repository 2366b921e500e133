"""`bin/picluster status`, `logs` and `forward` against the prod lab (tests/engine/prod_lab.py):
the real `pulumi up -s prod` first, then the CLI as a user runs it, from the project's copy
(`bin/picluster`, `cli/`), reading the stack's outputs with the real Pulumi CLI and reaching the
lab's real kube-apiserver with `kubectl` and the stack's kubeconfig output.

What the lab cannot show: its kubelets are kwok's, which run nothing and serve no kubelet API
(the API server cannot even resolve their names), so a pod's logs, a port-forward and the
service proxy to Alertmanager end at the API server with its error. These tests prove the CLI
asks the API server for the right thing (each pod's `containerLogs/<ns>/<pod>/<container>`,
the Service's port-forward, the alerts through `services/alertmanager:9093/proxy`) and reports
the failure in one clear line, leaving no kubeconfig file behind; real containers' logs and a
real Alertmanager's alerts are proven on Docker (tests/integration/test_cli_docker.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.engine.prod_lab import CLUSTER_CACHE, VERSION, Prod, prod_lab, require_lab
from tests.harness import ROOT

pytestmark = [pytest.mark.engine, pytest.mark.integration]


@pytest.fixture(scope="module")
def prod(engine_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prod]:
    require_lab()
    with prod_lab(engine_bin, tmp_path_factory.mktemp("prod")) as lab:
        # The CLI as a user has it, next to the stack: bin/picluster and cli/ in the project.
        shutil.copytree(ROOT / "cli", lab.project.path / "cli",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        (lab.project.path / "bin").mkdir()
        shutil.copy2(ROOT / "bin" / "picluster", lab.project.path / "bin" / "picluster")
        lab.up()
        yield lab


def cli_env(prod: Prod, tmp: Path) -> dict[str, str]:
    """The user's shell: the engine's CLI and kubectl on PATH, the stack's passphrase, and a
    TMPDIR of the test's own, to see what the CLI leaves there."""
    env = dict(prod.project.env)
    env["PATH"] = f"{CLUSTER_CACHE / 'bin'}{os.pathsep}{env['PATH']}"
    env["TMPDIR"] = str(tmp)
    env.pop("KUBECONFIG", None)
    return env


def picluster(
    prod: Prod, tmp: Path, *argv: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(prod.project.path / "bin" / "picluster"), *argv],
        cwd=prod.project.path, env=cli_env(prod, tmp), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def section(out: str, title: str) -> list[list[str]]:
    body = out.split(f"\n{title}\n", 1)[1].split("\n\n", 1)[0]
    return [line.split() for line in body.splitlines()]


def test_status_shows_nodes_pods_urls_and_says_what_is_unhealthy(
    prod: Prod, tmp_path: Path
) -> None:
    result = picluster(prod, tmp_path, "status", "-s", "prod")
    assert result.returncode == 1, result.stdout + result.stderr
    assert section(result.stdout, "NODES") == [
        ["NODE", "ROLE", "STATUS", "VERSION"],
        ["pi-agent-1", "agent", "Ready", VERSION],
        ["pi-agent-2", "agent", "Ready", VERSION],
        ["pi-server-1", "server", "Ready", VERSION],
    ]
    pods = prod.get("pods", "-A")["items"]
    picluster_pods = {
        (p["metadata"]["namespace"], p["metadata"]["name"], p["spec"]["nodeName"])
        for p in pods
        if p["metadata"]["namespace"] in ("game", "monitoring", "monitoring-node",
                                          "picluster-registry")
    }  # fmt: skip
    rows = section(result.stdout, "PODS")
    assert rows[0] == ["NAMESPACE", "POD", "READY", "STATUS", "RESTARTS", "NODE"]
    assert {(r[0], r[1], r[5]) for r in rows[1:]} == picluster_pods
    assert {tuple(r[2:5]) for r in rows[1:]} == {("1/1", "Running", "0")}
    assert any(r[1] == "postgres-0" for r in rows[1:])
    outputs = json.loads(prod.project.pulumi("stack", "output", "--json", "-s", "prod").stdout)
    urls = dict(r for r in section(result.stdout, "URLS")[1:])
    assert urls["frontendUrl"] == outputs["frontendUrl"]
    assert urls["grafanaUrl"] == outputs["grafanaUrl"]
    assert "kubeconfig" not in result.stdout and "BEGIN" not in result.stdout
    # kwok runs no Alertmanager: asked through the API server's service proxy, which fails.
    alerts = result.stdout.split("\nALERTS\n", 1)[1]
    assert alerts.startswith(
        "  Alertmanager does not answer through the API server "
        "(/api/v1/namespaces/monitoring/services/alertmanager:9093/proxy/api/v2/alerts): "
    )
    assert result.stderr.strip().splitlines()[-1] == "not healthy: Alertmanager does not answer"
    assert list(tmp_path.iterdir()) == []  # the kubeconfig's file is gone

    # A Pi in the stack's configuration that never joined the cluster.
    stack_file = prod.project.path / "Pulumi.prod.yaml"
    kept = stack_file.read_text()
    document = yaml.safe_load(kept)
    document["config"]["picluster:nodes"].append(
        {"name": "pi-agent-9", "host": "192.0.2.99", "role": "agent"}
    )
    stack_file.write_text(yaml.safe_dump(document))
    try:
        result = picluster(prod, tmp_path, "status", "-s", "prod")
    finally:
        stack_file.write_text(kept)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "not healthy: node pi-agent-9 (picluster:nodes) is not in the cluster; "
        "Alertmanager does not answer"
    )


def test_logs_ask_the_api_server_for_every_pod_of_the_workload(prod: Prod, tmp_path: Path) -> None:
    pods = prod.get(
        "pods", "-n", "monitoring-node", "-l",
        "app.kubernetes.io/name=node-exporter,app.kubernetes.io/part-of=picluster",
    )["items"]  # fmt: skip
    assert len(pods) == 3  # a DaemonSet: one per node
    result = picluster(prod, tmp_path, "logs", "node-exporter", "-s", "prod", "--tail", "3")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    # kwok's kubelets cannot be reached: the API server's error names each log request, as the
    # CLI asked for it (pod, container, the last 3 lines).
    asked = {
        f"containerLogs/monitoring-node/{p['metadata']['name']}/node-exporter?tailLines=3"
        for p in pods
    }
    assert any(url in out for url in asked), out
    assert "error dialing backend" in out or "no such host" in out, out
    assert list(tmp_path.iterdir()) == []

    result = picluster(prod, tmp_path, "logs", "nginx", "-s", "prod")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "bin/picluster logs: stack prod runs no service 'nginx'; valid names: postgres, api, "
        "frontend, node-exporter, kube-state-metrics, postgres-exporter, blackbox-exporter, "
        "alertmanager, prometheus, grafana"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_forward_asks_for_each_service_and_says_why_it_cannot(prod: Prod, tmp_path: Path) -> None:
    ports = ",".join(str(free_port()) for _ in range(3))
    process = subprocess.Popen(
        [str(prod.project.path / "bin" / "picluster"), "forward", "-s", "prod", "--ports", ports],
        cwd=prod.project.path, env=cli_env(prod, tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=30)
    assert process.returncode == 2, out + err
    assert out == ""  # no URL is printed before every forward listens
    assert err.startswith("bin/picluster forward: the forward of monitoring/prometheus failed: ")
    assert "error upgrading connection" in err, err
    assert list(tmp_path.iterdir()) == []
