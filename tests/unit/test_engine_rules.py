"""The engine's rules in the harness: they refuse and replace what the real engine would."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from pulumi_command import Provider as CommandProvider
from pulumi_command import remote

from tests.engine_rules import (
    Action,
    EngineRefusalError,
    disabled_default_providers,
    plan,
)
from tests.harness import run, stack_file_config
from tests.unit.test_prod_program import COMMAND, run_prod

CONNECTION = remote.ConnectionArgs(host="10.0.0.9", user="pi", private_key="k")


def _command(
    name: str,
    *,
    stdin: str = "# picluster k3s-install: x\n",
    triggers: list[Any] | None = None,
    provider: bool = True,
    protect: bool = False,
) -> None:
    opts = pulumi.ResourceOptions(protect=protect)
    if provider:
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(provider=CommandProvider("command"))
        )
    remote.Command(
        name,
        connection=CONNECTION,
        create="sudo bash -s",
        update="sudo bash -s",
        delete="sudo bash -s -- delete",
        stdin=stdin,
        triggers=triggers,
        opts=opts,
    )


def test_project_file_disables_the_default_providers_it_must() -> None:
    assert disabled_default_providers() >= {"docker", "kubernetes", "command"}


def test_a_command_on_the_disabled_default_provider_is_refused() -> None:
    with pytest.raises(EngineRefusalError, match=r"Default provider for 'command' disabled"):
        run(lambda: _command("install", provider=False), {})
    run(lambda: _command("install"), {})  # with an explicit provider the engine accepts it


def test_every_remote_step_of_prod_names_the_command_provider() -> None:
    committed = run_prod(stack_file_config("prod"))  # refused on a disabled default provider
    providers = {r.urn for r in committed.of_type("pulumi:providers:command")}
    assert len(providers) == 1
    for command in committed.of_type(COMMAND):
        assert command.provider.rsplit("::", 1)[0] in providers, command.name


def test_a_changed_trigger_replaces_the_command_and_runs_its_delete() -> None:
    before = run(lambda: _command("install", triggers=["v1"]), {})
    after = run(lambda: _command("install", triggers=["v2"]), {})
    changes = plan(before.registrations, after.registrations)
    assert changes.names(Action.REPLACE) == {"install"}
    assert "triggers[*]" in changes.step("install").reason
    assert [(d.name, d.scripts) for d in changes.delete_commands] == [("install", ("k3s-install",))]


def test_a_changed_stdin_updates_the_command_in_place() -> None:
    before = run(lambda: _command("install", stdin="# picluster k3s-install: a\nV=1\n"), {})
    after = run(lambda: _command("install", stdin="# picluster k3s-install: a\nV=2\n"), {})
    changes = plan(before.registrations, after.registrations)
    assert changes.names(Action.UPDATE) == {"install"}
    assert changes.step("install").paths == ("stdin",)
    assert not changes.delete_commands and not changes.refusals


def test_replacing_or_deleting_a_protected_resource_is_refused() -> None:
    before = run(lambda: _command("server", triggers=["v1"], protect=True), {})
    replaced = plan(
        before.registrations, run(lambda: _command("server", triggers=["v2"]), {}).registrations
    )
    assert len(replaced.refusals) == 1 and "unable to replace" in replaced.refusals[0]
    deleted = plan(before.registrations, run(lambda: None, {}).registrations)
    assert deleted.names(Action.DELETE) == {"server", "command"}
    assert any("unable to delete" in r for r in deleted.refusals)
    assert [d.name for d in deleted.delete_commands] == ["server"]
