"""Replay what the engine would run, on simulated Pis: each remote step of a plan, in the engine's
dependency order, over real SSH.

The program runs under mocks (`tests/harness.py`); `tests/engine_rules.plan` decides which
`Command`s are created, updated or deleted. `replay` then runs, for each of them, the command the
provider would run (pulumi-command `remote/commandController.go`: `create` on create, `update` on
update, `create` then the old one's `delete` on replace, `delete` with the OLD stdin on delete)
with its stdin, on the Pi its connection names. The engine runs steps whose dependencies are done
in parallel; replay runs them one at a time in a topological order of the same graph, so an order
the graph does not impose is never relied on.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tests.engine_rules import COMMAND, Action, Plan
from tests.harness import Registration, unwrap
from tests.integration import simpi


@dataclass(frozen=True)
class Ran:
    """One remote step as replayed."""

    name: str
    action: Action
    rc: int
    stdout: str
    stderr: str
    started: float
    ended: float


def topological(registrations: Sequence[Registration]) -> list[Registration]:
    """`registrations` ordered so that each comes after everything it depends on."""
    by_urn = {r.urn: r for r in registrations}
    done: set[str] = set()
    order: list[Registration] = []

    def visit(reg: Registration, path: tuple[str, ...] = ()) -> None:
        if reg.urn in done:
            return
        assert reg.urn not in path, f"dependency cycle through {reg.name}"
        for dep in reg.dependencies:
            if dep in by_urn:
                visit(by_urn[dep], (*path, reg.urn))
        done.add(reg.urn)
        order.append(reg)

    for reg in registrations:
        visit(reg)
    return order


def depends_on(registrations: Sequence[Registration], later: str, earlier: str) -> bool:
    """Whether the step named `later` (transitively) waits for the one named `earlier`."""
    by_urn = {r.urn: r for r in registrations}
    by_name = {r.name: r for r in registrations if r.type == COMMAND}
    target = by_name[earlier].urn
    seen: set[str] = set()
    stack = list(by_name[later].dependencies)
    while stack:
        urn = stack.pop()
        if urn == target:
            return True
        if urn in seen or urn not in by_urn:
            continue
        seen.add(urn)
        stack.extend(by_urn[urn].dependencies)
    return False


def _pi_for(reg: Registration, pis: Mapping[int, simpi.SimPi]) -> simpi.SimPi:
    connection = unwrap(reg.inputs["connection"])
    return pis[int(connection["port"])]


def _run(pi: simpi.SimPi, command: str, stdin: str, timeout: float) -> tuple[int, str, str]:
    argv = pi.ssh_argv(*command.split())
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    return result.returncode, result.stdout, result.stderr


def replay(
    plan: Plan,
    before: Sequence[Registration],
    after: Sequence[Registration],
    pis: Sequence[simpi.SimPi],
    *,
    timeout: float = 300,
) -> list[Ran]:
    """Run the plan's remote steps on `pis` (matched by SSH port); stops at the first failure,
    as the engine stops scheduling new steps once one failed."""
    by_port = {pi.port: pi for pi in pis}
    actions = {s.urn: s.action for s in plan.steps if s.type == COMMAND}
    ran: list[Ran] = []
    for reg in topological([r for r in after if r.type == COMMAND]):
        action = actions.get(reg.urn)
        if action is None or action is Action.DELETE:
            continue
        # A replacement is created first (create-before-delete); the old one is deleted at the end.
        command = reg.value("update" if action is Action.UPDATE else "create")
        ran.append(_step(reg, action, command, str(reg.value("stdin")), by_port, timeout))
        if ran[-1].rc != 0:
            return ran
    # Deletes (of removed and of replaced commands) come last, in reverse dependency order, each
    # with its old stdin.
    gone = [
        r
        for r in before
        if r.type == COMMAND and actions.get(r.urn) in (Action.DELETE, Action.REPLACE)
    ]
    for reg in reversed(topological(gone)):
        if reg.value("delete"):
            step = _step(
                reg, Action.DELETE, reg.value("delete"), str(reg.value("stdin")), by_port, timeout
            )
            ran.append(step)
            if step.rc != 0:
                return ran
    return ran


def _step(
    reg: Registration,
    action: Action,
    command: str,
    stdin: str,
    pis: Mapping[int, simpi.SimPi],
    timeout: float,
) -> Ran:
    started = time.monotonic()
    rc, out, err = _run(_pi_for(reg, pis), command, stdin, timeout)
    return Ran(reg.name, action, rc, out, err, started, time.monotonic())
