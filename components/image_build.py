"""Build the studio's images on this machine and put them where the target pulls from.

One local command per image runs `components/scripts/image-build.sh` with `bash -s`, its stdin
a `NAME='value'` header and the script (`remote_script.script_payload`), like the steps on the
Pis. The header carries the content tag (in `REF`), so:

- an unchanged folder gives the same stdin: no diff, nothing runs, nothing downstream changes;
- a changed folder gives a new tag, a new stdin: an in-place update that builds (never
  `triggers`, which replace the command);
- the script is idempotent on its own: an image the daemon (or the registry) already has under
  its content tag is not built again, and it says so (`already built`, `already in the registry`).

Where the image goes (`BuildTarget`):

- `LocalDaemon`: the docker target's daemon (`docker.host`); the image stays there and the
  containers run it.
- `TunnelPush`: the in-cluster registry, reached through an SSH tunnel to the first server
  (`ssh -F /dev/null -L 127.0.0.1:<port>:10.43.0.50:5000`, its host key pinned, the key from
  stdin in a 0600 temp file deleted once the tunnel answers; its passphrase, when it has one,
  answered by an `SSH_ASKPASS` helper from another such file; with `ssh.agent`, the agent at
  the caller's `$SSH_AUTH_SOCK`); this machine's daemon pushes to the loopback end, which
  Docker trusts over plain HTTP. The registry is never open on the LAN.
- `RegistryPush`: a registry the user names (`images.registry`), its account written into the
  `config.json` of a temporary DOCKER_CONFIG (no `docker login`: no credential helper).

Secrets (the SSH key and its passphrase, the registry password) travel only in stdin, which is
then a secret; the script never puts them on a command line, in the environment of a child, or in
a log line. Deleting the command does nothing: images stay on the daemon and in the registry.

A push prints the digest the registry serves for the tag (`picluster image-build: digest
sha256:...`); `pinned_ref` reads it from the command's stdout, and the pods run
`<ref>@sha256:...`, which containerd verifies: a tag overwritten in the registry afterwards
(anyone inside the cluster can push to the in-cluster one) is never what they run. An unchanged
source runs nothing, and the stdout (so the digest) comes from the state.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pulumi_command import local

from components.images import ImageBuild
from components.pi_node import SshTarget
from components.registries import REGISTRY_CLUSTER_IP, REGISTRY_PORT
from components.remote_script import script_payload

SCRIPT = "image-build.sh"
IN_CLUSTER_REGISTRY_ADDRESS = f"{REGISTRY_CLUSTER_IP}:{REGISTRY_PORT}"
"""The in-cluster registry's Service as the first server reaches it (its pinned clusterIP in
K3s's default service CIDR, port 5000): the far end of the push tunnel."""


@dataclass(frozen=True, kw_only=True)
class LocalDaemon:
    """Build on the Docker daemon the docker target runs on; the image stays there."""

    docker_host: str
    """`docker.host`: `unix:///var/run/docker.sock`, `tcp://...` or `ssh://pi@...`."""


@dataclass(frozen=True, kw_only=True)
class TunnelPush:
    """Build on this machine's daemon and push to the in-cluster registry through SSH."""

    server: SshTarget
    """The first server, the tunnel's hop (its private key is a secret)."""
    platforms: tuple[str, ...]
    """What the nodes run, e.g. `("linux/arm64",)`."""
    builder: str | None = None
    """A `docker buildx` builder to build on (a native arm64 one), or the local daemon."""
    registry_address: str = IN_CLUSTER_REGISTRY_ADDRESS
    """`host:port` of the registry as the server reaches it."""
    registry_id: pulumi.Input[str] = ""
    """What identifies the registry's storage (its claim's uid): in the stdin, so a registry
    that lost its volume is a changed stdin, and the build checks and pushes again."""


@dataclass(frozen=True, kw_only=True)
class RegistryPush:
    """Build on this machine's daemon and push to a registry the user names."""

    platforms: tuple[str, ...]
    """What the nodes run, e.g. `("linux/arm64",)`."""
    username: str | None = None
    """`images.registryUsername`; None pushes without logging in."""
    password: pulumi.Input[str] | None = None
    """The secret `registryPassword`, with `username`."""
    builder: str | None = None
    """A `docker buildx` builder to build on, or the local daemon."""


BuildTarget = LocalDaemon | TunnelPush | RegistryPush
"""Where a built image goes."""


def _b64(text: str | None) -> str:
    return base64.b64encode(text.encode()).decode() if text else ""


def _portable(folder: Path) -> str:
    """`folder` relative to the working directory when it is inside it, else absolute.

    Pulumi runs the program and starts the providers in the project directory (pulumi/pulumi
    `sdk/go/common/resource/plugin/provider_plugin.go`: plugins get the context's `Pwd`), so
    the command runs where the program did; a project folder then gives the same stdin in every
    checkout, and another machine's preview shows no change.
    """
    cwd = Path.cwd()
    return folder.relative_to(cwd).as_posix() if folder.is_relative_to(cwd) else str(folder)


SECRET_NAMES = (
    "SSH_HOST",
    "SSH_PRIVATE_KEY",
    "SSH_KEY_PASSPHRASE",
    "REGISTRY_ID",
    "REGISTRY_PASSWORD",
)
"""Header names whose values come from Outputs (`build_stdin` fills them for its target)."""


