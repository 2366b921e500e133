"""What the rendered workloads ask of the cluster: CPU and memory requests and limits of every
Deployment, StatefulSet, DaemonSet and CronJob a program run declared, the way the scheduler
counts them.

A pod's effective request is the larger of its containers' sum and its largest init container
(init containers run one at a time, before the others); a DaemonSet runs one pod per node; a
CronJob's pod is counted as if it ran, since it may run while everything else does. Whatever a
renderer declares is counted, so a new workload (Alertmanager, say) enters the sum by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.harness import Run
from tests.k8s_manifests import manifests

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "CronJob")
MEMORY_BUDGET_MIB = 1536
"""app + monitoring on 3 Pis (issue 11): 1.5 GiB of memory requests."""

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_UNITS = {
    None: 1 / 2**20,
    "k": 1000 / 2**20,
    "M": 10**6 / 2**20,
    "G": 10**9 / 2**20,
    "T": 10**12 / 2**20,
    "Ki": 1 / 1024,
    "Mi": 1.0,
    "Gi": 1024.0,
    "Ti": 1024.0**2,
}


def mebibytes(quantity: str) -> float:
    match = _QUANTITY.match(quantity)
    if match is None or match[2] == "m":
        raise ValueError(f"{quantity!r} is not a memory quantity")
    return float(match[1]) * _MEMORY_UNITS[match[2]]


def millicores(quantity: str) -> float:
    match = _QUANTITY.match(quantity)
    if match is None or match[2] not in (None, "m"):
        raise ValueError(f"{quantity!r} is not a CPU quantity")
    return float(match[1]) * (1 if match[2] == "m" else 1000)


@dataclass(frozen=True)
class Footprint:
    """One workload's pods together: what they request and what they may use at most."""

    kind: str
    namespace: str
    name: str
    copies: int
    cpu_request_m: float
    cpu_limit_m: float
    memory_request_mib: float
    memory_limit_mib: float


def _pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def _pod_total(pod: dict[str, Any], bound: str, resource: str, parse: Any) -> float:
    def of(container: dict[str, Any]) -> float:
        value = container.get("resources", {}).get(bound, {}).get(resource)
        return parse(value) if value is not None else 0.0

    running = sum(of(c) for c in pod["containers"])
    first = max((of(c) for c in pod.get("initContainers", [])), default=0.0)
    return max(running, first)


def footprints(run: Run, nodes: int) -> list[Footprint]:
    """Every workload the run declared, DaemonSets counted once per node."""
    found = []
    for manifest in manifests(run):
        kind = manifest["kind"]
        if kind not in WORKLOAD_KINDS:
            continue
        copies = nodes if kind == "DaemonSet" else int(manifest["spec"].get("replicas", 1))
        pod = _pod_spec(manifest)
        found.append(
            Footprint(
                kind=kind,
                namespace=manifest["metadata"]["namespace"],
                name=manifest["metadata"]["name"],
                copies=copies,
                cpu_request_m=copies * _pod_total(pod, "requests", "cpu", millicores),
                cpu_limit_m=copies * _pod_total(pod, "limits", "cpu", millicores),
                memory_request_mib=copies * _pod_total(pod, "requests", "memory", mebibytes),
                memory_limit_mib=copies * _pod_total(pod, "limits", "memory", mebibytes),
            )
        )
    return sorted(found, key=lambda f: (f.namespace, f.kind, f.name))


def table(found: list[Footprint]) -> str:
    """A plain-text table with a total line."""
    lines = [
        f"{'namespace':18s} {'workload':30s} {'pods':>4s} {'cpu req':>8s} {'cpu lim':>8s} "
        f"{'mem req':>8s} {'mem lim':>8s}"
    ]
    for f in found:
        lines.append(
            f"{f.namespace:18s} {f.kind + '/' + f.name:30s} {f.copies:4d} "
            f"{f.cpu_request_m:7.0f}m {f.cpu_limit_m:7.0f}m "
            f"{f.memory_request_mib:6.0f}Mi {f.memory_limit_mib:6.0f}Mi"
        )
    lines.append(
        f"{'total':18s} {'':30s} {sum(f.copies for f in found):4d} "
        f"{sum(f.cpu_request_m for f in found):7.0f}m {sum(f.cpu_limit_m for f in found):7.0f}m "
        f"{sum(f.memory_request_mib for f in found):6.0f}Mi "
        f"{sum(f.memory_limit_mib for f in found):6.0f}Mi"
    )
    return "\n".join(lines)
