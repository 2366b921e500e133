"""`bin/pulumi` with the real Pulumi CLI: each stack gets its own passphrase file, made only when
the stack is created, and nothing ever asks for a passphrase, at a terminal or not.

Each test has a fresh HOME (no passphrase exists beforehand) and a copy of the project with no
`.pulumi-state` yet. The CLI is the one tools/engine/build.sh built; no program runs here except
in the `.venv` test (stack and config commands only need the CLI and the file backend).
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine.conftest import ROOT, make_project

pytestmark = [pytest.mark.engine]

WRAPPER = ROOT / "bin" / "pulumi"


@dataclass(frozen=True)
class Checkout:
    """A copy of the project with bin/pulumi, and the environment a new user's shell has."""

    path: Path
    home: Path
    env: dict[str, str]

    def passphrase_file(self, stack: str) -> Path:
        return self.home / ".config" / "picluster" / f"{stack}.passphrase"

    def run(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`bin/pulumi ARGS`, stdin closed unless given (a prompt would fail, not hang)."""
        return subprocess.run(
            ["bin/pulumi", *args],
            cwd=self.path,
            env={**self.env, **(env or {})},
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result

    def at_terminal(self, *args: str, timeout: float = 30) -> tuple[int | None, str]:
        """`bin/pulumi ARGS` with a terminal as stdin, stdout and stderr, as a user types it.
        Returns the exit code (None when it was still running at `timeout`: waiting on a
        prompt) and what it printed."""
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            ["bin/pulumi", *args],
            cwd=self.path,
            env=self.env,
            stdin=follower,
            stdout=follower,
            stderr=follower,
            start_new_session=True,
        )
        os.close(follower)
        output = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([leader], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(leader, 4096)
                    except OSError:  # the terminal closed: every writer is gone
                        chunk = b""
                    if not chunk and process.poll() is not None:
                        break
                    output += chunk
                elif process.poll() is not None:
                    break
            code = process.poll()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            os.close(leader)
        return code, output.decode(errors="replace")


@pytest.fixture
def checkout(engine_bin: Path, tmp_path: Path) -> Checkout:
    project = make_project(engine_bin, tmp_path)
    (project.path / ".pulumi-state").rmdir()  # bin/pulumi makes it
    (project.path / "bin").mkdir()
    shutil.copy2(WRAPPER, project.path / "bin" / "pulumi")
    home = tmp_path / "home"
    home.mkdir()
    env = {**project.env, "HOME": str(home)}
    for name in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "XDG_CONFIG_HOME"):
        env.pop(name, None)
    return Checkout(project.path, home, env)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_first_stack_init_makes_the_state_folder_and_a_0600_passphrase(
    checkout: Checkout,
) -> None:
    result = checkout.ok("stack", "init", "local")
    assert (checkout.path / ".pulumi-state").is_dir()
    passphrase = checkout.passphrase_file("local")
    assert _mode(passphrase) == 0o600
    assert _mode(passphrase.parent) == 0o700
    value = passphrase.read_text().strip()
    assert len(value) == 43 and value.replace("-", "").replace("_", "").isalnum()  # 32 bytes
    assert f"generated stack local's passphrase in {passphrase}" in result.stderr
    # The stack's secrets are encrypted with it: what the CLI reads back with that file alone.
    checkout.ok("config", "set", "--secret", "dbPassword", "local-secret-123456", "-s", "local")
    shown = subprocess.run(
        ["pulumi", "config", "get", "dbPassword", "-s", "local", "--non-interactive"],
        cwd=checkout.path,
        env={**checkout.env, "PULUMI_CONFIG_PASSPHRASE_FILE": str(passphrase)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.stdout.strip() == "local-secret-123456", shown.stderr


def test_the_second_stack_gets_its_own_passphrase_and_each_reads_its_own_secrets(
    checkout: Checkout,
) -> None:
    checkout.ok("stack", "init", "local")
    checkout.ok("stack", "select", "prod", "--create", "--secrets-provider", "passphrase")
    local, prod = checkout.passphrase_file("local"), checkout.passphrase_file("prod")
    assert _mode(prod) == 0o600 and local.read_text() != prod.read_text()
    checkout.ok("config", "set", "--secret", "k3sToken", "prod-token-0123456789")  # selected
    checkout.ok("config", "set", "--secret", "dbPassword", "local-db-0123456789", "-s", "local")
    assert checkout.ok("config", "get", "k3sToken").stdout.strip() == "prod-token-0123456789"
    assert (
        checkout.ok("config", "get", "dbPassword", "--stack=local").stdout.strip()
        == "local-db-0123456789"
    )
    # A secret piped in, as the README's `cat key | bin/pulumi config set --secret ...` does.
    checkout.ok("config", "set", "--secret", "sshPrivateKey", "-sprod", stdin="a-key\n")
    assert checkout.ok("config", "get", "sshPrivateKey").stdout.strip() == "a-key"


@pytest.mark.parametrize(
    "args",
    [
        ["stack", "init", "dev"],
        ["stack", "init", "--secrets-provider", "passphrase", "dev"],
        ["stack", "init", "--stack=dev"],
        ["stack", "init", "-s", "dev"],
        ["stack", "select", "dev", "--create"],
        ["stack", "select", "-c", "organization/picluster/dev"],
    ],
    ids=" ".join,
)
def test_every_way_of_creating_a_stack_names_its_passphrase_file(
    checkout: Checkout, args: list[str]
) -> None:
    checkout.ok(*args)
    assert [p.name for p in checkout.passphrase_file("dev").parent.iterdir()] == ["dev.passphrase"]
    assert checkout.ok("stack", "--show-name").stdout.strip() == "dev"


STACK_OF_ARGS = [
    (["config", "get", "k3sToken", "-s", "prod"], "prod"),
    (["config", "get", "k3sToken", "--stack=prod"], "prod"),
    (["config", "get", "k3sToken", "-sprod"], "prod"),
    (["config", "get", "k3sToken", "-s=prod"], "prod"),
    # Single-letter flags in one word, as pflag reads them (flag.go parseSingleShortArg).
    (["config", "get", "k3sToken", "-js", "prod"], "prod"),
    (["config", "get", "k3sToken", "-jsprod"], "prod"),
    (["config", "get", "k3sToken", "-js=prod"], "prod"),
    (["config", "get", "k3sToken", "-eQjs", "prod"], "prod"),
    (["-C", ".", "config", "get", "k3sToken", "-js", "prod"], "prod"),
    (["config", "get", "k3sToken", "-v", "3", "-js", "prod"], "prod"),
    # A value-taking letter takes the rest of its word: no stack there (the CLI then refuses
    # "3s" as a number).
    (["config", "get", "k3sToken", "-v3s"], "local"),
    # After `--` everything is a word.
    (["config", "get", "k3sToken", "--", "-s", "prod"], "local"),
    # No stack named: the selected one.
    (["config", "get", "dbPassword"], "local"),
]
"""Argument lists and the stack bin/pulumi picks for them (`local` is selected). The README walk's
pulumi double reads this choice from PICLUSTER_PULUMI_STACK instead of parsing again."""


@pytest.fixture
def two_stacks(checkout: Checkout) -> Checkout:
    """prod with a secret k3sToken, then local (selected) with a secret dbPassword, each under
    its own passphrase: a command given the other stack's passphrase fails."""
    checkout.ok("stack", "init", "prod")
    checkout.ok("config", "set", "--secret", "k3sToken", "prod-token-0123456789", "-s", "prod")
    checkout.ok("stack", "init", "local")
    checkout.ok("config", "set", "--secret", "dbPassword", "local-db-0123456789", "-s", "local")
    return checkout


@pytest.mark.parametrize(
    ("args", "stack"), STACK_OF_ARGS, ids=[" ".join(args) for args, _ in STACK_OF_ARGS]
)
def test_each_way_of_naming_the_stack_uses_that_stacks_passphrase(
    two_stacks: Checkout, args: list[str], stack: str, tmp_path: Path
) -> None:
    """`-js prod` is `--json --stack prod`: prod's file, not the selected stack's (which Pulumi
    would refuse with "incorrect passphrase"). A recording `pulumi` first on PATH (it runs the
    real one) shows what bin/pulumi handed over."""
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    record = tmp_path / "record"
    real = shutil.which("pulumi", path=two_stacks.env["PATH"])
    assert real is not None
    shim = shim_dir / "pulumi"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "${{PICLUSTER_PULUMI_STACK-}} ${{PULUMI_CONFIG_PASSPHRASE_FILE-}}" >>{record}\n'
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    path = f"{shim_dir}{os.pathsep}{two_stacks.env['PATH']}"
    result = two_stacks.run(*args, env={"PATH": path})
    last = record.read_text().splitlines()[-1].split(" ")
    assert last == [stack, str(two_stacks.passphrase_file(stack))]
    if not {"--", "-v3s"} & set(args):  # the two the CLI itself refuses
        assert result.returncode == 0, result.stderr
        # As text or as JSON (-j): the secret the stack's own passphrase decrypts.
        assert ("prod-token" if stack == "prod" else "local-db") + "-0123456789" in result.stdout


def test_the_walks_pulumi_double_takes_the_stack_bin_pulumi_chose(
    checkout: Checkout, engine_bin: Path
) -> None:
    """tests/engine/walk_pulumi.py checks bin/pulumi's promise for the stack bin/pulumi chose:
    a flag's value (`--secrets-provider passphrase`) is not a stack for it either."""
    doubles = ROOT / "tests" / "engine" / "walk_doubles"
    env = {
        "PATH": f"{doubles}{os.pathsep}{checkout.env['PATH']}",
        "PICLUSTER_WALK_REAL_PULUMI": str(engine_bin / "pulumi"),
        "PICLUSTER_WALK_ROOT": str(ROOT),
        "PICLUSTER_WALK_PYTHON": str(ROOT / ".venv" / "bin" / "python"),
    }
    made = checkout.run("stack", "init", "--secrets-provider", "passphrase", "prod", env=env)
    assert made.returncode == 0, made.stderr
    assert checkout.passphrase_file("prod").exists()
    shown = checkout.run("config", "-js", "prod", env=env)
    assert shown.returncode == 0, shown.stderr


def test_a_stack_file_salted_by_another_passphrase_is_refused_in_one_line(
    checkout: Checkout,
) -> None:
    """A committed Pulumi.prod.yaml keeps the `encryptionsalt:` of the checkout that made it; a
    fresh clone's new passphrase would not match it ("incorrect passphrase")."""
    checkout.ok("stack", "init", "prod")
    checkout.ok("config", "set", "--secret", "k3sToken", "prod-token-0123456789", "-s", "prod")
    stack_file = checkout.path / "Pulumi.prod.yaml"
    assert "encryptionsalt:" in stack_file.read_text()
    # A fresh clone: no state, no passphrase; the stack file as committed.
    shutil.rmtree(checkout.path / ".pulumi-state")
    saved = checkout.home / "teammate.passphrase"
    checkout.passphrase_file("prod").rename(saved)
    refused = checkout.run("stack", "init", "prod")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "bin/pulumi: Pulumi.prod.yaml was encrypted with another passphrase (its encryptionsalt: "
        f"line): put that passphrase in {checkout.passphrase_file('prod')}, one line, chmod 600; "
        "or, to start fresh, delete the encryptionsalt: line and every secure: value from "
        f"{stack_file}"
    ]
    assert not checkout.passphrase_file("prod").exists()
    # The first way: the passphrase that made it.
    shutil.copy2(saved, checkout.passphrase_file("prod"))
    checkout.ok("stack", "init", "prod")
    assert checkout.ok("config", "get", "k3sToken").stdout.strip() == "prod-token-0123456789"
    # The second way: start fresh.
    checkout.ok("stack", "rm", "prod", "--yes", "--preserve-config")
    checkout.passphrase_file("prod").unlink()
    kept = [
        line
        for line in stack_file.read_text().splitlines()
        if not line.startswith("encryptionsalt:") and "secure:" not in line
    ]
    stack_file.write_text("\n".join(kept) + "\n")
    checkout.ok("stack", "init", "prod")
    checkout.ok("config", "set", "--secret", "k3sToken", "new-token-0123456789", "-s", "prod")
    assert checkout.ok("config", "get", "k3sToken").stdout.strip() == "new-token-0123456789"


