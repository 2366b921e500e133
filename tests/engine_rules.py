"""The engine's rules, applied to what the mocks recorded: what `pulumi up` would refuse, and what
a config change would create, update, replace or delete.

Pulumi's mocks record registrations but apply none of the engine's rules, and two prod-breaking
defects hid behind that (a disabled default provider, `triggers` that replace an install whose
`delete` uninstalls K3s). This module applies them, each read in the engine's or a provider's
source:

- **Default providers** (pulumi/pulumi `pkg/resource/deploy/default_providers.go`): a custom
  resource of a package listed in `pulumi:disable-default-providers` that names no provider is
  refused.
- **Diff** (`pkg/resource/deploy/step_generator.go`, `generateSteps`/`diff`): a resource whose URN
  is in both runs is compared input by input (secrets compared by value, `ignoreChanges` paths
  dropped first). It is *replaced* when a changed path matches its `replaceOnChanges` (including
  what SDKs add: pulumi-command's `triggers[*]`) or a replace-forcing field of its provider
  (`tests/provider_rules.py`, each entry with its source), or when its provider is replaced;
  otherwise *updated* when anything changed.
- **Create and delete**: a URN only in the new run is created; one only in the old run is deleted,
  after every create and update.
- **Protection** (`step_generator.go`: "unable to replace/delete ... marked for protection"):
  replacing or deleting a resource that was `protect`ed is refused, and the whole update fails.
- **Delete commands** (pulumi-command `remote/commandController.go`, `Delete`): a replaced or
  deleted `Command` with a `delete` runs it with its *old* stdin; with create-before-delete (the
  default) that happens after its replacement already ran.

- **Providers blind in preview** (pulumi/pulumi `sdk/go/common/resource/plugin/provider_plugin.go`,
  `Diff`: "cannot diff due to unknown config"): a resource that is created, updated or replaced has
  unknown outputs in a preview (pulumi-command's infer layer marks `stdout` unknown when an input
  changed), so an existing provider configured from them (the Kubernetes provider from the
  kubeconfig read) cannot diff anything it manages: the preview shows every one of its resources
  as an update, "This preview may not correctly represent the changes that will be applied".
  Found with the real engine (tests/engine/test_prod_changes.py); the plan lists such providers.

- **Unknown stdout in preview** (the same infer layer): the stdout of a remote step that runs is
  unknown in a preview, so a resource whose inputs come from it previews as an update even when
  `up`, with the real stdout, leaves it alone; the plan lists such resources as `overstated`.

- **`destroy --exclude-protected`** (`pkg/cmd/pulumi/operations/destroy.go`,
  `getProtectedExcludes`; `pkg/resource/graph` `TransitiveDependenciesOf`): keeps every
  protected resource and everything it transitively depends on (parent, `dependsOn`, property
  dependencies, provider); destroys the rest.

Not modelled: dependent replacements of a delete-before-replace resource (no program resource has
property dependencies on one), and other values unknown during preview (mocks resolve
everything; the stdout of a re-run step is modelled as changed, see `tests/harness.py`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from tests.harness import Registration

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "command:remote:Command"


class EngineRefusalError(Exception):
    """The engine would refuse the program or the change: each line is one refusal."""


def package_of(type_: str) -> str:
    """The package of a type token: `command:remote:Command` -> `command`."""
    return type_.split(":", 1)[0]


@functools.cache
def disabled_default_providers(project_file: Path = ROOT / "Pulumi.yaml") -> frozenset[str]:
    """The packages in `pulumi:disable-default-providers` of the project file (`["*"]` = all)."""
    document = yaml.safe_load(project_file.read_text()) or {}
    setting = (document.get("config") or {}).get("pulumi:disable-default-providers")
    if isinstance(setting, Mapping):
        setting = setting.get("value", setting.get("default"))
    return frozenset(setting or ())


def default_provider_refusals(
    registrations: Iterable[Registration], disabled: frozenset[str]
) -> list[str]:
    """The engine's refusal of each custom resource left on a disabled default provider."""
    refusals: list[str] = []
    for r in registrations:
        package = package_of(r.type)
        if not r.custom or r.provider or package == "pulumi":
            continue
        if package in disabled or "*" in disabled:
            refusals.append(
                f"Default provider for '{package}' disabled. '{r.urn}' must use an explicit "
                "provider."
            )
    return refusals


