"""The real Prometheus server (Debian's `prometheus` package, the one that ships promtool) run on
a scrape config for a few scrapes, then queried: what the tests and the series bench use to see
what picluster's relabel rules store, rather than reading the regexes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

PROMETHEUS = shutil.which("prometheus")
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_static(job: dict[str, Any], target: str, **overrides: Any) -> dict[str, Any]:
    """`job` with its discovery replaced by one static target and its discovery relabelling
    dropped; the metric relabelling, which decides what is stored, stays as rendered."""
    kept = {
        k: v
        for k, v in job.items()
        if k not in ("kubernetes_sd_configs", "relabel_configs", "authorization", "tls_config")
    }
    kept["scheme"] = "http"
    kept["static_configs"] = [{"targets": [target]}]
    kept.update(overrides)
    return kept


class Prometheus:
    """A running Prometheus: its URL and its process id."""

    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.pid = pid

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to."""
        params = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def rss_bytes(self) -> int:
        """Resident memory of the process, from /proc (what the kernel charges it)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def wait_for_scrapes(self, jobs: set[str], scrapes: int, timeout: float) -> None:
        """Until every job's targets are up and each was scraped `scrapes` times."""
        deadline = time.monotonic() + timeout
        names = "|".join(sorted(jobs))
        while time.monotonic() < deadline:
            up = {r["metric"]["job"] for r in self.query(f'up{{job=~"{names}"}} == 1')}
            done = self.query(f'count_over_time(up{{job=~"{names}"}}[10m]) >= {scrapes}')
            if up == jobs and {r["metric"]["job"] for r in done} == jobs:
                return
            time.sleep(0.5)
        raise TimeoutError(f"jobs {sorted(jobs)} not scraped {scrapes} times in {timeout}s")


@contextmanager
def running(config: dict[str, Any], workdir: Path, port: int | None = None) -> Iterator[Prometheus]:
    """Prometheus on `config` (a prometheus.yml as data), listening on 127.0.0.1:`port` (a free
    one if None), until the block ends."""
    if PROMETHEUS is None:
        raise RuntimeError("prometheus not on PATH (Debian: apt-get install prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = port if port is not None else free_port()
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(workdir / 'prometheus.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("prometheus not ready")
            time.sleep(0.2)
        yield Prometheus(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
