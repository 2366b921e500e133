"""The datastore drill on simulated Pis: snapshot, break, restore, the app's objects back.

K3s cannot run here, so `doubles/k3s-install.sh` (a test double, see its header) stands in for
the K3s binary; its datastore is a real SQLite file (kine's state.db on a single server, a stand-in
for etcd's database with embedded etcd) holding the objects the test creates. Everything else is
real: the snapshot timer and its online SQLite copy (`k3s-sqlite-snapshots.sh`,
`datastore-snapshot.sh`), systemd, and the restore `bin/restore-datastore` runs
(`tools/restore_datastore.py` driving `k3s-datastore-restore.sh` over SSH with pinned host keys).
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import pulumi
import pytest
import yaml

from components.config import NodeRole
from components.datastore_snapshots import SNAPSHOT_DIR, DatastoreSnapshots, sqlite_timer_values
from components.k3s_cluster import ClusterNode, K3sClusterArgs, install_values, join_token
from components.pi_node import SshTarget
from components.remote_script import parse_summary
from tests.integration import simpi
from tests.integration.conftest import TIMINGS
from tools import restore_datastore
from tools.restore_datastore import Plan, RestoreError, Server, Ssh

pytestmark = pytest.mark.integration

DOUBLE = Path(__file__).parent / "doubles" / "k3s-install.sh"
DOUBLE_ON_PI = "/opt/doubles/k3s-install.sh"
VERSION = "v1.31.4+k3s1"
TOKEN = f"K10picluster-drill-{secrets.token_hex(16)}"
SERVER_CA = "/var/lib/rancher/k3s/server/tls/server-ca.crt"
SERVER_DIR = "/var/lib/rancher/k3s/server"
TIMER = "picluster-datastore-snapshot.timer"
SERVICE = "picluster-datastore-snapshot.service"

APP_OBJECTS = ["configmap/game-settings", "deployment.apps/lobby"]


def _node(pi: simpi.SimPi, name: str, address: str) -> ClusterNode:
    return ClusterNode(
        name=name,
        role=NodeRole.SERVER,
        ssh=SshTarget(host=pi.host, port=pi.port, user=pi.user, private_key="unused"),
        address=address,
        ready=cast(pulumi.Resource, None),  # never read by install_values
    )


def _address(pi: simpi.SimPi) -> str:
    return pi.exec("hostname", "-I").stdout.split()[0]


def _server(pi: simpi.SimPi, name: str) -> Server:
    """How bin/restore-datastore reaches the Pi: its real host key, pinned."""
    host_key = " ".join(pi.read("/etc/ssh/ssh_host_ed25519_key.pub").split()[:2])
    return Server(name=name, host=pi.host, port=pi.port, user=pi.user, host_key=host_key)


def _sqlite3_for_the_double(pi: simpi.SimPi) -> None:
    """The double creates its datastore with the sqlite3 CLI when it starts (K3s has SQLite and
    etcd built in), so the Pi needs it before K3s is installed."""
    pi.exec("sh", "-c", "apt-get install -y -q sqlite3 >/dev/null 2>&1 || "
            "(apt-get update -q >/dev/null && apt-get install -y -q sqlite3 >/dev/null)",
            timeout=300)  # fmt: skip


def _install(pi: simpi.SimPi, values: Mapping[str, str]) -> None:
    rc, out, err = simpi.run_steps(pi, ["k3s-install.sh"], {**values, "READY_TIMEOUT": "60"})
    assert rc == 0, f"{out}\n{err}"


def _kubectl(pi: simpi.SimPi, *args: str, check: bool = True) -> str:
    return pi.exec("k3s", "kubectl", *args, check=check).stdout


def _objects(pi: simpi.SimPi) -> list[str]:
    return sorted(
        _kubectl(pi, "get", "configmaps", "-n", "game", "-o", "name").split()
        + _kubectl(pi, "get", "deployments", "-n", "game", "-o", "name").split()
    )


def _create_app_objects(pi: simpi.SimPi) -> None:
    _kubectl(pi, "create", "configmap", "game-settings", "-n", "game", "--from-literal=level=3")
    _kubectl(pi, "create", "deployment", "lobby", "-n", "game", "--image=ghcr.io/x/lobby:1.4.2")


def _break(pi: simpi.SimPi) -> None:
    """What the restore must undo: the app's objects deleted, a newer one added."""
    _kubectl(pi, "delete", "configmap", "game-settings", "-n", "game")
    _kubectl(pi, "delete", "deployment", "lobby", "-n", "game")
    _kubectl(pi, "create", "configmap", "after-the-snapshot", "-n", "game")
    assert _objects(pi) == ["configmap/after-the-snapshot"]


