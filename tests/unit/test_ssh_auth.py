"""SSH sign-in to the Pis: a key with a passphrase (`sshKeyPassphrase`), ssh-agent (`ssh.agent`),
and the one clear error before any resource when neither fits the key.

Keys are made by the real `ssh-keygen`, and the agent is a real `ssh-agent` on a socket of the
test's own; the program runs under mocks.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components import ssh_auth
from components.app_model import DEMO_API
from components.config import ConfigError, SshConfig
from components.image_build import TunnelPush, build_values
from components.images import plan_build
from components.pi_node import SshTarget
from components.ssh_auth import Protection
from tests.harness import Run, run, run_main, stack_file_config, unwrap
from tests.integration.simpi import SshAgent

PASSPHRASE = "unit-passphrase-7c1f"
TOKEN = "K10picluster-unit-test-token-0123456789abcdef"


def keygen(path: Path, *extra: str, passphrase: str = "", kind: str = "ed25519") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "unit", "-f", str(path), *extra],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    return {
        "plain": keygen(d / "plain"),
        "encrypted": keygen(d / "encrypted", passphrase=PASSPHRASE),
        "pem": keygen(d / "pem", "-m", "PEM", passphrase=PASSPHRASE, kind="ecdsa"),
        "pkcs8": keygen(d / "pkcs8", "-m", "PKCS8", passphrase=PASSPHRASE, kind="ecdsa"),
    }


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[SshAgent]:
    """A real ssh-agent of this test's own (killed by its pid at the end)."""
    with SshAgent(tmp_path / "agent") as found:
        yield found


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No agent and a HOME without keys, whatever the developer's shell has."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return monkeypatch


def prod(ssh: dict[str, Any], **secrets: str) -> Run:
    return run_main(
        {**stack_file_config("prod"), "ssh": ssh, "k3sToken": TOKEN, **secrets},
        stack="prod",
        secret_keys=("k3sToken", *secrets),
    )


def connection(result: Run, name: str = "pi-agent-1-prepare") -> dict[str, Any]:
    command = result.named(name)
    assert command.is_secret("connection")
    return unwrap(command.inputs["connection"])


# --- what a key's text says ----------------------------------------------------------------------


def test_the_key_formats_are_told_apart(keys: dict[str, Path]) -> None:
    assert ssh_auth.protection(keys["plain"].read_text()) is Protection.NONE
    assert ssh_auth.protection(keys["encrypted"].read_text()) is Protection.PASSPHRASE
    assert ssh_auth.protection(keys["pem"].read_text()) is Protection.PASSPHRASE
    assert ssh_auth.protection(keys["pkcs8"].read_text()) is Protection.PKCS8
    assert ssh_auth.protection(keys["plain"].with_suffix(".pub").read_text()) is Protection.PUBLIC
    fake = "-----BEGIN OPENSSH PRIVATE KEY-----\nunit\n-----END OPENSSH PRIVATE KEY-----\n"
    assert ssh_auth.protection(fake) is Protection.NONE


def test_the_agent_s_keys_are_counted(agent: SshAgent, keys: dict[str, Path]) -> None:
    assert ssh_auth.agent_key_count(str(agent.socket)) == 0
    agent.add(keys["plain"])
    assert ssh_auth.agent_key_count(str(agent.socket)) == 1


# --- the program ---------------------------------------------------------------------------------