def test_an_existing_stack_without_its_file_is_refused_in_one_line(checkout: Checkout) -> None:
    checkout.ok("stack", "init", "prod")
    saved = checkout.home / "saved.passphrase"
    checkout.passphrase_file("prod").rename(saved)
    result = checkout.run("up", "-s", "prod", "--yes")
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"bin/pulumi: stack prod exists but has no passphrase file: put the passphrase it was "
        f"created with in {checkout.passphrase_file('prod')}, one line, chmod 600"
    ]
    assert not checkout.passphrase_file("prod").exists()  # never a new one for an old stack
    # With the file that made it exported, the line says to copy it (and still refuses).
    hinted = checkout.run("config", "-s", "prod", env={"PULUMI_CONFIG_PASSPHRASE_FILE": str(saved)})
    assert hinted.returncode != 0 and len(hinted.stderr.splitlines()) == 1
    assert f"cp {saved} {checkout.passphrase_file('prod')}" in hinted.stderr
    # At a terminal too: the same line, no prompt.
    code, output = checkout.at_terminal("config", "-s", "prod")
    assert code == 1, output
    assert "has no passphrase file" in output and "passphrase:" not in output.lower()
    # Unselecting or removing the stack needs no passphrase.
    checkout.ok("stack", "unselect")
    checkout.ok("stack", "rm", "prod", "--yes")


