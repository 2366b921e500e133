"""Prometheus' series count and memory with picluster's K3s scrape config, on the simulated
cluster; prints figures, asserts nothing.

    flock /tmp/picluster-lab.lock .venv/bin/python bench/prometheus_series.py

Starts the lab's control plane (tools/cluster/up.sh: a real kube-apiserver and etcd of the
Kubernetes version K3s pins, kwok playing the three Pis of Pulumi.prod.yaml), applies what the
default prod stack renders (so the API server serves the game's and monitoring's objects, and the
controllers reconcile them), then runs the real Prometheus binary twice on the rendered
prometheus.yml: once with its own job only (the baseline), once adding the `apiserver` and `etcd`
jobs pointed at the lab's API server and etcd, their metric relabelling as rendered. Prints the
head series per job, what the endpoints expose before the keep-lists, and Prometheus' resident
memory after a few scrapes.

What the lab lacks: kubelets and cAdvisor (kwok plays nodes without containers), so the node,
cadvisor, kubelet, kube-state-metrics, postgres, probe and services jobs have nothing to scrape
here; their figures in the estimate are labelled as estimates, not measurements.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import real_prometheus  # noqa: E402
from tests.engine.prod_lab import CLUSTER_CACHE, missing_cluster_binaries  # noqa: E402
from tests.harness import run_main, stack_file_config  # noqa: E402
from tests.k8s_manifests import manifests  # noqa: E402

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nbench\n-----END OPENSSH PRIVATE KEY-----\n"
SCRAPE_INTERVAL = "5s"
SCRAPES = 4
SETTLE_SECONDS = 45
# Series per job on three real Pis that the lab cannot measure: ESTIMATES, from the exporters'
# usual output on a Raspberry Pi 4 (node-exporter's default collectors: ~700 per node; cAdvisor
# after picluster's drops: ~35 per container, ~30 containers; the kubelet keep-list: ~150 per
# node; kube-state-metrics: ~12 per object for ~120 objects; postgres-exporter ~450; probes ~60).
ESTIMATED_SERIES = {
    "node": 3 * 700,
    "cadvisor": 30 * 35,
    "kubelet": 3 * 150,
    "kube-state-metrics": 120 * 12,
    "postgres": 450,
    "probe": 60,
}


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(CLUSTER_CACHE / "bin" / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        print(f"  kubectl {' '.join(args[:2])}: {result.stderr.strip()[:300]}")
    return result.stdout


def client_files(kubeconfig: Path, state: Path) -> dict[str, Path]:
    """The admin kubeconfig's CA, client certificate and key as files (0600, in the lab's state)."""
    document = yaml.safe_load(kubeconfig.read_text())
    user = document["users"][0]["user"]
    cluster = document["clusters"][0]["cluster"]
    found = {}
    for name, source, key in (
        ("ca", cluster, "certificate-authority"),
        ("cert", user, "client-certificate"),
        ("key", user, "client-key"),
    ):
        path = state / f"bench-{name}.pem"
        data = (
            Path(source[key]).read_bytes()
            if key in source
            else base64.b64decode(source[f"{key}-data"])
        )
        path.touch(mode=0o600)
        path.write_bytes(data)
        found[name] = path
    return found


def exposed_series(url: str, files: dict[str, Path] | None = None) -> int:
    """Sample lines an endpoint exposes (one per series), before any relabelling."""
    command = ["curl", "-sf", "--max-time", "10", url]
    if files is not None:
        command += ["--cacert", str(files["ca"]), "--cert", str(files["cert"])]
        command += ["--key", str(files["key"])]
    text = subprocess.run(command, capture_output=True, text=True, check=True, timeout=20).stdout
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def render() -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The default prod stack's Kubernetes objects and its Prometheus jobs, under mocks."""
    config = stack_file_config("prod")
    result = run_main(
        {**config, "sshPrivateKey": KEY}, stack="prod", secret_keys=("sshPrivateKey",)
    )
    objects = manifests(result)
    prometheus_cm = next(
        m for m in objects if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "prometheus"
    )
    scrape = yaml.safe_load(prometheus_cm["data"]["prometheus.yml"])["scrape_configs"]
    return objects, {job["job_name"]: job for job in scrape}


def measure(
    config: dict[str, Any], workdir: Path, port: int, jobs: set[str]
) -> tuple[dict[str, int], int, int]:
    """Head series per job, the head's total and the process' RSS after a few scrapes; prints
    the metric names that hold most of the API server's series."""
    with real_prometheus.running(config, workdir, port) as prometheus:
        prometheus.wait_for_scrapes(jobs, scrapes=SCRAPES, timeout=120)
        per_job = {
            r["metric"]["job"]: int(float(r["value"][1]))
            for r in prometheus.query('count by (job) ({__name__=~".+"})')
        }
        head = int(prometheus.scalar("prometheus_tsdb_head_series"))
        top = prometheus.query('topk(6, count by (__name__) ({job="apiserver"}))')
        for r in sorted(top, key=lambda r: -float(r["value"][1])):
            print(f"  apiserver {r['metric']['__name__']:45s} {int(float(r['value'][1])):6d}")
        rss = prometheus.rss_bytes()
    return per_job, head, rss


