"""registries.yaml: K3s's schema, what a K3s stack trusts, and the credentials kept secret."""

from __future__ import annotations

import base64
import re
from typing import Any, cast

import pulumi
import pytest
import yaml

from components.config import NodeRole
from components.k3s_cluster import ClusterNode, K3sClusterArgs, install_values
from components.pi_node import SshTarget
from components.registries import (
    REGISTRIES_MARK,
    REGISTRY_CLUSTER_IP,
    REGISTRY_NAME,
    REGISTRY_PORT,
    RegistryAuth,
    RegistryTrust,
    registries_document,
    registries_yaml,
    registry_trust,
)
from components.remote_script import script_path
from tests.change_matrix import PROD_SECRETS, base
from tests.harness import Registration, Run, run, run_main
from tests.unit.test_prod_program import COMMAND, stdin_values

PASSWORD = "registry-unit-password-7f3a9c"
"""Unlike anything else in the program, so finding it is a leak, never a coincidence."""
USER_REGISTRY = "registry.studio.example:5000/game"

# rancher/wharfie pkg/registries: the yaml tags of `Registry`, `Mirror`, `RegistryConfig`,
# `AuthConfig` and `TLSConfig`, the structure K3s unmarshals registries.yaml into (yaml.v2, which
# ignores unknown keys: a misspelt key would be dropped without a word). The deprecated `auths`
# is left out on purpose.
K3S_SCHEMA: dict[str, Any] = {
    "mirrors": {"*": {"endpoint": [str], "rewrite": {"*": str}}},
    "configs": {
        "*": {
            "auth": {
                "username": str,
                "password": str,
                "auth": str,
                "identity_token": str,
            },
            "tls": {
                "ca_file": str,
                "cert_file": str,
                "key_file": str,
                "insecure_skip_verify": bool,
            },
        }
    },
}


