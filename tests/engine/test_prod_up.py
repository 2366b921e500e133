"""`pulumi up -s prod` with the real engine, end to end: three simulated Pis bootstrapped over SSH
(prepare, reboot, gate, K3s install, node checks, kubeconfig read), then the game and its
monitoring deployed to a real Kubernetes API server, every object accepted and awaited Ready.

What stands in for what cannot run here, each named: the K3s installer and binary are the test
double of the sim-Pi tests; K3s's own control plane is a real one at the pinned K3s's Kubernetes
version (tools/cluster: etcd, kube-apiserver, controller-manager, scheduler, kwok playing the
Pis' kubelets, a local-path stand-in), reached from the Pis and from Pulumi through the Docker
bridge's address, which is therefore every node's `host`; and the Ingress status Traefik would
publish is set by this test (`traefik_double`). The program, its config, the engine and the
Kubernetes provider are the real ones.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.engine.conftest import ROOT, Project, _unavailable, make_project
from tests.integration import simpi
from tests.integration.test_k3s_scripts import DOUBLE, DOUBLE_ON_PI

pytestmark = [pytest.mark.engine, pytest.mark.integration]

CLUSTER_CACHE = Path(
    os.environ.get(
        "PICLUSTER_CLUSTER_CACHE",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "picluster" / "cluster",
    )
)
NODES = (("pi-server-1", "server"), ("pi-agent-1", "agent"), ("pi-agent-2", "agent"))
VERSION = "v1.31.4+k3s1"


def _bridge_address() -> str:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    if not match:
        _unavailable("no docker0 bridge address to reach the simulated Pis through")
    assert match is not None
    return match[1]


def _kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_CACHE / "bin" / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def traefik_double(kubeconfig: Path, address: str, stop: threading.Event) -> None:
    """TEST DOUBLE of what K3s's Traefik (through servicelb) does for an Ingress: publish the
    node's address in its status, which the Kubernetes provider awaits."""
    while not stop.wait(2):
        listed = _kubectl(kubeconfig, "get", "ingress", "-A", "-o", "json")
        if listed.returncode != 0:
            continue
        for item in json.loads(listed.stdout)["items"]:
            if (item.get("status") or {}).get("loadBalancer", {}).get("ingress"):
                continue
            status = {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}}
            _kubectl(
                kubeconfig,
                "patch", "ingress", item["metadata"]["name"],
                "-n", item["metadata"]["namespace"],
                "--subresource=status", "--type=merge", "-p", json.dumps(status),
            )  # fmt: skip


@dataclass(frozen=True)
class Prod:
    project: Project
    kubeconfig: Path
    pis: dict[str, simpi.SimPi]

    def up(self) -> dict[str, int]:
        """`pulumi up -s prod`; the engine's summary of resource changes."""
        result = self.project.pulumi("up", "--yes", "--json", "-s", "prod", timeout=1500)
        assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
        decoder, text, at, summary = json.JSONDecoder(), result.stdout, 0, None
        while at < len(text):
            if text[at].isspace():
                at += 1
                continue
            document, at = decoder.raw_decode(text, at)
            if "summaryEvent" in document:
                summary = document["summaryEvent"]["resourceChanges"]
        assert summary is not None, text[-3000:]
        return summary