def main() -> None:
    missing = missing_cluster_binaries()
    if missing or real_prometheus.PROMETHEUS is None:
        sys.exit(f"missing: {', '.join(missing) or 'prometheus'} (tools/cluster/build.sh, apt)")
    objects, jobs = render()
    nodes = [n["name"] for n in stack_file_config("prod")["nodes"]]
    roles = [f"{n}:server" if "server" in n else f"{n}:agent" for n in nodes]
    with tempfile.TemporaryDirectory(prefix="picluster-series-") as tmp:
        state = Path(tmp) / "lab"
        subprocess.run(
            [str(ROOT / "tools/cluster/up.sh"), "--state", str(state), *roles],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        try:
            env = dict(
                line.split("=", 1)
                for line in (state / "cluster.env").read_text().splitlines()
                if "=" in line
            )
            kubeconfig = state / "admin.kubeconfig"
            files = client_files(kubeconfig, state)
            namespaces = [m for m in objects if m["kind"] == "Namespace"]
            others = [m for m in objects if m["kind"] != "Namespace"]
            for batch in (namespaces, others):
                listing = {"apiVersion": "v1", "kind": "List", "items": batch}
                kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(listing))
            print(f"applied {len(objects)} objects of the default prod stack; settling")
            # Let the controllers and kwok reconcile, so the API server's request mix is a
            # running cluster's rather than a start-up's.
            subprocess.run(["sleep", str(SETTLE_SECONDS)], check=True)
            pods = json.loads(kubectl(kubeconfig, "get", "pods", "-A", "-o", "json") or "{}")
            print(f"pods on the kwok nodes: {len(pods.get('items', []))}")

            api = env["PICLUSTER_CLUSTER_API"].removeprefix("https://")
            etcd = env["PICLUSTER_CLUSTER_ETCD"].removeprefix("http://")
            exposed = {
                "apiserver": exposed_series(f"https://{api}/metrics", files),
                "etcd": exposed_series(f"http://{etcd}/metrics"),
            }
            port = real_prometheus.free_port()
            own = real_prometheus.as_static(jobs["prometheus"], f"127.0.0.1:{port}")
            apiserver = real_prometheus.as_static(
                jobs["apiserver"],
                api,
                scheme="https",
                tls_config={
                    **jobs["apiserver"]["tls_config"],
                    "ca_file": str(files["ca"]),
                    "cert_file": str(files["cert"]),
                    "key_file": str(files["key"]),
                },
            )
            etcd_job = real_prometheus.as_static(jobs["etcd"], etcd)
            base = {"global": {"scrape_interval": SCRAPE_INTERVAL}}
            baseline = measure(
                {**base, "scrape_configs": [own]}, Path(tmp) / "baseline", port, {"prometheus"}
            )
            control = measure(
                {**base, "scrape_configs": [own, apiserver, etcd_job]},
                Path(tmp) / "control-plane",
                port,
                {"prometheus", "apiserver", "etcd"},
            )
        finally:
            subprocess.run(
                [str(ROOT / "tools/cluster/down.sh"), "--state", str(state)],
                stdout=subprocess.DEVNULL,
                check=False,
            )
    report(exposed, baseline, control)


def report(
    exposed: dict[str, int],
    baseline: tuple[dict[str, int], int, int],
    control: tuple[dict[str, int], int, int],
) -> None:
    mib = 2**20
    (_, base_head, base_rss), (per_job, head, rss) = baseline, control
    print(f"\nPrometheus {SCRAPES}+ scrapes every {SCRAPE_INTERVAL}, measured on the lab")
    print(f"  {'job':12s} {'exposed':>8s} {'stored':>8s}")
    for job in ("apiserver", "etcd"):
        print(f"  {job:12s} {exposed[job]:8d} {per_job.get(job, 0):8d}")
    print(f"  {'prometheus':12s} {'':8s} {per_job.get('prometheus', 0):8d}")
    print(f"  head series: {base_head} with its own job alone, {head} with the control plane")
    print(f"  RSS: {base_rss / mib:.0f} MiB alone, {rss / mib:.0f} MiB with the control plane")
    per_series = max(rss - base_rss, 0) / max(head - base_head, 1)
    print(f"  => {per_series / 1024:.1f} KiB of RSS per added series (a short run's head)")

    print("\nESTIMATE for three real Pis (not measured: the lab has no kubelets or exporters)")
    single = dict(ESTIMATED_SERIES, apiserver=per_job.get("apiserver", 0))
    single["prometheus"] = per_job.get("prometheus", 0)
    ha = dict(single, apiserver=3 * single["apiserver"], etcd=3 * per_job.get("etcd", 0))
    for title, series in (("1 server (SQLite)", single), ("3 servers (etcd)", ha)):
        total = sum(series.values())
        memory = base_rss + (total - base_head) * per_series
        print(f"  {title:18s} ~{total:6d} series, ~{memory / mib:4.0f} MiB RSS")
    print("  (Prometheus requests 256 MiB and is limited to 512 MiB on K3s)")


if __name__ == "__main__":
    main()
