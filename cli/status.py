"""`bin/picluster status [-s STACK]`: is everything up, in the spirit of `docker compose ps` and
`k3sup ready`.

Nodes (K3s: each node's role, readiness and version, and every configured Pi present; Docker:
the daemon), workloads (K3s: the pods of picluster's namespaces; Docker: the stack's
containers), the stack's URLs, and the newest alerts. Exit status 0 when all is healthy; 1, with
one line on stderr saying what is not; 2 when the stack cannot be read at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cli import alerts, docker_stack
from cli.docker_stack import Container
from cli.kube import Kubectl
from cli.output import say, table
from cli.services import NAMESPACES, docker_containers
from cli.stack import Stack, StackError, add_stack_option, kubeconfig, load, urls
from components.config import ConfigError, Target

SUMMARY_PROBLEMS = 4
"""How many problems the one summary line names before `(+N more)`."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="nodes, workloads, URLs and the newest alerts; exit 1 when something is unhealthy",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    add_stack_option(parser, "local")
    parser.set_defaults(func=run)


@dataclass
class Report:
    """What `status` prints: titled sections, and the problems found."""

    sections: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, title: str, body: str) -> None:
        self.sections.append((title, body))

    def text(self) -> str:
        return "\n\n".join(f"{title}\n{body}" for title, body in self.sections)


def summary(problems: Sequence[str]) -> str:
    """The one line that says what is not healthy."""
    shown = "; ".join(problems[:SUMMARY_PROBLEMS])
    more = len(problems) - SUMMARY_PROBLEMS
    return f"not healthy: {shown}" + (f" (+{more} more)" if more > 0 else "")


# --- Docker --------------------------------------------------------------------------------------


def format_containers(containers: Sequence[Container]) -> str:
    if not containers:
        return "  none"
    rows = [
        [c.service, c.name, c.shown_state, c.health or "-", str(c.restarts)] for c in containers
    ]
    return table(["SERVICE", "CONTAINER", "STATE", "HEALTH", "RESTARTS"], rows)


def container_problems(stack: Stack, containers: Sequence[Container]) -> list[str]:
    """Each container that is not running or healthy, and each one the program declares that
    the daemon does not have."""
    if not containers:
        return [
            f"no container of the stack on the daemon: is it up (`bin/pulumi up -s {stack.name}`)?"
        ]
    problems = [p for p in (c.problem for c in containers) if p is not None]
    present = {c.name for c in containers}
    problems += [f"no container {name}" for name in docker_containers(stack) if name not in present]
    return problems


def docker_report(stack: Stack, report: Report) -> None:
    host = stack.docker_host or os.environ.get("DOCKER_HOST") or "the current Docker context"
    try:
        version = docker_stack.daemon_version(stack)
        report.add("DOCKER", f"  daemon {version} at {host}")
    except StackError as error:
        report.add("DOCKER", f"  {error}")
        report.problems.append(str(error))
        return
    containers = docker_stack.containers(stack)
    report.add("CONTAINERS", format_containers(containers))
    report.problems += container_problems(stack, containers)
    _urls(stack, report, None)
    if stack.settings.monitoring.enabled:
        _alerts(report, lambda: alerts.from_docker(stack))


# --- K3s -----------------------------------------------------------------------------------------