def schema_problems(value: Any, schema: Any, path: str = "") -> list[str]:
    """Where `value` leaves K3s's registries.yaml schema (`*` keys: any map key)."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{path or '/'}: not a map"]
        problems: list[str] = []
        for key, item in value.items():
            inner = schema.get("*", schema.get(key))
            if inner is None:
                problems.append(f"{path}/{key}: not a key K3s reads")
            else:
                problems += schema_problems(item, inner, f"{path}/{key}")
        return problems
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [
            p for i, v in enumerate(value) for p in schema_problems(v, schema[0], f"{path}/{i}")
        ]
    return [] if isinstance(value, schema) else [f"{path}: not a {schema.__name__}"]


def test_the_schema_check_can_fail() -> None:
    assert schema_problems({"mirrors": {"r": {"endpoints": ["x"]}}}, K3S_SCHEMA) == [
        "/mirrors/r/endpoints: not a key K3s reads"
    ]
    assert schema_problems({"configs": {"h": {"auth": {"username": 1}}}}, K3S_SCHEMA)


def test_the_in_cluster_registry_is_where_the_design_puts_it() -> None:
    # The lead's registry Service and image references import these.
    assert (REGISTRY_NAME, REGISTRY_CLUSTER_IP, REGISTRY_PORT) == (
        "registry.picluster.internal",
        "10.43.0.50",
        5000,
    )


def test_a_k3s_stack_trusts_the_in_cluster_registry_as_a_mirror() -> None:
    text = registries_yaml(registry_trust(), {})
    assert text.splitlines()[0] == REGISTRIES_MARK
    document = yaml.safe_load(text)
    assert document == {
        "mirrors": {"registry.picluster.internal": {"endpoint": ["http://10.43.0.50:5000"]}}
    }
    assert schema_problems(document, K3S_SCHEMA) == []


def test_a_user_registry_gets_its_credentials_keyed_by_its_host() -> None:
    # K3s looks credentials up by the registry host of the endpoint (k3s-io/k3s
    # pkg/agent/containerd/config.go configForHost), never by a path.
    trust = registry_trust(USER_REGISTRY, "ci", "unused")
    document = yaml.safe_load(registries_yaml(trust, {"registry.studio.example:5000": PASSWORD}))
    assert document["configs"] == {
        "registry.studio.example:5000": {"auth": {"username": "ci", "password": PASSWORD}}
    }
    assert document["mirrors"] == {REGISTRY_NAME: {"endpoint": ["http://10.43.0.50:5000"]}}
    assert schema_problems(document, K3S_SCHEMA) == []


def test_a_password_yaml_would_misread_is_quoted() -> None:
    trust = RegistryTrust(auth={"r.example": RegistryAuth(username="u", password="x")})
    for password in ("yes", "0123", "a: b", "#x", "'\"", "- z", "null"):
        document = yaml.safe_load(registries_yaml(trust, {"r.example": password}))
        assert document["configs"]["r.example"]["auth"]["password"] == password


def test_a_user_registry_without_credentials_adds_nothing() -> None:
    assert registry_trust(USER_REGISTRY) == registry_trust()


def test_nothing_to_trust_is_no_document() -> None:
    assert RegistryTrust().empty
    assert registries_yaml(RegistryTrust(), {}) == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"username": "ci", "password": "p"}, "needs the registry"),
        ({"registry": USER_REGISTRY, "username": "ci"}, "needs a password"),
        ({"registry": USER_REGISTRY, "password": "p"}, "needs a registry username"),
    ],
)
def test_incomplete_credentials_are_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry_trust(**kwargs)


@pytest.mark.parametrize(
    ("trust", "message"),
    [
        ({"mirrors": {"r.example": ["10.0.0.1:5000"]}}, "not an http:// or https:// URL"),
        ({"mirrors": {"r.example": []}}, "has no endpoint"),
        ({"mirrors": {"r.example/path": ["http://x"]}}, "not a registry host"),
        ({"auth": {"r.example/p": RegistryAuth(username="u", password="p")}}, "not a registry"),
        ({"auth": {"r.example": RegistryAuth(username="", password="p")}}, "no username"),
    ],
)
def test_what_k3s_would_ignore_is_refused(trust: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegistryTrust(**trust)


def test_the_script_recognises_the_mark_python_writes() -> None:
    script = script_path("k3s-install.sh").read_text()
    assert f"readonly REGISTRIES_MARK='{REGISTRIES_MARK}'\n" in script


def _node() -> ClusterNode:
    ssh = SshTarget(host="10.0.0.2", port=22, user="pi", private_key="k")
    return ClusterNode(
        name="pi-1",
        role=NodeRole.SERVER,
        ssh=ssh,
        address="10.0.0.2",
        ready=cast(pulumi.Resource, None),  # install_values never reads it
    )


def test_the_payload_carries_the_document_as_base64() -> None:
    node = _node()
    args = K3sClusterArgs(nodes=[node], version="v1.31.4+k3s1", token="t", cluster_name="c")
    text = registries_yaml(registry_trust(), {})
    values = install_values(node, args, node, "t", registries=text)
    assert base64.b64decode(values["REGISTRIES_YAML_B64"]).decode() == text
    assert install_values(node, args, node, "t")["REGISTRIES_YAML_B64"] == ""


def test_a_document_with_credentials_is_a_secret_even_from_a_plain_password() -> None:
    def program() -> None:
        pulumi.export("with", registries_document(registry_trust(USER_REGISTRY, "ci", PASSWORD)))
        pulumi.export("without", registries_document(registry_trust()))

    outputs = run(program, {}).outputs
    assert outputs["with"].secret
    assert PASSWORD in outputs["with"].value
    assert not outputs["without"].secret  # nothing to hide: diffs stay readable
    assert outputs["without"].value == registries_yaml(registry_trust(), {})


# --- the program -----------------------------------------------------------------------------


def prod_run(**extra: Any) -> Run:
    config = base("prod") | extra
    secrets = (*PROD_SECRETS, *(k for k in extra if k == "registryPassword"))
    return run_main(config, stack="prod", secret_keys=secrets)


@pytest.fixture(scope="module")
def committed() -> Run:
    return prod_run()


@pytest.fixture(scope="module")
def with_user_registry() -> Run:
    return prod_run(
        images={"registry": USER_REGISTRY, "registryUsername": "ci"}, registryPassword=PASSWORD
    )


def installs(run: Run) -> list[Registration]:
    found = [r for r in run.of_type(COMMAND) if r.name.endswith("-k3s")]
    assert len(found) == 3  # the committed stack: a server and two agents
    return found


def registries_of(install: Registration) -> dict[str, Any]:
    return yaml.safe_load(base64.b64decode(stdin_values(install)["REGISTRIES_YAML_B64"]))


def test_every_node_of_a_k3s_stack_gets_the_mirror(committed: Run) -> None:
    for install in installs(committed):
        assert registries_of(install) == {
            "mirrors": {REGISTRY_NAME: {"endpoint": [f"http://{REGISTRY_CLUSTER_IP}:5000"]}}
        }, install.name
        assert install.is_secret("stdin")
        assert install.value("triggers") is None


def holds_password(text: str) -> bool:
    """The password in `text`, as it is or inside a base64 `NAME_B64=` value of a stdin."""
    decoded = [
        base64.b64decode(value.strip("'")).decode(errors="replace")
        for value in re.findall(r"^[A-Z0-9_]+_B64=(.*)$", text, re.M)
    ]
    return any(PASSWORD in t for t in (text, *decoded))


def test_the_user_registry_password_travels_only_on_the_install_stdin(
    with_user_registry: Run,
) -> None:
    carriers: set[str] = set()
    for resource in with_user_registry.registrations:
        assert not any(holds_password(s) for s in resource.plain_strings()), resource.name
        if any(holds_password(s) for s in resource.secret_strings()):
            carriers.add(resource.name)
    names = {r.name for r in installs(with_user_registry)}
    assert carriers == names  # not the drain, the node check, a ConfigMap or a Secret
    for install in installs(with_user_registry):
        assert registries_of(install)["configs"] == {
            "registry.studio.example:5000": {"auth": {"username": "ci", "password": PASSWORD}}
        }
        # Only as data: never in the command lines the provider shows when a step fails.
        for key in ("create", "update", "delete"):
            assert not holds_password(install.value(key) or "")
    for key, output in with_user_registry.outputs.items():
        assert output.secret or PASSWORD not in str(output.value), key
    assert not any(PASSWORD in w for w in with_user_registry.warnings)
