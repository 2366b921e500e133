"""Scrape jobs for the K3s control plane: the API server (with what it sees of its datastore)
and, on an HA cluster, the embedded etcd's own metrics.

K3s runs the API server, controllers, kubelet and (on SQLite) kine in one process that shares one
Prometheus registry: its supervisor's /metrics hands out `legacyregistry.DefaultGatherer` (K3s
`pkg/metrics/metrics.go`), the same registry the API server's and the kubelet's /metrics serve.
Every endpoint of that process therefore returns every component's series, and three jobs on it
would store each series up to three times. Each job keeps only its own component's names, from
keep-lists that share no name (`tests/unit/test_control_plane_monitoring.py` proves it against a
real Prometheus).
"""

from __future__ import annotations

from typing import Any, Final

APISERVER_JOB: Final = "apiserver"
ETCD_JOB: Final = "etcd"
ETCD_METRICS_PORT: Final = 2381
"""Embedded etcd's plain-HTTP metrics listener: 127.0.0.1:2381, plus the node's address with
`etcd-expose-metrics` (K3s `pkg/etcd/etcd.go`, metricsURL)."""

APISERVER_METRICS: Final = (
    "apiserver_request_total"
    "|apiserver_request_duration_seconds_(bucket|sum|count)"
    "|apiserver_current_inflight_requests"
    "|apiserver_storage_objects"
    "|apiserver_storage_size_bytes"
    "|apiserver_storage_db_total_size_in_bytes"
    # The datastore as the API server sees it: etcd client latency, or kine's SQL on SQLite
    # (kine `pkg/metrics`). Sums and counts only: per-type buckets would be thousands of series.
    "|etcd_request_duration_seconds_(sum|count)"
    "|kine_sql_total"
    "|kine_sql_time_seconds_(sum|count)"
)
"""What the `apiserver` job keeps of the K3s process' exposition."""

ETCD_METRICS: Final = (
    "etcd_server_(has_leader|is_leader|leader_changes_seen_total|proposals_failed_total"
    "|proposals_pending|slow_apply_total|heartbeat_send_failures_total)"
    "|etcd_disk_(wal_fsync|backend_commit)_duration_seconds_(bucket|sum|count)"
    "|etcd_mvcc_db_total_size_in_bytes|etcd_mvcc_db_total_size_in_use_in_bytes"
    "|etcd_server_quota_backend_bytes"
    "|etcd_network_peer_round_trip_time_seconds_(bucket|sum|count)"
)
"""What the `etcd` job keeps: etcd's own health and disk latency; none of it starts `etcd_request`,
which is the API server's client-side view and stays with the `apiserver` job."""

LONG_RUNNING_VERBS: Final = "WATCH|WATCHLIST|CONNECT"
"""Their request 'duration' is a connection's lifetime; the API server's SLO leaves them out."""

DROPPED_LATENCY_BUCKETS: Final = "0.005|0.025|0.05|0.6|0.8|1.25|1.5|3|4|6|8|10|15|20|30|45|60"
"""Of Kubernetes 1.31's 24 apiserver_request_duration_seconds buckets, these 17 go; 0.1, 0.2,
0.4, 1, 2, 5 and +Inf stay: enough for a p99 against the alert's 2s threshold, at 7 series
instead of 24 for each resource and verb (the bulk of the API server's series)."""


def _keep(names: str) -> dict[str, Any]:
    return {"source_labels": ["__name__"], "regex": names, "action": "keep"}


def apiserver_job(service_account_dir: str) -> dict[str, Any]:
    """Every API server behind the `default/kubernetes` Service, with Prometheus' token (its
    ClusterRole grants `get` on the /metrics non-resource URL)."""
    return {
        "job_name": APISERVER_JOB,
        "scheme": "https",
        "authorization": {"credentials_file": f"{service_account_dir}/token"},
        # K3s's port 6443 (the supervisor's dynamiclistener, passing /metrics on to the API
        # server) has a certificate from the server CA naming kubernetes.default.svc on every
        # server (K3s pkg/cluster/https.go), whichever server's address the endpoint holds.
        "tls_config": {
            "ca_file": f"{service_account_dir}/ca.crt",
            "server_name": "kubernetes.default.svc",
        },
        "kubernetes_sd_configs": [{"role": "endpointslice", "namespaces": {"names": ["default"]}}],
        "relabel_configs": [
            {
                "source_labels": [
                    "__meta_kubernetes_service_name",
                    "__meta_kubernetes_endpointslice_port_name",
                ],
                "regex": "kubernetes;https",
                "action": "keep",
            },
        ],
        "metric_relabel_configs": [
            _keep(APISERVER_METRICS),
            {
                "source_labels": ["__name__", "verb"],
                "regex": f"apiserver_request_duration_seconds_bucket;({LONG_RUNNING_VERBS})",
                "action": "drop",
            },
            # Prometheus 3 writes `le` as a float (1 -> 1.0); 2.x as exposed.
            {
                "source_labels": ["__name__", "le"],
                "regex": f"apiserver_request_duration_seconds_bucket;({DROPPED_LATENCY_BUCKETS})"
                r"(\.0)?",
                "action": "drop",
            },
        ],
    }


def etcd_job() -> dict[str, Any]:
    """Each node K3s labels as an etcd member, on its metrics port. None on a single server with
    SQLite, where the job simply has no target."""
    return {
        "job_name": ETCD_JOB,
        "kubernetes_sd_configs": [{"role": "node"}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_node_label_node_role_kubernetes_io_etcd"],
                "regex": "true",
                "action": "keep",
            },
            {
                "source_labels": ["__meta_kubernetes_node_address_InternalIP"],
                "target_label": "__address__",
                "replacement": f"$1:{ETCD_METRICS_PORT}",
            },
            {
                "source_labels": ["__meta_kubernetes_node_name"],
                "target_label": "instance",
                "replacement": f"$1:{ETCD_METRICS_PORT}",
            },
        ],
        "metric_relabel_configs": [_keep(ETCD_METRICS)],
    }
