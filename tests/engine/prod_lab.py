"""The prod lab: three simulated Pis and a real Kubernetes control plane, on which the real CLI runs
`pulumi up -s prod` (tests/engine/test_prod_up.py, bench/engine_up.py).

What stands in for what cannot run here, each named: the K3s installer and binary are the test
double of the sim-Pi tests; K3s's own control plane is a real one at the pinned K3s's Kubernetes
version (tools/cluster: etcd, kube-apiserver, controller-manager, scheduler, kwok playing the
Pis' kubelets, a local-path stand-in), reached from the Pis and from Pulumi through the Docker
bridge's address, which is therefore every node's `host`; and the Ingress status Traefik would
publish is set by the lab (`traefik_double`); the in-cluster registry's pod, which kwok reports
Ready but does not run, is a container of the `registry:2.8.3` stand-in at the Service's pinned
address, on a Docker network the first server is attached to (`registry_double`), so the demo
API's image is really built on this machine and pushed through the SSH tunnel to that server.
The program, its config, the engine and the Kubernetes and command providers are the real ones.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components import registries
from components.on_kubernetes import registry as registry_pod
from tests.availability import CLUSTER, ENGINE, sim_pis_unavailable_reason, unavailable
from tests.engine.conftest import ROOT, Project, Up, make_project
from tests.integration import baseimages, simpi
from tests.integration.test_k3s_scripts import DOUBLE, DOUBLE_ON_PI

CLUSTER_CACHE = Path(
    os.environ.get(
        "PICLUSTER_CLUSTER_CACHE",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "picluster" / "cluster",
    )
)
NODES = (("pi-server-1", "server"), ("pi-agent-1", "agent"), ("pi-agent-2", "agent"))
VERSION = "v1.31.4+k3s1"
REGISTRY_DOUBLE = "picluster-lab-registry"
"""The registry double's container and its Docker network (one lab per machine: the lock)."""
REGISTRY_SUBNET = "10.43.0.48/28"
"""A slice of the lab's service CIDR (10.43.0.0/16, tools/cluster/up.sh) around the pinned
clusterIP: the host takes .49 as the network's gateway, the double .50."""


def _bridge_address() -> str:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    if not match:
        raise RuntimeError("no docker0 bridge address to reach the simulated Pis through")
    return match[1]