def test_at_a_terminal_nothing_asks_for_a_passphrase(checkout: Checkout) -> None:
    """The prompts the wrapper exists to prevent: Pulumi asks for a passphrase at a terminal
    when no variable is set, and offers to pick or create a stack when none is selected."""
    code, output = checkout.at_terminal("stack", "init", "local")
    assert code == 0, output
    code, output = checkout.at_terminal("config", "set", "--secret", "dbPassword", "x" * 16)
    assert code == 0, output
    code, output = checkout.at_terminal("config", "--show-secrets")
    assert code == 0 and "x" * 16 in output, output
    checkout.ok("stack", "unselect")
    code, output = checkout.at_terminal("config")
    assert code not in (0, None), output  # None: still waiting on a prompt
    assert "no stack selected" in output


def test_a_missing_stack_is_not_created_and_gets_no_passphrase(checkout: Checkout) -> None:
    result = checkout.run("up", "-s", "staging", "--yes")
    assert result.returncode != 0
    assert "no stack named 'staging' found" in result.stderr
    assert not checkout.passphrase_file("staging").parent.exists()


def test_an_exported_passphrase_for_another_stack_is_ignored_with_a_warning(
    checkout: Checkout,
) -> None:
    """The old README had prod's file exported in the shell: it must not apply to local."""
    checkout.ok("stack", "init", "prod")
    checkout.ok("stack", "init", "local")
    checkout.ok("config", "set", "--secret", "dbPassword", "local-db-0123456789", "-s", "local")
    prod_file = str(checkout.passphrase_file("prod"))
    result = checkout.run(
        "config", "get", "dbPassword", "-s", "local",
        env={"PULUMI_CONFIG_PASSPHRASE_FILE": prod_file, "PULUMI_CONFIG_PASSPHRASE": "wrong"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "local-db-0123456789"
    local_file = checkout.passphrase_file("local")
    assert result.stderr.splitlines() == [
        "bin/pulumi: ignoring the exported PULUMI_CONFIG_PASSPHRASE: stack local uses "
        f"{local_file}",
        f"bin/pulumi: ignoring the exported PULUMI_CONFIG_PASSPHRASE_FILE={prod_file}: stack "
        f"local uses {local_file}",
    ]
    # The same file as the stack's (what the old README exported for prod): silent.
    same = checkout.run("config", "-s", "prod", env={"PULUMI_CONFIG_PASSPHRASE_FILE": prod_file})
    assert same.returncode == 0 and same.stderr == "", same.stderr


def test_the_passphrase_files_of_an_existing_user_keep_working(checkout: Checkout) -> None:
    """Made by the old bin/up-local (local) and by hand after the old README (prod): the same
    names, so nothing changes for them."""
    (checkout.path / ".pulumi-state").mkdir()
    for stack in ("local", "prod"):
        path = checkout.passphrase_file(stack)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"an-old-{stack}-passphrase\n")
        path.chmod(0o600)
        made = subprocess.run(  # the old flow, with the CLI itself
            ["pulumi", "stack", "init", stack, "--non-interactive"],
            cwd=checkout.path,
            env={**checkout.env, "PULUMI_CONFIG_PASSPHRASE_FILE": str(path)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        checkout.ok(
            "config", "set", "--secret", "dbPassword", f"{stack}-db-0123456789", "-s", stack
        )
        assert checkout.passphrase_file(stack).read_text() == f"an-old-{stack}-passphrase\n"
    assert checkout.ok("config", "get", "dbPassword", "-s", "prod").stdout.strip() == (
        "prod-db-0123456789"
    )


def test_a_missing_venv_is_made_with_pulumi_install(checkout: Checkout) -> None:
    """The program's dependencies are the checkout's requirements.txt; this copy's are empty so
    that the install is quick and offline (what matters is that bin/pulumi runs it)."""
    (checkout.path / ".venv").unlink()
    (checkout.path / "requirements.txt").write_text("")
    checkout.ok("stack", "init", "local")
    result = checkout.run("preview", "-s", "local")
    assert "bin/pulumi: no .venv yet: pulumi install" in result.stderr
    assert (checkout.path / ".venv" / "bin" / "python").exists()
