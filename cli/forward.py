"""`bin/picluster forward [-s STACK]` (K3s): Prometheus, Alertmanager and Grafana on this
machine's loopback, until Ctrl-C.

One `kubectl port-forward --address 127.0.0.1` per Service of the monitoring namespace
(prometheus 9090, alertmanager 9093, grafana 3000; Grafana answers under /grafana/, as behind
the Ingress), with the stack's kubeconfig output in a 0600 file that is deleted as soon as every
forward has started (kubectl read it then) and in any case on exit. The URLs are printed once
all three listen. `--ports` moves them when a port is taken (the local stack publishes the same
ones).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cli.kube import Kubectl
from cli.output import say
from cli.services import K3S_MONITORING
from cli.stack import StackError, add_stack_option, kubeconfig, load
from components.config import ConfigError, Target
from components.on_kubernetes import forwards

ADDRESS = forwards.LOCAL_ADDRESS
START_SECONDS = 30.0


@dataclass(frozen=True)
class Forward:
    """One Service forwarded to loopback: reach's definition (the outputs' URLs), titled."""

    title: str
    target: forwards.Forward

    @property
    def service(self) -> str:
        return self.target.service

    @property
    def port(self) -> int:
        """The Service's port, and the local one unless `--ports` moves it."""
        return self.target.port

    @property
    def path(self) -> str:
        return self.target.path

    @property
    def namespace(self) -> str:
        return K3S_MONITORING[self.service]


FORWARDS: tuple[Forward, ...] = tuple(
    Forward(title, target)
    for title, target in zip(
        ("Prometheus", "Alertmanager", "Grafana"), forwards.MONITORING_FORWARDS, strict=True
    )
)
"""components/on_kubernetes/forwards.py's forwards, whose URLs the stack outputs print."""


def _ports(value: str) -> tuple[int, ...]:
    parts = value.split(",")
    if len(parts) != len(FORWARDS) or not all(p.isdigit() and 0 < int(p) < 65536 for p in parts):
        names = ",".join(f.title for f in FORWARDS)
        raise argparse.ArgumentTypeError(
            f"give {len(FORWARDS)} ports, for {names}: 19090,19093,13000"
        )
    return tuple(int(p) for p in parts)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "forward",
        help="K3s: Prometheus, Alertmanager and Grafana on 127.0.0.1 until Ctrl-C",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    add_stack_option(parser, "prod")
    parser.add_argument(
        "--ports",
        type=_ports,
        default=tuple(f.port for f in FORWARDS),
        help="local ports for Prometheus,Alertmanager,Grafana (default: 9090,9093,3000)",
    )
    parser.set_defaults(func=run)


def urls(ports: Sequence[int]) -> list[tuple[str, str]]:
    return [
        (f.title, f"http://{ADDRESS}:{p}{f.path}") for f, p in zip(FORWARDS, ports, strict=True)
    ]


def port_forward_argv(kubectl: Kubectl, forward: Forward, local: int) -> list[str]:
    return kubectl.argv(
        "port-forward", "--namespace", forward.namespace, "--address", ADDRESS,
        f"service/{forward.service}", f"{local}:{forward.port}",
    )  # fmt: skip


class Forwarder:
    """The running `kubectl port-forward` processes."""

    def __init__(self) -> None:
        self.processes: list[tuple[Forward, subprocess.Popen[str]]] = []
        self._started: dict[int, threading.Event] = {}
        self._errors: dict[int, list[str]] = {}

    def start(self, forward: Forward, argv: list[str]) -> None:
        try:
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                text=True,
            )  # fmt: skip
        except FileNotFoundError:
            raise StackError(
                "no `kubectl` on PATH: the K3s commands need it on this machine "
                "(README: Prerequisites)"
            ) from None
        started, errors = threading.Event(), []
        self._started[process.pid], self._errors[process.pid] = started, errors

        def read_out() -> None:
            assert process.stdout is not None
            for line in process.stdout:  # "Forwarding from ...", then one line per connection
                if line.startswith("Forwarding from"):
                    started.set()

        def read_err() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                errors.append(line.rstrip())

        for reader in (read_out, read_err):
            threading.Thread(target=reader, daemon=True).start()
        self.processes.append((forward, process))

    def wait_started(self, timeout: float) -> str | None:
        """None once every forward listens; else what went wrong."""
        deadline = time.monotonic() + timeout
        for forward, process in self.processes:
            started = self._started[process.pid]
            while not started.wait(0.1):
                if process.poll() is not None or time.monotonic() > deadline:
                    return self.failure(forward, process)
        return None

    def failure(self, forward: Forward, process: subprocess.Popen[str]) -> str:
        if process.poll() is None:
            time.sleep(0.2)
        detail = " ".join(self._errors[process.pid][-3:]) or "no message"
        return f"the forward of {forward.namespace}/{forward.service} failed: {detail}"

    def wait_any_exit(self) -> str:
        """Block until one forward ends (the connection dropped); what it said."""
        while True:
            for forward, process in self.processes:
                if process.poll() is not None:
                    return self.failure(forward, process)
            time.sleep(0.2)

    def stop(self) -> None:
        for _, process in self.processes:
            if process.poll() is None:
                process.terminate()
        for _, process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def run(args: argparse.Namespace) -> int:
    forwarder = Forwarder()
    try:
        stack = load(args.stack)
        if stack.target is not Target.K3S:
            raise StackError(
                f"stack {stack.name} runs on Docker, which publishes these already: "
                f"`bin/picluster status -s {stack.name}` lists the URLs"
            )
        with kubeconfig(stack) as path:
            kubectl = Kubectl(path)
            for forward, local in zip(FORWARDS, args.ports, strict=True):
                forwarder.start(forward, port_forward_argv(kubectl, forward, local))
            problem = forwarder.wait_started(START_SECONDS)
        # The kubeconfig file is gone here: every kubectl has read it.
        if problem is not None:
            raise StackError(problem)
        for title, url in urls(args.ports):
            print(f"{title:<13} {url}", flush=True)
        print("Forwarding until Ctrl-C.", flush=True)
        problem = forwarder.wait_any_exit()
        say("forward", problem)
        return 1
    except (ConfigError, StackError) as error:
        say("forward", str(error))
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        forwarder.stop()
        sys.stdout.flush()
