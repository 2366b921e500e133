"""Every container image picluster runs by default, pinned in one place.

Each one is a multi-architecture image published for linux/amd64 and linux/arm64, so the same
tag runs on a laptop's Docker and on a Raspberry Pi. PostgreSQL is pinned to its major version
(minor releases are drop-in; a major upgrade needs a dump and restore).
"""

from typing import Final

NGINX: Final = "nginx:1.27.3-alpine"
NODE: Final = "node:22.12.0-alpine"
POSTGRES: Final = "postgres:17-alpine"
PROMETHEUS: Final = "prom/prometheus:v3.1.0"
ALERTMANAGER: Final = "prom/alertmanager:v0.28.1"
GRAFANA: Final = "grafana/grafana:11.4.0"
NODE_EXPORTER: Final = "prom/node-exporter:v1.8.2"
CADVISOR: Final = "gcr.io/cadvisor/cadvisor:v0.49.1"
POSTGRES_EXPORTER: Final = "quay.io/prometheuscommunity/postgres-exporter:v0.16.0"
BLACKBOX_EXPORTER: Final = "prom/blackbox-exporter:v0.25.0"
KUBE_STATE_METRICS: Final = "registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.14.0"
REGISTRY: Final = "registry:2.8.3"
"""The in-cluster registry the K3s target pushes the studio's images to (CNCF distribution)."""