# Paths: `spec.template.metadata.annotations` -> ("spec", "template", ...); list indices as ints.
PathTokens = tuple[str | int, ...]


def _tokens(path: str) -> PathTokens:
    tokens: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", path):
        if part.startswith("["):
            inner = part[1:-1].strip("\"'")
            tokens.append(int(inner) if inner.isdigit() else inner)
        else:
            tokens.append(part)
    return tuple(tokens)


def _format(tokens: PathTokens) -> str:
    text = ""
    for token in tokens:
        if isinstance(token, int):
            text += f"[{token}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", token):
            text += f".{token}" if text else token
        else:
            text += f'["{token}"]'
    return text


def _matches(changed: PathTokens, pattern: PathTokens) -> bool:
    """Whether a change at `changed` touches `pattern` (`*` matches any key or index): it is at or
    under the pattern, or it replaces a parent of the pattern wholesale."""
    return all(p == "*" or p == c for c, p in zip(changed, pattern, strict=False))


def changed_paths(old: Any, new: Any, at: PathTokens = ()) -> Iterator[PathTokens]:
    """Every leaf path where `old` and `new` differ (a list of another length differs as a whole
    at each index past the shorter one)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted({*old, *new}, key=str):
            if key not in old or key not in new:
                yield (*at, key)
            else:
                yield from changed_paths(old[key], new[key], (*at, key))
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            if i >= len(old) or i >= len(new):
                yield (*at, i)
            else:
                yield from changed_paths(old[i], new[i], (*at, i))
    elif old != new:
        yield at


class Action(StrEnum):
    """What the engine does to one resource."""

    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"


@dataclass(frozen=True)
class Step:
    """One resource's step in a plan."""

    action: Action
    name: str
    type: str
    urn: str
    paths: tuple[str, ...] = ()
    """The changed input paths (update, replace)."""
    reason: str = ""
    """Why a replace (the matching rule) or a rejected update."""

    @property
    def label(self) -> str:
        """`Kind name`, unique where names are not (a Deployment and its Service share one)."""
        return f"{self.type.rsplit(':', 1)[-1]} {self.name}"


@dataclass(frozen=True)
class DeleteCommand:
    """A `Command`'s `delete` that the change runs, with the scripts of its old stdin."""

    name: str
    scripts: tuple[str, ...]
    """The `picluster <script>` names found in the old stdin, e.g. `("k3s-install",)`."""


@dataclass
class Plan:
    """What the engine would do to go from one run's registrations to the next."""

    steps: list[Step]
    refusals: list[str]
    """Changes the engine refuses (a protected resource replaced or deleted)."""
    rejected: list[str]
    """In-place updates the Kubernetes API server rejects (immutable fields)."""
    delete_commands: list[DeleteCommand]
    blind_providers: list[str] = field(default_factory=list)
    """Existing providers whose configuration is unknown in a preview (it comes from a resource
    that changes): the preview shows every resource they manage as an update."""
    overstated: list[str] = field(default_factory=list)
    """Resources the preview shows as updates though `up` leaves them alone: an input comes from
    the stdout of a remote step that runs, unknown until it ran, and is the same afterwards."""

    def names(self, action: Action) -> set[str]:
        """Names of the resources that get `action`."""
        return {s.name for s in self.steps if s.action is action}

    def labels(self, action: Action) -> set[str]:
        """`Kind name` of the resources that get `action`."""
        return {s.label for s in self.steps if s.action is action}

    def step(self, name: str) -> Step:
        """The step of the resource called `name`."""
        found = [s for s in self.steps if s.name == name]
        assert len(found) == 1, f"expected one step for {name!r}, found {found}"
        return found[0]

    @property
    def remote_steps(self) -> set[str]:
        """Remote commands that run on a Pi: created, updated or replaced (not deleted)."""
        return {s.name for s in self.steps if s.type == COMMAND and s.action is not Action.DELETE}

    def summary(self) -> str:
        """One line per step, for assertion messages."""
        lines = [f"{s.action.value:8} {s.name} {', '.join(s.paths)} {s.reason}" for s in self.steps]
        return "\n".join(
            [*lines, *self.refusals, *self.rejected, *self.blind_providers, *self.overstated]
        )