@contextmanager
def registry_double(server: simpi.SimPi) -> Iterator[str]:
    """TEST DOUBLE of the in-cluster registry's pod (components/on_kubernetes/registry.py): kwok
    reports the pod Ready but runs nothing. A container of the `registry:2.8.3` stand-in
    (tests/integration/baseimages.py, distribution 2.8.2), run as the pod runs it (uid 1000,
    read-only root, /tmp and its storage writable, the pod's environment), answers at the
    Service's pinned clusterIP on a Docker network the first server is attached to: what a real
    server reaches through kube-proxy, and where sshd's end of the push tunnel connects. Its
    storage is a tmpfs (the retained volume is proven by the claim, not here). Yields its name."""
    baseimages.ensure_registry()
    for command in (
        ["docker", "rm", "-f", REGISTRY_DOUBLE],
        ["docker", "network", "rm", REGISTRY_DOUBLE],
    ):
        subprocess.run(command, capture_output=True, timeout=60, check=False)  # a crashed lab's
    gateway = REGISTRY_SUBNET.rsplit(".", 1)[0] + ".49"
    env = [arg for k, v in registry_pod.ENV.items() for arg in ("-e", f"{k}={v}")]
    uid = registry_pod.USER
    user = f"{uid}:{uid}"
    try:
        subprocess.run(
            ["docker", "network", "create", "--subnet", REGISTRY_SUBNET, "--gateway", gateway,
             REGISTRY_DOUBLE],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        subprocess.run(
            ["docker", "run", "-d", "--name", REGISTRY_DOUBLE, "--network", REGISTRY_DOUBLE,
             "--ip", registries.REGISTRY_CLUSTER_IP, "--user", user, "--read-only",
             "--tmpfs", "/tmp", "--tmpfs", f"{registry_pod.DATA_PATH}:uid={uid},gid={uid}",
             *env, baseimages.REGISTRY],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        subprocess.run(
            ["docker", "network", "connect", REGISTRY_DOUBLE, server.container],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        yield REGISTRY_DOUBLE
    finally:
        for command in (
            ["docker", "network", "disconnect", "-f", REGISTRY_DOUBLE, server.container],
            ["docker", "rm", "-f", REGISTRY_DOUBLE],
            ["docker", "network", "rm", REGISTRY_DOUBLE],
        ):
            subprocess.run(command, capture_output=True, timeout=60, check=False)


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
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
        listed = kubectl(kubeconfig, "get", "ingress", "-A", "-o", "json")
        if listed.returncode != 0:
            continue
        for item in json.loads(listed.stdout)["items"]:
            if (item.get("status") or {}).get("loadBalancer", {}).get("ingress"):
                continue
            status = {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}}
            kubectl(
                kubeconfig,
                "patch", "ingress", item["metadata"]["name"],
                "-n", item["metadata"]["namespace"],
                "--subresource=status", "--type=merge", "-p", json.dumps(status),
            )  # fmt: skip


CLUSTER_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
)


def missing_cluster_binaries() -> list[str]:
    """The control-plane binaries tools/cluster/build.sh has not built yet."""
    return [b for b in CLUSTER_BINARIES if not (CLUSTER_CACHE / "bin" / b).exists()]


def require_lab() -> None:
    """In a test: skip (or fail, when required) unless the control plane and Docker are there."""
    missing = missing_cluster_binaries()
    if missing:
        reason = f"control-plane binaries missing: {', '.join(missing)} (tools/cluster/build.sh)"
        unavailable(reason, CLUSTER)
    reason = sim_pis_unavailable_reason()
    if reason:
        unavailable(reason, ENGINE)


SECRET_KEYS = ("sshPrivateKey", "k3sToken", "dbPassword", "grafanaAdminPassword")
Config = dict[str, Any]


def default_config() -> Config:
    """The lab's stack in the change matrix's form (unprefixed keys, secrets as plain keys; the
    lab fills in each node's address, SSH port and key): the committed stack's three Pis."""
    return {
        "target": "k3s",
        "ssh": {"user": "pi"},
        "nodes": [{"name": name, "role": role} for name, role in NODES],
        "k3s": {"version": VERSION},
        "app": {"domain": "game.local"},
        # The sim-Pis are amd64 containers; the build is for what the nodes run.
        "images": {"platforms": ["linux/amd64"]},
        **{key: f"e2e-{key}-0123456789abcdef" for key in SECRET_KEYS[1:]},
    }


def on_lab(values: Config, address: str, pis: Mapping[str, simpi.SimPi]) -> Config:
    """Stack config `values` (unprefixed keys) pointed at the lab: each node at its simulated Pi
    (the bridge's address, the Pi's own SSH port), the K3s installer the double on the Pi."""
    values = copy.deepcopy(values)
    # apt-get upgrade is proven by the node-script tests; here it would only add minutes.
    values["nodes"] = [
        {**node, "host": address, "port": pis[node["name"]].port, "upgrade": False}
        for node in values["nodes"]
    ]
    values["k3s"] = {**values["k3s"], "installUrl": f"file://{DOUBLE_ON_PI}"}
    return values


@dataclass(frozen=True)
class Lab:
    """The lab without a project: what `lab()` started."""

    kubeconfig: Path
    """The control plane's admin kubeconfig."""
    pis: dict[str, simpi.SimPi]
    address: str
    """The Docker bridge's address: every node's `host`."""
    key: Path
    """The private key every simulated Pi authorizes for the user `pi`."""
    registry: str
    """The in-cluster registry's double (a container name, `registry_double`)."""


@dataclass
class Prod:
    project: Project
    kubeconfig: Path
    pis: dict[str, simpi.SimPi]
    address: str
    key: str
    registry: str
    """The in-cluster registry's double (a container name, `registry_double`)."""
    secrets: dict[str, str] = field(default_factory=dict)
    """The secrets last written to the stack."""

    def get(self, *args: str) -> dict[str, Any]:
        """`kubectl get ARGS -o json` against the lab's API server, which must succeed."""
        result = kubectl(self.kubeconfig, "get", *args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def registry_tags(self, name: str) -> list[str]:
        """The tags the registry double holds for repository `name`, asked from the first server
        (the host reaches the double's network too, but the Pis are what reach it in prod)."""
        server = self.pis["pi-server-1"]
        url = f"http://{registries.REGISTRY_CLUSTER_IP}:{registries.REGISTRY_PORT}/v2/{name}/tags/list"
        listed = server.exec("curl", "-fsS", "--max-time", "10", url, check=False)
        if listed.returncode != 0:
            return []
        return sorted(json.loads(listed.stdout).get("tags") or [])

    def registry_digest(self, name: str, tag: str) -> str:
        """The digest the registry double serves for `name:tag` (its `Docker-Content-Digest`),
        asked from the first server as containerd asks: what a pod pinned to it must name."""
        server = self.pis["pi-server-1"]
        base = f"http://{registries.REGISTRY_CLUSTER_IP}:{registries.REGISTRY_PORT}"
        accept = [
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
        head = server.exec(
            "curl", "-fsSI", "--max-time", "10",
            *(arg for a in accept for arg in ("-H", f"Accept: {a}")),
            f"{base}/v2/{name}/manifests/{tag}",
        )  # fmt: skip
        [digest] = [
            line.split(":", 1)[1].strip()
            for line in head.stdout.splitlines()
            if line.lower().startswith("docker-content-digest:")
        ]
        return digest

    def up(self, *options: str) -> Up:
        """`pulumi up -s prod [OPTIONS]`, which must succeed."""
        return self.project.up("prod", *options)

    def configure(self, config: Config) -> None:
        """Write `config` (the change matrix's form) as the `prod` stack's configuration: every
        node is reached at its simulated Pi, the K3s installer is the double on the Pi."""
        config = copy.deepcopy(config)
        values = {k: v for k, v in config.items() if k not in SECRET_KEYS}
        values["ssh"] = {"user": "pi"}  # the key is the lab's, each Pi's port its own
        values = on_lab(values, self.address, self.pis)
        # The stack file also holds the encrypted secrets and the passphrase's salt: keep them.
        stack_file = self.project.path / "Pulumi.prod.yaml"
        document = yaml.safe_load(stack_file.read_text()) if stack_file.exists() else None
        document = document or {}
        kept = {
            k: v
            for k, v in (document.get("config") or {}).items()
            if k.removeprefix("picluster:") in SECRET_KEYS
        }
        document["config"] = {**kept, **{f"picluster:{k}": v for k, v in values.items()}}
        stack_file.write_text(yaml.safe_dump(document))
        secrets = {k: str(config[k]) for k in SECRET_KEYS[1:] if k in config}
        secrets["sshPrivateKey"] = self.key
        for key, value in secrets.items():
            if self.secrets.get(key) != value:
                self.project.set_secret("prod", key, value)
        self.secrets = secrets


@contextmanager
def lab(tmp: Path, standby: Sequence[str] = ()) -> Iterator[Lab]:
    """The control plane and three simulated Pis (plus the agents named in `standby`, running but
    not in the stack yet), with the doubles around them; everything is stopped and removed on
    exit. Take /tmp/picluster-lab.lock around it: one lab per machine (port 6443).

    kwok plays every node's kubelet, a standby agent's too: its Node object exists from the start
    (a real agent registers it when it joins), so joining it finds it Ready."""
    build = simpi.ensure_image()
    address = _bridge_address()
    state = tmp / "cluster"
    roles = {**dict(NODES), **dict.fromkeys(standby, "agent")}
    nodes = [f"{name}:{role}" for name, role in roles.items()]
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
    try:
        with simpi.SimPiLab(build.tag) as sims:
            pis = {
                name: sims.start_pi(name, bind=address, publish=(6444,) if role == "server" else ())
                for name, role in roles.items()
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
            # The demo API's Dockerfile builds FROM the pinned node image: its stand-in.
            baseimages.ensure_node()
            with registry_double(first) as registry:
                yield Lab(kubeconfig, pis, address, sims.key_path, registry)
    finally:
        stop.set()
        subprocess.run(
            [str(ROOT / "tools/cluster/down.sh"), "--state", str(state)],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip


@contextmanager
def prod_lab(engine_bin: Path, tmp: Path, standby: Sequence[str] = ()) -> Iterator[Prod]:
    """`lab()` and the project with its `prod` stack configured by `default_config()`."""
    with lab(tmp, standby) as started:
        project = make_project(engine_bin, tmp)
        assert project.pulumi("stack", "init", "prod").returncode == 0
        prod = Prod(
            project,
            started.kubeconfig,
            started.pis,
            started.address,
            started.key.read_text(),
            started.registry,
        )
        prod.configure(default_config())
        yield prod