def test_an_encrypted_key_without_passphrase_or_agent_is_one_error(
    keys: dict[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as caught:
        prod({"privateKeyPath": str(keys["encrypted"])})
    message = str(caught.value)
    assert message.startswith(f"picluster:ssh.privateKeyPath: '{keys['encrypted']}' is protected")
    assert "pulumi config set --secret sshKeyPassphrase" in message
    assert "ssh.agent true" in message and "ssh-add" in message


def test_an_encrypted_secret_key_names_the_secret_not_its_content(
    keys: dict[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    text = keys["encrypted"].read_text()
    with pytest.raises(ConfigError) as caught:
        prod({"privateKeyPath": None}, sshPrivateKey=text)
    assert str(caught.value).startswith("picluster:sshPrivateKey is protected by a passphrase")
    assert text.splitlines()[1] not in str(caught.value)


def test_the_passphrase_goes_with_the_key_as_a_secret(
    keys: dict[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    result = prod({"privateKeyPath": str(keys["encrypted"])}, sshKeyPassphrase=PASSPHRASE)
    for name in ("pi-agent-1-prepare", "pi-server-1-gate", "cluster-pi-server-1-k3s"):
        found = connection(result, name)
        assert found["privateKey"] == keys["encrypted"].read_text()
        assert found["privateKeyPassword"] == PASSPHRASE
        assert "agentSocketPath" not in found
    assert not any(PASSPHRASE in s for r in result.registrations for s in r.plain_strings())


def test_a_plain_key_has_no_password_in_its_connection(
    keys: dict[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    found = connection(prod({"privateKeyPath": str(keys["plain"])}))
    assert found["privateKey"] == keys["plain"].read_text()
    assert "privateKeyPassword" not in found


def test_a_passphrase_for_a_plain_key_is_refused(
    keys: dict[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    # The provider refuses the pair (x/crypto/ssh: PassphraseMissingError for a key without one).
    with pytest.raises(ConfigError) as caught:
        prod({"privateKeyPath": str(keys["plain"])}, sshKeyPassphrase=PASSPHRASE)
    assert "picluster:sshKeyPassphrase: is set but" in str(caught.value)
    assert "pulumi config rm sshKeyPassphrase" in str(caught.value)
    assert PASSPHRASE not in str(caught.value)


def test_a_public_key_and_a_pkcs8_key_are_named(
    keys: dict[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as caught:
        prod({"privateKeyPath": str(keys["plain"].with_suffix(".pub"))})
    assert "is a public key" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        prod({"privateKeyPath": str(keys["pkcs8"])}, sshKeyPassphrase=PASSPHRASE)
    assert "ssh-keygen -p -f" in str(caught.value)


def test_the_agent_alone_signs_in_and_no_key_file_is_read(
    agent: SshAgent, keys: dict[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    agent.add(keys["plain"])
    clean_env.setenv("SSH_AUTH_SOCK", str(agent.socket))
    # HOME has no ~/.ssh/id_ed25519: the default key path does not apply with the agent.
    result = prod({"user": "pi", "agent": True})
    found = connection(result)
    assert "privateKey" not in found and "privateKeyPassword" not in found
    # The socket's path changes at every login: it is never an input (pulumi-command reads
    # SSH_AUTH_SOCK itself), so a new login changes no command.
    assert "agentSocketPath" not in found
    assert str(agent.socket) not in " ".join(
        s for r in result.registrations for s in r.plain_strings()
    )


def test_with_the_agent_an_encrypted_key_file_is_left_to_the_agent(
    agent: SshAgent, keys: dict[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    agent.add(keys["plain"])
    clean_env.setenv("SSH_AUTH_SOCK", str(agent.socket))
    found = connection(prod({"privateKeyPath": str(keys["encrypted"]), "agent": True}))
    assert "privateKey" not in found


def test_the_agent_needs_ssh_auth_sock_and_a_key(
    agent: SshAgent, clean_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as caught:
        prod({"agent": True})
    assert str(caught.value).startswith("picluster:ssh.agent: is true but SSH_AUTH_SOCK is not")
    clean_env.setenv("SSH_AUTH_SOCK", str(agent.socket))
    with pytest.raises(ConfigError) as caught:
        prod({"agent": True})
    assert "holds no key" in str(caught.value) and "ssh-add" in str(caught.value)


def test_a_dead_agent_socket_is_named_even_without_ssh_agent(
    keys: dict[str, Path], clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pulumi-command dials SSH_AUTH_SOCK for every connection whenever it is set, and a failed
    dial fails the connection (connection.go SSHConfig): a stale one would fail every step."""
    clean_env.setenv("SSH_AUTH_SOCK", str(tmp_path / "gone.sock"))
    with pytest.raises(ConfigError) as caught:
        prod({"privateKeyPath": str(keys["plain"])})
    assert "does not answer as an ssh-agent" in str(caught.value)
    assert "unset SSH_AUTH_SOCK" in str(caught.value)


def test_no_key_and_no_agent_is_one_error(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        prod({"privateKeyPath": None})
    assert str(caught.value).startswith("picluster:ssh.privateKeyPath: is required unless")


def test_the_docker_stack_without_nodes_needs_no_key(clean_env: pytest.MonkeyPatch) -> None:
    result = run_main({**stack_file_config("local")}, stack="local")
    assert not result.of_type("command:remote:Command")


# --- the image push's tunnel ---------------------------------------------------------------------


def test_the_tunnel_gets_the_passphrase_in_its_secret_stdin_and_the_agent_flag() -> None:
    build = plan_build("api", DEMO_API)
    ref = build.ref("registry.picluster.internal")

    def server(**extra: Any) -> SshTarget:
        return SshTarget(host="10.0.0.9", port=22, user="pi", **extra)

    with_agent = TunnelPush(server=server(private_key=None, agent=True), platforms=("x",))
    assert build_values(build, ref, with_agent)["SSH_AGENT"] == "1"
    plain = TunnelPush(server=server(private_key="k"), platforms=("x",))
    assert build_values(build, ref, plain)["SSH_AGENT"] == ""

    def program() -> None:
        from pulumi_command import Provider

        from components.image_build import declare_build

        target = TunnelPush(
            server=server(
                private_key=pulumi.Output.secret("KEY-TEXT"),
                private_key_password=pulumi.Output.secret(PASSPHRASE),
            ),
            platforms=("linux/arm64",),
        )
        declare_build(
            pulumi.ComponentResource("picluster:test:Builds", "builds"),
            "build",
            build,
            ref,
            target,
            pulumi.ResourceOptions(provider=Provider("command")),
        )

    command = run(program, {}).named("build")
    assert command.is_secret("stdin")
    stdin = str(command.value("stdin"))
    assert f"SSH_KEY_PASSPHRASE={PASSPHRASE}\n" in stdin
    assert PASSPHRASE not in " ".join(command.plain_strings())


# --- what the tools that run `ssh` get -----------------------------------------------------------


def test_client_auth_for_the_tools() -> None:
    default = ssh_auth.client_auth(SshConfig.model_validate({}), set())
    assert default.identity_file == Path("~/.ssh/id_ed25519").expanduser()
    assert default.ssh_options()[:2] == ["-i", str(default.identity_file)]
    agent_only = ssh_auth.client_auth(SshConfig.model_validate({"agent": True}), set())
    assert agent_only.identity_file is None and agent_only.agent
    assert agent_only.ssh_options() == []
    both = ssh_auth.client_auth(
        SshConfig.model_validate({"agent": True, "privateKeyPath": "/k/id"}), set()
    )
    assert both.identity_file == Path("/k/id")
    secret = ssh_auth.client_auth(SshConfig.model_validate({}), {"sshPrivateKey"})
    assert secret.identity_file is None and secret.key_in_secret
