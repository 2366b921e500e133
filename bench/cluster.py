"""Benchmark of the prod program and the node scripts; prints figures, asserts nothing.

    .venv/bin/python bench/cluster.py            # program figures (mocks only, a few seconds)
    .venv/bin/python bench/cluster.py --pi       # plus the node scripts on a simulated Pi

Program figures, under Pulumi's mocks: evaluation time for 3, 10 and 50 nodes next to an empty
program; SSH sessions per server and per agent (one remote command is one session); the longest
chain of remote steps from bare Pis to a ready cluster (memory and CPU: bench/footprint.py).
With --pi: wall time of the first and second run of the node scripts (facts, prepare, reboot;
then the gate after the reboot) on a simulated Raspberry Pi.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import Registration, Run, run, run_main, unwrap  # noqa: E402

COMMAND = "command:remote:Command"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nbench\n-----END OPENSSH PRIVATE KEY-----\n"
REPEATS = 3


def cluster_config(nodes: int, servers: int = 1) -> dict[str, Any]:
    """A prod config with `servers` servers and the rest agents."""
    return {
        "target": "k3s",
        "ssh": {"user": "pi"},
        "k3s": {"version": "v1.31.4+k3s1"},
        "nodes": [
            {
                "name": f"pi-{i}",
                "host": f"10.0.{i // 250}.{i % 250 + 1}",
                "role": "server" if i < servers else "agent",
            }
            for i in range(nodes)
        ],
        "sshPrivateKey": KEY,
    }


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def evaluate(nodes: int, servers: int = 1) -> tuple[float, Run]:
    """Median evaluation time (s) of the whole prod program, and one run's registrations."""
    times, result = [], None
    for _ in range(REPEATS):
        seconds, result = timed(
            lambda: run_main(
                cluster_config(nodes, servers), stack="bench", secret_keys=("sshPrivateKey",)
            )
        )
        times.append(seconds)
    assert result is not None
    return statistics.median(times), result


def longest_chain(result: Run) -> int:
    """Remote commands in the longest dependency chain."""
    commands = {r.urn: r for r in result.of_type(COMMAND)}
    memo: dict[str, int] = {}

    def depth(resource: Registration) -> int:
        if resource.urn not in memo:
            below = [commands[u] for u in resource.dependencies if u in commands]
            memo[resource.urn] = 1 + max((depth(r) for r in below), default=0)
        return memo[resource.urn]

    return max(depth(r) for r in commands.values())


def sessions_per_node(result: Run) -> Counter[str]:
    """Remote commands (SSH sessions on a first `pulumi up`) by the host they run on."""
    return Counter(unwrap(r.inputs["connection"])["host"] for r in result.of_type(COMMAND))


def program_figures() -> None:
    empty, _ = timed(lambda: run(lambda: None, {}))
    print("Program evaluation under mocks (median of 3 runs)")
    print(f"  empty program          {empty * 1000:8.0f} ms")
    results = {}
    for nodes in (3, 10, 50):
        seconds, result = evaluate(nodes)
        results[nodes] = result
        print(f"  {nodes:3d} nodes (1 server)  {seconds * 1000:8.0f} ms")
    seconds, ha = evaluate(10, servers=3)
    print(f"   10 nodes (3 servers) {seconds * 1000:8.0f} ms")

    sessions = sessions_per_node(results[10])
    first, agent = "10.0.0.1", "10.0.0.5"
    print("\nSSH sessions on a first `pulumi up` (one remote command each)")
    print(
        f"  first server           {sessions[first]:3d}   (prepare, gate, k3s, kubeconfig, SQLite "
        "snapshot timer, +1 drain and +1 node check per node)"
    )
    print(f"  each agent             {sessions[agent]:3d}   (prepare, gate, k3s)")
    print("  a re-run with no change opens none: commands only run when their inputs change")

    print("\nLongest chain of remote steps, bare Pis to a ready cluster")
    for nodes, result in results.items():
        print(f"  {nodes:3d} nodes, 1 server     {longest_chain(result)}")
    print(f"   10 nodes, 3 servers    {longest_chain(ha)}   (nodes join one at a time)")

    print("\n(Memory and CPU each workload requests: bench/footprint.py.)")


def pi_figures() -> None:
    from tests.integration import simpi

    reason = simpi.docker_unavailable_reason() or simpi.image_unavailable_reason()
    if reason is not None:
        print(f"\nNode scripts on a simulated Pi: skipped ({reason})")
        return
    build_seconds, image = timed(simpi.ensure_image)
    values = {"NODE_NAME": "bench-pi", "UPGRADE": "1"}  # the seed: apt-get update && upgrade
    steps = ["facts.sh", "prepare.sh", "reboot.sh"]
    with simpi.SimPiLab(image.tag) as lab:
        pi = lab.start_pi("bench-pi")
        figures = []
        for attempt in ("first", "second"):
            boot = pi.boot_id()
            seconds, (rc, out, err) = timed(lambda: simpi.run_steps(pi, steps, values))
            if rc != 0:
                print(f"\nprepare failed on the {attempt} run:\n{err}")
                return
            rebooted = "reboot scheduled" in out
            if rebooted:
                pi.wait_until_up(not_boot_id=boot)
            gate_seconds, (rc, _, err) = timed(lambda: simpi.run_steps(pi, ["cgroup-gate.sh"], {}))
            figures.append((attempt, seconds, gate_seconds, rebooted))
    print(f"\nNode scripts on a simulated Pi (image ready in {build_seconds:.1f} s)")
    for attempt, seconds, gate_seconds, rebooted in figures:
        note = "rebooted" if rebooted else "no reboot"
        print(f"  {attempt:6s} run  prepare {seconds:6.2f} s  gate {gate_seconds:5.2f} s  ({note})")
    first, second = figures[0][1], figures[1][1]
    print(f"  second/first prepare  {second / first * 100:5.1f} %   (goal: under 5 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the prod program and node scripts.")
    parser.add_argument("--pi", action="store_true", help="also time the scripts on a simulated Pi")
    args = parser.parse_args()
    program_figures()
    if args.pi:
        pi_figures()


if __name__ == "__main__":
    main()
