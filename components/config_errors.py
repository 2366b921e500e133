"""Config problems in plain words, all of them in one pass.

`components/config.py` says what a valid stack configuration is; this module turns what pydantic
finds wrong into sentences a user can act on (the key path, what is valid, and the quoting or the
command that fixes it), and keeps validating past a bad value: `parse` reports every shape error,
then drops each bad value (its default stands in, or the list item goes) so the cross-key checks
can still run on everything that did parse. `Parsed.ok` tells a check whether its inputs parsed,
so nothing already reported comes back as a consequence.
"""

from __future__ import annotations

import copy
import difflib
import enum
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
import pulumi
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

NAMESPACE = "picluster"
WRAPPER = "bin/pulumi"
"""The command users run pulumi through (it picks the stack's passphrase file)."""

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

Loc = tuple[str | int, ...]
"""A key's location as pydantic gives it: keys (camelCase, as written) and list indices."""


class ConfigError(pulumi.RunError):
    """Bad stack configuration: every problem, one per entry of `problems`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = ["invalid picluster configuration:"]
            for problem in self.problems:
                first, *rest = problem.split("\n")
                lines += [f"  {first}", *(f"  {line}" for line in rest)]
            message = "\n".join(lines)
        super().__init__(message)


def key_path(loc: Loc) -> str:
    """`picluster:app.services[0].port` for ("app", "services", 0, "port")."""
    path = NAMESPACE
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += (":" if i == 0 else ".") + part
    return path


STACK_PLACEHOLDER = "<stack>"
"""The stack name in commands a message suggests when it is not known."""


def command(args: str, stack: str, *, stdin: str | None = None) -> str:
    """The command line a user types, through the wrapper, for `stack` (reading `stdin`)."""
    redirect = f" < {stdin}" if stdin else ""
    return f"`{WRAPPER} {args} -s {stack}{redirect}`"


def set_command(loc: Loc, value: str, stack: str, *, as_text: bool = False) -> str:
    """The `config set` that sets the key at `loc` to `value` (`--path` below the top level;
    `--type string` keeps a number or true/false as text)."""
    path = key_path(loc).removeprefix(f"{NAMESPACE}:")
    if len(loc) == 1:
        return command(f"config set {path} {value}", stack)
    kind = " --type string" if as_text else ""
    return command(f"config set --path '{path}'{kind} {value}", stack)


def steps(*commands: str) -> str:
    """Commands, one per indented line under a problem (the ConfigError keeps the indent)."""
    return "".join(f"\n  {line.strip('`')}" for line in commands)


def unknown_key(loc: Loc, valid: Sequence[str], *, list_all: bool = True) -> str:
    """An unknown key, with the closest valid one when it looks like a typo of it."""
    near = close_match(str(loc[-1]), valid)
    nested = len(loc) > 1
    listing = ", ".join(sorted(valid) if nested else valid)
    here = "valid keys here are" if nested else "valid keys are"
    if near is None:
        return f"{key_path(loc)}: unknown key; {here} {listing}"
    also = f" ({here} {listing})" if list_all else ""
    return f"{key_path(loc)}: unknown key; did you mean {near}?{also}"


def close_match(key: str, valid: Sequence[str]) -> str | None:
    """The valid key `key` is most likely a typo of, if any (case and '-'/'_' ignored)."""

    def norm(k: str) -> str:
        return k.lower().replace("-", "").replace("_", "")

    by_norm = {norm(k): k for k in valid}
    found = difflib.get_close_matches(norm(key), list(by_norm), n=1, cutoff=0.75)
    return by_norm[found[0]] if found else None


# --- what a key takes, read from the models' types ----------------------------------------------


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """The type under `Annotated[...]` and `X | None`, with the Annotated metadata met."""
    metadata: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            metadata += extra
        elif origin in (Union, types.UnionType):
            options = [a for a in get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation, metadata
            annotation = options[0]
        else:
            return annotation, metadata


def fields_by_key(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the key users write (the alias)."""
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _step(current: Any, part: str | int) -> Any:
    """The annotation one step down from `current`, or None when `part` does not fit it."""
    kind, _ = _unwrap(current)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        field = fields_by_key(kind).get(str(part))
        if field is None:
            return None
        annotation: Any = field.annotation
        metadata: list[Any] = field.metadata
        return Annotated[(annotation, *metadata)] if metadata else annotation
    origin, args = get_origin(kind), get_args(kind)
    if origin is list and isinstance(part, int):
        return args[0]
    if origin is dict and args:
        return args[0] if part == "[key]" else args[1]
    return None


