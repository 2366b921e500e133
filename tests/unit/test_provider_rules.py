"""The provider rule table covers what the program registers, and each entry is well formed."""

from __future__ import annotations

import inspect
import re

import pulumi_docker as docker
import pytest

from tests.harness import Run, run_main, stack_file_config, unwrap
from tests.provider_rules import RULES, rule_for
from tests.unit.test_prod_program import run_prod

# `owner/repo@ref` then a file path with an extension, e.g. `pulumi/pulumi-command@v1.2.1 a/b.go`.
SOURCE = re.compile(r"\b[\w.-]+/[\w.-]+@\S+ [\w./-]+\.\w+\b")

DOCKER_ARGS: dict[str, type] = {
    "docker:index/container:Container": docker.ContainerArgs,
    "docker:index/network:Network": docker.NetworkArgs,
    "docker:index/remoteImage:RemoteImage": docker.RemoteImageArgs,
    "docker:index/volume:Volume": docker.VolumeArgs,
    "pulumi:providers:docker": docker.ProviderArgs,
}


@pytest.fixture(scope="module")
def prod() -> Run:
    return run_prod(stack_file_config("prod"))


@pytest.fixture(scope="module")
def local() -> Run:
    return run_main(stack_file_config("local"), stack="local")


def custom_types(run: Run) -> set[str]:
    return {r.type for r in run.registrations if r.custom}


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_every_registered_type_has_a_rule(stack: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(stack)
    types = custom_types(run)
    assert types, "the program registered no custom resource"
    missing = sorted(t for t in types if t not in RULES)
    assert not missing, f"{stack}: no provider rule for {missing}"
    for type_ in types:
        assert rule_for(type_) is RULES[type_]


def test_unknown_type_raises_naming_it() -> None:
    with pytest.raises(KeyError, match="kubernetes:core/v1:Pod"):
        rule_for("kubernetes:core/v1:Pod")


@pytest.mark.parametrize("type_", sorted(RULES))
def test_rule_is_well_formed(type_: str) -> None:
    rule = RULES[type_]
    assert SOURCE.search(rule.source), f"{type_}: source names no repository@ref and path"
    assert not (rule.replace_paths and rule.update_paths is not None), (
        f"{type_}: replace_paths and update_paths are exclusive"
    )
    paths = [*rule.replace_paths, *(rule.update_paths or ()), *rule.api_rejects]
    for path in paths:
        assert re.fullmatch(r"[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*|\[\*\])*", path), (
            f"{type_}: {path!r} is not a dotted camelCase input path"
        )
    always_replaced = set(rule.replace_paths) - set(
        rule.unless_provider[1] if rule.unless_provider else ()
    )
    assert not set(rule.api_rejects) & always_replaced, (
        f"{type_}: a path cannot both replace and be patched"
    )
    if rule.unless_provider:
        assert set(rule.unless_provider[1]) <= set(rule.replace_paths), type_


def test_kubernetes_kinds_force_a_replace_on_their_name() -> None:
    for type_, rule in RULES.items():
        if type_.startswith("kubernetes:"):
            assert "metadata.name" in rule.replace_paths, type_


@pytest.mark.parametrize("type_", sorted(DOCKER_ARGS))
def test_docker_paths_are_sdk_inputs(type_: str) -> None:
    """A misspelt Terraform-to-Pulumi name would make an updatable field look replace-forcing."""
    params = set(inspect.signature(DOCKER_ARGS[type_].__init__).parameters) - {"self", "__self__"}
    rule = RULES[type_]
    for path in [*rule.replace_paths, *(rule.update_paths or ())]:
        top = re.sub(r"(?<!^)([A-Z])", r"_\1", path.split(".")[0]).lower()
        assert top in params, f"{type_}: {path!r} is not an input of {DOCKER_ARGS[type_].__name__}"


def test_delete_before_replace_kubernetes_objects_are_named(prod: Run) -> None:
    """The provider deletes first only for objects with an explicit, unchanged metadata.name;
    the table's delete_before_replace=True for Kubernetes kinds assumes every object has one."""
    unnamed = [
        r.name
        for r in prod.registrations
        if r.custom
        and r.type.startswith("kubernetes:")
        and not (unwrap(r.inputs).get("metadata") or {}).get("name")
    ]
    assert not unnamed, f"Kubernetes objects without metadata.name: {unnamed}"