def build_values(build: ImageBuild, ref: str, target: BuildTarget) -> dict[str, str]:
    """The plain header values of the build's stdin (the Output ones empty: `build_stdin` fills
    them). `ref` is the content-tagged reference the target runs.

    Every name the script reads is there, empty when unused: a `BUILDER` or `PLATFORMS`
    exported in the user's shell never reaches the script. Except DOCKER_HOST for a push, which
    goes through this machine's own daemon as the user's environment names it, and
    SSH_AUTH_SOCK, the user's agent (used only with `SSH_AGENT=1`, `ssh.agent`)."""
    if not ref.endswith(f":{build.tag}"):
        raise ValueError(f"{ref!r} is not tagged with the build's content tag {build.tag!r}")
    values = {
        "REF": ref,
        "CONTEXT": _portable(build.context),
        "DOCKERFILE_B64": _b64(build.dockerfile),
        "IGNORE_B64": _b64("\n".join(build.ignore) + "\n" if build.dockerfile else None),
        "PLATFORMS": "",
        "BUILDER": "",
        "SSH_PORT": "",
        "SSH_USER": "",
        "SSH_HOST_KEY": "",
        "SSH_AGENT": "",
        "REGISTRY_ADDRESS": "",
        "REGISTRY_USERNAME": "",
        **dict.fromkeys(SECRET_NAMES, ""),
    }
    if isinstance(target, LocalDaemon):
        return {"MODE": "local", **values, "DOCKER_HOST": target.docker_host}
    values |= {"PLATFORMS": ",".join(target.platforms), "BUILDER": target.builder or ""}
    if isinstance(target, TunnelPush):
        return {
            "MODE": "tunnel",
            **values,
            "SSH_PORT": str(target.server.port),
            "SSH_USER": target.server.user,
            "SSH_HOST_KEY": target.server.host_key or "",
            "SSH_AGENT": "1" if target.server.agent else "",
            "REGISTRY_ADDRESS": target.registry_address,
        }
    return {"MODE": "registry", **values, "REGISTRY_USERNAME": target.username or ""}


def build_stdin(build: ImageBuild, ref: str, target: BuildTarget) -> pulumi.Output[str]:
    """The command's stdin: the header (with the target's secrets, when it has any) and the
    script; a secret Output whenever a secret is in it."""
    values = build_values(build, ref, target)
    if isinstance(target, LocalDaemon):
        return pulumi.Output.from_input(script_payload(SCRIPT, values))
    if isinstance(target, TunnelPush):
        server = target.server
        parts = pulumi.Output.all(
            server.host, server.private_key, server.private_key_password, target.registry_id
        )
        return pulumi.Output.secret(
            parts.apply(
                lambda p: script_payload(
                    SCRIPT,
                    {
                        **values,
                        "REGISTRY_ID": str(p[3] or ""),
                        "SSH_HOST": str(p[0]),
                        "SSH_PRIVATE_KEY": str(p[1] or ""),
                        "SSH_KEY_PASSPHRASE": str(p[2] or ""),
                    },
                )
            )
        )
    if target.password is None:
        return pulumi.Output.from_input(script_payload(SCRIPT, values))
    return pulumi.Output.secret(
        pulumi.Output.from_input(target.password).apply(
            lambda password: script_payload(SCRIPT, {**values, "REGISTRY_PASSWORD": password})
        )
    )


def declare_build(
    parent: pulumi.Resource,
    name: str,
    build: ImageBuild,
    ref: str,
    target: BuildTarget,
    opts: pulumi.ResourceOptions | None = None,
) -> local.Command:
    """The local command that builds `build` as `ref` and puts it on `target`.

    A child of `parent` (which must carry a `command` provider: the default one is disabled).
    Whatever consumes the image depends on the returned command.
    """
    return local.Command(
        name,
        create="bash -s",
        # A new tag is a new stdin: an in-place update that builds and pushes. Never `triggers`.
        update="bash -s",
        # No delete: the image stays on the daemon and in the registry (a rollback finds it).
        stdin=build_stdin(build, ref, target),
        add_previous_output_in_env=False,
        # Build output (BuildKit progress, push progress) goes to the engine's log as it comes;
        # the summary line is on stdout.
        logging=local.Logging.STDOUT_AND_STDERR,
        opts=pulumi.ResourceOptions.merge(
            pulumi.ResourceOptions(parent=parent), opts or pulumi.ResourceOptions()
        ),
    )


DIGEST_LINE = re.compile(r"^picluster image-build: digest (sha256:[0-9a-f]{64})$", re.MULTILINE)
"""The line a push prints with the digest the registry serves for the pushed tag."""


def pushed_digest(stdout: str) -> str:
    """The digest in a push's stdout; ValueError when it has none (a script that did not push)."""
    found = DIGEST_LINE.findall(stdout)
    if not found:
        raise ValueError("the image build printed no digest (picluster image-build: digest ...)")
    return found[-1]


def pinned_ref(command: local.Command, ref: str) -> pulumi.Output[str]:
    """`ref@sha256:...`: the pushed image by its digest, from `command`'s stdout (a push build's).

    Not a secret (a digest names content, it reveals none), though the stdout of a build whose
    stdin is secret may be marked so.
    """
    return pulumi.Output.unsecret(command.stdout.apply(lambda out: f"{ref}@{pushed_digest(out)}"))
