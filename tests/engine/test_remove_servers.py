"""The README's "Remove a server", with the real engine on three simulated Pis running three K3s
servers: removing two servers from `nodes` is refused in the preview while their installs are
protected; the README's `state unprotect` lines lift exactly that protection, and the next `up`
drains both on the first server, and each one's uninstall deletes its Node through the first
server and uninstalls K3s, the first server staying.

The program is tests/engine/test_node_recovery.py's (K3sCluster with pinned host keys, servers
protected by default). The K3s installer download is the sim-Pi tests' test double, which runs
embedded etcd's joins but not its datastore: what one server does with the datastore three left
behind is not what this shows.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine import sim_nodes
from tests.engine.conftest import ROOT, Project, errors, program_project
from tests.engine.test_node_recovery import PROGRAM
from tests.integration import simpi
from tests.integration.test_k3s_scripts import DOUBLE_LOG, DOUBLE_ON_PI

pytestmark = [pytest.mark.engine, pytest.mark.integration]

STACK = "servers"
NODES = (("srv-1", "server"), ("srv-2", "server"), ("srv-3", "server"))
README = (ROOT / "README.md").read_text()


def _unprotect_lines() -> list[str]:
    section = README[README.index("\n### Remove a server\n") :]
    section = section[: section.index("\n### ", 1)]
    blocks = re.findall(r"```text\n(.*?)```", section, re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    unprotect = [line for line in lines if "state unprotect" in line]
    assert len(unprotect) == 2, lines
    return unprotect


def _run_readme_line(project: Project, line: str) -> None:
    """A README line, with `pulumi` for `bin/pulumi` (the test's environment holds the
    passphrase) and this lab's names for pi-server-2/3 and prod."""
    line = line.replace("bin/pulumi", "pulumi").replace("-s prod", f"-s {STACK}")
    line = line.replace("pi-server-", "srv-")
    argv = ["bash", "-c", line]
    result = subprocess.run(
        argv,
        cwd=project.path,
        env=dict(project.env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (shlex.join(argv), result.stdout, result.stderr)


@pytest.fixture(scope="module")
def lab(
    engine_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Project, dict[str, simpi.SimPi], list[dict[str, Any]]]]:
    image = sim_nodes.image()
    tmp = tmp_path_factory.mktemp("servers")
    project = program_project(
        engine_bin, tmp, "picluster-servers", PROGRAM.format(root=str(ROOT), double=DOUBLE_ON_PI)
    )
    with simpi.SimPiLab(image) as sim:
        pis = sim_nodes.start(sim, NODES)
        described = sim_nodes.describe(pis, NODES, host_keys=True)
        assert project.pulumi("stack", "init", STACK).returncode == 0
        assert (
            project.pulumi("config", "set", "pis", json.dumps(described), "-s", STACK).returncode
            == 0
        )
        project.set_secret(STACK, "sshPrivateKey", sim.key_path.read_text())
        project.set_secret(STACK, "k3sToken", "servers-token-0123456789abcdef")
        project.up(STACK, timeout=900)
        yield project, pis, described


def test_two_servers_leave_once_their_installs_are_unprotected(
    lab: tuple[Project, dict[str, simpi.SimPi], list[dict[str, Any]]],
) -> None:
    project, pis, described = lab
    first = pis["srv-1"]
    one = [d for d in described if d["name"] == "srv-1"]
    assert project.pulumi("config", "set", "pis", json.dumps(one), "-s", STACK).returncode == 0

    refused = project.pulumi("preview", "--json", "-s", STACK)
    assert refused.returncode != 0
    assert any("cannot be deleted\nbecause it is protected" in e for e in errors(refused.stdout)), (
        refused.stdout[-3000:]
    )

    for line in _unprotect_lines():
        _run_readme_line(project, line)
    preview = project.pulumi("preview", "--diff", "--json", "-s", STACK)
    assert preview.returncode == 0, preview.stdout[-3000:]
    ops = {s["urn"].rsplit("::", 1)[-1]: s["op"] for s in json.loads(preview.stdout)["steps"]}
    # The first server's install is updated: its config.yaml lists the servers under tls-san.
    assert ops["cluster-srv-1-k3s"] == "update"
    assert {name for name, op in ops.items() if op == "delete"} >= {
        f"cluster-{name}-{step}" for name in ("srv-2", "srv-3") for step in ("k3s", "join")
    }
    before = len(first.read(DOUBLE_LOG).splitlines())
    up = project.up(STACK, timeout=900)
    assert up.summary.get("delete", 0) >= 4, up.summary  # two node checks, two installs
    log = first.read(DOUBLE_LOG).splitlines()[before:]
    drained = {line.split()[2] for line in log if line.startswith("kubectl drain")}
    assert drained == {"srv-2", "srv-3"}, log
    for name in ("srv-2", "srv-3"):
        assert any(line.startswith(f"kubectl drain {name}") for line in log), log
        assert f"kubectl delete node {name} (from another server)" in log, log
        assert not pis[name].exists("/usr/local/bin/k3s"), name
    assert first.exists("/usr/local/bin/k3s")
    assert set(project.up(STACK).summary) == {"same"}
