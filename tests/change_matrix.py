"""The change matrix: each routine change to a stack, and what the engine would do about it.

Each `Change` edits a base configuration (the committed stack, with given secrets and a service
list); the program runs under mocks before and after, and `tests/engine_rules.plan` says which
resources are created, updated, replaced and deleted, which remote steps re-run, which `delete`
commands run and what the engine refuses. `tests/unit/test_change_matrix.py` pins the exact
sets; the "What a change does" table in CONTRIBUTING.md and `bench/change_steps.py` are
generated from here:

    .venv/bin/python -m tests.change_matrix        # prints CONTRIBUTING.md's table
"""

from __future__ import annotations

import atexit
import copy
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from components.app_model import DEMO_API
from components.config import SECRET_KEYS
from tests.engine_rules import COMMAND, Action, Plan, plan
from tests.harness import Registration, Run, run_main, stack_file_config, unwrap

PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-change-matrix\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
SECRETS = {
    "dbPassword": "matrix-db-password-1",
    "grafanaAdminPassword": "matrix-grafana-password-1",
}
PROD_SECRETS = {
    **SECRETS,
    "sshPrivateKey": PRIVATE_KEY,
    "k3sToken": "K10matrix-token-0123456789abcdef",
}
NTFY_ADDED = {
    "alertsNtfyUrl": "https://ntfy.sh/picluster-matrix-topic",
    "monitoring": {"alerts": {"ntfy": {"minSeverity": "critical"}}},
}
"""An alert receiver added: its secret URL and its settings."""
SERVICES = [
    {"name": "lobby", "image": "ghcr.io/studio/lobby:1.4.2", "port": 8081, "path": "/lobby"},
    {"name": "scores", "image": "ghcr.io/studio/scores:2.0.0", "port": 9000, "path": "/scores"},
]
Config = dict[str, Any]


def base(stack: str) -> Config:
    """The committed stack with two services and every secret given."""
    config = copy.deepcopy(stack_file_config(stack))
    config.setdefault("app", {})["services"] = copy.deepcopy(SERVICES)
    return {**config, **(PROD_SECRETS if stack == "prod" else SECRETS)}


def _edit(fn: Callable[[Config], object]) -> Callable[[Config], Config]:
    def apply(config: Config) -> Config:
        changed = copy.deepcopy(config)
        fn(changed)
        return changed

    return apply


def _set(**values: Any) -> Callable[[Config], Config]:
    """An edit that sets top-level keys (a secret rotated, a new setting)."""
    return _edit(lambda c: c.update(values))


def _node(name: str, host: str, role: str) -> dict[str, str]:
    return {"name": name, "host": host, "role": role}


@dataclass(frozen=True)
class Change:
    """One routine change to a stack's configuration."""

    title: str
    """What the user changes, as the table in CONTRIBUTING.md names it."""
    stack: str
    """`prod` (K3s on Pis) or `local` (Docker)."""
    edit: Callable[[Config], Config]
    note: str = ""
    """What the plan alone does not show (a script that refuses on the node, a warning)."""
    before: Callable[[Config], Config] | None = None
    """An edit of the base made before the change (a service built from source), when the
    change needs one; None: the base itself."""


