"""Config errors as a user meets them: every problem in one pass, in plain words, with the fix.

`test_config.py` checks each rule; this module checks how the problems come out together: a bad
value does not hide the cross-key checks on the rest, its consequences are not reported again,
no pydantic wording reaches the user, and an empty stack says what to set and with which command.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from components import config
from components.config import ConfigError, Settings, validate
from components.config_errors import fields_by_key
from tests import harness
from tests.harness import run_main, stack_file_config

K3S: dict[str, Any] = {
    "target": "k3s",
    "ssh": {"user": "pi"},
    "k3s": {"version": "v1.31.4+k3s1"},
    "nodes": [
        {"name": "pi-1", "host": "192.168.1.10", "role": "server"},
        {"name": "pi-2", "host": "192.168.1.11", "role": "agent"},
    ],
}


def problems_of(raw: dict[str, Any], stack: str = "dev") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(raw, stack=stack, secret_values=False)
    return caught.value.problems


# --- every problem in one pass ------------------------------------------------------------------


def test_a_type_error_a_cross_key_rule_and_an_unknown_key_come_in_one_message() -> None:
    raw = {
        **K3S,
        "app": {"frontend": {"replicas": "2"}},  # a quoted number in one section
        "nodes": [  # two servers: embedded etcd needs an odd number (a cross-key rule)
            {"name": "pi-1", "host": "192.168.1.10", "role": "server"},
            {"name": "pi-2", "host": "192.168.1.11", "role": "server"},
        ],
        "imagess": {"platforms": ["linux/arm64"]},  # a typo of a top-level key
    }
    with pytest.raises(ConfigError) as caught:
        validate(raw, stack="dev")
    assert caught.value.problems == [
        "picluster:imagess: unknown key; did you mean images?",
        "picluster:app.frontend.replicas: is the text '2'; write the number without quotes: 2",
        "picluster:nodes: has 2 servers; embedded etcd needs an odd number (1, 3 or 5) to keep "
        "quorum",
    ]
    assert str(caught.value).startswith("invalid picluster configuration:\n  picluster:imagess")


def test_checks_run_on_the_sections_that_parsed() -> None:
    problems = problems_of(
        {
            **K3S,
            "ssh": {"user": "pi", "port": "22"},
            "monitoring": {"retention": "forever", "alerts": {"ntfy": {}}},
            "k3s": {"version": "v1.31.4+k3s1", "serverConfig": {"token": "x"}, "drainTimeout": 1},
        }
    )
    assert [p.split(": ", 1)[0] for p in problems] == [
        "picluster:ssh.port",
        "picluster:k3s.drainTimeout",
        "picluster:monitoring.retention",
        "picluster:k3s.serverConfig.token",  # k3s.drainTimeout was bad, serverConfig was not
        "picluster:monitoring.alerts.ntfy",  # monitoring.retention was bad, alerts were not
    ]


def test_each_service_is_checked_on_its_own_with_its_own_index(tmp_path: Path) -> None:
    raw = {
        "target": "docker",
        "app": {
            "services": [
                {"name": "api", "image": "node:22.12.0-alpine", "port": "3000"},
                {"name": "chat", "build": "services/chat", "port": 3001},
                {"name": "api", "image": "node:22.12.0-alpine", "port": 3002, "path": "/x"},
                {"name": "web", "port": 3003, "env": {"PORT": 3003}},
            ]
        },
    }
    with pytest.raises(ConfigError) as caught:
        validate(raw, stack="dev", project_dir=tmp_path)
    keys = [p.split(": ", 1)[0] for p in caught.value.problems]
    assert keys == [
        "picluster:app.services[0].port",
        "picluster:app.services[3].env.PORT",
        "picluster:app.services[1].build",  # the folder is missing: found with [0] unparsed
        "picluster:app.services[3]",  # neither image nor build, found though env was bad
    ]
    # services[0] did not parse, so services[2] reusing its name is not a duplicate yet; the
    # indices are the stack's own, not shifted by the service left out.
    assert "services[2]" not in str(caught.value)


def test_nodes_that_parsed_are_compared_and_counts_wait_for_every_node() -> None:
    problems = problems_of(
        {
            **K3S,
            "nodes": [
                {"name": "pi-1", "host": "192.168.1.10", "role": "server"},
                {"name": "pi-2", "host": "300.1.1.1", "role": "server"},
                {"name": "pi-1", "host": "192.168.1.12", "role": "agent"},
            ],
        }
    )
    assert [p.split(": ", 1)[0] for p in problems] == [
        "picluster:nodes[1].host",
        "picluster:nodes[2].name",  # a duplicate among the nodes that parsed
    ]  # and no "has 2 servers": nodes[1]'s role cannot be counted while it does not parse


def test_a_typo_inside_a_node_does_not_stop_the_server_count() -> None:
    problems = problems_of(
        {
            **K3S,
            "nodes": [
                {"name": "pi-1", "host": "192.168.1.10", "role": "server", "hostkey": "x"},
                {"name": "pi-2", "host": "192.168.1.11", "role": "server"},
            ],
        }
    )
    assert [p.split(";", 1)[0] for p in problems] == [
        "picluster:nodes[0].hostkey: unknown key",
        "picluster:nodes: has 2 servers",
    ]
    assert "did you mean hostKey?" in problems[0]


@pytest.mark.parametrize(
    ("raw", "only"),
    [
        # A typo'd key: its intended key is not reported missing, nor its absence's effects.
        (
            {"target": "docker", "app": {"services": [{"name": "a", "imag": "x:1", "port": 1}]}},
            "picluster:app.services[0].imag: unknown key; did you mean image?",
        ),
        ({**K3S, "k3s": {"versoin": "v1.31.4+k3s1"}}, "picluster:k3s.versoin: unknown key"),
        (
            {key: value for key, value in K3S.items() if key != "nodes"} | {"node": K3S["nodes"]},
            "picluster:node: unknown key; did you mean nodes?",
        ),
        # A bad value: the default standing in for it must not trip a check.
        ({**K3S, "k3s": "v1.31.4+k3s1"}, "picluster:k3s: should be a mapping"),
        ({**K3S, "ssh": ["pi"]}, "picluster:ssh: should be a mapping"),
        (
            {**K3S, "nodes": [{"name": "pi-1", "host": "192.168.1.10", "role": "Server"}]},
            "picluster:nodes[0].role: 'Server' must be written in lowercase: server",
        ),
        ({"target": "swarm", "nodes": K3S["nodes"]}, "picluster:target: 'swarm' is not valid"),
    ],
)
def test_a_consequence_of_a_reported_problem_is_not_reported_again(
    raw: dict[str, Any], only: str
) -> None:
    problems = problems_of(raw)
    assert len(problems) == 1, problems
    assert problems[0].startswith(only), problems


def test_the_key_file_is_checked_in_the_same_pass_as_the_rest(tmp_path: Path) -> None:
    prod = stack_file_config("prod")
    with pytest.raises(ConfigError) as caught:
        run_main(
            {
                **prod,
                "ssh": {"privateKeyPath": str(tmp_path / "absent")},
                "monitoring": {"retention": "1 year"},
            },
            stack="prod",
        )
    keys = [p.split(": ", 1)[0] for p in caught.value.problems]
    assert keys == ["picluster:monitoring.retention", "picluster:ssh.privateKeyPath"]
    assert (
        "`bin/pulumi config set --secret sshPrivateKey -s prod < ~/.ssh/id_ed25519`"
        in (caught.value.problems[1])
    )


# --- plain words ---------------------------------------------------------------------------------


def _models(root: type[BaseModel]) -> set[type[BaseModel]]:
    found = {root}
    for field in root.model_fields.values():
        for inner in _types_in(field.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in found:
                found |= _models(inner)
    return found


def _types_in(annotation: Any) -> list[Any]:
    return [annotation, *(t for arg in get_args(annotation) for t in _types_in(arg))]


MODELS = _models(Settings)
CLASS_NAMES = sorted(
    {m.__name__ for m in MODELS} | {"Target", "NodeRole", "BaseModel", "StrEnum", "Annotated"}
)
PYDANTIC_PHRASES = (
    "Input should",
    "input should",
    "valid dictionary",
    "instance of",
    "literal_error",
    "Extra inputs",
    "extra inputs",
    "Field required",
    "field required",
    "String should",
    "string should",
    "List should",
    "list should",
    "should have at least",
    "Value error",
    "validation error",
    "unable to interpret",
    "[type=",
    "pydantic",
    "errors.pydantic.dev",
    "^[",  # a raw regular expression
)
"""What pydantic says and a user should never read."""

MINIMAL: dict[type[BaseModel], dict[str, Any]] = {
    config.NodeConfig: {"name": "pi-1", "host": "192.168.1.10", "role": "server"},
    config.ServiceConfig: {"name": "api", "image": "node:22.12.0-alpine", "port": 3000},
    config.K3sConfig: {"version": "v1.31.4+k3s1"},
    config.EmailReceiver: {
        "to": ["ops@example.com"],
        "from": "pi@example.com",
        "smarthost": "s:25",
    },
    config.SnapshotS3Config: {"bucket": "k3s-snapshots"},
}
"""A valid value of each model with required keys, to put one bad value into."""

BAD_VALUES: tuple[Any, ...] = (
    {"a": 1},
    ["a", 1],
    7,
    0,
    10**12,
    2.5,
    "x y",
    "",
    "80",
    "True",
    "Yes-ish",
    True,
    None,
)


def _all_keys(model: type[BaseModel], loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key of `model` and the models under it; list items at index 0."""
    keys: list[tuple[Any, ...]] = []
    for key, field in fields_by_key(model).items():
        here = (*loc, key)
        keys.append(here)
        for inner in _types_in(field.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                is_list = any(get_origin(t) is list for t in _types_in(field.annotation))
                keys += _all_keys(inner, (*here, 0) if is_list else here)
                break
    return keys


def _with(loc: tuple[Any, ...], value: Any, *, missing: bool = False) -> dict[str, Any]:
    """A valid docker config with `value` at `loc` (or the key at `loc` left out); each model
    on the way is a valid one (MINIMAL), each list holds one."""
    raw: dict[str, Any] = {"target": "docker"}
    container: dict[str, Any] = raw
    model: type[BaseModel] | None = Settings
    at = 0
    while at < len(loc) - 1:
        part = loc[at]
        field = fields_by_key(model)[part] if model else None
        inner = next(
            (
                t
                for t in _types_in(field.annotation if field else None)
                if isinstance(t, type) and issubclass(t, BaseModel)
            ),
            None,
        )
        item: dict[str, Any] = dict(MINIMAL.get(inner, {})) if inner else {}
        if isinstance(loc[at + 1], int):
            container[part] = [item]
            at += 2
        else:
            container[part] = container.get(part) or item
            item = container[part]
            at += 1
        container, model = item, inner
    if missing:
        container.pop(loc[-1], None)
    else:
        container[loc[-1]] = value
    return raw


KEYS = _all_keys(Settings)


def _messages(raw: dict[str, Any]) -> list[str]:
    try:
        validate(raw, secret_values=False, project_dir=Path("/nonexistent"))
    except ConfigError as error:
        return error.problems
    return []


def _leaks(message: str) -> list[str]:
    return [p for p in (*PYDANTIC_PHRASES, *CLASS_NAMES) if p in message]


def test_the_leak_check_catches_pydantic_wording() -> None:
    # The check below is only as good as its word list: pydantic's own messages must trip it.
    with pytest.raises(ValidationError) as raw:
        Settings.model_validate({"target": "swarm", "monitoring": "yes", "colour": 1})
    assert _leaks(str(raw.value))
    for error in raw.value.errors():
        assert _leaks(error["msg"]) or error["type"] == "enum", error


@pytest.mark.parametrize("loc", KEYS, ids=lambda loc: ".".join(map(str, loc)))
def test_no_error_on_any_key_speaks_pydantic(loc: tuple[Any, ...]) -> None:
    messages: list[str] = []
    for value in BAD_VALUES:
        messages += _messages(_with(loc, value))
    messages += _messages(_with(loc, None, missing=True))
    assert messages, f"no bad value was refused at {loc}"
    for message in messages:
        assert message.startswith("picluster:"), message
        assert not _leaks(message), message


def test_every_model_and_key_is_exercised() -> None:
    assert {config.NodeConfig, config.ServiceConfig, config.EmailReceiver} <= MODELS
    assert ("nodes", 0, "hostKey") in KEYS
    assert ("monitoring", "alerts", "email", "from") in KEYS
    assert len(KEYS) > 90


def _merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    for key, value in other.items():
        mine = into.get(key)
        if isinstance(mine, dict) and isinstance(value, dict):
            _merge(mine, value)  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(mine, list) and isinstance(value, list) and mine and value:
            if isinstance(mine[0], dict) and isinstance(value[0], dict):
                _merge(mine[0], value[0])  # pyright: ignore[reportUnknownArgumentType]
            else:
                into[key] = value
        else:
            into[key] = value
    return into


def test_several_bad_values_together_give_one_plain_line_each() -> None:
    # Bad values on up to four keys at once, anywhere: parsing around them never breaks, and
    # no line is repeated or speaks pydantic.
    rng = random.Random(13)  # noqa: S311 -- a fixed sample of cases, not a secret
    for _ in range(400):
        raw: dict[str, Any] = {"target": rng.choice(["docker", "k3s", "K3s", None])}
        for _ in range(rng.randint(1, 4)):
            loc = rng.choice(KEYS)
            _merge(raw, _with(loc, rng.choice(BAD_VALUES), missing=rng.random() < 0.2))
        problems = _messages(raw)
        assert len(set(problems)) == len(problems), problems
        for problem in problems:
            assert problem.startswith("picluster:") and not _leaks(problem), problem


@pytest.mark.parametrize(
    ("loc", "value", "says"),
    [
        (("monitoring", "enabled"), "false ", "is the text 'false '; write true or false without"),
        (("app", "frontend", "port"), 80.0, "is the number 80.0; write it without the decimal"),
        (
            ("app", "services", 0, "env", "PORT"),
            3000,
            "is the number 3000 but takes text; quote it in the stack file ('3000') or set it "
            "with `bin/pulumi config set --path 'app.services[0].env.PORT' --type string 3000 "
            "-s <stack>`",
        ),
        (("images", "platforms"), "linux/arm64", "give a list, such as [linux/arm64] in the"),
        (("images", "platforms"), ["linux/ARM64"], "'linux/ARM64' must be written in lowercase"),
        (("app", "database", "name"), "Game", "is not a PostgreSQL database name such as game"),
        (
            ("app", "frontend", "imag"),
            "nginx:1.27.3-alpine",
            "unknown key; did you mean image? (valid keys here are build, image, port,",
        ),
        (("nodes", 0, "role"), None, "is empty (null); give server or agent"),
        (("monitoring", "alerts", "email", "to"), [], "needs at least 1 item"),
        (("images", "builder"), "", "is not a buildx builder name"),
        (("ssh", "user"), "", "is empty; give a value or remove the key"),
    ],
)
def test_wrong_types_say_how_to_write_the_value(
    loc: tuple[Any, ...], value: Any, says: str
) -> None:
    messages = _messages(_with(loc, value))
    assert any(says in m for m in messages), messages


def test_a_missing_nested_key_says_which_command_sets_it() -> None:
    raw = _with(("nodes", 0, "host"), None, missing=True) | {"ssh": {"user": "pi"}}
    assert problems_of(raw) == [
        "picluster:nodes[0].host: is required; set it, for example: "
        "`bin/pulumi config set --path 'nodes[0].host' 192.168.1.10 -s dev`"
    ]


def test_every_required_key_has_an_example_for_its_command() -> None:
    required = [
        loc
        for loc in KEYS
        if loc != ("target",)  # its own message names both values
        and fields_by_key(_owner(loc))[loc[-1]].is_required()
    ]
    assert len(required) >= 10
    for loc in required:
        key = ".".join(map(str, loc)).replace(".0.", "[0].")
        [message] = [m for m in _messages(_with(loc, None, missing=True)) if key in m]
        assert "<value>" not in message and "set it, for example: `bin/pulumi config" in message


def _owner(loc: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = fields_by_key(model)[part]
        model = next(
            t
            for t in _types_in(field.annotation)
            if isinstance(t, type) and issubclass(t, BaseModel)
        )
    return model


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{bad", "should be a mapping with the keys database, domain, frontend, services (got "),
        ("{bad", "the text '{bad', which is not valid JSON)"),
    ],
)
def test_text_that_is_not_json_says_so(value: str, says: str) -> None:
    assert any(says in m for m in _messages({"target": "docker", "app": value}))


def test_a_comma_separated_list_is_shown_as_a_list() -> None:
    [message] = _messages(_with(("images", "platforms"), "linux/arm64, linux/amd64"))
    assert message == (
        "picluster:images.platforms: is the text 'linux/arm64, linux/amd64'; give a list, such as "
        "[linux/arm64, linux/amd64] in the stack file, or set each item with "
        "`bin/pulumi config set --path 'images.platforms[0]' linux/arm64 -s <stack>`"
    )


def test_a_comma_separated_list_of_mappings_says_which_keys_each_item_sets(
    tmp_path: Path,
) -> None:
    """Services and nodes are mappings: `--path 'app.services[0]' api` would only be the next
    error, so the message names each item's keys and the commands that set them."""
    [message] = _messages({"target": "docker", "app": {"services": "api, web"}})
    assert message == (
        "picluster:app.services: is the text 'api, web'; give a list of mappings, one per item, "
        "with the keys name, image, build, migrate, port, replicas, path, env, healthPath, "
        "metricsPath, runAsUser: write it in the stack file, or set the first item with "
        "`bin/pulumi config set --path 'app.services[0].name' api -s <stack>`, "
        "`bin/pulumi config set --path 'app.services[0].build' services/api -s <stack>` and "
        "`bin/pulumi config set --path 'app.services[0].port' 3000 -s <stack>`, then [1] for "
        "the next"
    )
    # What those commands store is a valid service (in a project with that folder).
    (tmp_path / "services" / "api").mkdir(parents=True)
    (tmp_path / "services" / "api" / "Dockerfile").write_text("FROM node:22-alpine\n")
    service = {"name": "api", "build": "services/api", "port": 3000}
    validate({"target": "docker", "app": {"services": [service]}}, project_dir=tmp_path)
    [nodes] = [m for m in _messages({"target": "k3s", "nodes": "pi-1,pi-2"}) if "nodes" in m[:17]]
    assert "'nodes[0]' " not in nodes
    assert "`bin/pulumi config set --path 'nodes[0].host' 192.168.1.10 -s <stack>`" in nodes


# --- an empty stack ------------------------------------------------------------------------------


def test_a_stack_with_no_config_says_what_target_takes_and_how_to_set_it() -> None:
    assert problems_of({}, stack="studio") == [
        "picluster:target: is required: docker (the game and its monitoring on this machine's "
        "Docker) or k3s (a K3s cluster on your Raspberry Pis); set it with "
        "`bin/pulumi config set target docker -s studio` or "
        "`bin/pulumi config set target k3s -s studio`"
    ]


def test_a_k3s_stack_with_nothing_else_lists_what_to_set_with_the_commands() -> None:
    problems = problems_of({"target": "k3s"}, stack="pis")
    assert [p.split(": ", 1)[0] for p in problems] == [
        "picluster:nodes",
        "picluster:ssh",
        "picluster:k3s",
    ]
    nodes, ssh, k3s = problems
    for key in ("name", "host", "role", "hostKey"):
        assert f"bin/pulumi config set --path 'nodes[0].{key}' " in nodes
    assert "ssh-keyscan -t ed25519 HOST" in nodes
    assert "\n  bin/pulumi config set --path 'ssh.privateKeyPath' ~/.ssh/id_ed25519 -s pis" in ssh
    assert "\n  bin/pulumi config set --secret sshPrivateKey -s pis < ~/.ssh/id_ed25519" in ssh
    assert k3s.endswith("`bin/pulumi config set --path 'k3s.version' v1.31.4+k3s1 -s pis`")


def test_the_suggested_first_steps_make_a_valid_k3s_config() -> None:
    # What the commands above set, as `pulumi config set --path` stores it (strings, and the
    # key itself as a secret).
    raw = {
        "target": "k3s",
        "nodes": [
            {
                "name": "pi-1",
                "host": "192.168.1.10",
                "role": "server",
                "hostKey": "192.168.1.10 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMkz3ZQ9Wm0d7yQ3p2K8",
            }
        ],
        "ssh": {"user": "pi", "privateKeyPath": "~/.ssh/id_ed25519"},
        "k3s": {"version": "v1.31.4+k3s1"},
    }
    assert validate(raw, secret_values=False).nodes[0].name == "pi-1"


def test_the_program_logs_the_error_and_exits_with_the_shown_code() -> None:
    # Under the engine a raised RunError gets a second error line from the Python host
    # ("program exited with non-zero exit code: 1"); exit code 32 says the error was shown.
    # (tests/engine/test_config_errors.py runs it under the real engine.)
    stops: list[SystemExit] = []

    def program() -> None:
        try:
            config.load_or_exit()
        except SystemExit as stop:
            stops.append(stop)

    run = harness.run(program, {"target": "docker", "monitoring": {"retention": "1 year"}})
    [stop] = stops
    assert stop.code == config.EXIT_ERROR_SHOWN == 32
    assert isinstance(stop.__cause__, ConfigError)
    assert run.warnings == [str(stop.__cause__)]  # logged once, as the engine's error
