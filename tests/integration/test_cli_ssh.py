"""`bin/picluster ssh NODE` against a simulated Pi (a bookworm container with sshd, reached on
loopback): in with the pinned host key (given as the Pi's `.pub` line, comment and all), refused
with a wrong one; the key from `ssh.privateKeyPath`, or from the secret `sshPrivateKey`, which the
real Pulumi CLI, through `bin/pulumi` and the stack's own passphrase file, decrypts
(`config get`) into the command's private ssh-agent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import stack as cli_stack
from cli.__main__ import main
from tests.availability import ENGINE, unavailable
from tests.engine.conftest import ENGINE_CACHE
from tests.harness import ROOT
from tests.integration import simpi

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pi(sim_image: simpi.ImageBuild) -> Iterator[tuple[simpi.SimPi, str]]:
    """One simulated Pi and its ed25519 host key line, as its .pub file holds it."""
    with simpi.SimPiLab(sim_image.tag) as lab:
        started = lab.start_pi("ops")
        yield started, started.read("/etc/ssh/ssh_host_ed25519_key.pub").strip()


def other_host_key(tmp_path: Path) -> str:
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text().strip()


def settings(pi: simpi.SimPi, host_keys: dict[str, str], **ssh: Any) -> dict[str, Any]:
    return {
        "picluster:target": "k3s",
        "picluster:ssh": {"user": simpi.PI_USER, "port": pi.port, **ssh},
        "picluster:k3s": {"version": "v1.31.4+k3s1"},
        "picluster:nodes": [
            {"name": name, "host": pi.host, "role": "server" if i == 0 else "agent", "hostKey": key}
            for i, (name, key) in enumerate(host_keys.items())
        ],
    }


def test_ssh_in_with_the_pinned_key_and_refused_with_a_wrong_one(
    pi: tuple[simpi.SimPi, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sim, host_key = pi
    monkeypatch.setattr(cli_stack, "ROOT", tmp_path)
    # The same Pi in two stacks (one address may be one node only): its own key, another one.
    for stack, key in (("right", host_key), ("wrong", other_host_key(tmp_path))):
        config = settings(sim, {"pi-1": key}, privateKeyPath=str(sim.key_path))
        (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": config}))

    assert main(["ssh", "pi-1", "-s", "right", "--", "id", "-un"]) == 0
    assert capfd.readouterr().out == f"{simpi.PI_USER}\n"

    assert main(["ssh", "pi-1", "-s", "wrong", "--", "id", "-un"]) == 255
    out, err = capfd.readouterr()
    assert out == ""
    assert "Host key verification failed." in err
    assert "is not picluster:nodes[0].hostKey: a re-flashed Pi has a new one" in err
    # Nothing was learnt: neither key reached a known_hosts file of the user's.
    known = Path.home() / ".ssh" / "known_hosts"
    assert not known.exists() or f"127.0.0.1]:{sim.port}" not in known.read_text()


def test_the_secret_key_reaches_ssh_through_a_private_agent(
    pi: tuple[simpi.SimPi, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sim, host_key = pi
    engine = ENGINE_CACHE / "bin"
    if not (engine / "pulumi").exists():
        unavailable(f"no pulumi CLI in {engine} (tools/engine/build.sh pulumi)", ENGINE)
    project = tmp_path / "project"
    (project / "state").mkdir(parents=True)
    (project / "Pulumi.yaml").write_text(
        "name: picluster\nruntime: python\nbackend:\n  url: file://./state\n"
    )
    # The project's wrapper, which gives each stack its own passphrase file (under a
    # configuration folder of the test's own).
    (project / "bin").mkdir()
    shutil.copy2(ROOT / "bin" / "pulumi", project / "bin" / "pulumi")
    monkeypatch.setattr(cli_stack, "ROOT", project)
    monkeypatch.setenv("PATH", f"{engine}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "pulumi-home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("PULUMI_SKIP_UPDATE_CHECK", "true")
    for variable in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "SSH_AUTH_SOCK"):
        monkeypatch.delenv(variable, raising=False)

    def pulumi(*args: str, stdin: str | None = None) -> None:
        result = subprocess.run(
            [str(project / "bin" / "pulumi"), *args, "--non-interactive"], cwd=project,
            input=stdin, text=True, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    pulumi("stack", "init", "lab")
    pulumi("config", "set", "--secret", "sshPrivateKey", "--stack", "lab",
           stdin=sim.key_path.read_text())  # fmt: skip
    stack_file = project / "Pulumi.lab.yaml"
    document = yaml.safe_load(stack_file.read_text())
    assert "secure" in document["config"]["picluster:sshPrivateKey"]
    assert (tmp_path / "config" / "picluster" / "lab.passphrase").is_file()
    # No key file: the secret is the only key there is.
    document["config"].update(settings(sim, {"pi-1": host_key}, privateKeyPath=None))
    stack_file.write_text(yaml.safe_dump(document))
    before = set(Path("/tmp").glob("picluster-*"))

    assert main(["ssh", "pi-1", "-s", "lab", "--", "echo", "in via the agent"]) == 0
    assert capfd.readouterr().out == "in via the agent\n"
    # The agent and its directory are gone with the command.
    assert set(Path("/tmp").glob("picluster-agent-*")) <= before
