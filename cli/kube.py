"""The prod stack's cluster through `kubectl` on this machine, with the stack's own kubeconfig.

The kubeconfig is the stack output `kubeconfig` (a secret), written to a 0600 file for the
command's lifetime (cli/stack.py `kubeconfig`); `KUBECONFIG` and `~/.kube/config` are never
read, so a command always reaches the cluster the stack built.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.stack import StackError

KUBECTL_SECONDS = 60.0


@dataclass(frozen=True)
class Kubectl:
    """`kubectl` with one kubeconfig."""

    kubeconfig: Path

    def argv(self, *args: str) -> list[str]:
        return ["kubectl", "--kubeconfig", str(self.kubeconfig), *args]

    def run(self, *args: str, timeout: float = KUBECTL_SECONDS) -> subprocess.CompletedProcess[str]:
        """`kubectl ARGS`, captured (not checked)."""
        argv = self.argv(*args)
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise StackError(
                "no `kubectl` on PATH: the K3s commands need it on this machine "
                "(README: Prerequisites)"
            ) from None
        except subprocess.TimeoutExpired:
            raise StackError(
                f"`kubectl {' '.join(args)}` gave no answer in {timeout:.0f} s"
            ) from None

    def get(self, *args: str) -> dict[str, Any]:
        """`kubectl get ARGS -o json`; StackError with kubectl's message when it fails."""
        result = self.run("get", *args, "--output", "json")
        if result.returncode != 0:
            raise StackError(f"`kubectl get {' '.join(args)}` failed: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def items(self, kinds: str, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        """The objects of `kinds` (comma-separated) in each of `namespaces`."""
        found: list[dict[str, Any]] = []
        for namespace in namespaces:
            found += self.get(kinds, "--namespace", namespace).get("items", [])
        return found


def selector(workload: dict[str, Any]) -> str:
    """A Deployment's, StatefulSet's or DaemonSet's pod selector as `-l` takes it."""
    labels = workload["spec"]["selector"].get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
