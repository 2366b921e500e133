"""The engine's rules in the harness: they refuse and replace what the real engine would."""

from __future__ import annotations

import dataclasses
from typing import Any

import pulumi
import pytest
from pulumi_command import Provider as CommandProvider
from pulumi_command import remote

from components.config import SECRET_KEYS
from tests.change_matrix import base
from tests.engine_rules import (
    Action,
    EngineRefusalError,
    disabled_default_providers,
    plan,
)
from tests.harness import Run, run, run_main, stack_file_config
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


def _prod_base() -> Run:
    """The change matrix's base: the committed prod stack with every secret given."""
    config = base("prod")
    return run_main(config, stack="prod", secret_keys=tuple(k for k in SECRET_KEYS if k in config))


def test_a_step_that_runs_overstates_its_readers_and_blinds_the_provider_built_from_it() -> None:
    """`overstated` and `blind_providers` find nothing in the change matrix; here each finds what
    it must. The kubeconfig read is forced to run (its stdin in the state differs): its stdout is
    unknown in the preview, so every other node's install (its token carries the CA's hash from
    that kubeconfig) previews as an update `up` does not make, and the Kubernetes provider built
    from it cannot diff what it manages."""
    after = _prod_base()
    before = [
        dataclasses.replace(r, inputs={**r.inputs, "stdin": "# picluster k3s-kubeconfig: old\n"})
        if r.name == "cluster-kubeconfig"
        else r
        for r in after.registrations
    ]
    changes = plan(before, after.registrations)
    assert changes.names(Action.UPDATE) == {"cluster-kubeconfig"}, changes.summary()
    overstated = {line.split(":", 1)[0] for line in changes.overstated}
    assert overstated >= {"cluster-pi-agent-1-k3s", "cluster-pi-agent-2-k3s"}, changes.overstated
    assert "cluster-pi-server-1-k3s" not in overstated  # the first server has the plain token
    assert all("stdout of cluster-kubeconfig" in line for line in changes.overstated)
    providers = after.of_type("pulumi:providers:kubernetes")
    assert len(providers) == 1
    assert [line.split(":", 1)[0] for line in changes.blind_providers] == [
        f"provider {providers[0].name}"
    ]
    assert "configured from cluster-kubeconfig, which changes" in changes.blind_providers[0]
    # Without the forced run, neither rule finds anything.
    unchanged = plan(after.registrations, after.registrations)
    assert not unchanged.overstated and not unchanged.blind_providers
