"""How picluster signs in to the Pis over SSH: a private key (the file `ssh.privateKeyPath` or the
secret `sshPrivateKey`), its passphrase (the secret `sshKeyPassphrase`), and ssh-agent
(`ssh.agent`), checked before any resource is declared.

pulumi-command's SSH client (provider/pkg/provider/remote/connection.go, `SSHConfig`) offers, in
order: the private key (parsed with `privateKeyPassword` when one is given, and failing the whole
connection when the key cannot be parsed: an encrypted key without its passphrase, or a passphrase
given for a key that has none), then a password, then every key of the agent at
`agentSocketPath`, else at `$SSH_AUTH_SOCK` of the provider (connection_unix.go,
`tryGetDefaultAgentSocket`), whose dial failing also fails the connection. picluster never sets
`agentSocketPath`: the socket's path changes at every login, and as an input of every remote
command it would update (re-run) each of them. The provider reads `$SSH_AUTH_SOCK` of the shell
that runs `pulumi` instead; nothing about the agent is stored in the state.

So, before any resource:
- an encrypted key needs `sshKeyPassphrase`, unless `ssh.agent` is on (then the key is not given
  to the provider, the agent's keys are used);
- `sshKeyPassphrase` for a key without a passphrase is refused (the provider would fail);
- `ssh.agent: true` needs an agent answering at `$SSH_AUTH_SOCK` with at least one key;
- a `$SSH_AUTH_SOCK` that does not answer is refused whenever Pis are listed (the provider dials
  it for every connection, agent or not).

`client_auth` gives the same choice to the tools that run the system `ssh` (`bin/picluster ssh`,
`bin/restore-datastore`): which identity file, if any, and whether the agent is used.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.config_errors import STACK_PLACEHOLDER, command

if TYPE_CHECKING:
    from components.config import SshConfig

DEFAULT_KEY_PATH = "~/.ssh/id_ed25519"
"""`ssh.privateKeyPath` when it is not set and the agent is not used."""
AGENT_SOCKET_ENV = "SSH_AUTH_SOCK"
_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_OPENSSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END = "-----END OPENSSH PRIVATE KEY-----"
_AGENTC_REQUEST_IDENTITIES = 11
_AGENT_IDENTITIES_ANSWER = 12


class Protection(enum.StrEnum):
    """What a private key's text says about its passphrase."""

    NONE = "none"
    """Not encrypted (or a format this check does not read: the provider then says why)."""
    PASSPHRASE = "passphrase"  # noqa: S105 (a kind of key, not a password)
    """Encrypted: an OpenSSH key whose kdfname is not `none`, or a PEM key with
    `Proc-Type: 4,ENCRYPTED`; the provider decrypts it with `privateKeyPassword`."""
    PKCS8 = "pkcs8"
    """An encrypted PKCS#8 key (`BEGIN ENCRYPTED PRIVATE KEY`), which the provider's SSH library
    (golang.org/x/crypto/ssh) cannot read at all."""
    PUBLIC = "public"
    """A public key (`ssh-ed25519 AAAA...`, the `.pub` file), not a private one."""


def protection(text: str) -> Protection:
    """Whether the private key `text` is protected by a passphrase (read from its header only;
    nothing is decrypted)."""
    stripped = text.strip()
    if stripped.startswith(("ssh-", "ecdsa-sha2-", "sk-")):
        return Protection.PUBLIC
    if "-----BEGIN ENCRYPTED PRIVATE KEY-----" in stripped:
        return Protection.PKCS8
    if _OPENSSH_BEGIN in stripped:
        return (
            Protection.PASSPHRASE
            if _openssh_kdf(stripped) not in (None, "none")
            else Protection.NONE
        )
    if "-----BEGIN " in stripped and "Proc-Type: 4,ENCRYPTED" in stripped:
        return Protection.PASSPHRASE
    return Protection.NONE


def _openssh_kdf(text: str) -> str | None:
    """The kdfname of an `openssh-key-v1` key (PROTOCOL.key: magic, then string ciphername,
    string kdfname), or None when the text is not one."""
    body = text.split(_OPENSSH_BEGIN, 1)[1].split(_OPENSSH_END, 1)[0]
    try:
        blob = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not blob.startswith(_OPENSSH_MAGIC):
        return None
    at = len(_OPENSSH_MAGIC)
    fields: list[bytes] = []
    for _ in range(2):
        if len(blob) < at + 4:
            return None
        (size,) = struct.unpack(">I", blob[at : at + 4])
        fields.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    return fields[1].decode("ascii", "replace")