def _scripts(stdin: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(re.findall(r"^# picluster ([a-z0-9-]+):", stdin, re.M)))


def _replace_paths(reg: Registration, providers: Mapping[str, Registration]) -> tuple[str, ...]:
    """The provider's replace-forcing paths for `reg`, given how its provider is configured."""
    from tests.harness import unwrap
    from tests.provider_rules import rule_for

    rule = rule_for(reg.type)
    if rule.unless_provider is None:
        return rule.replace_paths
    flag, mutable = rule.unless_provider
    provider = providers.get(reg.provider.rsplit("::", 1)[0])
    if provider is None or unwrap(provider.inputs).get(flag) not in (True, "true"):
        return rule.replace_paths
    return tuple(p for p in rule.replace_paths if p not in mutable)


def _replace_reason(
    reg: Registration, paths: Sequence[PathTokens], providers: Mapping[str, Registration]
) -> str:
    from tests.provider_rules import rule_for

    for pattern in reg.replace_on_changes:
        hit = [p for p in paths if _matches(p, _tokens(pattern))]
        if hit:
            return f"replaceOnChanges {pattern!r} ({_format(hit[0])})"
    rule = rule_for(reg.type)
    for pattern in _replace_paths(reg, providers):
        hit = [p for p in paths if _matches(p, _tokens(pattern))]
        if hit:
            return f"provider forces a replace on {pattern!r} ({rule.source})"
    if rule.update_paths is not None:
        updatable = [_tokens(p) for p in rule.update_paths]
        forcing = [p for p in paths if not any(_matches(p, u) for u in updatable)]
        if forcing:
            return f"provider forces a replace on {_format(forcing[0])!r} ({rule.source})"
    return ""


def plan(before: Sequence[Registration], after: Sequence[Registration]) -> Plan:
    """The engine's plan from `before` (the state) to `after` (the program's new goal)."""
    from tests.harness import unwrap
    from tests.provider_rules import rule_for

    old = {r.urn: r for r in before if r.custom}
    new = {r.urn: r for r in after if r.custom}
    steps: list[Step] = []
    refusals: list[str] = []
    rejected: list[str] = []
    delete_commands: list[DeleteCommand] = []
    replaced_providers: set[str] = set()
    providers = {urn: r for urn, r in new.items() if r.type.startswith("pulumi:providers:")}

    # Providers first: a replaced provider replaces every resource it manages.
    ordered = sorted(new.values(), key=lambda r: not r.type.startswith("pulumi:providers:"))
    for reg in ordered:
        previous = old.get(reg.urn)
        if previous is None:
            steps.append(Step(Action.CREATE, reg.name, reg.type, reg.urn))
            continue
        paths = list(changed_paths(unwrap(previous.inputs), unwrap(reg.inputs)))
        ignored = [_tokens(p) for p in reg.ignore_changes]
        paths = [p for p in paths if not any(_matches(p, i) and len(p) >= len(i) for i in ignored)]
        provider_urn = reg.provider.rsplit("::", 1)[0]
        reason = _replace_reason(reg, paths, providers) if paths else ""
        if provider_urn in replaced_providers:
            reason = reason or "its provider is replaced"
        if reason:
            steps.append(Step(Action.REPLACE, reg.name, reg.type, reg.urn, _paths(paths), reason))
            if reg.type.startswith("pulumi:providers:"):
                replaced_providers.add(reg.urn)
            if previous.protect:
                refusals.append(
                    f"unable to replace resource {reg.urn!r} as it is currently marked for "
                    f"protection ({reason})"
                )
            _delete_command(previous, delete_commands)
        elif paths:
            step = Step(Action.UPDATE, reg.name, reg.type, reg.urn, _paths(paths))
            steps.append(step)
            rule = rule_for(reg.type)
            for pattern in rule.api_rejects:
                hit = [p for p in paths if _matches(p, _tokens(pattern))]
                if hit:
                    rejected.append(
                        f"{reg.name}: the API server rejects the change of {_format(hit[0])} "
                        f"({rule.source})"
                    )
    for urn, previous in old.items():
        if urn in new:
            continue
        steps.append(Step(Action.DELETE, previous.name, previous.type, urn))
        if previous.protect:
            refusals.append(
                f"unable to delete resource {urn!r} as it is currently marked for protection"
            )
        _delete_command(previous, delete_commands)
    return Plan(
        steps,
        refusals,
        rejected,
        delete_commands,
        _blind_providers(old, new, steps),
        _overstated(old, new, steps),
    )