def _runner(lab: simpi.SimPiLab) -> Ssh:
    return Ssh(lab.key_path)


def _active(pi: simpi.SimPi, unit: str) -> str:
    return pi.exec("systemctl", "is-active", unit, check=False).stdout.strip()


def _journal(pi: simpi.SimPi) -> str:
    return pi.exec("journalctl", "-u", SERVICE, "-o", "cat", "--no-pager").stdout


def _copies(pi: simpi.SimPi) -> list[str]:
    out = pi.exec("sh", "-c", f"ls -1 {SNAPSHOT_DIR} 2>/dev/null || true").stdout
    return sorted(name for name in out.split() if name.startswith("state-"))


@dataclass(frozen=True)
class SqliteCluster:
    pi: simpi.SimPi
    server: Server
    args: K3sClusterArgs
    node: ClusterNode


@pytest.fixture(scope="module")
def sqlite_cluster(sim_lab: simpi.SimPiLab) -> Iterator[SqliteCluster]:
    start = time.monotonic()
    pi = sim_lab.start_pi("drill-sqlite")
    pi.put(DOUBLE_ON_PI, DOUBLE.read_bytes())
    _sqlite3_for_the_double(pi)
    node = _node(pi, "drill-sqlite", _address(pi))
    args = K3sClusterArgs(
        nodes=[node],
        version=VERSION,
        token=TOKEN,
        cluster_name="picluster-drill",
        install_url=f"file://{DOUBLE_ON_PI}",
        snapshots=DatastoreSnapshots(schedule="17 3 * * *", retention=2),
    )
    _install(pi, install_values(node, args, node, TOKEN))
    TIMINGS["drill: a single server installed"] = time.monotonic() - start
    yield SqliteCluster(pi, _server(pi, "drill-sqlite"), args, node)
    sim_lab.remove(pi)  # at the module's end, not the session's


def _timer_step(pi: simpi.SimPi, values: Mapping[str, str], *args: str) -> str:
    rc, out, err = simpi.run_steps(pi, ["k3s-sqlite-snapshots.sh"], values, args=args)
    assert rc == 0, f"{out}\n{err}"
    return parse_summary(out).line


def test_a_single_server_gets_no_etcd_keys_and_a_snapshot_timer(
    sqlite_cluster: SqliteCluster,
) -> None:
    pi = sqlite_cluster.pi
    config = yaml.safe_load(pi.read("/etc/rancher/k3s/config.yaml"))
    assert not [key for key in config if key.startswith("etcd-")]  # SQLite: K3s has no snapshots
    values = sqlite_timer_values(sqlite_cluster.args.snapshots)
    start = time.monotonic()
    first = _timer_step(pi, values)
    TIMINGS["drill: snapshot timer installed"] = time.monotonic() - start
    assert first.startswith("picluster k3s-sqlite-snapshots: changed: ")
    assert first.endswith("changed: copy-script, service, timer, enabled"), first
    assert _timer_step(pi, values) == "picluster k3s-sqlite-snapshots: no changes"
    assert _active(pi, TIMER) == "active"
    timer = pi.read(f"/etc/systemd/system/{TIMER}")
    assert "OnCalendar=*-*-* 3:17:00" in timer
    # systemd itself parses the converted schedule: its next run is 03:17.
    assert "03:17:00" in pi.exec("systemd-analyze", "calendar", "*-*-* 3:17:00").stdout