def annotation_at(root: type[BaseModel], loc: Loc) -> Any:
    """The declared type of the key at `loc`, or None for a key the models do not have."""
    current: Any = root
    for part in loc:
        if part == "[key]":
            continue
        current = _step(current, part)
        if current is None:
            return None
    return current


def _is_model(annotation: Any) -> bool:
    kind, _ = _unwrap(annotation)
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def model_keys(annotation: Any) -> list[str]:
    """The keys a mapping-typed key takes, in the order the model declares them."""
    kind, _ = _unwrap(annotation)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return list(fields_by_key(kind))
    return []


def _choices(annotation: Any) -> list[str]:
    kind, _ = _unwrap(annotation)
    if get_origin(kind) is Literal:
        return [str(a) for a in get_args(kind)]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [str(m.value) for m in kind]
    return []


def _bounds(metadata: Sequence[Any]) -> tuple[int | None, int | None]:
    low = high = None
    for item in metadata:
        for bound in getattr(item, "metadata", [item]):  # a FieldInfo carries its own list
            if isinstance(bound, annotated_types.Ge):
                low = int(bound.ge)  # pyright: ignore[reportArgumentType]
            elif isinstance(bound, annotated_types.Le):
                high = int(bound.le)  # pyright: ignore[reportArgumentType]
    return low, high


def expected(annotation: Any) -> str:
    """What a key of this type takes, in words: "true or false", "a whole number from 1 to 5"."""
    kind, metadata = _unwrap(annotation)
    choices = _choices(annotation)
    if len(choices) == 2:
        return " or ".join(choices)
    if choices:
        return "one of " + ", ".join(choices)
    if kind is bool:
        return "true or false"
    if kind is int:
        low, high = _bounds(metadata)
        if low is not None and high is not None:
            return f"a whole number from {low} to {high}"
        return "a whole number"
    if kind is str:
        return "text"
    if get_origin(kind) is list:
        return "a list"
    keys = model_keys(annotation)
    if keys:
        return f"a mapping with the keys {', '.join(sorted(keys))}"
    if get_origin(kind) is dict:
        return "a mapping"
    return "another value"


def _what_it_is(value: Any) -> str:
    """A given value as a user would name it: "the text '80'", "the number 3000"."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _not_json(value: Any) -> str:
    """A note for text that looks like a JSON object or list but did not parse as one."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        return ", which is not valid JSON"
    return ""


# --- one pydantic error in plain words -----------------------------------------------------------


def example_key(loc: Loc) -> str:
    """The key of `loc` in an examples table: its path without list indices (`nodes.host`)."""
    return ".".join(str(part) for part in loc if isinstance(part, str) and part != "[key]")


def describe(
    root: type[BaseModel],
    error: Mapping[str, Any],
    stack: str,
    examples: Mapping[str, str] | None = None,
) -> str:
    """One pydantic error as `picluster:key.path: what is wrong; what to write instead`.
    `examples` (by `example_key`) gives the value a missing key's command shows."""
    loc: Loc = tuple(error["loc"])
    kind: str = error["type"]
    path = key_path(loc)
    given = error.get("input")
    annotation = annotation_at(root, loc)
    if kind == "extra_forbidden":
        return unknown_key(loc, model_keys(annotation_at(root, loc[:-1])))
    if kind == "missing":
        if loc == ("target",):
            return (
                f"{path}: is required: docker (the game and its monitoring on this machine's "
                f"Docker) or k3s (a K3s cluster on your Raspberry Pis); set it with "
                f"{set_command(loc, 'docker', stack)} or {set_command(loc, 'k3s', stack)}"
            )
        example = (examples or {}).get(example_key(loc))
        at = (*loc, 0) if get_origin(_unwrap(annotation)[0]) is list else loc
        if example is None:
            return (
                f"{path}: is required ({expected(annotation)}); "
                f"set it with {set_command(at, '<value>', stack)}"
            )
        return f"{path}: is required; set it, for example: {set_command(at, example, stack)}"
    if kind.startswith("value_error") or kind == "assertion_error":
        return f"{path}: {str(error['msg']).removeprefix('Value error, ')}"
    ctx = error.get("ctx") or {}
    if kind == "list_type" and _is_model(annotation_at(root, (*loc, 0))):
        return f"{path}: {_not_a_list_of_mappings(given, root, loc, stack, examples or {})}"
    return f"{path}: {_wrong_type(kind, given, annotation, loc, ctx, stack)}"


