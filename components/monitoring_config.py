"""What monitoring looks like on any target: probe targets, alert rules, dashboards, Grafana's
provisioning. The Docker and Kubernetes renderers read the same files from
`components/assets/monitoring/`, so both targets alert on and chart the same things.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from components.app_model import AppModel, ProbeKind

MONITORING_ASSETS = Path(__file__).parent / "assets" / "monitoring"

DATASOURCE_UID = "prometheus"
"""Every dashboard panel names this datasource uid."""

GRAFANA_DASHBOARDS_DIR = "/etc/grafana/dashboards"
GRAFANA_START_PATH = "/opt/picluster/grafana-start.sh"
"""Where Grafana's start script is put; the container runs `sh` on it instead of /run.sh."""


def grafana_start_script() -> str:
    """Grafana's start: reset an existing database's admin password from the secret file, so a
    rotated password takes effect, then run the image's /run.sh."""
    return (MONITORING_ASSETS / "grafana-start.sh").read_text()


@dataclass(frozen=True, kw_only=True)
class ProbeTarget:
    """One blackbox-exporter probe: latency and availability of an app endpoint."""

    service: str
    target: str
    """URL for `http_2xx`, host:port for `tcp_connect`."""
    module: str


def probe_targets(app: AppModel, *, host_suffix: str = "") -> list[ProbeTarget]:
    """Probe the frontend and each service where it answers, by their in-app DNS names."""
    frontend = app.frontend
    targets = [
        ProbeTarget(
            service=frontend.name,
            target=f"http://{frontend.name}{host_suffix}:{frontend.port}/healthz",
            module="http_2xx",
        )
    ]
    for service in app.services:
        host = f"{service.name}{host_suffix}:{service.port}"
        if service.probe.kind is ProbeKind.HTTP:
            targets.append(
                ProbeTarget(
                    service=service.name,
                    target=f"http://{host}{service.probe.path}",
                    module="http_2xx",
                )
            )
        else:
            targets.append(ProbeTarget(service=service.name, target=host, module="tcp_connect"))
    return targets


def probe_scrape_job(targets: list[ProbeTarget], blackbox_address: str) -> dict[str, object]:
    """The Prometheus job that asks blackbox-exporter to probe each target."""
    return {
        "job_name": "probe",
        "metrics_path": "/probe",
        "static_configs": [
            {
                "targets": [t.target],
                "labels": {"service": t.service, "__param_module": t.module},
            }
            for t in targets
        ],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": blackbox_address},
        ],
    }


RETENTION_SIZE_SHARE: Final = 0.8
"""Share of the volume Prometheus may fill before it drops its oldest blocks; the rest is room
for the write-ahead log and compaction, so a full disk never stops ingestion."""

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$")
_UNITS = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def retention_size(storage: str) -> str:
    """`--storage.tsdb.retention.size` for `monitoring.storage` (a Kubernetes quantity): the
    volume's size on K3s; on Docker, whose volumes have no size, the disk Prometheus may use."""
    match = _QUANTITY.match(storage)
    if match is None:
        raise ValueError(f"{storage!r} is not a storage quantity such as 10Gi")
    size = float(match[1]) * _UNITS[match[2]]
    # Prometheus reads MB as 2**20 bytes.
    return f"{max(1, int(size * RETENTION_SIZE_SHARE) // 2**20)}MB"


def alert_rules() -> str:
    """The Prometheus rule file shared by both targets."""
    return (MONITORING_ASSETS / "alerts.yml").read_text()


INGRESS_MODULE = "http_2xx_ingress"
"""The blackbox module that probes the ingress controller with the game's Host header."""


def blackbox_config(ingress_host: str | None = None) -> str:
    """blackbox-exporter's modules; with `ingress_host`, also one that sends that Host header."""
    text = (MONITORING_ASSETS / "blackbox.yml").read_text()
    if ingress_host is None:
        return text
    document = yaml.safe_load(text)
    module = copy.deepcopy(document["modules"]["http_2xx"])
    module["http"]["headers"] = {"Host": ingress_host}
    document["modules"][INGRESS_MODULE] = module
    return yaml.safe_dump(document, sort_keys=False)


def ingress_probe(ingress_url: str, ingress_host: str | None) -> ProbeTarget:
    """Probe the frontend through the ingress controller, as a player's request goes."""
    return ProbeTarget(
        service="ingress",
        target=ingress_url,
        module=INGRESS_MODULE if ingress_host is not None else "http_2xx",
    )


def dashboards() -> dict[str, str]:
    """Grafana dashboards by file name."""
    folder = MONITORING_ASSETS / "dashboards"
    return {path.name: path.read_text() for path in sorted(folder.glob("*.json"))}


def kubernetes_dashboards() -> dict[str, str]:
    """Grafana dashboards that only the Kubernetes target has data for (kube-state-metrics)."""
    folder = MONITORING_ASSETS / "dashboards" / "kubernetes"
    return {path.name: path.read_text() for path in sorted(folder.glob("*.json"))}


def grafana_datasource(prometheus_url: str) -> str:
    """Grafana's datasource provisioning file."""
    return yaml.safe_dump(
        {
            "apiVersion": 1,
            "datasources": [
                {
                    "name": "Prometheus",
                    "uid": DATASOURCE_UID,
                    "type": "prometheus",
                    "access": "proxy",
                    "url": prometheus_url,
                    "isDefault": True,
                    "editable": False,
                }
            ],
        },
        sort_keys=False,
    )


def grafana_dashboard_provider() -> str:
    """Grafana's dashboard provisioning file: load every JSON under the dashboards folder."""
    return yaml.safe_dump(
        {
            "apiVersion": 1,
            "providers": [
                {
                    "name": "picluster",
                    "folder": "picluster",
                    "type": "file",
                    "disableDeletion": True,
                    "allowUiUpdates": False,
                    "options": {"path": GRAFANA_DASHBOARDS_DIR},
                }
            ],
        },
        sort_keys=False,
    )
