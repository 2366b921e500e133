"""What `bin/picluster forward` brings to the laptop on K3s, and the URLs the outputs print for it.

Prometheus and Alertmanager have no login of their own, so they get no Ingress (which would put
them on the LAN for anyone); they are reached through a port-forward over the Kubernetes API,
which the stack's kubeconfig (a cluster admin) already guards. Each service is forwarded to the
same port on 127.0.0.1, so `prometheusUrl` and `alertmanagerUrl` are fixed, laptop-side URLs,
valid while the forward runs. Grafana is forwarded too (it also answers on the ingress).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from components.alertmanager_config import ALERTMANAGER, ALERTMANAGER_PORT
from components.on_kubernetes.grafana import GRAFANA, GRAFANA_PORT, SUB_PATH
from components.on_kubernetes.prometheus import PROMETHEUS, PROMETHEUS_PORT

LOCAL_ADDRESS: Final = "127.0.0.1"
"""Where the forwarded ports listen: the laptop only, never its LAN address."""


@dataclass(frozen=True, kw_only=True)
class Forward:
    """One Service forwarded to the same port on the laptop."""

    service: str
    """The Service's name in the monitoring namespace."""
    port: int
    """Its port, and the laptop's port for it."""
    path: str = "/"
    """Where the UI answers (Grafana serves under its sub path)."""

    @property
    def url(self) -> str:
        """The laptop-side URL while the forward runs."""
        return f"http://{LOCAL_ADDRESS}:{self.port}{self.path}"


PROMETHEUS_FORWARD: Final = Forward(service=PROMETHEUS, port=PROMETHEUS_PORT)
ALERTMANAGER_FORWARD: Final = Forward(service=ALERTMANAGER, port=ALERTMANAGER_PORT)
GRAFANA_FORWARD: Final = Forward(service=GRAFANA, port=GRAFANA_PORT, path=f"{SUB_PATH}/")
MONITORING_FORWARDS: Final = (PROMETHEUS_FORWARD, ALERTMANAGER_FORWARD, GRAFANA_FORWARD)
"""Every Service `bin/picluster forward` forwards, in the monitoring namespace."""


def forward_command(stack: str) -> str:
    """The command that opens the forwards for `stack` (the `forwardCommand` output)."""
    return f"bin/picluster forward -s {stack}"
