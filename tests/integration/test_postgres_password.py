"""Password rotation in PostgreSQL, for real: pg-password.sh and postgres-start.sh against a
throwaway cluster of Debian's PostgreSQL server, run as the unprivileged `postgres` user.

Skips with the reason when the server binaries (Debian package `postgresql`), the `postgres`
user or root are missing; PICLUSTER_REQUIRE_INTEGRATION=1 (CI) turns the skip into a failure.
postgres-start.sh sources the image's docker-entrypoint.sh: here a test double of it
(doubles/postgres-docker-entrypoint.sh), since the image cannot be pulled on these machines.
Every wait is bounded.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.app_model import ASSETS
from tests.availability import INTEGRATION, unavailable

pytestmark = pytest.mark.integration

SCRIPTS = ASSETS / "postgres"
DOUBLE = Path(__file__).parent / "doubles" / "postgres-docker-entrypoint.sh"
ROLE = "game"
OLD, NEW = "old-Pa55word-4-rotation", "new-Pa55word-4-rotation"
TIMEOUT = 30.0
VERIFIER_QUERY = "SELECT rolpassword FROM pg_authid WHERE rolname = 'game'"


def _server_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@dataclass
class Lab:
    """A directory the `postgres` user owns, the server binaries, and a free loopback port."""

    root: Path
    bin: Path
    uid: int
    gid: int
    port: int

    def own(self, path: Path, content: str | None = None) -> Path:
        if content is not None:
            path.write_text(content)
            path.chmod(0o600)
        os.chown(path, self.uid, self.gid)
        return path

    def directory(self, name: str) -> Path:
        return self.own(self.root / name) if (self.root / name).mkdir() is None else self.root

    def run(
        self, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            env={"PATH": f"{self.bin}:/usr/bin:/bin", **(env or {})},
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def login(self, password: str) -> bool:
        """Whether `password` logs ROLE in over TCP (password authentication)."""
        result = subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE,
             "-d", "postgres", "-w", "-Atc", "SELECT 1"],
            env={"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        return result.returncode == 0 and result.stdout.strip() == "1"

    def wait_ready(self, process: subprocess.Popen[str] | None = None) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"postgres exited with {process.returncode} before ready")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                timeout=TIMEOUT, check=False,
            )  # fmt: skip
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"postgres not ready on 127.0.0.1:{self.port} in {TIMEOUT} s")


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        unavailable("needs root to run PostgreSQL as the postgres user", INTEGRATION)
    server = _server_bin()
    if server is None:
        unavailable(
            "PostgreSQL server binaries missing (apt-get install -y postgresql)", INTEGRATION
        )
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        unavailable("no postgres user (apt-get install -y postgresql)", INTEGRATION)
        raise
    assert server is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(tempfile.mkdtemp(prefix="picluster-pg-", dir="/tmp"))
    os.chown(root, user.pw_uid, grp.getgrnam("postgres").gr_gid)
    try:
        yield Lab(root, server, user.pw_uid, user.pw_gid, port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _recording_shims(lab: Lab, log: Path) -> Path:
    """`psql` and `cat` that append their argv to `log`, then run the real ones."""
    shims = lab.directory("shims")
    for name, real in (
        ("psql", lab.bin / "psql"),
        ("cat", Path(shutil.which("cat") or "/bin/cat")),
    ):
        shim = shims / name
        shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >>{log}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    lab.own(log, "")
    return shims


def test_pg_password_sets_the_new_password_once_and_never_shows_it(lab: Lab) -> None:
    data, sockets, server_log = lab.root / "data", lab.root, lab.root / "server.log"
    old_file = lab.own(lab.root / "old", OLD)
    init = lab.run(
        [str(lab.bin / "initdb"), "-D", str(data), "-U", ROLE, f"--pwfile={old_file}",
         "--auth-local=trust", "--auth-host=scram-sha-256"]
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    # log_statement=all: the script must keep its ALTER ROLE out of the server's log anyway.
    options = (
        f"-c listen_addresses=127.0.0.1 -p {lab.port} -c unix_socket_directories={sockets} "
        "-c log_statement=all"
    )
    start = lab.run(
        [str(lab.bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(server_log),
         "-w", "-t", str(int(TIMEOUT)), "start"]
    )  # fmt: skip
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        assert lab.login(OLD) and not lab.login(NEW)
        new_file = lab.own(lab.root / "new", NEW)
        argv_log = lab.root / "argv.log"
        shims = _recording_shims(lab, argv_log)
        env = {"PATH": f"{shims}:{lab.bin}:/usr/bin:/bin", "PGHOST": str(sockets),
               "PGPORT": str(lab.port)}  # fmt: skip
        script = str(SCRIPTS / "pg-password.sh")
        stored_verifier = [
            str(lab.bin / "psql"), "-h", str(sockets), "-p", str(lab.port), "-U", ROLE,
            "-d", "postgres", "-Atc", VERIFIER_QUERY,
        ]  # fmt: skip

        first = lab.run(["sh", script, ROLE, str(new_file)], env)
        assert first.returncode == 0, first.stderr
        assert (
            first.stdout.strip()
            == f"pg-password: set a new password for role {ROLE} from {new_file}"
        )
        assert lab.login(NEW), "the new password does not log in"
        assert not lab.login(OLD), "the old password still logs in"

        verifier = lab.run(stored_verifier)
        second = lab.run(["sh", script, ROLE, str(new_file)], env)
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == (
            f"pg-password: the password of role {ROLE} is already the one in {new_file}"
        )
        again = lab.run(stored_verifier)
        assert verifier.stdout.startswith("SCRAM-SHA-256$")
        assert again.stdout == verifier.stdout, "the second run rewrote the password"
        assert lab.login(NEW)

        argv = argv_log.read_text()
        assert "psql" in argv and str(new_file) in argv, "the shims saw no psql or cat"
        for text in (argv, first.stdout + first.stderr, second.stdout + second.stderr):
            assert NEW not in text
        assert NEW not in server_log.read_text()
    finally:
        lab.run([str(lab.bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])


def _start(lab: Lab, entrypoints: Path, password_file: Path) -> subprocess.Popen[str]:
    env = {
        "PATH": f"{entrypoints}:{lab.bin}:/usr/bin:/bin",
        "PGDATA": str(lab.root / "data"),
        "PGPORT": str(lab.port),
        "POSTGRES_USER": ROLE,
        "POSTGRES_PASSWORD_FILE": str(password_file),
        # The image leaves TCP from 127.0.0.1 on `trust`; other pods reach the
        # `host all all all scram-sha-256` line. Checking the password on loopback too
        # makes a login from here prove what a login from a service would.
        "POSTGRES_INITDB_ARGS": "--auth-host=scram-sha-256",
    }
    return subprocess.Popen(
        ["bash", str(SCRIPTS / "postgres-start.sh"),
         "postgres", "-c", "listen_addresses=127.0.0.1"],
        env=env, user=lab.uid, group=lab.gid, extra_groups=[], cwd=lab.root,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _stop(process: subprocess.Popen[str]) -> str:
    """Stop as Docker and the kubelet do (the image's STOPSIGNAL is SIGINT); the output."""
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
    # The start script and the entrypoint exec: postgres itself is the process that was started.
    assert cmdline[0] == b"postgres", cmdline
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, output
    return output


def _finish(process: subprocess.Popen[str]) -> str:
    """Stop `process` if it still runs; its output either way (printed, for a failing test)."""
    output = _stop(process) if process.poll() is None else process.communicate(timeout=TIMEOUT)[0]
    print(output)
    return output


def test_postgres_start_rotates_an_existing_database_before_it_listens(lab: Lab) -> None:
    if not os.access("/var/run/postgresql", os.W_OK) or not Path("/var/run/postgresql").is_dir():
        unavailable("/var/run/postgresql (the default socket directory) is missing", INTEGRATION)
    stat = Path("/var/run/postgresql").stat()
    if stat.st_uid != lab.uid:
        unavailable("/var/run/postgresql is not the postgres user's", INTEGRATION)
    entrypoints = lab.directory("entrypoint")
    # The image's entrypoint is an executable on PATH; so is the double's copy.
    entrypoint = lab.own(entrypoints / "docker-entrypoint.sh", DOUBLE.read_text())
    entrypoint.chmod(0o755)
    old_file, new_file = lab.own(lab.root / "old", OLD), lab.own(lab.root / "new", NEW)

    first = _start(lab, entrypoints, old_file)
    try:
        lab.wait_ready(first)
        assert lab.login(OLD)
    finally:
        first_output = _finish(first)
    assert "pg-password" not in first_output  # a new database gets its password from initdb

    rotated = _start(lab, entrypoints, new_file)
    try:
        lab.wait_ready(rotated)
        assert lab.login(NEW), "the new password does not log in"
        assert not lab.login(OLD), "the old password still logs in"
    finally:
        rotated_output = _finish(rotated)
    assert f"pg-password: set a new password for role {ROLE}" in rotated_output

    again = _start(lab, entrypoints, new_file)
    try:
        lab.wait_ready(again)
        assert lab.login(NEW)
    finally:
        again_output = _finish(again)
    assert f"pg-password: the password of role {ROLE} is already the one in" in again_output
    for output in (first_output, rotated_output, again_output):
        assert OLD not in output and NEW not in output
