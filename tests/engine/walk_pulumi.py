"""TEST DOUBLE of the `pulumi` CLI for the README walk (tests/engine/test_readme_walk.py), first on
its PATH, so `bin/pulumi` runs it. It stands in only where the real engine cannot run here: the
local stack's resources need the Docker provider plugin (pulumi-docker), which cannot be built
on these machines (shared/ENGINE_NOTES.md).

- Every command goes to the real CLI (tools/engine/build.sh's, `PICLUSTER_WALK_REAL_PULUMI`),
  unchanged, except these on the `local` stack:
  - `up` / `update` / `preview`: the real CLI reads the stack's config with `--show-secrets`
    (so the stack's passphrase must decrypt it), then the program runs under the project's mocks
    (tests/harness.py). `up` records the stack outputs for `stack output`, and creates, for
    real and labelled as the walk's, the Docker volumes the stack declares (the README removes
    the retained ones by hand after `destroy`); it refuses to touch a volume of that name it
    did not create.
  - `destroy`: the real CLI destroys the (empty) stack, then the double removes the volumes not
    marked `retainOnDelete`, as the provider would, and forgets the outputs.
  - `stack output`: the real CLI reads the stack, then the outputs the mocked `up` recorded are
    printed as the CLI prints them.
  - `install`: not run (it would install plugins from the network and pip into the checkout's
    shared .venv, which the walk's copy links to); the double checks that .venv exists.
- Before the prod stack's `up` or `preview`: pulumi-random cannot be built here either, and the
  program generates `k3sToken`, `dbPassword` and `grafanaAdminPassword` with it when they are not
  set, so the double sets those that are missing, as the prod lab does (tests/engine/prod_lab.py
  `default_config`): as secrets, through the real CLI and the stack's passphrase, values on
  stdin. Everything else of the prod stack is the real CLI's.
- The stack of a command is the one bin/pulumi chose (PICLUSTER_PULUMI_STACK): the double does
  not parse the arguments again.
- Before any command it asserts what bin/pulumi promises: PULUMI_CONFIG_PASSPHRASE is not set,
  and for a stack command PULUMI_CONFIG_PASSPHRASE_FILE names that stack's file under
  ${XDG_CONFIG_HOME:-~/.config}/picluster, which exists and is 0600. A broken promise exits 97
  with one line naming it.
"""

from __future__ import annotations

import json
import os
import runpy
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

REAL = os.environ.get("PICLUSTER_WALK_REAL_PULUMI", "")
STATE = Path(os.environ.get("PICLUSTER_WALK_STATE", "."))
LABEL = os.environ.get("PICLUSTER_WALK_LABEL", "picluster.readme-walk")
BROKEN = 97


def fail(message: str) -> NoReturn:
    print(f"pulumi (README walk double): {message}", file=sys.stderr)
    sys.exit(BROKEN)


