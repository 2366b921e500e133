"""The K3s scripts, run for real over SSH on simulated Pis with the stdin K3sCluster builds.

Only the download of https://get.k3s.io is replaced, by `doubles/k3s-install.sh` (a test double
that records its calls and creates what the real installer creates). Everything around it runs for
real: the token and config.yaml files, systemd units, restarts, waits and the uninstall.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pulumi
import pytest
import yaml

from components.config import NodeRole
from components.k3s_cluster import (
    TOKEN_FILE,
    ClusterNode,
    K3sClusterArgs,
    install_values,
    join_token,
    node_config,
)
from components.kubeconfig import ca_hash, rewrite_kubeconfig
from components.pi_node import SshTarget
from components.registries import REGISTRIES_MARK, registries_yaml, registry_trust
from components.remote_script import Summary, parse_summaries
from tests.integration import simpi
from tests.integration.conftest import TIMINGS

pytestmark = pytest.mark.integration

DOUBLE = Path(__file__).parent / "doubles" / "k3s-install.sh"
DOUBLE_ON_PI = "/opt/doubles/k3s-install.sh"
DOUBLE_LOG = "/var/log/picluster-doubles/k3s-install.log"
VERSION = "v1.31.4+k3s1"
NEW_VERSION = "v1.31.5+k3s1"
TOKEN = f"K10picluster-test-{secrets.token_hex(16)}"
"""Random per run, so finding it anywhere but the token file is a leak, never a coincidence."""
CONFIG_DIR = "/etc/rancher/k3s"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
KUBECONFIG_FILE = f"{CONFIG_DIR}/k3s.yaml"
READY_NODES = f"{CONFIG_DIR}/double-ready-nodes"
SERVER_CA = "/var/lib/rancher/k3s/server/tls/server-ca.crt"
K3S_SERVER_TOKEN = "/var/lib/rancher/k3s/server/token"
INSTALLER_ENV = ["INSTALL_K3S_EXEC", "INSTALL_K3S_SKIP_START", "INSTALL_K3S_VERSION"]
"""What the installer gets: never the token, and never the blocking start (Type=notify)."""
SERVER, AGENT = "k3s-server", "k3s-agent"
INSTALL_TIMEOUT = "60"
"""READY_TIMEOUT for the installs: the double is ready within a second, so 60 s bounds a hang."""


@dataclass(frozen=True)
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def ok(self, step: str) -> Summary:
        """The one summary line of a successful single-script session."""
        assert self.rc == 0, f"exit {self.rc}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        summaries = parse_summaries(self.stdout)
        assert [s.step for s in summaries] == [step], self.stdout
        assert len(self.stdout.splitlines()) == 1, self.stdout  # progress goes to stderr
        return summaries[0]


def run(
    pi: simpi.SimPi, script: str, values: Mapping[str, str], *args: str, timing: str = ""
) -> Run:
    start = time.monotonic()
    rc, out, err = simpi.run_steps(pi, [script], values, args=args, timeout=180)
    result = Run(rc, out, err, time.monotonic() - start)
    if timing:
        TIMINGS[timing] = result.seconds
    return result


@dataclass(frozen=True)
class Cluster:
    """A server and an agent Pi, and the K3sCluster inputs describing them."""

    server: simpi.SimPi
    agent: simpi.SimPi
    args: K3sClusterArgs
    server_node: ClusterNode
    agent_node: ClusterNode
    server_ip: str

    def values(self, node: ClusterNode, args: K3sClusterArgs | None = None) -> dict[str, str]:
        """What K3sCluster puts on the stdin of `<node>-k3s`, with a test-sized READY_TIMEOUT:
        the plain token for the first server, the full one (its CA's hash) for the others."""
        first = node.name == self.server_node.name
        token = TOKEN if first else join_token(TOKEN, self.ca_hash())
        values = install_values(node, args or self.args, self.server_node, token)
        return {**values, "READY_TIMEOUT": INSTALL_TIMEOUT}

    def ca_hash(self) -> str:
        """The hash K3sCluster puts in the full token: of the CA in the first server's
        kubeconfig (`components.kubeconfig.ca_hash`)."""
        return ca_hash(self.server.read(KUBECONFIG_FILE))

    def config_yaml(self, node: ClusterNode, args: K3sClusterArgs | None = None) -> str:
        return yaml.safe_dump(node_config(node, args or self.args, self.server_node))


def _cluster_node(pi: simpi.SimPi, name: str, role: NodeRole, address: str) -> ClusterNode:
    return ClusterNode(
        name=name,
        role=role,
        ssh=SshTarget(host=pi.host, port=pi.port, user=pi.user, private_key="unused"),
        address=address,
        # node_config and install_values never look at `ready` (a resource in a real program).
        ready=cast(pulumi.Resource, None),
        labels={"picluster.io/role": role.value},
    )


def _address(pi: simpi.SimPi) -> str:
    """The Pi's address on the Docker network, as its LAN address in a real cluster."""
    return pi.exec("hostname", "-I").stdout.split()[0]


@pytest.fixture(scope="module")
def cluster(sim_lab: simpi.SimPiLab) -> Cluster:
    start = time.monotonic()
    server, agent = sim_lab.start_pi(SERVER), sim_lab.start_pi(AGENT)
    TIMINGS["k3s: two fresh Pis up"] = time.monotonic() - start
    for pi in (server, agent):
        pi.put(DOUBLE_ON_PI, DOUBLE.read_bytes())
    server_ip, agent_ip = _address(server), _address(agent)
    server_node = _cluster_node(server, SERVER, NodeRole.SERVER, server_ip)
    agent_node = _cluster_node(agent, AGENT, NodeRole.AGENT, agent_ip)
    args = K3sClusterArgs(
        nodes=[server_node, agent_node],
        version=VERSION,
        token=TOKEN,
        cluster_name="picluster-test",
        disable=["traefik"],
        install_url=f"file://{DOUBLE_ON_PI}",
    )
    return Cluster(server, agent, args, server_node, agent_node, server_ip)


def double_log(pi: simpi.SimPi) -> list[str]:
    return pi.read(DOUBLE_LOG).splitlines() if pi.exists(DOUBLE_LOG) else []


def installer_calls(pi: simpi.SimPi) -> list[dict[str, str]]:
    """The installer double's calls: args, env (names), version and exec of each."""
    pattern = re.compile(
        r"install args=\[(?P<args>.*)\] env=\[(?P<env>.*)\] version=(?P<version>\S*) "
        r"exec=(?P<exec>.*)\Z"
    )
    calls: list[dict[str, str]] = []
    for line in double_log(pi):
        match = pattern.match(line)
        if match:
            calls.append(match.groupdict())
    return calls


def active_since(pi: simpi.SimPi, unit: str) -> str:
    """When the unit last became active: changes at every (re)start."""
    out = pi.exec("systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", unit).stdout
    return out.strip()


def service_starts(pi: simpi.SimPi, unit: str) -> int:
    """How many times the unit's (fake) k3s process has started, from the journal (one
    `... (double) <role> starting as node ...` line per start)."""
    journal = pi.exec("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout
    return len(re.findall(r"\(double\) (?:server|agent) starting as node ", journal))


def is_active(pi: simpi.SimPi, unit: str) -> str:
    return pi.exec("systemctl", "is-active", unit, check=False).stdout.strip()


def stat(pi: simpi.SimPi, path: str) -> str:
    """`<mode> <owner>:<group>` of path."""
    return pi.exec("stat", "-c", "%a %U:%G", path).stdout.strip()


WATCHED = (TOKEN_FILE, CONFIG_FILE, f"{CONFIG_FILE}.picluster.bak", "/usr/local/bin/k3s")


@dataclass(frozen=True)
class ServerInstall:
    first: Run
    after_first: dict[str, str]
    calls_after_first: list[dict[str, str]]
    since_first: str
    second: Run
    after_second: dict[str, str]
    calls_after_second: list[dict[str, str]]
    since_second: str


@pytest.fixture(scope="module")
def server_install(cluster: Cluster) -> ServerInstall:
    """The first server installed twice with the same inputs."""
    pi, values = cluster.server, cluster.values(cluster.server_node)
    first = run(pi, "k3s-install.sh", values, timing="k3s-install.sh server, first run")
    after_first, calls_after_first = pi.snapshot(*WATCHED), installer_calls(pi)
    since_first = active_since(pi, "k3s")
    second = run(pi, "k3s-install.sh", values, timing="k3s-install.sh server, second run")
    return ServerInstall(
        first,
        after_first,
        calls_after_first,
        since_first,
        second,
        pi.snapshot(*WATCHED),
        installer_calls(pi),
        active_since(pi, "k3s"),
    )


def test_first_server_run_installs_the_pinned_server(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    summary = server_install.first.ok("k3s-install")
    assert summary.changed == ("token", "config", f"k3s {VERSION}"), summary.line
    assert len(server_install.calls_after_first) == 1
    call = server_install.calls_after_first[0]
    assert (call["version"], call["exec"], call["args"]) == (VERSION, "server", "")
    # The token reaches K3s through token-file, never through the installer's environment.
    assert call["env"].split() == INSTALLER_ENV
    pi = cluster.server
    assert is_active(pi, "k3s") == "active"
    assert pi.exec("k3s", "--version").stdout.splitlines()[0] == f"k3s version {VERSION} (double)"
    # The unit file is written under the installer's umask: world-readable, as systemd expects.
    assert stat(pi, "/etc/systemd/system/k3s.service") == "644 root:root"


def test_server_token_config_and_kubeconfig_are_root_only(cluster: Cluster) -> None:
    pi = cluster.server
    assert stat(pi, TOKEN_FILE) == "600 root:root"
    assert pi.read(TOKEN_FILE) == f"{TOKEN}\n"
    assert stat(pi, CONFIG_FILE) == "600 root:root"
    assert pi.read(CONFIG_FILE) == cluster.config_yaml(cluster.server_node)
    assert yaml.safe_load(pi.read(CONFIG_FILE))["token-file"] == TOKEN_FILE
    assert stat(pi, KUBECONFIG_FILE) == "600 root:root"


def test_the_token_leaks_nowhere(cluster: Cluster, server_install: ServerInstall) -> None:
    pi = cluster.server
    for result in (server_install.first, server_install.second):
        assert TOKEN not in result.stdout + result.stderr
    assert TOKEN not in "\n".join(double_log(pi))
    env_files = pi.exec("sh", "-c", "cat /etc/systemd/system/*.env").stdout
    assert "INSTALL_" not in env_files  # the double copies K3S_* variables, as the real one does
    assert TOKEN not in env_files
    grep = pi.exec("grep", "-rlsF", "-e", TOKEN, "/etc/systemd", "/run/systemd", check=False)
    assert grep.returncode == 1, f"token found in: {grep.stdout}"
    journal = pi.exec("journalctl", "--no-pager", "-o", "cat").stdout
    assert f"server starting as node {SERVER}" in journal  # the journal does hold K3s's output
    assert TOKEN not in journal


def test_second_server_run_changes_nothing(server_install: ServerInstall) -> None:
    assert server_install.second.ok("k3s-install").line == "picluster k3s-install: no changes"
    assert server_install.calls_after_second == server_install.calls_after_first
    assert server_install.after_second == server_install.after_first  # content, mtime, mode
    assert server_install.since_second == server_install.since_first  # not restarted


def test_a_new_token_is_refused_before_the_node_changes(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    # K3s keeps its datastore encrypted with the token it started with: a restart with another
    # one fails and loops. The install must stop before it writes or restarts anything.
    pi = cluster.server
    files, calls, since = pi.snapshot(*WATCHED), installer_calls(pi), active_since(pi, "k3s")
    rotated = f"K10picluster-rotated-{secrets.token_hex(16)}"
    values = {**cluster.values(cluster.server_node), "K3S_TOKEN": rotated}
    result = run(pi, "k3s-install.sh", values)
    assert result.rc != 0
    assert "picluster:k3sToken is not the token" in result.stderr
    assert "Rotate the K3s token" in result.stderr
    assert rotated not in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert pi.snapshot(*WATCHED) == files
    assert installer_calls(pi) == calls
    assert active_since(pi, "k3s") == since


def test_a_role_change_is_refused_before_the_node_changes(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    # K3s would run k3s and k3s-agent side by side; the node must be removed and added back.
    pi = cluster.server
    files, calls, since = pi.snapshot(*WATCHED), installer_calls(pi), active_since(pi, "k3s")
    as_agent = replace(cluster.server_node, role=NodeRole.AGENT)
    result = run(pi, "k3s-install.sh", cluster.values(as_agent))
    assert result.rc != 0
    assert f"{SERVER} runs K3s as server, not agent" in result.stderr
    assert "remove the node from picluster:nodes" in result.stderr
    assert pi.snapshot(*WATCHED) == files
    assert installer_calls(pi) == calls
    assert active_since(pi, "k3s") == since
    assert pi.exec("test", "-e", "/etc/systemd/system/k3s-agent.service", check=False).returncode


def test_config_change_restarts_and_version_change_reinstalls(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    pi, node = cluster.server, cluster.server_node
    before_config, calls = pi.read(CONFIG_FILE), installer_calls(pi)
    starts, since = service_starts(pi, "k3s"), active_since(pi, "k3s")
    relabelled = node
    args = replace(cluster.args, server_config={"etcd-snapshot-retention": 3})

    # Another server setting: config.yaml rewritten (the old one backed up), K3s restarted (not
    # reinstalled), and the step waits until the server is READY again.
    result = run(
        pi,
        "k3s-install.sh",
        cluster.values(relabelled, args),
        timing="k3s-install.sh config change",
    )
    assert result.ok("k3s-install").changed == ("config", "restarted")
    assert pi.read(CONFIG_FILE) == cluster.config_yaml(relabelled, args)
    assert yaml.safe_load(pi.read(CONFIG_FILE))["etcd-snapshot-retention"] == 3
    assert pi.read(f"{CONFIG_FILE}.picluster.bak") == before_config
    assert stat(pi, f"{CONFIG_FILE}.picluster.bak") == "600 root:root"
    assert installer_calls(pi) == calls
    assert active_since(pi, "k3s") != since
    assert service_starts(pi, "k3s") == starts + 1
    assert is_active(pi, "k3s") == "active"

    # A new version: the installer runs again (and restarts K3s itself), no restart on top.
    upgraded = replace(args, version=NEW_VERSION)
    files, starts = pi.snapshot(*WATCHED[:3]), service_starts(pi, "k3s")
    result = run(
        pi,
        "k3s-install.sh",
        cluster.values(relabelled, upgraded),
        timing="k3s-install.sh version change",
    )
    assert result.ok("k3s-install").changed == (f"k3s {NEW_VERSION}",)
    new_calls = installer_calls(pi)[len(calls) :]
    assert [(c["version"], c["exec"]) for c in new_calls] == [(NEW_VERSION, "server")]
    assert pi.snapshot(*WATCHED[:3]) == files  # token, config and backup untouched
    assert service_starts(pi, "k3s") == starts + 1  # one restart, for the new binary
    assert pi.exec("k3s", "--version").stdout.startswith(f"k3s version {NEW_VERSION} ")
    assert is_active(pi, "k3s") == "active"

    again = run(pi, "k3s-install.sh", cluster.values(relabelled, upgraded))
    assert again.ok("k3s-install").line == "picluster k3s-install: no changes"
    assert len(installer_calls(pi)) == len(calls) + 1


@pytest.fixture(scope="module")
def agent_install(cluster: Cluster, server_install: ServerInstall) -> tuple[Run, Run]:
    values = cluster.values(cluster.agent_node)
    first = run(cluster.agent, "k3s-install.sh", values, timing="k3s-install.sh agent, first run")
    second = run(cluster.agent, "k3s-install.sh", values)
    return first, second


def test_agent_joins_the_first_server(cluster: Cluster, agent_install: tuple[Run, Run]) -> None:
    first, second = agent_install
    assert first.ok("k3s-install").changed == ("token", "config", f"k3s {VERSION}")
    assert second.ok("k3s-install").line == "picluster k3s-install: no changes"
    pi = cluster.agent
    calls = installer_calls(pi)
    assert [(c["version"], c["exec"], c["env"]) for c in calls] == [
        (VERSION, "agent", " ".join(INSTALLER_ENV))
    ]
    config = yaml.safe_load(pi.read(CONFIG_FILE))
    assert config["server"] == f"https://{cluster.server_ip}:6443"
    assert pi.read(CONFIG_FILE) == cluster.config_yaml(cluster.agent_node)
    assert stat(pi, TOKEN_FILE) == "600 root:root"
    assert stat(pi, CONFIG_FILE) == "600 root:root"
    assert is_active(pi, "k3s-agent") == "active"
    assert not pi.exists("/etc/systemd/system/k3s.service")
    assert pi.exists("/usr/local/bin/k3s-agent-uninstall.sh")
    assert not pi.exists(KUBECONFIG_FILE)  # only servers write one
    assert TOKEN not in pi.exec("sh", "-c", "cat /etc/systemd/system/*.env").stdout
    assert TOKEN not in first.stderr + second.stderr


def test_the_kubeconfig_carries_the_ca_the_full_token_pins(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    pi = cluster.server
    # K3sCluster hashes the CA in k3s.yaml: the server CA's very bytes, which /cacerts serves
    # and joiners check (they join in the tests below, so the hashes agree there too).
    assert cluster.ca_hash() == pi.exec("sha256sum", SERVER_CA).stdout.split()[0]
    # What K3s keeps for joiners: the full token, root-only.
    assert pi.read(K3S_SERVER_TOKEN) == f"{join_token(TOKEN, cluster.ca_hash())}\n"
    assert stat(pi, K3S_SERVER_TOKEN) == "600 root:root"


def test_the_agent_joined_with_the_full_token(
    cluster: Cluster, agent_install: tuple[Run, Run]
) -> None:
    pi = cluster.agent
    assert pi.read(TOKEN_FILE) == f"{join_token(TOKEN, cluster.ca_hash())}\n"
    assert pi.exists("/var/lib/rancher/k3s/agent/client-kubelet.crt")
    assert f"register {AGENT} role=agent" in double_log(cluster.server)


REGISTRIES_FILE = f"{CONFIG_DIR}/registries.yaml"
REGISTRIES_BACKUP = f"{REGISTRIES_FILE}.picluster.bak"
LOADED_REGISTRIES = "/var/lib/rancher/k3s/agent/etc/double-registries.yaml"
"""What the K3s double read from registries.yaml when it last started (containerd's hosts.toml)."""
FOREIGN_REGISTRIES = b'mirrors:\n  docker.io:\n    endpoint:\n    - "https://mirror.lan:5000"\n'
"""A registries.yaml someone wrote by hand: no picluster mark on its first line."""


def registries_values(cluster: Cluster, password: str | None) -> dict[str, str]:
    """The agent's install stdin with the stack's registries.yaml: the in-cluster mirror and a
    user registry with `password`; None: a stack with no registries.yaml."""
    document = ""
    if password is not None:
        trust = registry_trust("registry.lan:5000/game", "ci", password)
        document = registries_yaml(trust, {"registry.lan:5000": password})
    token = join_token(TOKEN, cluster.ca_hash())
    node, first = cluster.agent_node, cluster.server_node
    values = install_values(node, cluster.args, first, token, registries=document)
    return {**values, "READY_TIMEOUT": INSTALL_TIMEOUT}


def test_registries_yaml_is_written_when_it_changed_and_restarts_k3s_only_then(
    cluster: Cluster, agent_install: tuple[Run, Run]
) -> None:
    pi = cluster.agent
    password, rotated = f"reg-{secrets.token_hex(12)}", f"reg-{secrets.token_hex(12)}"
    starts, calls = service_starts(pi, "k3s-agent"), installer_calls(pi)

    # First run with a document: written root-only, K3s (the agent here) restarted once, and the
    # restarted K3s read it.
    first = run(pi, "k3s-install.sh", registries_values(cluster, password))
    assert first.ok("k3s-install").changed == ("registries", "restarted")
    document = pi.read(REGISTRIES_FILE)
    assert document.splitlines()[0] == REGISTRIES_MARK
    assert yaml.safe_load(document)["configs"] == {
        "registry.lan:5000": {"auth": {"username": "ci", "password": password}}
    }
    assert stat(pi, REGISTRIES_FILE) == "600 root:root"
    assert service_starts(pi, "k3s-agent") == starts + 1
    assert pi.read(LOADED_REGISTRIES) == document
    assert is_active(pi, "k3s-agent") == "active"
    assert installer_calls(pi) == calls  # a restart, not a reinstall

    # Second run: unchanged, nothing restarted, the file untouched (content, mtime, mode).
    files, since = pi.snapshot(REGISTRIES_FILE), active_since(pi, "k3s-agent")
    second = run(pi, "k3s-install.sh", registries_values(cluster, password))
    assert second.ok("k3s-install").line == "picluster k3s-install: no changes"
    assert pi.snapshot(REGISTRIES_FILE) == files
    assert active_since(pi, "k3s-agent") == since

    # A rotated password: rewritten, restarted once, and no copy of the old one kept.
    third = run(pi, "k3s-install.sh", registries_values(cluster, rotated))
    assert third.ok("k3s-install").changed == ("registries", "restarted")
    assert rotated in pi.read(REGISTRIES_FILE)
    assert rotated in pi.read(LOADED_REGISTRIES)
    assert service_starts(pi, "k3s-agent") == starts + 2
    assert not pi.exists(REGISTRIES_BACKUP)
    grep = pi.exec("grep", "-rlsF", "-e", password, "/etc", "/var/lib/rancher", check=False)
    assert grep.returncode == 1, f"the old password is still in: {grep.stdout}"

    # The passwords travel only on stdin, into the 0600 file: never to a log or the journal.
    journal = pi.exec("journalctl", "--no-pager", "-o", "cat").stdout
    assert f"Using registry config file at {REGISTRIES_FILE}" in journal
    for secret in (password, rotated):
        assert secret not in first.stdout + first.stderr + third.stdout + third.stderr
        assert secret not in journal
        assert secret not in "\n".join(double_log(pi))

    # The stack has no registries.yaml any more: picluster's goes, K3s restarts without it.
    removed = run(pi, "k3s-install.sh", registries_values(cluster, None))
    assert removed.ok("k3s-install").changed == ("registries", "restarted")
    assert not pi.exists(REGISTRIES_FILE)
    assert not pi.exists(LOADED_REGISTRIES)
    assert service_starts(pi, "k3s-agent") == starts + 3
    gone = run(pi, "k3s-install.sh", registries_values(cluster, None))
    assert gone.ok("k3s-install").line == "picluster k3s-install: no changes"


def test_a_registries_yaml_picluster_did_not_write_is_kept(
    cluster: Cluster, agent_install: tuple[Run, Run]
) -> None:
    pi = cluster.agent
    pi.put(REGISTRIES_FILE, FOREIGN_REGISTRIES, mode="0644")
    try:
        # The stack has none: the file is left alone, nothing restarts, and the script says so.
        files, since = pi.snapshot(REGISTRIES_FILE), active_since(pi, "k3s-agent")
        kept = run(pi, "k3s-install.sh", registries_values(cluster, None))
        assert kept.ok("k3s-install").line == "picluster k3s-install: no changes"
        assert f"left {REGISTRIES_FILE} alone: picluster did not write it" in kept.stderr
        assert pi.snapshot(REGISTRIES_FILE) == files
        assert active_since(pi, "k3s-agent") == since

        # The stack has one: picluster's replaces it, the hand-written one kept aside (as it
        # was) and put back when picluster's goes.
        password = f"reg-{secrets.token_hex(12)}"
        written = run(pi, "k3s-install.sh", registries_values(cluster, password))
        assert written.ok("k3s-install").changed == ("registries", "restarted")
        assert f"kept as {REGISTRIES_BACKUP}" in written.stderr
        assert pi.read(REGISTRIES_BACKUP).encode() == FOREIGN_REGISTRIES
        assert pi.read(REGISTRIES_FILE).splitlines()[0] == REGISTRIES_MARK
        assert stat(pi, REGISTRIES_FILE) == "600 root:root"
        restored = run(pi, "k3s-install.sh", registries_values(cluster, None))
        assert restored.ok("k3s-install").changed == ("registries", "restarted")
        assert pi.read(REGISTRIES_FILE).encode() == FOREIGN_REGISTRIES
        assert not pi.exists(REGISTRIES_BACKUP)
        assert pi.read(LOADED_REGISTRIES).encode() == FOREIGN_REGISTRIES
    finally:
        pi.exec("rm", "-f", REGISTRIES_FILE, REGISTRIES_BACKUP)
        # Back to the agent's first configuration, as the tests after this one expect.
        assert run(pi, "k3s-install.sh", cluster.values(cluster.agent_node)).rc == 0


def test_a_refused_registries_yaml_leaves_no_temp_file(
    cluster: Cluster, agent_install: tuple[Run, Run]
) -> None:
    """A registries.yaml that fails a check (here: no picluster mark) stops the run before K3s
    reads it, and its temp file (it may hold a registry password) goes with it."""
    pi = cluster.agent
    values = registries_values(cluster, f"reg-{secrets.token_hex(12)}")
    unmarked = base64.b64decode(values["REGISTRIES_YAML_B64"]).decode().split("\n", 1)[1]
    refused = run(
        pi,
        "k3s-install.sh",
        {**values, "REGISTRIES_YAML_B64": base64.b64encode(unmarked.encode()).decode()},
    )
    assert refused.rc != 0
    assert "does not start with picluster's mark" in refused.stderr
    left = pi.exec("find", CONFIG_DIR, "-name", ".registries.*").stdout.split()
    assert left == [], left
    # Back to the agent's first configuration, as the tests after this one expect.
    assert run(pi, "k3s-install.sh", cluster.values(cluster.agent_node)).rc == 0


def node_labels(server: simpi.SimPi, name: str) -> set[str]:
    template = 'go-template={{range $k, $v := .metadata.labels}}{{$k}}={{$v}}{{"\\n"}}{{end}}'
    return set(server.exec("k3s", "kubectl", "get", "node", name, "-o", template).stdout.split())


def node_taints(server: simpi.SimPi, name: str) -> set[str]:
    template = 'go-template={{range .spec.taints}}{{.key}}={{.value}}:{{.effect}}{{"\\n"}}{{end}}'
    return set(server.exec("k3s", "kubectl", "get", "node", name, "-o", template).stdout.split())


def test_k3s_applies_node_labels_only_at_registration(
    cluster: Cluster, agent_install: tuple[Run, Run]
) -> None:
    """The double's fidelity: a label added to K3s's config and a restart change no Node."""
    dropin = "/etc/rancher/k3s/config.yaml.d/90-test.yaml"
    cluster.agent.put(dropin, b"node-label:\n- test.studio/late=1\n", mode="0600")
    try:
        cluster.agent.exec("systemctl", "restart", "k3s-agent", timeout=60)  # READY again
        assert is_active(cluster.agent, "k3s-agent") == "active"
        assert "test.studio/late=1" not in node_labels(cluster.server, AGENT)
    finally:
        cluster.agent.exec("rm", "-f", dropin)


def test_labels_and_taints_follow_the_config_through_the_api(
    cluster: Cluster, agent_install: tuple[Run, Run]
) -> None:
    server = cluster.server
    values = {
        "NODE_NAME": AGENT,
        "READY_TIMEOUT": "30",
        "LABELS": "game.studio/tier=frontend\nnode-role.kubernetes.io/game=true",
        "TAINTS": "dedicated=game:NoSchedule",
    }
    first = run(server, "k3s-node.sh", values)
    assert first.ok("k3s-node").changed == ("labels", "taints")
    labels = node_labels(server, AGENT)
    assert {"game.studio/tier=frontend", "node-role.kubernetes.io/game=true"} <= labels
    assert f"kubernetes.io/hostname={AGENT}" in labels  # K3s's own labels stay
    assert node_taints(server, AGENT) == {"dedicated=game:NoSchedule"}
    again = run(server, "k3s-node.sh", values)
    assert again.ok("k3s-node").line == f"picluster k3s-node: no changes ({AGENT} is Ready)"

    # A changed value, a label and a taint no longer configured: changed and removed, not kept.
    changed = {**values, "LABELS": "game.studio/tier=backend", "TAINTS": ""}
    assert run(server, "k3s-node.sh", changed).ok("k3s-node").changed == ("labels", "taints")
    labels = node_labels(server, AGENT)
    assert "game.studio/tier=backend" in labels
    assert not any(label.startswith("node-role.kubernetes.io/game") for label in labels)
    assert f"kubernetes.io/hostname={AGENT}" in labels
    assert node_taints(server, AGENT) == set()
    assert run(server, "k3s-node.sh", changed).ok("k3s-node").changed == ()
    # Back to no managed labels, as the tests after this one expect.
    none = {**values, "LABELS": "", "TAINTS": ""}
    assert run(server, "k3s-node.sh", none).ok("k3s-node").changed == ("labels",)
    assert not any(label.startswith("game.studio/") for label in node_labels(server, AGENT))


def test_k3s_refuses_a_restart_with_another_token(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    """The double's fidelity: the token is bound to the datastore; K3s restarts in a loop."""
    pi = cluster.server
    original = pi.read(TOKEN_FILE).encode()
    pi.put(TOKEN_FILE, b"another-token-entirely\n", mode="0600")
    try:
        pi.exec("systemctl", "restart", "--no-block", "k3s")
        deadline = time.monotonic() + 20
        journal = ""
        while time.monotonic() < deadline:
            journal = pi.exec(
                "journalctl", "-u", "k3s", "-n", "20", "--no-pager", "-o", "cat"
            ).stdout
            if "bootstrap data already found and encrypted with different token" in journal:
                break
            time.sleep(1)
        assert "bootstrap data already found and encrypted with different token" in journal
        assert is_active(pi, "k3s") != "active"
    finally:
        pi.put(TOKEN_FILE, original, mode="0600")
        pi.exec("systemctl", "restart", "k3s", timeout=60)
    assert is_active(pi, "k3s") == "active"


def test_turning_secrets_encryption_off_is_refused_before_the_node_changes(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    pi = cluster.server
    files, calls, since = pi.snapshot(*WATCHED), installer_calls(pi), active_since(pi, "k3s")
    # At the version the server runs now (an earlier test upgraded it): not a downgrade.
    installed = pi.exec("k3s", "--version").stdout.split()[2]
    off = replace(cluster.args, secrets_encryption=False, version=installed)
    result = run(pi, "k3s-install.sh", cluster.values(cluster.server_node, off))
    assert result.rc != 0
    assert "picluster:k3s.secretsEncryption cannot be turned off by a restart" in result.stderr
    assert pi.snapshot(*WATCHED) == files
    assert installer_calls(pi) == calls
    assert active_since(pi, "k3s") == since


STRANGER = "k3s-stranger"
JOIN_TIMEOUT = 8
"""READY_TIMEOUT of the joins meant to fail: each must end within it, not hang."""


@pytest.fixture(scope="module")
def stranger(
    sim_lab: simpi.SimPiLab, cluster: Cluster, server_install: ServerInstall
) -> Iterator[simpi.SimPi]:
    """A third Pi that tries to join the cluster in wrong ways, then the right one."""
    pi = sim_lab.start_pi(STRANGER)
    pi.put(DOUBLE_ON_PI, DOUBLE.read_bytes())
    yield pi
    sim_lab.remove(pi)


def stranger_values(
    cluster: Cluster, pi: simpi.SimPi, token: str, *, server: str = "", name: str = STRANGER
) -> dict[str, str]:
    node = _cluster_node(pi, name, NodeRole.AGENT, _address(pi))
    values = install_values(node, cluster.args, cluster.server_node, token)
    if server:
        config = node_config(node, cluster.args, cluster.server_node)
        encoded = yaml.safe_dump({**config, "server": server}, sort_keys=True).encode()
        values["CONFIG_YAML_B64"] = base64.b64encode(encoded).decode()
    return {**values, "READY_TIMEOUT": str(JOIN_TIMEOUT), "CLOCK_TIMEOUT": "3"}


def test_an_unsynchronised_clock_stops_the_first_install(
    cluster: Cluster, stranger: simpi.SimPi
) -> None:
    marker = "/run/systemd/timesync/synchronized"
    stranger.exec("rm", "-f", marker)
    try:
        result = run(stranger, "k3s-install.sh", stranger_values(cluster, stranger, "x" * 20))
    finally:
        stranger.exec("touch", marker)
    assert result.rc == 1
    assert f"the clock of {STRANGER} is not synchronised after 3s" in result.stderr
    assert not stranger.exists("/usr/local/bin/k3s")


def _failed_join(result: Run, *hints: str) -> None:
    assert result.rc == 1, result.stdout
    assert result.seconds < JOIN_TIMEOUT + 30, "the join hung past its timeout"
    assert parse_summaries(result.stdout) == []
    assert f"did not join within {JOIN_TIMEOUT}s; check: the token" in result.stderr
    for hint in hints:
        assert hint in result.stderr, result.stderr


def test_a_wrong_token_fails_within_the_timeout_and_says_what_to_check(
    cluster: Cluster, stranger: simpi.SimPi
) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    result = run(stranger, "k3s-install.sh", stranger_values(cluster, stranger, wrong))
    _failed_join(result, "token is not valid")
    assert wrong not in result.stdout + result.stderr
    assert f"register refused {STRANGER}: token" in double_log(cluster.server)


def test_a_token_for_another_ca_never_sends_the_secret(
    cluster: Cluster, stranger: simpi.SimPi
) -> None:
    stranger.exec("systemctl", "stop", "k3s-agent")  # still retrying with the wrong token
    before = len(double_log(cluster.server))
    forged = join_token(TOKEN, "0" * 64)
    result = run(stranger, "k3s-install.sh", stranger_values(cluster, stranger, forged))
    _failed_join(result, "token CA hash does not match the Cluster CA certificate hash")
    assert not [line for line in double_log(cluster.server)[before:] if STRANGER in line]


def test_an_unreachable_server_fails_within_the_timeout(
    cluster: Cluster, stranger: simpi.SimPi
) -> None:
    token = join_token(TOKEN, cluster.ca_hash())
    closed = f"https://{cluster.server_ip}:6447"  # the server's address, a port nobody serves
    result = run(
        stranger, "k3s-install.sh", stranger_values(cluster, stranger, token, server=closed)
    )
    _failed_join(result, f"that {closed} answers from this Pi", "failed to get CA certs")


def test_the_right_token_then_joins(cluster: Cluster, stranger: simpi.SimPi) -> None:
    # Not refused as a token change: the node never joined with the wrong ones.
    token = join_token(TOKEN, cluster.ca_hash())
    result = run(stranger, "k3s-install.sh", stranger_values(cluster, stranger, token))
    assert "restarted" in result.ok("k3s-install").changed
    assert is_active(stranger, "k3s-agent") == "active"
    assert f"register {STRANGER} role=agent" in double_log(cluster.server)


def test_a_reflashed_node_with_a_known_name_is_rejected(
    cluster: Cluster, stranger: simpi.SimPi, agent_install: tuple[Run, Run]
) -> None:
    # Another Pi under the agent's name: its node password is not the one the server knows.
    token = join_token(TOKEN, cluster.ca_hash())
    values = stranger_values(cluster, stranger, token, name=AGENT)
    try:
        result = run(stranger, "k3s-install.sh", values)
    finally:
        # It would keep retrying, and take the name once the real node is deleted.
        stranger.exec("systemctl", "stop", "k3s-agent")
    _failed_join(result, "Node password rejected", f"delete secret {AGENT}.node-password.k3s")


def node_values(timeout: int) -> dict[str, str]:
    return {"NODE_NAME": AGENT, "READY_TIMEOUT": str(timeout)}


def register(pi: simpi.SimPi, *lines: str) -> None:
    """Set which nodes the server's (fake) API reports, as agents registering would."""
    pi.put(READY_NODES, "".join(f"{line}\n" for line in lines).encode(), mode="0644")


def test_join_waits_and_names_the_node_that_is_not_ready(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    pi = cluster.server
    register(pi, f"{AGENT} NotReady")
    result = run(pi, "k3s-node.sh", node_values(4), timing="k3s-node.sh not Ready (4 s timeout)")
    assert result.rc == 1
    assert parse_summaries(result.stdout) == []
    assert f"{AGENT} is not Ready after 4s (status: NotReady)" in result.stderr
    assert result.seconds < 30

    register(pi)
    result = run(pi, "k3s-node.sh", {**node_values(2), "NODE_NAME": "never-joined"})
    assert result.rc == 1
    assert "never-joined is not Ready after 2s (status: not registered)" in result.stderr


@pytest.mark.parametrize("status", ["", " Ready,SchedulingDisabled"], ids=["ready", "cordoned"])
def test_join_passes_once_the_node_is_ready(
    cluster: Cluster, server_install: ServerInstall, status: str
) -> None:
    register(cluster.server, f"{AGENT}{status}")
    result = run(cluster.server, "k3s-node.sh", node_values(30))
    assert result.ok("k3s-node").line == f"picluster k3s-node: no changes ({AGENT} is Ready)"


REGISTRY = "/var/lib/rancher/k3s/server/double-nodes"
PVS = "/var/lib/rancher/k3s/server/double-pvs"


def test_node_delete_refuses_while_local_volumes_live_on_the_node(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    # local-path volumes are directories on one node: removing the node loses their data.
    pi = cluster.server
    register(pi, AGENT)
    # A Released volume reclaimed by Delete is going anyway (its claim was just deleted).
    pi.put(
        PVS,
        f"pvc-3f1 {AGENT} game postgres-data Bound Delete\n"
        f"pvc-7a4 {AGENT} monitoring prometheus-data Released Delete\n"
        f"pvc-5c0 {AGENT} game old-data Released Retain\n"
        "pvc-9e2 other-node game x Bound Delete\n".encode(),
    )
    try:
        before = len(double_log(pi))
        result = run(pi, "k3s-node.sh", node_values(30), "delete")
        assert result.rc == 1
        assert f"{AGENT} holds local-path volumes, whose data would go with it: " in result.stderr
        assert "pvc-3f1 game/postgres-data" in result.stderr
        assert "pvc-5c0 game/old-data" in result.stderr
        assert "pvc-9e2" not in result.stderr and "pvc-7a4" not in result.stderr
        assert double_log(pi)[before:] == []  # neither drained nor deleted
    finally:
        pi.exec("rm", "-f", PVS)


def test_node_delete_drains_then_removes_once(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    pi = cluster.server
    register(pi, AGENT)
    # A pod without a controller would stop a plain drain; it is lost with the node anyway.
    pi.put(f"{REGISTRY}/{AGENT}/unmanaged-pods", b"default/debug-shell\n", mode="0644")
    before = len(double_log(pi))
    result = run(pi, "k3s-node.sh", node_values(30), "delete", timing="k3s-node.sh delete")
    assert result.ok("k3s-node").line == f"picluster k3s-node: changed: drained, removed {AGENT}"
    logged = [line.split(" --")[0] for line in double_log(pi)[before:]]
    assert logged == [f"kubectl drain {AGENT}", f"kubectl delete node {AGENT}"]
    assert " --force" in double_log(pi)[before]

    again = run(pi, "k3s-node.sh", node_values(30), "delete")
    line = again.ok("k3s-node").line
    assert line == f"picluster k3s-node: no changes ({AGENT} is not in the cluster)"
    assert len(double_log(pi)) == before + 2


def test_node_delete_fails_while_the_api_is_down(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    """An API server that does not answer is not "the node is gone": never skip the drain."""
    pi = cluster.server
    register(pi, AGENT)
    pi.exec("systemctl", "stop", "k3s")
    try:
        result = run(pi, "k3s-node.sh", node_values(3), "delete")
        assert result.rc == 1, result.stdout
        assert parse_summaries(result.stdout) == []
        assert "API server" in result.stderr
    finally:
        pi.exec("systemctl", "start", "k3s")
    assert run(pi, "k3s-node.sh", node_values(30), "delete").ok("k3s-node").changed


def test_kubeconfig_stdout_is_the_kubeconfig_only(
    cluster: Cluster, server_install: ServerInstall
) -> None:
    pi = cluster.server
    result = run(pi, "k3s-kubeconfig.sh", {"READY_TIMEOUT": "30"}, timing="k3s-kubeconfig.sh")
    assert result.rc == 0, result.stderr
    assert result.stdout == pi.read(KUBECONFIG_FILE)
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    assert document["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert "picluster k3s-kubeconfig: no changes" in result.stderr

    url = f"https://{cluster.server_ip}:6443"
    rewritten = yaml.safe_load(rewrite_kubeconfig(result.stdout, url, "picluster-test"))
    assert rewritten["clusters"] == [
        {"cluster": {**document["clusters"][0]["cluster"], "server": url}, "name": "picluster-test"}
    ]
    assert rewritten["contexts"][0]["context"] == {
        "cluster": "picluster-test",
        "user": "picluster-test",
    }
    assert rewritten["current-context"] == "picluster-test"


def _run_double(pi: simpi.SimPi) -> simpi.subprocess.CompletedProcess[str]:
    return pi.exec(
        "env", f"INSTALL_K3S_VERSION={VERSION}", "INSTALL_K3S_EXEC=agent", "sh", DOUBLE_ON_PI,
        check=False,
    )  # fmt: skip


def test_agent_delete_uninstalls_once(cluster: Cluster, agent_install: tuple[Run, Run]) -> None:
    """Last on the agent: uninstalls it."""
    pi = cluster.agent
    values = cluster.values(cluster.agent_node)
    result = run(pi, "k3s-install.sh", values, "delete", timing="k3s-install.sh delete")
    assert result.ok("k3s-install").line == "picluster k3s-install: changed: uninstalled"
    assert "uninstall k3s-agent" in double_log(pi)
    for path in (
        TOKEN_FILE,
        CONFIG_FILE,
        CONFIG_DIR,
        "/usr/local/bin/k3s",
        "/usr/local/bin/k3s-agent-uninstall.sh",
        "/etc/systemd/system/k3s-agent.service",
    ):
        assert not pi.exists(path), path  # fmt: skip
    assert is_active(pi, "k3s-agent") != "active"

    again = run(pi, "k3s-install.sh", values, "delete")
    assert again.ok("k3s-install").line.startswith("picluster k3s-install: no changes")

    # The double refuses a missing or readable token file, so the runs above prove the order.
    missing = _run_double(pi)
    assert missing.returncode == 1
    assert "names no token-file" in missing.stderr
    config = {"token-file": TOKEN_FILE, "server": f"https://{cluster.server_ip}:6443"}
    pi.put(CONFIG_FILE, yaml.safe_dump(config).encode(), mode="0600")
    pi.put(TOKEN_FILE, b"x\n", mode="0644")
    readable = _run_double(pi)
    assert readable.returncode == 1
    assert f"token-file {TOKEN_FILE} is 644 root:root, not 600 root:root" in readable.stderr
    assert not pi.exists("/usr/local/bin/k3s")

    # What a failed first install leaves (token, config and registries.yaml, which may hold a
    # password; no K3s): the delete removes it too.
    pi.put(REGISTRIES_FILE, f"{REGISTRIES_MARK}\nmirrors: {{}}\n".encode(), mode="0600")
    leftover = run(pi, "k3s-install.sh", values, "delete")
    assert leftover.ok("k3s-install").changed == (
        "removed registries.yaml",
        "removed picluster-token",
        "removed config.yaml",
    )
    assert not pi.exists(TOKEN_FILE)
    assert not pi.exists(CONFIG_FILE)
    assert not pi.exists(REGISTRIES_FILE)