def _blind_providers(
    old: Mapping[str, Registration], new: Mapping[str, Registration], steps: Sequence[Step]
) -> list[str]:
    """The existing providers configured from outputs a preview does not know yet."""
    changing = {s.urn: s.name for s in steps if s.action is not Action.DELETE}
    blind = []
    for urn, reg in new.items():
        if not reg.type.startswith("pulumi:providers:") or urn not in old or urn in changing:
            continue
        # Inputs, not `dependsOn`: ordering after a changing resource leaves the config known.
        inputs_from = {d for deps in reg.property_dependencies.values() for d in deps}
        sources = sorted({changing[d] for d in inputs_from if d in changing})
        if sources:
            managed = sum(1 for r in new.values() if r.provider.rsplit("::", 1)[0] == urn)
            blind.append(
                f"provider {reg.name}: configured from {', '.join(sources)}, which "
                f"{'change' if len(sources) > 1 else 'changes'}: a preview cannot diff the "
                f"{managed} resources it manages and shows each as an update"
            )
    return blind


def _overstated(
    old: Mapping[str, Registration], new: Mapping[str, Registration], steps: Sequence[Step]
) -> list[str]:
    """Existing resources left alone whose inputs come from a remote step that runs: its stdout
    is unknown in the preview, so the preview shows them as updates `up` does not make."""
    running = {s.urn: s.name for s in steps if s.type == COMMAND and s.action is not Action.DELETE}
    stepping = {s.urn for s in steps}
    found = []
    for urn, reg in new.items():
        if urn not in old or urn in stepping or reg.type.startswith("pulumi:providers:"):
            continue
        inputs_from = {d for deps in reg.property_dependencies.values() for d in deps}
        sources = sorted({running[d] for d in inputs_from if d in running})
        if sources:
            found.append(
                f"{reg.name}: an input comes from the stdout of {', '.join(sources)}, unknown "
                "until it runs: the preview shows an update that `up` does not make"
            )
    return found


def _paths(paths: Sequence[PathTokens]) -> tuple[str, ...]:
    return tuple(_format(p) for p in paths)


def _delete_command(previous: Registration, found: list[DeleteCommand]) -> None:
    if previous.type == COMMAND and previous.value("delete"):
        found.append(DeleteCommand(previous.name, _scripts(str(previous.value("stdin") or ""))))


def kept_by_exclude_protected(registrations: Sequence[Registration]) -> set[str]:
    """The names of what `pulumi destroy --exclude-protected` keeps."""
    by_urn = {r.urn: r for r in registrations}
    kept: set[str] = set()

    def keep(urn: str) -> None:
        reg = by_urn.get(urn)
        if reg is None or urn in kept:
            return
        kept.add(urn)
        upstream = [reg.parent, reg.provider.rsplit("::", 1)[0], *reg.dependencies]
        upstream += [d for deps in reg.property_dependencies.values() for d in deps]
        for dependency in upstream:
            if dependency:
                keep(dependency)

    for reg in registrations:
        if reg.protect:
            keep(reg.urn)
    return {by_urn[u].name for u in kept}
