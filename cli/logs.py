"""`bin/picluster logs SERVICE [-s STACK] [-f] [--since 10m] [--tail N]`: a service's logs from
every one of its replicas, each line prefixed with where it came from.

Docker: `docker logs` of each container of the service (`api-1 | ...`, as `docker compose logs`
prefixes). K3s: `kubectl logs --prefix` of every pod its Deployment, StatefulSet or DaemonSet
selects (`[pod/api-7d9.../api] ...`), all containers, no line limit unless `--tail` gives one.
SERVICE is a name of the app model or a monitoring component; an unknown one gets the list.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

from cli import docker_stack
from cli.kube import Kubectl, selector
from cli.output import say
from cli.services import Service, UnknownServiceError, resolve
from cli.stack import Stack, StackError, add_stack_option, kubeconfig, load
from components.config import ConfigError, Target

_SINCE = re.compile(r"^[0-9]+[smh]$")


def _since(value: str) -> str:
    if not _SINCE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration such as 30s, 10m or 2h")
    return value


def _tail(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of lines")
    return int(value)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="a service's logs, from every replica, each line prefixed",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("service", metavar="SERVICE", help="frontend, postgres, a service, ...")
    add_stack_option(parser, "local")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.add_argument("--since", type=_since, help="only lines of the last 30s, 10m, 2h, ...")
    parser.add_argument("-n", "--tail", type=_tail, help="only the last N lines of each replica")
    parser.set_defaults(func=run)


def stream(sources: Sequence[tuple[str, list[str]]], out: IO[str] | None = None) -> int:
    """Run each (label, argv) at once and print its output line by line, prefixed with its
    label; the first non-zero exit status, or 0."""
    target = out or sys.stdout
    width = max(len(label) for label, _ in sources)
    lock = threading.Lock()
    processes = [
        (label, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for label, argv in sources
    ]

    def pump(label: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with lock:
                target.write(f"{label.ljust(width)} | {line}\n")
                target.flush()

    threads = [
        threading.Thread(target=pump, args=(label, process), daemon=True)
        for label, process in processes
    ]
    for thread in threads:
        thread.start()
    try:
        codes = [process.wait() for _, process in processes]
        for thread in threads:
            thread.join()
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
    return next((code for code in codes if code != 0), 0)


def docker_sources(
    stack: Stack, service: Service, args: argparse.Namespace
) -> list[tuple[str, list[str]]]:
    """`docker logs` of each running-or-not container of `service` (its migrations aside)."""
    found = [
        c for c in docker_stack.containers(stack) if c.service == service.name and not c.run_once
    ]
    if not found:
        raise StackError(
            f"no container of {service.name} on the Docker daemon: is the stack up "
            f"(`bin/pulumi up -s {stack.name}`)?"
        )
    options = ["logs"]
    if args.follow:
        options.append("--follow")
    if args.since:
        options += ["--since", args.since]
    if args.tail is not None:
        options += ["--tail", str(args.tail)]
    prefix = f"{stack.docker_prefix}-"
    return [(c.name.removeprefix(prefix), stack.docker_argv(*options, c.name)) for c in found]


def kubectl_logs(kubectl: Kubectl, service: Service, args: argparse.Namespace) -> list[str]:
    """`kubectl logs` of every pod of the service's workload, prefixed by pod and container."""
    namespace = service.namespace
    workloads = kubectl.get("deployments,statefulsets,daemonsets", "--namespace", namespace)
    matches = [w for w in workloads.get("items", []) if w["metadata"]["name"] == service.name]
    if not matches:
        raise StackError(
            f"no Deployment, StatefulSet or DaemonSet {service.name} in namespace {namespace}: "
            "is the stack up (`bin/pulumi up -s prod`)?"
        )
    labels = selector(matches[0])
    pods = kubectl.get("pods", "--namespace", namespace, "--selector", labels).get("items", [])
    if not pods:
        raise StackError(f"{matches[0]['kind'].lower()}/{service.name} has no pods")
    containers = sum(len(p["spec"].get("containers") or []) for p in pods)
    options = [
        "logs", "--namespace", namespace, "--selector", labels, "--prefix", "--all-containers",
        f"--max-log-requests={max(5, containers)}",
        f"--tail={args.tail if args.tail is not None else -1}",
    ]  # fmt: skip
    if args.follow:
        options.append("--follow")
    if args.since:
        options.append(f"--since={args.since}")
    return kubectl.argv(*options)


def run(args: argparse.Namespace) -> int:
    try:
        stack = load(args.stack)
        service = resolve(stack, args.service)
        if stack.target is Target.K3S:
            with kubeconfig(stack) as path:
                argv = kubectl_logs(Kubectl(path), service, args)
                return subprocess.run(argv, check=False).returncode
        return stream(docker_sources(stack, service, args))
    except (ConfigError, StackError, UnknownServiceError) as error:
        say("logs", str(error))
        return 2
    except KeyboardInterrupt:
        return 130