def test_the_timer_fires_and_keeps_only_the_newest_copies(sqlite_cluster: SqliteCluster) -> None:
    pi = sqlite_cluster.pi
    values = sqlite_timer_values(sqlite_cluster.args.snapshots)
    _timer_step(pi, values)
    before = _copies(pi)
    # The same timer on a schedule a test can wait for: every 2 seconds.
    _timer_step(pi, {**values, "ON_CALENDAR": "*:*:0/2"})
    deadline = time.monotonic() + 30
    # Three runs at least: retention 2 then prunes the oldest.
    while (
        time.monotonic() < deadline
        and _journal(pi).count("picluster datastore-snapshot: saved") < 3
    ):
        time.sleep(1)
    _timer_step(pi, values)  # back to 03:17 (the timer restarts with the new schedule)
    assert len(before) == 0
    copies = _copies(pi)
    assert len(copies) == 2, copies
    listing = pi.exec("stat", "-c", "%a %U", SNAPSHOT_DIR, *(f"{SNAPSHOT_DIR}/{c}" for c in copies))
    assert listing.stdout.split("\n")[0] == "700 root"
    assert all(line == "600 root" for line in listing.stdout.split("\n")[1:] if line)
    journal = _journal(pi)
    assert journal.count("picluster datastore-snapshot: saved") >= 3, journal
    assert "(kept 2, pruned 1)" in journal


def test_sqlite_drill_snapshot_break_restore(
    sim_lab: simpi.SimPiLab, sqlite_cluster: SqliteCluster
) -> None:
    pi = sqlite_cluster.pi
    _timer_step(pi, sqlite_timer_values(sqlite_cluster.args.snapshots))
    _create_app_objects(pi)
    assert _objects(pi) == APP_OBJECTS
    # The snapshot: the timer's own service, as the schedule runs it.
    pi.exec("sh", "-c", "sleep 1")  # a new second: a new copy's name
    pi.exec("systemctl", "start", SERVICE)
    snapshot = _copies(pi)[-1]
    _break(pi)
    # What the break wrote is still in the WAL, as with kine's open connection: a restore that
    # left it beside the copy would have SQLite replay it into the restored database.
    assert pi.exists(f"{SERVER_DIR}/db/state.db-wal")

    target = restore_datastore.plan_for(sqlite_cluster.server, (), snapshot)
    assert target.datastore == "sqlite"
    ssh = _runner(sim_lab)
    start = time.monotonic()
    try:
        assert snapshot in restore_datastore.list_snapshots(ssh.run, target)
        restore_datastore.restore(ssh.run, target)
    finally:
        ssh.close()
    TIMINGS["drill: SQLite restore"] = time.monotonic() - start

    assert _active(pi, "k3s") == "active"
    assert _objects(pi) == APP_OBJECTS  # the app's objects are back, the later one gone
    aside = pi.exec("sh", "-c", f"ls -d {SERVER_DIR}/db-before-restore-*/state.db*").stdout
    names = {line.rsplit("/", 1)[1] for line in aside.split()}
    assert {"state.db", "state.db-wal"} <= names, "the datastore before it, WAL and all, kept"
    assert not pi.exists(f"{SERVER_DIR}/db/state.db.restoring")
    assert pi.exec("stat", "-c", "%a", f"{SERVER_DIR}/db/state.db").stdout.strip() == "600"


def test_a_failed_sqlite_copy_leaves_the_datastore_in_place(
    sim_lab: simpi.SimPiLab, sqlite_cluster: SqliteCluster
) -> None:
    pi = sqlite_cluster.pi
    if not _copies(pi):
        _timer_step(pi, sqlite_timer_values(sqlite_cluster.args.snapshots))
        pi.exec("systemctl", "start", SERVICE)
    _kubectl(pi, "create", "configmap", "before-the-failed-copy", "-n", "game")
    before = _objects(pi)
    # The copy fails as on a full SD card: an `install` first on sudo's PATH that always fails.
    shim = "/usr/local/sbin/install"
    pi.put(shim, b"#!/bin/sh\necho 'install: No space left on device' >&2\nexit 1\n", "0755")
    ssh = _runner(sim_lab)
    try:
        target = restore_datastore.plan_for(sqlite_cluster.server, (), _copies(pi)[-1])
        with pytest.raises(RestoreError, match=r"state\.db is untouched") as raised:
            restore_datastore.restore(ssh.run, target)
    finally:
        ssh.close()
        pi.exec("rm", "-f", shim)
    assert raised.value.restarted == ("drill-sqlite",)
    assert _active(pi, "k3s") == "active"
    assert _objects(pi) == before  # state.db was never moved


