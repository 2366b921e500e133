"""`bin/picluster manifests` and `compose`: what is secret is decided by Pulumi's secret markers
(a password that URL-encoding changes never reaches a plain file), a last text check refuses any
file holding a secret value in any encoding, a bad config is one message, and stacks that sign
in with a passphrase key or ssh-agent render without any SSH."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from cli import compose, manifests, program
from cli.__main__ import main
from cli.program import SECRET_SIG, SIG_KEY, Declaration, Declared, RenderError
from tests.harness import stack_file_config

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nunit\n-----END OPENSSH PRIVATE KEY-----\n"
PROD = {**stack_file_config("prod"), "ssh": {"user": "pi", "port": 22}, "sshPrivateKey": KEY}
ENCODED_PASSWORD = "S3cret@pass/word:x+y%z"
"""A password that percent-encoding changes (DATABASE_URL carries it encoded)."""
FOLDED = "prefix " * 10 + "correct horse battery staple"
"""A secret PyYAML folds at a space when it dumps it in a long line."""


def stack_file(tmp_path: Path, stack: str, config: dict[str, Any]) -> Path:
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump({"config": {f"picluster:{k}": v for k, v in config.items()}}))
    return path


def forms(value: str) -> list[str]:
    return [value, quote(value, safe=""), quote(value), base64.b64encode(value.encode()).decode()]


def written_text(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.rglob("*") if p.is_file())


def secret(value: Any) -> dict[str, Any]:
    return {SIG_KEY: SECRET_SIG, "value": value}


# --- manifests ------------------------------------------------------------------------------


def test_manifests_never_write_a_password_url_encoding_changes(tmp_path: Path) -> None:
    config = {**PROD, "dbPassword": ENCODED_PASSWORD, "grafanaAdminPassword": FOLDED}
    out = tmp_path / "out"
    manifests.write(manifests.render("prod", stack_file(tmp_path, "prod", config)), out, "prod")
    text = written_text(out)
    for value in (ENCODED_PASSWORD, FOLDED):
        assert not [form for form in forms(value) if form in text]
    guide = (out / manifests.SECRETS_FILE).read_text()
    # Placeholders by which key each value is, never the value's text.
    assert "#   db-password: <picluster:dbPassword>" in guide
    assert "#   admin-password: <picluster:grafanaAdminPassword>" in guide
    assert f"#   database-url: {manifests.KEY_DESCRIPTIONS['database-url']}" in guide


def _with_configmap_value(declaration: Declaration, value: Any) -> Declaration:
    """`declaration` with one ConfigMap's data carrying `value`."""
    resources: list[Declared] = []
    done = False
    for resource in declaration.resources:
        if not done and resource.value("kind") == "ConfigMap":
            data = {**(resource.inputs.get("data") or {}), "leak": value}
            resource = replace(resource, inputs={**resource.inputs, "data": data})
            done = True
        resources.append(resource)
    assert done
    return replace(declaration, resources=resources)


