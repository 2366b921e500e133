"""The node scripts, run for real over SSH (`sudo bash -s`, values on stdin) on simulated Pis:
each must do its job on the first run and change nothing on the second."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.remote_script import Summary, parse_summaries, parse_summary
from tests.integration import simpi
from tests.integration.conftest import TIMINGS

pytestmark = pytest.mark.integration

FLAGS = "cgroup_memory=1 cgroup_enable=memory"
FIRMWARE_CMDLINE = "/boot/firmware/cmdline.txt"
LEGACY_CMDLINE = "/boot/cmdline.txt"
REBOOT_MARKER = "/var/lib/picluster/reboot-required"
SYSCTL_FILE = "/etc/sysctl.d/90-picluster-k3s.conf"
MODULES_FILE = "/etc/modules-load.d/picluster-k3s.conf"
WATCHED = (
    "/etc/hostname",
    "/etc/hosts",
    "/etc/hosts.picluster.bak",
    FIRMWARE_CMDLINE,
    f"{FIRMWARE_CMDLINE}.picluster.bak",
    LEGACY_CMDLINE,
    "/etc/dphys-swapfile",
    "/etc/dphys-swapfile.picluster.bak",
    SYSCTL_FILE,
    MODULES_FILE,
    REBOOT_MARKER,
)
DOUBLE = Path(__file__).parent / "doubles" / "get-docker.sh"


@dataclass(frozen=True)
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def summary(self) -> Summary:
        return parse_summary(self.stdout)


def run(pi: simpi.SimPi, script: str, values: Mapping[str, str]) -> Run:
    start = time.monotonic()
    rc, out, err = simpi.run_script(pi, script, values)
    return Run(rc, out, err, time.monotonic() - start)


def assert_ok(result: Run, step: str) -> Summary:
    assert result.rc == 0, f"exit {result.rc}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    # Exactly one line on stdout, the summary; progress goes to stderr.
    assert len(result.stdout.splitlines()) == 1, result.stdout
    summary = result.summary
    assert summary.step == step
    return summary


@dataclass(frozen=True)
class PreparedPi:
    pi: simpi.SimPi
    before: dict[str, str]
    first: Run
    after_first: dict[str, str]
    second: Run
    after_second: dict[str, str]


@pytest.fixture(scope="module")
def prepared(sim_lab: simpi.SimPiLab) -> PreparedPi:
    """A Bookworm-layout Pi prepared twice (UPGRADE=1, as a first deployment would)."""
    pi = sim_lab.start_pi("pi-1")
    values = {"NODE_NAME": "pi-1", "UPGRADE": "1"}
    before = pi.snapshot(*WATCHED)
    first = run(pi, "prepare.sh", values)
    after_first = pi.snapshot(*WATCHED)
    time.sleep(1.1)  # so a rewrite of identical content would show in the mtime
    second = run(pi, "prepare.sh", values)
    after_second = pi.snapshot(*WATCHED)
    TIMINGS["prepare.sh first run (UPGRADE=1)"] = first.seconds
    TIMINGS["prepare.sh second run (UPGRADE=1)"] = second.seconds
    return PreparedPi(pi, before, first, after_first, second, after_second)


def test_first_prepare_reports_each_change(prepared: PreparedPi) -> None:
    summary = assert_ok(prepared.first, "prepare")
    for item in ("hostname", "cmdline", "swap", "modules", "sysctl"):
        assert item in summary.changed, summary.line
    assert "iptables backend: nf_tables" in prepared.first.stderr


def test_prepare_sets_hostname_and_hosts_line(prepared: PreparedPi) -> None:
    pi = prepared.pi
    assert pi.ssh("hostname").stdout.strip() == "pi-1"
    assert pi.read("/etc/hostname") == "pi-1\n"
    hosts = pi.read("/etc/hosts").splitlines()
    assert [line for line in hosts if line.startswith("127.0.1.1")] == ["127.0.1.1\tpi-1"]
    assert "127.0.0.1\tlocalhost" in hosts
    assert "raspberrypi" in pi.read("/etc/hosts.picluster.bak")


def test_prepare_appends_cgroup_flags_once_to_firmware_cmdline(prepared: PreparedPi) -> None:
    pi = prepared.pi
    cmdline = pi.read(FIRMWARE_CMDLINE)
    assert cmdline == simpi.BOOKWORM_CMDLINE.rstrip("\n") + f" {FLAGS}\n"
    assert cmdline.count("\n") == 1
    assert pi.read(f"{FIRMWARE_CMDLINE}.picluster.bak") == simpi.BOOKWORM_CMDLINE
    # The "DO NOT EDIT" pointer left at /boot/cmdline.txt is not the file the kernel reads.
    assert prepared.after_second[LEGACY_CMDLINE] == prepared.before[LEGACY_CMDLINE]
    assert pi.read(LEGACY_CMDLINE) == simpi.BOOT_CMDLINE_STUB


def test_prepare_asks_for_a_reboot(prepared: PreparedPi) -> None:
    assert prepared.before[REBOOT_MARKER] == "absent"
    assert prepared.after_first[REBOOT_MARKER].endswith(" 644")


def test_prepare_turns_swap_off_for_good(prepared: PreparedPi) -> None:
    pi = prepared.pi
    assert pi.exec("systemctl", "is-enabled", "dphys-swapfile", check=False).stdout.strip() == (
        "disabled"
    )
    assert pi.exec("systemctl", "is-active", "dphys-swapfile", check=False).stdout.strip() == (
        "inactive"
    )
    conf = pi.read("/etc/dphys-swapfile").splitlines()
    assert [line for line in conf if "CONF_SWAPSIZE" in line] == ["CONF_SWAPSIZE=0"]
    assert "CONF_SWAPSIZE=100" in pi.read("/etc/dphys-swapfile.picluster.bak")
    assert not pi.exists("/var/swap")  # the stand-in's swap file, removed by `uninstall`


def test_prepare_sets_kernel_settings(prepared: PreparedPi) -> None:
    pi = prepared.pi
    assert pi.read(SYSCTL_FILE).splitlines()[1:] == [
        "net.ipv4.ip_forward = 1",
        "net.bridge.bridge-nf-call-iptables = 1",
        "net.bridge.bridge-nf-call-ip6tables = 1",
    ]
    for key in (
        "net.ipv4.ip_forward",
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ):
        assert pi.ssh("/usr/sbin/sysctl", "-n", key).stdout.strip() == "1", key


def test_prepare_loads_modules_at_boot(prepared: PreparedPi) -> None:
    lines = prepared.pi.read(MODULES_FILE).splitlines()
    assert lines[1:] == ["br_netfilter", "overlay"]


def test_second_prepare_changes_nothing(prepared: PreparedPi) -> None:
    summary = assert_ok(prepared.second, "prepare")
    assert summary.line == "picluster prepare: no changes"
    assert prepared.after_second == prepared.after_first  # content, mtime and mode


def test_second_prepare_skips_the_mirror_while_the_lists_are_fresh(prepared: PreparedPi) -> None:
    assert "apt-get update" in prepared.first.stderr
    assert "apt-get update" not in prepared.second.stderr
    assert "skipping apt-get" in prepared.second.stderr
    forced = run(
        prepared.pi,
        "prepare.sh",
        {"NODE_NAME": "pi-1", "UPGRADE": "1", "APT_MAX_AGE_MINUTES": "0"},
    )
    assert assert_ok(forced, "prepare").line == "picluster prepare: no changes"
    assert "apt-get update" in forced.stderr


def test_prepare_on_legacy_layout_edits_boot_cmdline(sim_lab: simpi.SimPiLab) -> None:
    pi = sim_lab.start_pi("pi-legacy", layout=simpi.Layout.LEGACY)
    # One flag already there (in the middle): only the other one is appended.
    original = "console=tty1 root=PARTUUID=1234abcd-02 cgroup_enable=memory rootwait\n"
    pi.put(LEGACY_CMDLINE, original.encode())
    values = {"NODE_NAME": "pi-legacy", "UPGRADE": "0"}

    first = run(pi, "prepare.sh", values)
    assert "cmdline" in assert_ok(first, "prepare").changed
    assert not pi.exists("/boot/firmware")
    assert pi.read(LEGACY_CMDLINE) == original.rstrip("\n") + " cgroup_memory=1\n"
    assert pi.read(f"{LEGACY_CMDLINE}.picluster.bak") == original

    snapshot = pi.snapshot(*WATCHED)
    second = run(pi, "prepare.sh", values)
    assert assert_ok(second, "prepare").line == "picluster prepare: no changes"
    assert pi.snapshot(*WATCHED) == snapshot


def test_reboot_only_when_required_and_ssh_comes_back(sim_lab: simpi.SimPiLab) -> None:
    pi = sim_lab.start_pi("pi-reboot")
    values = {"NODE_NAME": "pi-reboot", "UPGRADE": "0"}
    assert "cmdline" in assert_ok(run(pi, "prepare.sh", values), "prepare").changed
    boot_id, started_at = pi.boot_id(), pi.started_at()
    assert boot_id is not None

    result = run(pi, "reboot.sh", {"REBOOT_DELAY_SECONDS": "2"})
    assert assert_ok(result, "reboot").line == "picluster reboot: changed: reboot scheduled"
    start = time.monotonic()
    new_boot_id = pi.wait_until_up(timeout=120, not_boot_id=boot_id)
    TIMINGS["reboot until SSH is back"] = time.monotonic() - start
    assert new_boot_id != boot_id
    assert pi.started_at() != started_at  # Docker restarted the container: a real reboot
    assert not pi.exists(REBOOT_MARKER)
    assert pi.ssh("hostname").stdout.strip() == "pi-reboot"  # survives the reboot

    # Nothing left to do after the reboot: kernel settings and modules came back at boot.
    after = run(pi, "prepare.sh", values)
    assert assert_ok(after, "prepare").line == "picluster prepare: no changes", after.stderr

    again = run(pi, "reboot.sh", {"REBOOT_DELAY_SECONDS": "1"})
    assert assert_ok(again, "reboot").line == "picluster reboot: no changes"
    time.sleep(4)
    assert pi.boot_id() == new_boot_id


def test_no_session_lands_between_reboot_step_and_reboot(sim_lab: simpi.SimPiLab) -> None:
    """The step after reboot.sh connects at once; it must reach the rebooted node, never the old
    boot (the reboot would cut it off mid-script)."""
    pi = sim_lab.start_pi("pi-race")
    values = {"NODE_NAME": "pi-race", "UPGRADE": "0"}
    assert_ok(run(pi, "prepare.sh", values), "prepare")
    boot_id = pi.boot_id()
    # A long delay gives a racing connection every chance to slip in before the reboot.
    result = run(pi, "reboot.sh", {"REBOOT_DELAY_SECONDS": "5"})
    assert assert_ok(result, "reboot").line == "picluster reboot: changed: reboot scheduled"
    deadline = time.monotonic() + 120
    answered = None
    while time.monotonic() < deadline:
        probe = pi.ssh("cat", simpi.BOOT_ID_FILE, timeout=15)
        if probe.returncode == 0:
            answered = probe.stdout.strip()
            break
        time.sleep(0.2)
    assert answered is not None, "the node did not come back within 120 s"
    assert answered != boot_id, "a new session reached the node before its reboot"


def test_cgroup_gate_passes_on_the_pi(prepared: PreparedPi) -> None:
    summary = assert_ok(run(prepared.pi, "cgroup-gate.sh", {}), "cgroup-gate")
    # The host of these simulated Pis uses cgroup v1; a Pi on Bookworm reports v2.
    assert summary.line.startswith("picluster cgroup-gate: no changes (memory controller active, ")


def test_cgroup_gate_v2_with_memory_passes(prepared: PreparedPi) -> None:
    prepared.pi.put("/tmp/v2-memory", b"cpuset cpu io memory pids\n", mode="0644")
    summary = assert_ok(
        run(prepared.pi, "cgroup-gate.sh", {"CGROUP_CONTROLLERS_FILE": "/tmp/v2-memory"}),
        "cgroup-gate",
    )
    assert summary.line == "picluster cgroup-gate: no changes (memory controller active, cgroup v2)"


@pytest.mark.parametrize(
    ("values", "files"),
    [
        pytest.param(
            {"CGROUP_CONTROLLERS_FILE": "/tmp/v2-no-memory"},
            {"/tmp/v2-no-memory": "cpuset cpu io pids\n"},
            id="cgroup-v2-without-memory",
        ),
        pytest.param(
            {"CGROUP_CONTROLLERS_FILE": "/nonexistent", "PROC_CGROUPS_FILE": "/tmp/cgroups"},
            {"/tmp/cgroups": "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
             "cpu\t2\t1\t1\nmemory\t0\t1\t0\npids\t3\t1\t1\n"},
            id="cgroup-v1-memory-disabled",
        ),
    ],
)  # fmt: skip
def test_cgroup_gate_fails_with_what_to_do(
    prepared: PreparedPi, values: dict[str, str], files: dict[str, str]
) -> None:
    for path, content in files.items():
        prepared.pi.put(path, content.encode(), mode="0644")
    result = run(prepared.pi, "cgroup-gate.sh", values)
    assert result.rc == 1
    assert "picluster cgroup-gate:" not in result.stdout
    assert FIRMWARE_CMDLINE in result.stderr
    assert FLAGS in result.stderr
    assert "reboot" in result.stderr
    assert "current /proc/cmdline: " in result.stderr


def test_facts_reports_the_pi_and_warns_about_amd64(prepared: PreparedPi) -> None:
    result = run(prepared.pi, "facts.sh", {"NODE_NAME": "pi-1"})
    summary = assert_ok(result, "facts")
    assert summary.facts["model"] == simpi.PI_MODEL
    assert summary.facts["arch"] == "amd64"
    assert summary.facts["os"] == "debian-12-bookworm"
    assert summary.facts["hostname"] == "pi-1"
    assert summary.facts["page_size"] == "4096"
    assert int(summary.facts["memory_mb"]) > 0
    assert list(summary.facts) == ["arch", "os", "model", "memory_mb", "page_size", "hostname"]
    assert "expected arm64 (64-bit Raspberry Pi OS); this host is amd64" in result.stderr


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"/tmp/dt-model": "Raspberry Pi 5 Model B Rev 1.0\0"}, "Raspberry Pi 5 Model B Rev 1.0"),
        ({"/tmp/cpuinfo": "processor\t: 0\nHardware\t: BCM2711\n"}, "BCM2711"),
        ({"/tmp/cpuinfo": "processor\t: 0\nmodel name\t: AMD EPYC\n"}, "unknown"),
    ],
    ids=["device-tree", "cpuinfo-hardware-only", "not-a-pi"],
)
def test_facts_model_sources(prepared: PreparedPi, files: dict[str, str], expected: str) -> None:
    values = {
        "NODE_NAME": "pi-1",
        "DEVICE_TREE_MODEL_FILE": "/nonexistent",
        "CPUINFO_FILE": "/nonexistent",
    }
    for path, content in files.items():
        prepared.pi.put(path, content.encode(), mode="0644")
        values["DEVICE_TREE_MODEL_FILE" if "dt-" in path else "CPUINFO_FILE"] = path
    summary = assert_ok(run(prepared.pi, "facts.sh", values), "facts")
    assert summary.facts["model"] == expected


def test_docker_installs_once_with_the_installer_double(sim_lab: simpi.SimPiLab) -> None:
    pi = sim_lab.start_pi("pi-docker")
    pi.put("/opt/picluster-test/get-docker.sh", DOUBLE.read_bytes())
    values = {
        "DOCKER_INSTALL_URL": "file:///opt/picluster-test/get-docker.sh",
        "DOCKER_USER": "pi",
    }
    calls_log = "/var/log/picluster-test/get-docker-double.log"

    first = run(pi, "docker.sh", values)
    summary = assert_ok(first, "docker")
    assert summary.changed == ("docker installed", "pi in docker group"), first.stderr
    assert len(pi.read(calls_log).splitlines()) == 1
    assert pi.exec("systemctl", "is-active", "docker", check=False).stdout.strip() == "active"
    assert "docker" in pi.exec("id", "-nG", "pi").stdout.split()

    second = run(pi, "docker.sh", values)
    assert assert_ok(second, "docker").line == "picluster docker: no changes"
    assert len(pi.read(calls_log).splitlines()) == 1  # the installer was not run again


def test_pi_node_prepare_session_then_gate(sim_lab: simpi.SimPiLab) -> None:
    """The sessions PiNode runs: facts + prepare + reboot, then (after the reboot) the gate."""
    pi = sim_lab.start_pi("pi-session")
    values = {"NODE_NAME": "pi-session", "EXPECTED_ARCH": "arm64", "UPGRADE": "0"}
    boot_id = pi.boot_id()
    rc, out, err = simpi.run_steps(pi, ["facts.sh", "prepare.sh", "reboot.sh"], values)
    assert rc == 0, err
    steps = parse_summaries(out)
    assert [s.step for s in steps] == ["facts", "prepare", "reboot"], out
    assert "cmdline" in steps[1].changed
    assert steps[2].line == "picluster reboot: changed: reboot scheduled"
    pi.wait_until_up(timeout=120, not_boot_id=boot_id)

    rc, out, err = simpi.run_steps(pi, ["cgroup-gate.sh"], {})
    assert rc == 0, err
    assert [s.step for s in parse_summaries(out)] == ["cgroup-gate"]

    rc, out, err = simpi.run_steps(pi, ["facts.sh", "prepare.sh", "reboot.sh"], values)
    assert rc == 0, err
    assert [s.line for s in parse_summaries(out)][1:] == [
        "picluster prepare: no changes",
        "picluster reboot: no changes",
    ]


def test_unsupported_os_stops_the_session_before_prepare(sim_lab: simpi.SimPiLab) -> None:
    pi = sim_lab.start_pi("pi-buster")
    buster = 'ID=debian\nVERSION_ID="10"\nVERSION_CODENAME=buster\n'
    pi.put("/etc/os-release", buster.encode(), mode="0644")
    values = {"NODE_NAME": "pi-buster", "UPGRADE": "0"}
    rc, out, err = simpi.run_steps(pi, ["facts.sh", "prepare.sh", "reboot.sh"], values)
    assert rc == 1
    assert parse_summaries(out) == []
    assert "debian 10 (buster) is too old" in err
    assert "12 (bookworm)" in err  # says what is supported
    assert pi.ssh("hostname").stdout.strip() == "raspberrypi"  # prepare never ran