def real(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """The real CLI on its own, stdin closed (a step of the double's)."""
    return subprocess.run(
        [REAL, *args], capture_output=capture, text=True, check=False, stdin=subprocess.DEVNULL
    )


def hand_over(args: list[str]) -> NoReturn:
    """The real CLI in place of the double, with the user's stdin (`... | pulumi config set`)."""
    os.execv(REAL, [REAL, *args])  # noqa: S606 - the CLI itself, no shell


def stack_of() -> str | None:
    """The stack bin/pulumi chose for this command (PICLUSTER_PULUMI_STACK): its argument parser
    (pflag's rules, tested in tests/engine/test_pulumi_wrapper.py) is the only one, so the double
    never reads a flag's value as the stack (`stack init --secrets-provider passphrase prod`).
    Unset: bin/pulumi's own calls before it chose (`stack --show-name`, `stack ls`), or a command
    with no stack."""
    return os.environ.get("PICLUSTER_PULUMI_STACK") or None


def check_passphrase(stack: str | None) -> None:
    if "PULUMI_CONFIG_PASSPHRASE" in os.environ:
        fail("PULUMI_CONFIG_PASSPHRASE is set: one value for every stack")
    if stack is None:
        return
    name = stack.rsplit("/", 1)[-1]
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    expected = config_home / "picluster" / f"{name}.passphrase"
    given = os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if given is None:
        return  # bin/pulumi runs without one only where no secret is read (stack rm, no stack)
    if Path(given) != expected:
        fail(f"PULUMI_CONFIG_PASSPHRASE_FILE={given}, not stack {name}'s {expected}")
    if not expected.is_file() or stat.S_IMODE(expected.stat().st_mode) != 0o600:
        fail(f"{expected} is missing or not 0600")


def stack_config(stack: str) -> tuple[dict[str, Any], list[str]]:
    """The stack's `picluster:` config, decrypted by the real CLI with the stack's passphrase."""
    shown = real(
        "config", "--json", "--show-secrets", "-s", stack, "--non-interactive", capture=True
    )
    if shown.returncode != 0:
        sys.stderr.write(shown.stderr)
        sys.exit(shown.returncode)
    config, secrets = {}, []
    for key, entry in json.loads(shown.stdout).items():
        if not key.startswith("picluster:"):
            continue
        short = key.removeprefix("picluster:")
        config[short] = entry.get("objectValue", entry.get("value"))
        if entry.get("secret"):
            secrets.append(short)
    return config, secrets


GENERATED = ("k3sToken", "dbPassword", "grafanaAdminPassword")
"""What the program generates with pulumi-random when it is not set (components/secrets.py)."""


def set_generated_secrets(stack: str) -> None:
    config, _ = stack_config(stack)
    for key in GENERATED:
        if key not in config:
            made = subprocess.run(
                [REAL, "config", "set", "--secret", key, "-s", stack, "--non-interactive"],
                input=f"walk-{key}-0123456789abcdef",
                capture_output=True,
                text=True,
                check=False,
            )
            if made.returncode != 0:
                fail(f"config set --secret {key}: {made.stderr.strip()}")


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


def run_local(stack: str, *, record: bool) -> None:
    from tests import harness

    config, secrets = stack_config(stack)
    program = Path.cwd() / "__main__.py"
    run = harness.run(
        lambda: runpy.run_path(str(program), run_name="__main__"),
        config,
        stack=stack,
        secret_keys=tuple(secrets),
    )
    for warning in run.warnings:
        print(f"warning: {warning}")
    print(f"Resources: {len(run.registrations)} declared (README walk double: under mocks)")
    if not record:
        return
    volumes = []
    for registration in run.of_type("docker:index/volume:Volume"):
        name = registration.value("name") or registration.name
        volumes.append({"name": name, "retain": registration.retain_on_delete})
        found = docker("volume", "inspect", "--format", f'{{{{index .Labels "{LABEL}"}}}}', name)
        if found.returncode == 0 and found.stdout.strip() != "yes":
            fail(f"a Docker volume {name} exists that the walk did not make: not touching it")
        if found.returncode != 0:
            made = docker("volume", "create", "--label", f"{LABEL}=yes", name)
            if made.returncode != 0:
                fail(f"docker volume create {name}: {made.stderr.strip()}")
    outputs = {k: {"value": v.value, "secret": v.secret} for k, v in run.outputs.items()}
    (STATE / f"{stack}.json").write_text(json.dumps({"outputs": outputs, "volumes": volumes}))
    for key, output in sorted(outputs.items()):
        print(f"    {key}: {'[secret]' if output['secret'] else json.dumps(output['value'])}")


def destroy_local(args: list[str], stack: str) -> int:
    result = real(*args)
    if result.returncode != 0:
        return result.returncode
    recorded = STATE / f"{stack}.json"
    if recorded.exists():
        for volume in json.loads(recorded.read_text())["volumes"]:
            if not volume["retain"]:
                docker("volume", "rm", volume["name"])
        recorded.unlink()
    return 0


def output_local(args: list[str], stack: str) -> int:
    recorded = STATE / f"{stack}.json"
    checked = real("stack", "output", "--json", "-s", stack, "--non-interactive", capture=True)
    if checked.returncode != 0 or not recorded.exists():
        hand_over(args)
    outputs = json.loads(recorded.read_text())["outputs"]
    show = "--show-secrets" in args
    words = [a for a in args if not a.startswith("-") and a != stack][2:]
    shown = {k: (o["value"] if show or not o["secret"] else "[secret]") for k, o in outputs.items()}
    if words:
        if words[0] not in shown:
            print(
                f"error: current stack does not have output property '{words[0]}'", file=sys.stderr
            )
            return 1
        value = shown[words[0]]
        print(json.dumps(value) if "--json" in args or not isinstance(value, str) else value)
    elif "--json" in args:
        print(json.dumps(shown, indent=2))
    else:
        print(f"Current stack outputs ({len(shown)}):")
        for key, value in sorted(shown.items()):
            print(f"    {key}  {value}")
    return 0


def main(args: list[str]) -> int:
    words = [a for a in args if not a.startswith("-")]
    command = words[0] if words else ""
    if command in ("version", "help", "plugin", "login", "logout", "whoami", ""):
        hand_over(args)
    if command == "install":
        check_passphrase(None)
        if not (Path.cwd() / ".venv" / "bin" / "python").exists():
            fail("no .venv: `pulumi install` would make it; the walk links the checkout's")
        print("install: .venv present (README walk double: nothing installed)")
        return 0
    stack = stack_of()
    check_passphrase(stack)
    if stack is None or stack.rsplit("/", 1)[-1] != "local":
        if stack is not None and command in ("up", "update", "preview", "pre"):
            set_generated_secrets(stack)
        hand_over(args)
    if command in ("up", "update", "preview", "pre"):
        if command in ("up", "update") and not {"--yes", "-y", "--skip-preview", "-f"} & set(args):
            print("error: --yes or --skip-preview must be passed in to proceed when running in "
                  "non-interactive mode", file=sys.stderr)  # fmt: skip
            return 1
        run_local(stack, record=command in ("up", "update"))
        return 0
    if command == "destroy":
        return destroy_local(args, stack)
    if words[:2] == ["stack", "output"]:
        return output_local(args, stack)
    hand_over(args)


if __name__ == "__main__":
    if not REAL:
        fail("PICLUSTER_WALK_REAL_PULUMI is not set")
    sys.exit(main(sys.argv[1:]))