def agent_key_count(path: str, *, timeout: float = 3.0) -> int:
    """How many keys the ssh-agent at `path` holds (SSH2_AGENTC_REQUEST_IDENTITIES,
    draft-miller-ssh-agent); OSError when it does not answer as an agent."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(struct.pack(">IB", 1, _AGENTC_REQUEST_IDENTITIES))
        header = _read_exactly(sock, 4)
        (length,) = struct.unpack(">I", header)
        reply = _read_exactly(sock, min(length, 9))
    if len(reply) < 5 or reply[0] != _AGENT_IDENTITIES_ANSWER:
        raise OSError(f"{path} did not answer as an ssh-agent")
    return struct.unpack(">I", reply[1:5])[0]


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("the agent closed the connection")
        data += chunk
    return data


@dataclass(frozen=True, kw_only=True)
class KeyChoice:
    """What the remote commands' connection is given, decided by `choose`."""

    use_key: bool
    """Give the private key (with `privateKeyPassword` when a passphrase is set)."""
    use_passphrase: bool
    """Give `sshKeyPassphrase` as `privateKeyPassword`."""
    problems: tuple[str, ...] = ()
    """Config errors, each naming the key and the fix; empty when the choice is usable."""


def choose(
    *,
    key_text: str | None,
    key_name: str,
    passphrase_set: bool,
    agent: bool,
    environ: Mapping[str, str],
    stack: str = STACK_PLACEHOLDER,
) -> KeyChoice:
    """Which of the key, its passphrase and the agent the connection uses, or the problems.

    `key_text` is the key's content (None: no key, the agent alone); `key_name` names where it
    came from in messages (`picluster:ssh.privateKeyPath: '~/.ssh/id_ed25519'` or
    `picluster:sshPrivateKey`), never its content.
    """
    problems = agent_problems(agent=agent, key_given=key_text is not None, environ=environ)
    if key_text is None:
        if not agent:
            problems.append(
                "picluster:ssh.privateKeyPath: is required unless the secret "
                "picluster:sshPrivateKey is set or picluster:ssh.agent is true"
            )
        if passphrase_set:
            problems.append(
                "picluster:sshKeyPassphrase: is set but no private key is given (ssh.agent "
                "uses the agent's keys); remove it with "
                + command("config rm sshKeyPassphrase", stack)
            )
        return KeyChoice(use_key=False, use_passphrase=False, problems=tuple(problems))
    found = protection(key_text)
    if found is Protection.PUBLIC:
        problems.append(
            f"{key_name} is a public key (a .pub file's line); give the private key, the file "
            "of the same name without .pub"
        )
    elif found is Protection.PKCS8:
        problems.append(
            f"{key_name} is an encrypted PKCS#8 key, which pulumi-command's SSH client cannot "
            "read; rewrite it in OpenSSH format with `ssh-keygen -p -f <key file>` (same "
            "passphrase) and set the passphrase with "
            + command("config set --secret sshKeyPassphrase", stack)
        )
    elif found is Protection.PASSPHRASE and not passphrase_set:
        if agent:
            # The agent holds the key (ssh-add): the encrypted copy is not given to the provider,
            # which would refuse the whole connection for want of its passphrase.
            return KeyChoice(use_key=False, use_passphrase=False, problems=tuple(problems))
        problems.append(
            f"{key_name} is protected by a passphrase; give it with "
            + command("config set --secret sshKeyPassphrase", stack)
            + " (it asks for the value), or load the key into ssh-agent (`ssh-add <key file>`) "
            "and set " + command("config set --path ssh.agent true", stack)
        )
    elif found is Protection.NONE and passphrase_set:
        problems.append(
            f"picluster:sshKeyPassphrase: is set but {key_name.replace(': ', ' ', 1)} has no "
            "passphrase; remove it with " + command("config rm sshKeyPassphrase", stack)
        )
    return KeyChoice(
        use_key=True,
        use_passphrase=passphrase_set and found is Protection.PASSPHRASE,
        problems=tuple(problems),
    )