@pytest.fixture(scope="module")
def prod(engine_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prod]:
    binaries = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
    missing = [b for b in (*binaries, "kubectl") if not (CLUSTER_CACHE / "bin" / b).exists()]
    if missing:
        reason = f"control-plane binaries missing: {', '.join(missing)} (tools/cluster/build.sh)"
        if os.environ.get("PICLUSTER_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"PICLUSTER_REQUIRE_CLUSTER=1 but: {reason}")
        pytest.skip(reason)
    reason = simpi.docker_unavailable_reason() or simpi.image_unavailable_reason()
    if reason:
        _unavailable(reason)
    build = simpi.ensure_image()
    address = _bridge_address()
    tmp = tmp_path_factory.mktemp("prod")
    state = tmp / "cluster"
    nodes = [f"{name}:{role}" for name, role in NODES]
    started = subprocess.run(
        [str(ROOT / "tools/cluster/up.sh"), "--state", str(state), "--port", "6443",
         "--san", address, *nodes],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    kubeconfig = state / f"admin@{address}.kubeconfig"
    stop = threading.Event()
    ingress = threading.Thread(target=traefik_double, args=(kubeconfig, address, stop), daemon=True)
    ingress.start()
    project = make_project(engine_bin, tmp)
    try:
        with simpi.SimPiLab(build.tag) as lab:
            pis = {
                name: lab.start_pi(name, bind=address, publish=(6444,) if role == "server" else ())
                for name, role in NODES
            }
            for pi in pis.values():
                pi.put(DOUBLE_ON_PI, DOUBLE.read_bytes())
            first = pis["pi-server-1"]
            first.put(
                "/etc/rancher/k3s/double-real-apiserver.yaml", kubeconfig.read_bytes(), "0600"
            )
            subprocess.run(
                ["docker", "cp", str((CLUSTER_CACHE / "bin" / "kubectl").resolve()),
                 f"{first.container}:/usr/local/bin/kubectl-real"],
                check=True, timeout=120,
            )  # fmt: skip
            config = {
                "config": {
                    "picluster:target": "k3s",
                    "picluster:ssh": {"user": "pi"},
                    "picluster:nodes": [
                        # apt-get upgrade is proven by the node-script tests; here it would
                        # only add minutes.
                        {
                            "name": name,
                            "host": address,
                            "port": pis[name].port,
                            "role": role,
                            "upgrade": False,
                        }
                        for name, role in NODES
                    ],
                    "picluster:k3s": {
                        "version": VERSION,
                        "installUrl": f"file://{DOUBLE_ON_PI}",
                    },
                    "picluster:app": {"domain": "game.local"},
                }
            }
            (project.path / "Pulumi.prod.yaml").write_text(yaml.safe_dump(config))
            assert project.pulumi("stack", "init", "prod").returncode == 0
            project.set_secret("prod", "sshPrivateKey", lab.key_path.read_text())
            for key in ("k3sToken", "dbPassword", "grafanaAdminPassword"):
                project.set_secret("prod", key, f"e2e-{key}-0123456789abcdef")
            yield Prod(project, kubeconfig, pis)
    finally:
        stop.set()
        subprocess.run(
            [str(ROOT / "tools/cluster/down.sh"), "--state", str(state)],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip


@dataclass(frozen=True)
class Ups:
    first: dict[str, int]
    second: dict[str, int]


@pytest.fixture(scope="module")
def ups(prod: Prod) -> Ups:
    return Ups(prod.up(), prod.up())


def _ready(prod: Prod, kind: str) -> list[dict[str, Any]]:
    listed = _kubectl(prod.kubeconfig, "get", kind, "-A", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)["items"]


def test_the_first_up_bootstraps_the_pis_and_deploys_everything(ups: Ups, prod: Prod) -> None:
    assert set(ups.first) == {"create"} and ups.first["create"] > 60, ups.first
    for name, pi in prod.pis.items():
        assert pi.exec("k3s", "--version").stdout.startswith(f"k3s version {VERSION} "), name
    deployments = _ready(prod, "deployments")
    assert deployments and all(
        d["status"].get("readyReplicas") == d["spec"]["replicas"] for d in deployments
    )
    names = {d["metadata"]["name"] for d in deployments}
    assert {"frontend", "api", "prometheus", "grafana"} <= names
    statefulsets = _ready(prod, "statefulsets")
    assert [s["status"].get("readyReplicas") for s in statefulsets] == [1]


def test_a_second_up_changes_nothing_and_runs_no_remote_command(ups: Ups) -> None:
    assert set(ups.second) == {"same"}, ups.second
