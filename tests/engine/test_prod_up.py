"""`pulumi up -s prod` with the real engine, end to end: three simulated Pis bootstrapped over SSH
(prepare, reboot, gate, K3s install, node checks, kubeconfig read), then the game and its
monitoring deployed to a real Kubernetes API server, every object accepted and awaited Ready.
The lab and what stands in for what cannot run here: tests/engine/prod_lab.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine.conftest import Up
from tests.engine.prod_lab import VERSION, Prod, prod_lab, require_lab

pytestmark = [pytest.mark.engine, pytest.mark.integration]


@pytest.fixture(scope="module")
def prod(engine_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prod]:
    require_lab()
    with prod_lab(engine_bin, tmp_path_factory.mktemp("prod")) as lab:
        yield lab


@dataclass(frozen=True)
class Ups:
    first: Up
    second: Up


@pytest.fixture(scope="module")
def ups(prod: Prod) -> Ups:
    return Ups(prod.up(), prod.up())


def test_the_first_up_bootstraps_the_pis_and_deploys_everything(ups: Ups, prod: Prod) -> None:
    summary = ups.first.summary
    assert set(summary) == {"create"} and summary["create"] > 60, summary
    # prepare, gate, drain, install, node check x3; kubeconfig
    assert ups.first.remote_steps == 16
    for name, pi in prod.pis.items():
        assert pi.exec("k3s", "--version").stdout.startswith(f"k3s version {VERSION} "), name
    deployments = prod.get("deployments", "-A")["items"]
    assert deployments and all(
        d["status"].get("readyReplicas") == d["spec"]["replicas"] for d in deployments
    )
    names = {d["metadata"]["name"] for d in deployments}
    assert {"frontend", "api", "prometheus", "grafana"} <= names
    statefulsets = prod.get("statefulsets", "-A")["items"]
    assert [s["status"].get("readyReplicas") for s in statefulsets] == [1]


def test_a_second_up_changes_nothing_and_runs_no_remote_command(ups: Ups) -> None:
    assert set(ups.second.summary) == {"same"}, ups.second.summary
    assert ups.second.remote_steps == 0