def _condition(item: dict[str, Any], kind: str) -> str:
    for condition in (item.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return str(condition.get("status"))
    return "Unknown"


def node_role(node: dict[str, Any]) -> str:
    labels = node["metadata"].get("labels") or {}
    control = labels.get("node-role.kubernetes.io/control-plane") or labels.get(
        "node-role.kubernetes.io/master"
    )
    return "server" if control == "true" else "agent"


def format_nodes(nodes: Sequence[dict[str, Any]]) -> str:
    if not nodes:
        return "  none"
    rows = [
        [
            n["metadata"]["name"],
            node_role(n),
            "Ready" if _condition(n, "Ready") == "True" else "NotReady",
            str(((n.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion") or "?"),
        ]
        for n in nodes
    ]
    return table(["NODE", "ROLE", "STATUS", "VERSION"], rows)


def node_problems(stack: Stack, nodes: Sequence[dict[str, Any]]) -> list[str]:
    """Each node not Ready, and each configured Pi the cluster does not have."""
    problems = [
        f"node {n['metadata']['name']} is not Ready"
        for n in nodes
        if _condition(n, "Ready") != "True"
    ]
    present = {n["metadata"]["name"] for n in nodes}
    problems += [
        f"node {node.name} (picluster:nodes) is not in the cluster"
        for node in stack.settings.nodes
        if node.name not in present
    ]
    return problems


def pod_status(pod: dict[str, Any]) -> str:
    """What `kubectl get pods` shows in STATUS, in short."""
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Unknown")
    if phase == "Succeeded":
        return "Completed"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        for kind in ("waiting", "terminated"):
            reason = (state.get(kind) or {}).get("reason")
            if reason:
                return str(reason)
    return phase


def _ready(pod: dict[str, Any]) -> tuple[int, int]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len(pod["spec"].get("containers") or [])
    return sum(1 for c in statuses if c.get("ready")), total


def _restarts(pod: dict[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(c.get("restartCount") or 0) for c in statuses)


def _owned_by_job(pod: dict[str, Any]) -> bool:
    return any(o.get("kind") == "Job" for o in pod["metadata"].get("ownerReferences") or [])


def format_pods(pods: Sequence[dict[str, Any]]) -> str:
    if not pods:
        return "  none"
    rows = []
    for pod in pods:
        ready, total = _ready(pod)
        rows.append(
            [
                pod["metadata"]["namespace"],
                pod["metadata"]["name"],
                f"{ready}/{total}",
                pod_status(pod),
                str(_restarts(pod)),
                str(pod["spec"].get("nodeName") or "-"),
            ]
        )
    return table(["NAMESPACE", "POD", "READY", "STATUS", "RESTARTS", "NODE"], rows)


def pod_problems(pods: Sequence[dict[str, Any]]) -> list[str]:
    """Each pod that should run and is not ready (a Job's pods are judged by their Job)."""
    problems: list[str] = []
    for pod in pods:
        where = f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}"
        status = pod_status(pod)
        if _owned_by_job(pod) or status in ("Completed", "Terminating"):
            continue
        ready, total = _ready(pod)
        if ready < total:
            problems.append(f"{where} is {status} ({ready}/{total} ready)")
    return problems


def workload_problems(workloads: Sequence[dict[str, Any]]) -> list[str]:
    """Each Deployment, StatefulSet or DaemonSet with fewer ready pods than it wants, and each
    Job that failed (a backup, a migration)."""
    problems: list[str] = []
    for item in workloads:
        kind = item["kind"]
        where = f"{kind.lower()}/{item['metadata']['name']}"
        status = item.get("status") or {}
        if kind == "Job":
            if _condition(item, "Failed") == "True":
                problems.append(f"{where} failed")
            continue
        if kind == "DaemonSet":
            wanted = int(status.get("desiredNumberScheduled") or 0)
            ready = int(status.get("numberReady") or 0)
        else:
            wanted = int((item.get("spec") or {}).get("replicas", 1))
            ready = int(status.get("readyReplicas") or 0)
        if ready < wanted:
            problems.append(f"{where}: {ready} of {wanted} ready")
    return problems


def k3s_report(stack: Stack, report: Report) -> None:
    outputs = stack.outputs(show_secrets=True)  # the kubeconfig; only the URLs are shown
    with kubeconfig(stack, outputs) as path:
        kubectl = Kubectl(path)
        try:
            nodes = kubectl.get("nodes").get("items", [])
        except StackError as error:
            report.add("NODES", f"  the API server does not answer: {error}")
            report.problems.append(f"the API server does not answer: {error}")
            return
        report.add("NODES", format_nodes(nodes))
        report.problems += node_problems(stack, nodes)
        pods = kubectl.items("pods", NAMESPACES)
        report.add("PODS", format_pods(pods))
        report.problems += pod_problems(pods)
        report.problems += workload_problems(
            kubectl.items("deployments,statefulsets,daemonsets,jobs", NAMESPACES)
        )
        _urls(stack, report, outputs)
        if stack.settings.monitoring.enabled:
            _alerts(report, lambda: alerts.from_cluster(kubectl))


# --- both ----------------------------------------------------------------------------------------


def _urls(stack: Stack, report: Report, outputs: dict[str, Any] | None) -> None:
    try:
        found = urls(outputs if outputs is not None else stack.outputs())
    except StackError as error:
        # Only the Docker target gets here (K3s needed the outputs first): what runs is judged
        # from the daemon, so this is said, not counted.
        report.add("URLS", f"  {error}")
        return
    if not found:
        report.add("URLS", f"  none yet: run `bin/pulumi up -s {stack.name}`")
        return
    report.add("URLS", table(["OUTPUT", "URL"], [[k, v] for k, v in found]))


def _alerts(report: Report, fetch: Any) -> None:
    try:
        found: list[dict[str, Any]] = fetch()
    except StackError as error:
        report.add("ALERTS", f"  {error}")
        report.problems.append("Alertmanager does not answer")
        return
    report.add("ALERTS (newest first)", alerts.format_alerts(found, datetime.now(UTC)))
    active = alerts.firing(found)
    if active:
        names = sorted({str((a.get("labels") or {}).get("alertname")) for a in active})
        count = f"{len(active)} alert{'s' if len(active) > 1 else ''}"
        report.problems.append(f"{count} firing ({', '.join(names)})")


def run(args: argparse.Namespace) -> int:
    report = Report()
    try:
        stack = load(args.stack)
        report.add("STACK", f"  {stack.name} ({stack.target.value})")
        if stack.target is Target.K3S:
            k3s_report(stack, report)
        else:
            docker_report(stack, report)
    except (ConfigError, StackError) as error:
        if report.sections:
            print(report.text(), flush=True)
        say("status", str(error))
        return 2
    print(report.text(), flush=True)
    if report.problems:
        print(summary(report.problems), file=sys.stderr)
        return 1
    print("\nhealthy")
    return 0
