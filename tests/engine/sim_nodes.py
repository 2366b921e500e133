"""Simulated Pis, as the engine tests that run the node components (with the K3s installer
double) or their SSH connection against them start them: test_k3s_update, test_node_recovery,
test_remove_servers, test_ssh_auth."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests.availability import ENGINE, sim_pis_unavailable_reason, unavailable
from tests.integration import simpi
from tests.integration.test_k3s_scripts import DOUBLE, DOUBLE_ON_PI


def image() -> str:
    """The sim-Pi image's tag, built once per recipe hash; the engine test skips (or fails, with
    PICLUSTER_REQUIRE_ENGINE=1) when sim-Pis cannot run here."""
    reason = sim_pis_unavailable_reason()
    if reason:
        unavailable(reason, ENGINE)
    return simpi.ensure_image().tag


def start(sim: simpi.SimPiLab, nodes: Iterable[tuple[str, str]]) -> dict[str, simpi.SimPi]:
    """One sim-Pi per `(name, role)`, each with the installer double where the install looks."""
    pis = {name: sim.start_pi(name) for name, _ in nodes}
    for pi in pis.values():
        pi.put(DOUBLE_ON_PI, DOUBLE.read_bytes())
    return pis


def host_key(pi: simpi.SimPi) -> str:
    """The Pi's ed25519 host key as `type key`, as `ssh-keyscan` prints it after the address."""
    return " ".join(pi.read("/etc/ssh/ssh_host_ed25519_key.pub").split()[:2])


def describe(
    pis: dict[str, simpi.SimPi], nodes: Iterable[tuple[str, str]], *, host_keys: bool = False
) -> list[dict[str, Any]]:
    """The nodes as the tests' programs read them (`pis` config): name, role, SSH port, address,
    and with `host_keys` the pinned host key."""
    return [
        {
            "name": name,
            "role": role,
            "port": pis[name].port,
            "address": pis[name].exec("hostname", "-I").stdout.split()[0],
            **({"hostKey": host_key(pis[name])} if host_keys else {}),
        }
        for name, role in nodes
    ]