def test_a_restore_refuses_before_it_stops_anything(
    sim_lab: simpi.SimPiLab, sqlite_cluster: SqliteCluster
) -> None:
    pi = sqlite_cluster.pi
    since = pi.exec("systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "k3s").stdout
    ssh = _runner(sim_lab)
    try:
        # No such snapshot: the check on the server fails first.
        missing = restore_datastore.plan_for(sqlite_cluster.server, (), "state-19700101T000000Z.db")
        with pytest.raises(RestoreError, match=r"no snapshot state-19700101T000000Z\.db"):
            restore_datastore.restore(ssh.run, missing)
        # Another host key than the Pi's (a man in the middle): SSH refuses to connect at all.
        other = simpi.generate_key(Path(tempfile.mkdtemp(dir=sim_lab.workdir)))
        other_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
        wrong = replace(sqlite_cluster.server, host_key=other_key)
        snapshot = _copies(pi)[-1]
        with pytest.raises(RestoreError, match="check on drill-sqlite failed"):
            restore_datastore.restore(ssh.run, restore_datastore.plan_for(wrong, (), snapshot))
    finally:
        ssh.close()
    assert _active(pi, "k3s") == "active"
    after = pi.exec("systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "k3s").stdout
    assert after == since  # never stopped


def test_removing_the_timer_keeps_the_copies(sqlite_cluster: SqliteCluster) -> None:
    pi = sqlite_cluster.pi
    values = sqlite_timer_values(sqlite_cluster.args.snapshots)
    copies = _copies(pi)
    assert copies
    line = _timer_step(pi, values, "delete")
    assert line == "picluster k3s-sqlite-snapshots: changed: timer removed (copies kept)"
    assert _timer_step(pi, values, "delete") == "picluster k3s-sqlite-snapshots: no changes"
    assert not pi.exists(f"/etc/systemd/system/{TIMER}")
    assert _copies(pi) == copies


# --- embedded etcd -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdCluster:
    first: simpi.SimPi
    second: simpi.SimPi
    servers: tuple[Server, Server]
    args: K3sClusterArgs


@pytest.fixture(scope="module")
def etcd_cluster(sim_lab: simpi.SimPiLab) -> Iterator[EtcdCluster]:
    start = time.monotonic()
    first, second = sim_lab.start_pi("drill-etcd-1"), sim_lab.start_pi("drill-etcd-2")
    for pi in (first, second):
        pi.put(DOUBLE_ON_PI, DOUBLE.read_bytes())
        _sqlite3_for_the_double(pi)
    nodes = [_node(first, "drill-etcd-1", _address(first)), _node(second, "drill-etcd-2", "")]
    nodes[1] = replace(nodes[1], address=_address(second))
    args = K3sClusterArgs(
        nodes=nodes,
        version=VERSION,
        token=TOKEN,
        cluster_name="picluster-drill",
        install_url=f"file://{DOUBLE_ON_PI}",
        snapshots=DatastoreSnapshots(schedule="0 */6 * * *", retention=7),
    )
    _install(first, install_values(nodes[0], args, nodes[0], TOKEN))
    ca = first.exec("sha256sum", SERVER_CA).stdout.split()[0]
    _install(second, install_values(nodes[1], args, nodes[0], join_token(TOKEN, ca)))
    TIMINGS["drill: two etcd servers installed"] = time.monotonic() - start
    servers = (_server(first, "drill-etcd-1"), _server(second, "drill-etcd-2"))
    yield EtcdCluster(first, second, servers, args)
    for pi in (first, second):
        sim_lab.remove(pi)


def test_etcd_servers_get_k3s_snapshot_schedule_and_retention(etcd_cluster: EtcdCluster) -> None:
    for pi in (etcd_cluster.first, etcd_cluster.second):
        config = yaml.safe_load(pi.read("/etc/rancher/k3s/config.yaml"))
        assert config["etcd-snapshot-schedule-cron"] == "0 */6 * * *"
        assert config["etcd-snapshot-retention"] == 7
        assert "etcd-s3" not in config
        assert not pi.exists(f"/etc/systemd/system/{TIMER}")


def test_etcd_drill_snapshot_break_restore(
    sim_lab: simpi.SimPiLab, etcd_cluster: EtcdCluster
) -> None:
    first, second = etcd_cluster.first, etcd_cluster.second
    _create_app_objects(first)
    assert _objects(first) == APP_OBJECTS
    saved = first.exec("k3s", "etcd-snapshot", "save").stdout
    snapshot = saved.split()[1]
    assert snapshot.startswith("on-demand-drill-etcd-1-")
    assert snapshot in first.exec("k3s", "etcd-snapshot", "ls").stdout
    _break(first)

    target = restore_datastore.plan_for(etcd_cluster.servers[0], etcd_cluster.servers[1:], snapshot)
    assert target.datastore == "etcd"
    ssh = _runner(sim_lab)
    start = time.monotonic()
    try:
        listing = restore_datastore.list_snapshots(ssh.run, target)
        assert snapshot in listing and "picluster k3s-datastore-restore" not in listing
        restore_datastore.restore(ssh.run, target)
    finally:
        ssh.close()
    TIMINGS["drill: etcd restore (2 servers)"] = time.monotonic() - start

    assert _objects(first) == APP_OBJECTS
    log = first.read("/var/log/picluster-doubles/k3s-install.log")
    assert f"cluster-reset restored {SNAPSHOT_DIR}/{snapshot}" in log
    # The other server joined the restored cluster again, its old data kept aside.
    assert _active(second, "k3s") == "active"
    assert "rejoined https://" in second.read("/var/log/picluster-doubles/k3s-install.log")
    assert second.exec("sh", "-c", f"ls -d {SERVER_DIR}/db-before-restore-*/db/etcd").stdout
    # HA again: the second server is a member of the restored cluster.
    members = first.read(f"{SERVER_DIR}/db/etcd/double-members").split()
    assert members == ["drill-etcd-1", "drill-etcd-2"]


def test_restore_plan_says_what_it_does(etcd_cluster: EtcdCluster) -> None:
    text = Plan(
        datastore="etcd",
        first=etcd_cluster.servers[0],
        others=etcd_cluster.servers[1:],
        snapshot="on-demand-x",
    ).describe()
    assert "stop K3s on drill-etcd-2, drill-etcd-1" in text
    assert "--cluster-reset-restore-path=<on-demand-x>" in text
    assert "Everything written to the cluster since the snapshot is lost." in text


def test_etcd_restore_of_a_local_snapshot_with_s3_configured(
    sim_lab: simpi.SimPiLab, etcd_cluster: EtcdCluster
) -> None:
    # With etcd-s3 in config.yaml K3s looks the restore path up in the bucket; a snapshot on the
    # server must be restored with --etcd-s3=false (k3s-io/docs datastore/backup-restore.md). The
    # double fails a restore from S3 (it cannot reach one), so this passes only with the flag.
    first = etcd_cluster.first
    config = "/etc/rancher/k3s/config.yaml"
    original = first.read(config)
    first.put(config, (original + "etcd-s3: true\netcd-s3-bucket: pi-snapshots\n").encode(), "0600")
    try:
        _kubectl(first, "create", "configmap", "s3-case", "-n", "game")
        snapshot = first.exec("k3s", "etcd-snapshot", "save").stdout.split()[1]
        _kubectl(first, "delete", "configmap", "s3-case", "-n", "game")
        target = restore_datastore.plan_for(
            etcd_cluster.servers[0], etcd_cluster.servers[1:], snapshot
        )
        ssh = _runner(sim_lab)
        try:
            restore_datastore.restore(ssh.run, target)
        finally:
            ssh.close()
        assert "configmap/s3-case" in _objects(first)
        log = first.read("/var/log/picluster-doubles/k3s-install.log")
        assert f"cluster-reset restored {SNAPSHOT_DIR}/{snapshot}" in log
    finally:
        first.put(config, original.encode(), "0600")


def _restore(lab: simpi.SimPiLab, cluster: EtcdCluster, snapshot: str) -> None:
    ssh = _runner(lab)
    try:
        target = restore_datastore.plan_for(cluster.servers[0], cluster.servers[1:], snapshot)
        restore_datastore.restore(ssh.run, target)
    finally:
        ssh.close()


def _since(pi: simpi.SimPi) -> str:
    return pi.exec("systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "k3s").stdout


def test_etcd_restore_from_the_bucket_and_a_misspelt_name_that_stops_nothing(
    sim_lab: simpi.SimPiLab, etcd_cluster: EtcdCluster
) -> None:
    first, second = etcd_cluster.first, etcd_cluster.second
    config = "/etc/rancher/k3s/config.yaml"
    original = first.read(config)
    bucket = "/var/lib/picluster-doubles/s3/pi-snapshots"
    first.put(config, (original + "etcd-s3: true\netcd-s3-bucket: pi-snapshots\n").encode(), "0600")
    try:
        # A snapshot only the bucket has (uploaded, then gone from the server).
        _kubectl(first, "create", "configmap", "from-the-bucket", "-n", "game")
        snapshot = first.exec("k3s", "etcd-snapshot", "save").stdout.split()[1]
        first.exec("sh", "-c", f"mkdir -p {bucket} && mv {SNAPSHOT_DIR}/{snapshot} {bucket}/")
        _kubectl(first, "delete", "configmap", "from-the-bucket", "-n", "game")
        assert f"s3://pi-snapshots/{snapshot}" in first.exec("k3s", "etcd-snapshot", "ls").stdout

        since = (_since(first), _since(second))
        with pytest.raises(RestoreError, match="nor in the S3 bucket") as raised:
            _restore(sim_lab, etcd_cluster, snapshot + "x")  # a typo
        assert snapshot in str(raised.value)  # what there is, named
        assert (_since(first), _since(second)) == since  # nothing was stopped

        _restore(sim_lab, etcd_cluster, snapshot)
        assert "configmap/from-the-bucket" in _objects(first)
        log = first.read("/var/log/picluster-doubles/k3s-install.log")
        assert f"cluster-reset restored {bucket}/{snapshot}" in log
    finally:
        first.put(config, original.encode(), "0600")


def test_a_failed_etcd_restore_starts_the_servers_again_with_their_data(
    sim_lab: simpi.SimPiLab, etcd_cluster: EtcdCluster
) -> None:
    first, second = etcd_cluster.first, etcd_cluster.second
    _kubectl(first, "create", "configmap", "before-the-failed-restore", "-n", "game")
    before = _objects(first)
    # A snapshot file that is not one: K3s has moved the etcd data away when its restore fails.
    corrupt = "on-demand-drill-etcd-1-1700000000"
    first.put(f"{SNAPSHOT_DIR}/{corrupt}", secrets.token_hex(4096).encode(), "0600")
    try:
        with pytest.raises(RestoreError, match="restore on drill-etcd-1 failed") as raised:
            _restore(sim_lab, etcd_cluster, corrupt)
    finally:
        first.exec("rm", "-f", f"{SNAPSHOT_DIR}/{corrupt}")
    assert raised.value.restarted == ("drill-etcd-2", "drill-etcd-1")
    assert _active(first, "k3s") == "active" and _active(second, "k3s") == "active"
    assert _objects(first) == before  # its own data back, not a new empty cluster


def test_etcd_list_with_k3s_down_lists_the_snapshot_files(
    sim_lab: simpi.SimPiLab, etcd_cluster: EtcdCluster
) -> None:
    first = etcd_cluster.first
    saved = first.exec("k3s", "etcd-snapshot", "save").stdout.split()[1]
    first.exec("systemctl", "stop", "k3s")
    ssh = _runner(sim_lab)
    try:
        target = restore_datastore.plan_for(etcd_cluster.servers[0], (), saved)
        listing = restore_datastore.list_snapshots(ssh.run, replace(target, datastore="etcd"))
    finally:
        ssh.close()
        first.exec("systemctl", "start", "k3s")
    assert listing.splitlines()[0].split() == ["Name", "Size", "Modified"]
    assert saved in listing.split()