def _not_a_list_of_mappings(
    given: Any, root: type[BaseModel], loc: Loc, stack: str, examples: Mapping[str, str]
) -> str:
    """A list of mappings (services, nodes) given as something else: each item is a mapping, so
    `[0] api` would be the next error; say which keys an item needs and how to set them."""
    item: Any = _unwrap(annotation_at(root, (*loc, 0)))[0]
    keys = list(fields_by_key(item))
    shown = [
        key
        for key, field in fields_by_key(item).items()
        if field.is_required() or example_key((*loc, key)) in examples
    ]
    sets = [
        set_command((*loc, 0, key), examples.get(example_key((*loc, key)), "<value>"), stack)
        for key in shown
    ]
    said = (
        f"is {_what_it_is(given)}{_not_json(given)}; give a list of mappings, one per item, "
        f"with the keys {', '.join(keys)}: write it in the stack file"
    )
    if not sets:
        return said
    listed = f"{', '.join(sets[:-1])} and {sets[-1]}" if len(sets) > 1 else sets[0]
    return f"{said}, or set the first item with {listed}, then [1] for the next"


def _wrong_type(
    kind: str, given: Any, annotation: Any, loc: Loc, ctx: Mapping[str, Any], stack: str
) -> str:
    """The sentence after the key path for a value of the wrong type or out of range."""
    what = _what_it_is(given)
    wanted = expected(annotation)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"should be {wanted} (got {what}{_not_json(given)})"
    if kind.startswith("bool"):
        if isinstance(given, str) and given.strip().lower() in ("true", "false"):
            return f"is {what}; write true or false without quotes"
        return f"is {what}; write true or false (without quotes)"
    if kind.startswith("int"):
        if isinstance(given, str) and given.strip().lstrip("-").isdigit():
            return f"is {what}; write the number without quotes: {given.strip()}"
        if isinstance(given, float) and given.is_integer():
            return f"is {what}; write it without the decimal point: {int(given)}"
        return f"is {what}; give {wanted}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{given!r} is out of range; give {wanted}"
    if kind in ("string_type", "str_type"):
        if isinstance(given, bool | int | float):
            text = str(given).lower() if isinstance(given, bool) else str(given)
            return (
                f"is {what} but takes text; quote it in the stack file ('{text}') or set it "
                f"with {set_command(loc, text, stack, as_text=True)}"
            )
        return f"is {what}; give {wanted}"
    if kind == "string_too_short":
        return "is empty; give a value or remove the key"
    if kind in ("literal_error", "enum"):
        choices = _choices(annotation)
        if isinstance(given, str) and given.lower() in choices:
            return f"{given!r} must be written in lowercase: {given.lower()}"
        if isinstance(given, str):
            return f"{given!r} is not valid here; give {wanted}"
        return f"is {what}; give {wanted}"
    if kind == "list_type":
        if isinstance(given, str) and not _not_json(given):
            items = [item.strip() for item in given.split(",")]
            return (
                f"is {what}; give a list, such as [{', '.join(items)}] in the stack file, or set "
                f"each item with {set_command((*loc, 0), items[0], stack)}"
            )
        return f"is {what}{_not_json(given)}; give a list"
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return f"needs at least {least} item{'s' if least != 1 else ''}"
    if kind == "too_long":
        return f"has too many items; give at most {ctx.get('max_length')}"
    return f"is {what}; give {wanted}"


# --- every problem in one pass -------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed(Generic[M]):
    """What did parse: the model (a default in place of each bad value, bad list items left
    out), the problems found, and where they were."""

    model: M | None
    """None only when nothing could stand in for a bad value at the top."""
    problems: list[str]
    failed: frozenset[Loc]
    """Keys whose value was bad or dropped, or that an unknown key was probably meant to be."""
    dropped: Mapping[Loc, frozenset[int]]
    """Per list, the indices of the items left out of the model."""

    def ok(self, *locs: Loc) -> bool:
        """True when every key at `locs` parsed: no failure at, inside or above one of them."""
        for loc in locs:
            for failed in self.failed:
                n = min(len(loc), len(failed))
                if loc[:n] == failed[:n]:
                    return False
        return True

    def indexed(self, loc: Loc, items: Sequence[T]) -> list[tuple[int, T]]:
        """The parsed items of the list at `loc`, each with its index in the stack's config."""
        dropped = self.dropped.get(loc, frozenset())
        kept = [i for i in range(len(items) + len(dropped)) if i not in dropped]
        return list(zip(kept, items, strict=True))