def agent_problems(*, agent: bool, key_given: bool, environ: Mapping[str, str]) -> list[str]:
    """`ssh.agent` needs an agent with a key at `$SSH_AUTH_SOCK`; and any `$SSH_AUTH_SOCK` must
    answer, since pulumi-command dials it for every connection."""
    path = environ.get(AGENT_SOCKET_ENV, "")
    if not path:
        if not agent:
            return []
        return [
            "picluster:ssh.agent: is true but SSH_AUTH_SOCK is not set in the shell running "
            'pulumi; start an agent and add your key (`eval "$(ssh-agent)"` then `ssh-add`), '
            "or set ssh.agent to false and use a key file"
        ]
    try:
        keys = agent_key_count(path)
    except OSError:
        # The value is a local path, not a secret.
        return [
            f"SSH_AUTH_SOCK ({path}) does not answer as an ssh-agent, and pulumi-command dials "
            'it for every connection to the Pis; start the agent again (`eval "$(ssh-agent)"` '
            "then `ssh-add`) or `unset SSH_AUTH_SOCK`"
            + (" (picluster:ssh.agent then needs a key file instead)" if agent else "")
        ]
    if agent and keys == 0 and not key_given:
        return [
            f"picluster:ssh.agent: the agent at SSH_AUTH_SOCK ({path}) holds no key; add yours "
            "with `ssh-add ~/.ssh/id_ed25519`"
        ]
    return []


def key_for(
    ssh: SshConfig | None,
    secret_key: str | None,
    *,
    passphrase_set: bool,
    environ: Mapping[str, str] | None = None,
    stack: str = STACK_PLACEHOLDER,
) -> tuple[Path | None, KeyChoice]:
    """The key file (None: the secret `sshPrivateKey` is the key, or the agent alone signs in)
    and what the connection uses; the choice's `problems` are the config errors."""
    key_file: Path | None = None
    if secret_key is not None:
        key_text: str | None = secret_key
        key_name = "picluster:sshPrivateKey"
    else:
        configured = key_path(ssh)
        key_name = f"picluster:ssh.privateKeyPath: {configured!r}"
        key_text = None
        if configured is not None:
            key_file = Path(configured).expanduser()
            try:
                key_text = key_file.read_text(errors="replace")
            except OSError:
                return None, KeyChoice(
                    use_key=False,
                    use_passphrase=False,
                    problems=(
                        f"{key_name} is not a readable file; point it at your SSH private key, "
                        "set it with "
                        + command(
                            "config set --secret sshPrivateKey", stack, stdin="~/.ssh/id_ed25519"
                        )
                        + ", or sign in with ssh-agent: "
                        + command("config set --path ssh.agent true", stack),
                    ),
                )
    choice = choose(
        key_text=key_text,
        key_name=key_name,
        passphrase_set=passphrase_set,
        agent=ssh is not None and ssh.agent,
        environ=os.environ if environ is None else environ,
        stack=stack,
    )
    return key_file, choice


@dataclass(frozen=True, kw_only=True)
class ClientAuth:
    """How the system `ssh` signs in to the Pis, as the stack's remote commands do."""

    identity_file: Path | None
    """The private key file to give with `-i` (`ssh.privateKeyPath`, or its default), or None:
    the key is only in the secret `sshPrivateKey`, or the agent alone is used."""
    agent: bool
    """`ssh.agent`: the agent at `$SSH_AUTH_SOCK` holds the key."""
    key_in_secret: bool
    """The key is the secret `sshPrivateKey` (no file: a tool must write it to a 0600 file, or
    be given one)."""

    def ssh_options(self) -> list[str]:
        """`ssh` options for this sign-in (none when the agent alone signs in). With a key file,
        `IdentitiesOnly=yes` still lets the agent sign with that same key (once `ssh-add`ed);
        a passphrase the agent does not hold is asked on the terminal by ssh itself."""
        if self.identity_file is None:
            return []
        return ["-i", str(self.identity_file), "-o", "IdentitiesOnly=yes"]


def client_auth(ssh: SshConfig | None, secrets_set: frozenset[str] | set[str]) -> ClientAuth:
    """The sign-in of the stack's `ssh` settings and the names of the secrets the stack sets
    (`sshPrivateKey`), for a tool running the system `ssh`."""
    agent = ssh.agent if ssh is not None else False
    in_secret = "sshPrivateKey" in secrets_set
    path = key_path(ssh)
    return ClientAuth(
        identity_file=None if in_secret or path is None else Path(path).expanduser(),
        agent=agent,
        key_in_secret=in_secret,
    )


def key_path(ssh: SshConfig | None) -> str | None:
    """`ssh.privateKeyPath` as it applies: the configured path; its default
    (`~/.ssh/id_ed25519`) only when the agent is not used; None when set to null."""
    if ssh is None:
        return DEFAULT_KEY_PATH
    if "private_key_path" not in ssh.model_fields_set and ssh.agent:
        return None
    return ssh.private_key_path