@cache
def source_versions() -> tuple[Path, Path]:
    """Two versions of one service's source folder: the demo API, then the same with one line
    of server.js changed (in a temporary folder, removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="picluster-matrix-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    first, second = root / "v1", root / "v2"
    shutil.copytree(DEMO_API, first)
    shutil.copytree(DEMO_API, second)
    server = second / "server.js"
    server.write_text(server.read_text() + "\n// the next release\n")
    return first, second


def _built(version: int) -> Callable[[Config], Config]:
    """The first service built from version `version` (0, 1) of the source, with a migration."""
    return _edit(
        lambda c: c["app"]["services"][0].update(
            image=None, build=str(source_versions()[version]), migrate=["node", "migrate.js"]
        )
    )


CHANGES: tuple[Change, ...] = (
    Change(
        "K3s version bump",
        "prod",
        _edit(lambda c: c["k3s"].update(version="v1.31.5+k3s1")),
    ),
    Change(
        "a label on one node",
        "prod",
        _edit(lambda c: c["nodes"][1].update(labels={"game.studio/tier": "frontend"})),
    ),
    Change(
        "a taint on one node",
        "prod",
        _edit(lambda c: c["nodes"][2].update(taints=["dedicated=game:NoSchedule"])),
    ),
    Change(
        "1 → 3 servers",
        "prod",
        _edit(
            lambda c: c.update(
                nodes=[
                    c["nodes"][0],
                    _node("pi-server-2", "192.168.1.13", "server"),
                    _node("pi-server-3", "192.168.1.14", "server"),
                    *c["nodes"][1:],
                ]
            )
        ),
    ),
    Change(
        "add an agent",
        "prod",
        _edit(lambda c: c["nodes"].append(_node("pi-agent-3", "192.168.1.15", "agent"))),
    ),
    Change("remove an agent", "prod", _edit(lambda c: c["nodes"].pop())),
    Change(
        "an agent becomes a server (with a third server)",
        "prod",
        _edit(
            lambda c: (
                c["nodes"][1].update(role="server"),
                c["nodes"].append(_node("pi-server-3", "192.168.1.14", "server")),
            )
        ),
        "k3s-install.sh refuses on pi-agent-1 before changing it: remove the node, then add it "
        "back (README: Change a node's role)",
    ),
    Change(
        "`dbPassword` rotated",
        "prod",
        _set(dbPassword="matrix-db-password-2"),
    ),
    Change(
        "`grafanaAdminPassword` rotated",
        "prod",
        _set(grafanaAdminPassword="matrix-grafana-password-2"),
    ),
    Change(
        "`k3sToken` rotated",
        "prod",
        _set(k3sToken="K10matrix-token-rotated-0123456789"),
        "k3s-install.sh refuses on pi-server-1 before changing anything; nothing else runs "
        "(README: Rotate the K3s token)",
    ),
    Change(
        "a service's image bumped",
        "prod",
        _edit(lambda c: c["app"]["services"][0].update(image="ghcr.io/studio/lobby:1.4.3")),
    ),
    Change(
        "a service's source changed (with a migration)",
        "prod",
        _built(1),
        "the new release's migration Job runs to completion before the Deployment rolls; the "
        "old release's Job is only forgotten (retainOnDelete) and its TTL removes it",
        before=_built(0),
    ),
    Change(
        "a new service",
        "prod",
        _edit(
            lambda c: c["app"]["services"].append(
                {"name": "chat", "image": "ghcr.io/studio/chat:0.9.0", "port": 8082}
            )
        ),
    ),
    Change(
        "`app.domain` set (a DNS name on the router)",
        "prod",
        _edit(lambda c: c["app"].update(domain="game.home.arpa")),
        "the Ingress rules carry no host: the game answers on the name and on every Pi's "
        "address alike; only Grafana's links and the ingress probe's Host change",
    ),
    Change(
        "a service's replicas 1 → 3",
        "prod",
        _edit(lambda c: c["app"]["services"][0].update(replicas=3)),
    ),
    Change(
        "monitoring retention and scrape interval",
        "prod",
        _set(monitoring={"retention": "30d", "scrapeInterval": "15s"}),
    ),
    Change(
        "an alert receiver added (ntfy)",
        "prod",
        _set(**NTFY_ADDED),
    ),
    Change(
        "datastore snapshot schedule and retention",
        "prod",
        _edit(lambda c: c["k3s"].update(snapshots={"schedule": "30 2 * * *", "retention": 10})),
        "one server (SQLite): only its snapshot timer; with embedded etcd the servers' "
        "config.yaml changes and K3s restarts on them one at a time",
    ),
    Change(
        "database storage 5Gi → 10Gi",
        "prod",
        _edit(lambda c: c["app"].setdefault("database", {}).update(storage="10Gi")),
        "the claim keeps its size (local-path does not enforce sizes); a warning says so",
    ),
    Change(
        "a user registry added",
        "prod",
        _set(
            images={"registry": "registry.studio.example:5000/game", "registryUsername": "ci"},
            registryPassword="matrix-registry-password-1",
        ),
        "every node's registries.yaml gains the registry's credentials (a secret, on the "
        "install's stdin only)",
    ),
    Change(
        "`dbPassword` rotated",
        "local",
        _set(dbPassword="matrix-db-password-2"),
    ),
    Change(
        "`grafanaAdminPassword` rotated",
        "local",
        _set(grafanaAdminPassword="matrix-grafana-password-2"),
    ),
    Change(
        "a service's image bumped",
        "local",
        _edit(lambda c: c["app"]["services"][0].update(image="ghcr.io/studio/lobby:1.4.3")),
    ),
    Change(
        "an alert receiver added (ntfy)",
        "local",
        _set(**NTFY_ADDED),
    ),
    Change(
        "`docker.publishAddress`",
        "local",
        _set(docker={"publishAddress": "192.168.1.50"}),
    ),
)


def _run(stack: str, config: Config) -> Run:
    secret_keys = tuple(k for k in SECRET_KEYS if k in config)
    return run_main(config, stack=stack, secret_keys=secret_keys)


@cache
def _base_run(stack: str) -> Run:
    return _run(stack, base(stack))


@dataclass(frozen=True)
class Outcome:
    """A change, the plan the engine would follow, and both runs."""

    change: Change
    plan: Plan
    before: Run
    after: Run


@cache
def outcome(change: Change) -> Outcome:
    """Run the program before and after `change` and plan the difference (once per change)."""
    if change.before is None:
        before = _base_run(change.stack)
    else:
        before = _run(change.stack, change.before(base(change.stack)))
    start = base(change.stack) if change.before is None else change.before(base(change.stack))
    after = _run(change.stack, change.edit(start))
    return Outcome(change, plan(before.registrations, after.registrations), before, after)


def _kind(reg: Registration) -> str:
    return reg.type.rsplit(":", 1)[-1]


def _object(reg: Registration) -> str:
    """`Deployment lobby` for a Kubernetes object, `container picluster-local-lobby-1`, ..."""
    inputs = unwrap(reg.inputs)
    name = (inputs.get("metadata") or {}).get("name") or inputs.get("name") or reg.name
    return f"{_kind(reg)} {name}"


def _install_waves(result: Outcome, nodes: set[str]) -> list[list[str]]:
    """The nodes whose K3s install runs, in waves: a wave waits (through any steps in between,
    such as the next node's drain) for the one before it."""
    registrations = {r.urn: r for r in result.after.registrations}
    installs = {
        urn: r for urn, r in registrations.items() if r.type == COMMAND and r.name.endswith("-k3s")
    }
    depth: dict[str, int] = {}

    def level(urn: str) -> int:
        if urn not in depth:
            depth[urn] = max(
                (
                    level(d) + (1 if d in installs else 0)
                    for d in registrations[urn].dependencies
                    if d in registrations
                ),
                default=0,
            )
        return depth[urn]

    waves: dict[int, list[str]] = {}
    for urn, reg in installs.items():
        node = reg.name.removeprefix("cluster-").removesuffix("-k3s")
        if node in nodes:
            waves.setdefault(level(urn), []).append(node)
    return [sorted(waves[d]) for d in sorted(waves)]


RESTARTING_VALUES = ("K3S_VERSION", "CONFIG_YAML_B64", "REGISTRIES_YAML_B64", "K3S_TOKEN")
"""Install inputs whose change makes k3s-install.sh restart K3s (a new binary, config,
registries.yaml or token); the registration drop-in, labels and taints restart nothing."""


def _values(reg: Registration) -> dict[str, str]:
    stdin = str(unwrap(reg.inputs.get("stdin")) or "")
    return dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", stdin, re.M))


def restarts(result: Outcome) -> list[str]:
    """What restarts on the cluster or the Docker host, read from the plan."""
    found: list[str] = []
    registrations = {r.urn: r for r in result.after.registrations}
    previous = {r.urn: r for r in result.before.registrations}
    k3s: set[str] = set()
    for step in result.plan.steps:
        reg = registrations.get(step.urn)
        if reg is None or step.action in (Action.CREATE, Action.DELETE):
            continue
        if step.type == COMMAND and step.name.endswith("-k3s"):
            old, new = _values(previous[step.urn]), _values(reg)
            if any(old.get(k) != new.get(k) for k in RESTARTING_VALUES):
                k3s.add(step.name.removeprefix("cluster-").removesuffix("-k3s"))
        elif step.type == COMMAND and step.name.endswith("-prepare"):
            found.append(f"{step.name.removesuffix('-prepare')} reboots if cmdline.txt changed")
        elif step.type.startswith("kubernetes:apps/v1:") and any(
            p.startswith("spec.template") for p in step.paths
        ):
            found.append(f"{_object(reg)} rolls")
        elif step.type == "kubernetes:batch/v1:CronJob" and step.paths:
            found.append(f"{_object(reg)}'s next run")
        elif step.type == "docker:index/container:Container" and step.action is Action.REPLACE:
            found.append(f"container {_object(reg).split(' ', 1)[1]} recreated")
    found.sort()
    if k3s:
        waves = " then ".join(", ".join(w) for w in _install_waves(result, k3s))
        found.insert(0, f"K3s: {waves}")
    return found


_STEP_KINDS = (
    ("-prepare", "prepare"),
    ("-gate", "gate"),
    ("-drain", "drain"),
    ("-k3s", "K3s install"),
    ("-join", "node check (Ready, labels, taints)"),
    ("-kubeconfig", "kubeconfig read"),
    ("-snapshots", "SQLite snapshot timer"),
)


def _remote_cell(names: set[str]) -> str:
    if not names:
        return "0"
    parts = []
    for suffix, label in _STEP_KINDS:
        count = sum(1 for n in names if n.endswith(suffix))
        if count:
            parts.append(f"{label} x{count}" if count > 1 else label)
    return f"{len(names)}: {', '.join(parts)}"


def _objects(result: Outcome, action: Action) -> list[str]:
    registrations = {r.urn: r for r in (*result.before.registrations, *result.after.registrations)}
    return sorted(
        _object(registrations[s.urn])
        # The engine forgets a retained resource instead of deleting it.
        + (
            " (retained)"
            if action is Action.DELETE and registrations[s.urn].retain_on_delete
            else ""
        )
        for s in result.plan.steps
        if s.action is action and s.type != COMMAND
    )


def _cell(items: list[str]) -> str:
    return ", ".join(items) if items else "-"


def markdown_table() -> str:
    """CONTRIBUTING.md's "What a change does" table."""
    lines = [
        "| stack | change | remote steps that run | created | updated in place | replaced "
        "| deleted | what restarts | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for change in CHANGES:
        result = outcome(change)
        deleted = _objects(result, Action.DELETE) + [
            f"{d.name} runs its delete ({', '.join(d.scripts)})"
            for d in result.plan.delete_commands
        ]
        notes = [change.note] if change.note else []
        notes += [f"**refused by the engine:** {r}" for r in result.plan.refusals]
        row = (
            f"| {change.stack} | {change.title} | {_remote_cell(result.plan.remote_steps)} "
            f"| {_cell(_objects(result, Action.CREATE))} "
            f"| {_cell(_objects(result, Action.UPDATE))} "
            f"| {_cell(_objects(result, Action.REPLACE))} "
            f"| {_cell(deleted)} | {_cell(restarts(result))} | {_cell(notes)} |"
        )
        labels = _release_labels(result)
        lines.append(_TAG.sub(lambda m, labels=labels: labels.get(m.group(0), m.group(0)), row))
    return "\n".join(lines)


_TAG = re.compile(r"(?<![0-9a-f])[0-9a-f]{12}(?![0-9a-f])")
"""A content tag (`components/images.py`) in an object's name."""


def _release_labels(result: Outcome) -> dict[str, str]:
    """`<old tag>`/`<new tag>` for the content tags in `result`'s object names, so the change
    table in CONTRIBUTING.md does not change with every byte of a source or of picluster's
    Dockerfiles."""
    labels: dict[str, str] = {}
    for run, label in ((result.before, "<old tag>"), (result.after, "<new tag>")):
        for reg in run.registrations:
            for tag in _TAG.findall(_object(reg)):
                labels.setdefault(tag, label)
    return labels


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
