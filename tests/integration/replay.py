"""Replay what the engine would run, on simulated Pis: each remote step of a plan, in the engine's
dependency order, over real SSH, each step's real output feeding the steps after it.

The program runs under mocks (`tests/harness.py`); `tests/engine_rules.plan` decides which
`Command`s are created, updated, replaced or deleted. `replay` then runs, for each of them, the
command the provider would run (pulumi-command `remote/commandController.go`: `create` on create,
`update` on update, `create` then the old one's `delete` on replace, `delete` with the OLD stdin
on delete) with its stdin, on the Pi its connection names.

As the engine does, a step's outputs reach the steps that depend on it: after each step the
program is evaluated again with the stdout every step really printed (the CA in the kubeconfig
read goes into the joiners' token, an install's output into the Ready check's `AFTER_RUN`), so a
step's stdin is what the engine would send at that point of the update. The engine runs steps
whose dependencies are done in parallel; replay runs them one at a time in a topological order
of the same graph, so an order the graph does not impose is never relied on.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tests.engine_rules import COMMAND, Action, Plan, plan
from tests.harness import Registration, Run, unwrap
from tests.integration import simpi

Evaluate = Callable[[Mapping[str, str]], Run]
"""Runs the program under mocks, given the stdout each remote step really printed so far."""


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


@dataclass
class State:
    """What the engine's state holds after an update: the registrations and the real stdouts."""

    registrations: list[Registration] = field(default_factory=list)
    stdouts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    """One replayed `pulumi up`."""

    plan: Plan
    """The plan before any step ran, with every output as the state holds it: the steps whose
    own inputs changed (a preview also shows the steps that read their outputs, as unknown)."""
    ran: list[Ran]
    state: State
    """The state afterwards (registrations evaluated with every real stdout)."""

    def failed(self) -> Ran | None:
        """The step that failed, if one did (the update stopped there)."""
        return next((r for r in self.ran if r.rc != 0), None)


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


def _run(pi: simpi.SimPi, command: str, stdin: str, timeout: float) -> tuple[int, str, str]:
    argv = pi.ssh_argv(*command.split())
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    return result.returncode, result.stdout, result.stderr


def replay(
    evaluate: Evaluate,
    state: State,
    pis: Sequence[simpi.SimPi],
    *,
    timeout: float = 300,
) -> Update:
    """One `pulumi up` from `state`: run the remote steps the engine would run on `pis` (matched
    by SSH port); stops at the first failure, as the engine stops scheduling new steps."""
    by_port = {pi.port: pi for pi in pis}
    stdouts = dict(state.stdouts)
    preview = plan(state.registrations, evaluate(stdouts).registrations)
    done: set[str] = set()
    ran: list[Ran] = []
    replaced: list[Registration] = []
    while True:
        current = evaluate(stdouts)
        actions = {
            s.urn: s.action
            for s in plan(state.registrations, current.registrations).steps
            if s.type == COMMAND
        }
        pending = [
            reg
            for reg in topological([r for r in current.registrations if r.type == COMMAND])
            if actions.get(reg.urn) not in (None, Action.DELETE) and reg.urn not in done
        ]
        if not pending:
            break
        reg = pending[0]
        action = actions[reg.urn]
        if action is Action.REPLACE:
            replaced.append(next(r for r in state.registrations if r.urn == reg.urn))
        # A replacement is created first (create-before-delete); the old one is deleted last.
        command = reg.value("update" if action is Action.UPDATE else "create")
        step = _step(reg, action, command, str(reg.value("stdin")), by_port, timeout)
        ran.append(step)
        done.add(reg.urn)
        if step.rc != 0:
            return Update(preview, ran, state)
        stdouts[reg.name] = step.stdout.removesuffix("\n")
    # Deletes (of removed and of replaced commands) come last, in reverse dependency order, each
    # with its old stdin.
    final = evaluate(stdouts)
    gone = {s.urn for s in plan(state.registrations, final.registrations).steps}
    removed = [
        r
        for r in state.registrations
        if r.type == COMMAND and r.urn in gone and r.urn not in {x.urn for x in final.registrations}
    ]
    for reg in reversed(topological([*removed, *replaced])):
        if reg.value("delete"):
            step = _step(
                reg, Action.DELETE, reg.value("delete"), str(reg.value("stdin")), by_port, timeout
            )
            ran.append(step)
            if step.rc != 0:
                return Update(preview, ran, state)
    live = {r.name for r in final.registrations if r.type == COMMAND}
    return Update(
        preview,
        ran,
        State(final.registrations, {k: v for k, v in stdouts.items() if k in live}),
    )


def _step(
    reg: Registration,
    action: Action,
    command: str,
    stdin: str,
    pis: Mapping[int, simpi.SimPi],
    timeout: float,
) -> Ran:
    connection = unwrap(reg.inputs["connection"])
    started = time.monotonic()
    rc, out, err = _run(pis[int(connection["port"])], command, stdin, timeout)
    return Ran(reg.name, action, rc, out, err, started, time.monotonic())
