"""`bin/picluster forward` and `logs` on K3s: the kubectl command lines, from the Services and
workloads the prod program declares (their names, namespaces and ports)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cli import forward, logs
from cli.kube import Kubectl, selector
from cli.services import Service
from cli.stack import StackError
from tests.harness import run_main, stack_file_config

SERVICE = "kubernetes:core/v1:Service"


def test_each_forward_names_a_service_the_prod_program_declares_on_its_port() -> None:
    config = stack_file_config("prod")
    run = run_main(
        {**config, "sshPrivateKey": "key", "k3sToken": "t" * 24},
        stack="prod",
        secret_keys=("sshPrivateKey", "k3sToken"),
    )
    declared = {
        (r.value("metadata")["namespace"], r.value("metadata")["name"]): {
            int(p["port"]) for p in r.value("spec")["ports"]
        }
        for r in run.of_type(SERVICE)
    }
    for item in forward.FORWARDS:
        assert item.port in declared[(item.namespace, item.service)], item


def test_forwards_listen_on_loopback_and_the_urls_say_where() -> None:
    kubectl = Kubectl(Path("/k"))
    argv = forward.port_forward_argv(kubectl, forward.FORWARDS[2], 13000)
    assert argv == [
        "kubectl", "--kubeconfig", "/k", "port-forward", "--namespace", "monitoring",
        "--address", "127.0.0.1", "service/grafana", "13000:3000",
    ]  # fmt: skip
    assert forward.urls((9090, 9093, 3000)) == [
        ("Prometheus", "http://127.0.0.1:9090/"),
        ("Alertmanager", "http://127.0.0.1:9093/"),
        ("Grafana", "http://127.0.0.1:3000/grafana/"),
    ]
    parser = argparse.ArgumentParser()
    forward.register(parser.add_subparsers())
    assert parser.parse_args(["forward"]).ports == (9090, 9093, 3000)
    assert parser.parse_args(["forward", "--ports", "1,2,3"]).ports == (1, 2, 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["forward", "--ports", "1,2"])


def test_a_forward_that_cannot_start_says_why_and_the_rest_stop() -> None:
    forwarder = forward.Forwarder()
    listening = "import time; print('Forwarding from 127.0.0.1:1 -> 1', flush=True); time.sleep(60)"
    refused = "import sys; print('unable to listen on any of the requested ports', file=sys.stderr)"
    forwarder.start(forward.FORWARDS[0], [sys.executable, "-c", listening])
    forwarder.start(forward.FORWARDS[1], [sys.executable, "-c", refused])
    started = time.monotonic()
    problem = forwarder.wait_started(20)
    assert problem == (
        "the forward of monitoring/alertmanager failed: unable to listen on any of the "
        "requested ports"
    )
    assert time.monotonic() - started < 10
    forwarder.stop()
    assert all(p.poll() is not None for _, p in forwarder.processes)


class FakeKubectl(Kubectl):
    """Answers `get` from canned objects, as `kubectl get -o json` would."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        super().__init__(Path("/k"))
        self.answers = answers

    def get(self, *args: str) -> dict[str, Any]:
        return self.answers[args[0]]


def test_logs_on_k3s_follow_every_pod_the_workloads_selector_picks() -> None:
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/part-of": "picluster",
                                              "app.kubernetes.io/name": "api"}}},
    }  # fmt: skip
    pods = {"items": [{"spec": {"containers": [{}]}}] * 7}
    kubectl = FakeKubectl(
        {"deployments,statefulsets,daemonsets": {"items": [deployment]}, "pods": pods}
    )
    args = argparse.Namespace(follow=True, since="10m", tail=None)
    argv = logs.kubectl_logs(kubectl, Service("api", 1, "game"), args)
    assert selector(deployment) == "app.kubernetes.io/name=api,app.kubernetes.io/part-of=picluster"
    assert argv[3:] == [
        "logs", "--namespace", "game", "--selector", selector(deployment), "--prefix",
        "--all-containers", "--max-log-requests=7", "--tail=-1", "--follow", "--since=10m",
    ]  # fmt: skip
    empty = FakeKubectl({"deployments,statefulsets,daemonsets": {"items": []}})
    with pytest.raises(StackError, match="no Deployment, StatefulSet or DaemonSet api in"):
        logs.kubectl_logs(empty, Service("api", 1, "game"), args)


def test_the_default_forwards_are_the_urls_the_stack_outputs_name() -> None:
    from components.on_kubernetes.forwards import MONITORING_FORWARDS

    defaults = tuple(f.port for f in forward.FORWARDS)
    assert [url for _, url in forward.urls(defaults)] == [f.url for f in MONITORING_FORWARDS]