def parse(
    root: type[M],
    raw: Mapping[str, Any],
    *,
    stack: str,
    placeholders: Mapping[Loc, Any],
    root_extra_keys: Sequence[str] = (),
    examples: Mapping[str, str] | None = None,
) -> Parsed[M]:
    """Validate `raw` as `root`, reporting every problem and parsing around the bad values.

    A bad value is dropped where a default can stand in (the nearest key that has one), or
    where it is an item of a list of mappings (nodes, services); a required key with an entry in
    `placeholders` takes that value instead (and counts as failed). `root_extra_keys` are valid
    top-level keys the model does not hold (the secrets), offered as suggestions; `examples`
    are values for the commands that set a missing key."""
    data = copy.deepcopy(dict(raw))
    try:
        return Parsed(root.model_validate(data), [], frozenset(), {})
    except ValidationError as error:
        errors = error.errors(include_url=False)
    problems: list[str] = []
    failed: set[Loc] = set()
    units: dict[Loc, Any] = {}
    meant: set[Loc] = set()  # keys an unknown key is a typo of: not reported missing again
    for found in errors:
        loc: Loc = tuple(found["loc"])
        if found["type"] == "extra_forbidden":
            valid = model_keys(annotation_at(root, loc[:-1]))
            if len(loc) == 1:
                valid = [*valid, *root_extra_keys]
            problems.append(unknown_key(loc, valid, list_all=len(loc) > 1))
            near = close_match(str(loc[-1]), valid)
            if near is not None:
                meant.add((*loc[:-1], near))
            units[loc] = _DROP
    failed |= meant
    whole = True
    for found in errors:
        loc = tuple(found["loc"])
        if found["type"] == "extra_forbidden":
            continue
        if not (found["type"] == "missing" and loc in meant):
            problems.append(describe(root, found, stack, examples))
        failed.add(loc)
        unit = _unit(root, loc, placeholders)
        if unit is None:
            whole = False
            continue
        failed.add(unit)
        units[unit] = placeholders.get(unit, _DROP)
    if not whole:
        return Parsed(None, problems, frozenset(failed), {})
    dropped = _apply(data, units)
    for _ in range(3):
        try:
            model = root.model_validate(data)
            return Parsed(model, problems, frozenset(failed), dropped)
        except ValidationError as error:
            # Not expected: what is left is dropped section by section.
            for found in error.errors(include_url=False):
                top: Loc = tuple(found["loc"])[:1]
                failed.add(top)
                if top in placeholders:
                    data[str(top[0])] = placeholders[top]
                else:
                    data.pop(str(top[0]), None)
    return Parsed(None, problems, frozenset(failed), dropped)


_DROP = object()


def _unit(root: type[BaseModel], loc: Loc, placeholders: Mapping[Loc, Any]) -> Loc | None:
    """The nearest key at or above `loc` whose value can go (a default stands in), or that has
    a placeholder; None when there is none."""
    for end in range(len(loc), 0, -1):
        unit = loc[:end]
        if unit in placeholders:
            return unit
        part = unit[-1]
        if part == "[key]":
            continue
        if isinstance(part, int):
            if _is_model(annotation_at(root, unit)):
                return unit
            continue
        owner, _ = _unwrap(annotation_at(root, unit[:-1]))
        if isinstance(owner, type) and issubclass(owner, BaseModel):
            field = fields_by_key(owner).get(part)
            if field is not None and not field.is_required():
                return unit
    return None


def _apply(data: dict[str, Any], units: Mapping[Loc, Any]) -> dict[Loc, frozenset[int]]:
    """Drop or replace each unit in `data`; list items go last, so indices stay the stack's
    own while the rest is applied. Returns the dropped items per list."""
    inside = [u for u in units if any(u[: len(o)] == o and u != o for o in units)]
    items: dict[Loc, set[int]] = {}
    for unit, value in units.items():
        if unit in inside:
            continue
        parent: Any = data
        for part in unit[:-1]:
            parent = parent[part]
        last = unit[-1]
        if isinstance(last, int):
            items.setdefault(unit[:-1], set()).add(last)
        elif value is _DROP:
            parent.pop(last, None)
        else:
            parent[last] = value
    for list_loc, indices in items.items():
        container: Any = data
        for part in list_loc:
            container = container[part]
        for index in sorted(indices, reverse=True):
            del container[index]
    return {loc: frozenset(indices) for loc, indices in items.items()}