def test_manifests_refuse_an_object_with_a_secret_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Marked secret, but no known value: only the marker can tell (a text search cannot, and
    # PyYAML folds this one at a space anyway).
    declared = program.declare("prod", stack_file=stack_file(tmp_path, "prod", PROD))
    monkeypatch.setattr(
        manifests, "declare", lambda *a, **k: _with_configmap_value(declared, secret(FOLDED))
    )
    with pytest.raises(RenderError, match=r"ConfigMap/\S+ would carry a secret value"):
        manifests.render("prod")


def test_manifests_last_check_finds_a_secret_in_any_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {**PROD, "dbPassword": ENCODED_PASSWORD, "grafanaAdminPassword": FOLDED}
    declared = program.declare("prod", stack_file=stack_file(tmp_path, "prod", config))
    out = tmp_path / "out"
    for value in (quote(ENCODED_PASSWORD, safe=""), FOLDED, forms(ENCODED_PASSWORD)[3]):
        # Unmarked (a program bug the markers would miss): the text check still refuses.
        monkeypatch.setattr(
            manifests, "declare", lambda *a, v=value, **k: _with_configmap_value(declared, v)
        )
        rendered = manifests.render("prod")
        with pytest.raises(RenderError, match="would carry a secret value"):
            manifests.write(rendered, out, "prod")
        assert not out.exists()


def test_a_bad_config_is_one_message_not_a_silent_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {**PROD, "nodes": [{**PROD["nodes"][0], "host": "300.1.1.1"}]}
    path = stack_file(tmp_path, "prod", bad)
    render_manifests, render_compose = manifests.render, compose.render
    monkeypatch.setattr(manifests, "render", lambda stack: render_manifests(stack, path))
    assert main(["manifests", "-s", "prod", "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "picluster:nodes[0].host: '300.1.1.1' is not an IPv4 address" in err
    assert err.count("300.1.1.1") == 1 and "Traceback" not in err
    assert not (tmp_path / "m").exists()
    local = stack_file(tmp_path, "local", {"target": "docker", "docker": {"host": "nowhere"}})
    monkeypatch.setattr(compose, "render", lambda stack, out: render_compose(stack, out, local))
    assert main(["compose", "-s", "local", "--out", str(tmp_path / "c" / "d.yml")]) == 1
    assert "picluster:docker.host" in capsys.readouterr().err


def _passphrase_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "a key passphrase", "-f", str(key)],
        check=True,
    )
    return key


def test_manifests_render_a_stack_that_signs_in_with_a_passphrase_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decrypt(stack: str, keys: frozenset[str]) -> dict[str, str]:
        raise AssertionError(f"decrypted {sorted(keys)}")

    monkeypatch.setattr(program, "decrypted_secrets", no_decrypt)
    config = {k: v for k, v in PROD.items() if k != "sshPrivateKey"}
    config["ssh"] = {**config["ssh"], "privateKeyPath": str(_passphrase_key(tmp_path))}
    # As `bin/pulumi config set --secret sshKeyPassphrase` stores it: only Pulumi can read it.
    config["sshKeyPassphrase"] = {"secure": "v1:bm90LXJlYWQ=:bm90LXJlYWQ="}
    rendered = manifests.render("prod", stack_file(tmp_path, "prod", config))
    (tmp_path / "plain").mkdir()
    plain = manifests.render("prod", stack_file(tmp_path / "plain", "prod", PROD))
    assert sorted(map(manifests.file_name, rendered.objects)) == sorted(
        map(manifests.file_name, plain.objects)
    )
    by_name = {manifests.file_name(m): m for m in plain.objects}
    assert all(by_name[manifests.file_name(m)] == m for m in rendered.objects)


@pytest.mark.parametrize("agent_socket", [None, "/nonexistent/agent.sock"])
def test_manifests_render_a_stack_that_signs_in_with_ssh_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent_socket: str | None
) -> None:
    if agent_socket:
        monkeypatch.setenv("SSH_AUTH_SOCK", agent_socket)
    config = {k: v for k, v in PROD.items() if k != "sshPrivateKey"}
    config["ssh"] = {**config["ssh"], "agent": True}
    rendered = manifests.render("prod", stack_file(tmp_path, "prod", config))
    assert len(rendered.objects) > 40


def test_a_malformed_ssh_setting_is_still_reported(tmp_path: Path) -> None:
    config = {**PROD, "ssh": {**PROD["ssh"], "agent": "sometimes"}}
    with pytest.raises(RenderError, match=r"picluster:ssh\.agent"):
        manifests.render("prod", stack_file(tmp_path, "prod", config))


# --- compose --------------------------------------------------------------------------------


def test_compose_keeps_a_password_url_encoding_changes_out_of_the_compose_file(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "c"
    (folder / compose.SECRETS_DIR).mkdir(parents=True)
    (folder / compose.SECRETS_DIR / "db-password").write_text(ENCODED_PASSWORD)
    out = folder / "docker-compose.yml"
    composed, passwords = compose.render(
        "local", out, stack_file(tmp_path, "local", {"target": "docker"})
    )
    assert passwords["dbPassword"] == ENCODED_PASSWORD
    compose.write(composed, passwords, out)
    text = out.read_text() + "".join(
        p.read_text() for p in (folder / compose.BUILD_DIR).rglob("*") if p.is_file()
    )
    assert not [form for form in forms(ENCODED_PASSWORD) if form in text]
    # DATABASE_URL (the password percent-encoded, marked secret) is in the api's env file.
    env = (folder / compose.SECRETS_DIR / "api-1.env").read_text()
    assert f"DATABASE_URL=postgresql://game:{quote(ENCODED_PASSWORD, safe='')}@" in env


def test_compose_refuses_a_secret_outside_env_and_uploads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = program.declare(
        "local",
        stack_file=stack_file(tmp_path, "local", {"target": "docker"}),
        given_secrets={"dbPassword": "p" * 32, "grafanaAdminPassword": "g" * 32},
    )
    resources = []
    for resource in declared.resources:
        if resource.type == compose.CONTAINER and resource.value("name").endswith("api-1"):
            labels = [*resource.inputs.get("labels", []), {"label": "x", "value": secret("y")}]
            resource = replace(resource, inputs={**resource.inputs, "labels": labels})
        resources.append(resource)
    with pytest.raises(RenderError, match="api-1 would carry a secret value in its labels"):
        compose.translate(
            resources, project="p", secret_values=list(declared.secrets), out_dir=tmp_path
        )
