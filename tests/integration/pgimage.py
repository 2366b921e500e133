"""A local stand-in for the pinned PostgreSQL image, for tests that run it in Docker.

No registry is reachable here, so `postgres:17-alpine` cannot be pulled. This builds a stand-in
for it from Debian bookworm (debootstrap minbase, Debian's `postgresql` and `gosu`) under a tag
of its own, `TAG`, never the real one: a `pulumi up -s local` on the same machine must not run
Debian's PostgreSQL 15 in place of 17 (it would initialise the real volume in a format the real
image refuses). The tests pass `TAG` explicitly where they create containers of the pinned
image. The stand-in offers what the official image offers the scripts picluster runs in it: the
`postgres` user and
group with id 70 (as in the alpine image), the server and client binaries on `PATH`, `gzip`,
`sh`, `bash`, `/var/run/postgresql`, `PGDATA=/var/lib/postgresql/data`, and
`docker-entrypoint.sh` as ENTRYPOINT with CMD `postgres`: the entrypoint is the test double in
`doubles/postgres-docker-entrypoint.sh`, which mirrors upstream's functions and `_main`.
Debian's PostgreSQL is 15, not 17: the scripts use nothing that differs between the two.
`docker import` cannot set the image's STOPSIGNAL (SIGINT upstream): the tests give containers
of it `--stop-signal SIGINT` (`STOP_SIGNAL`).

The image carries the label `picluster.test-double` with the recipe's hash, and is rebuilt when
that changes. An older stand-in that earlier versions of this module built under the real tag is
left alone (it may be in use); `docker image rm postgres:17-alpine` removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration import simpi

TAG = "picluster-test/postgres:17-alpine-double"
"""The stand-in's tag: not `versions.POSTGRES`, which only a real pull may fill."""
STOP_SIGNAL = "SIGINT"
"""The official image's STOPSIGNAL (docker-library/postgres, Dockerfile-alpine.template)."""
LABEL = "picluster.test-double"
ENTRYPOINT_DOUBLE = Path(__file__).parent / "doubles" / "postgres-docker-entrypoint.sh"
PG_MAJOR = "15"
PACKAGES = ("gzip",)
CHROOT_COMMANDS: tuple[tuple[str, ...], ...] = (
    # The alpine image's ids, before Debian's postinst would pick a system id of its own.
    ("groupadd", "--system", "--gid", "70", "postgres"),
    (
        "useradd",
        "--system",
        "--uid",
        "70",
        "--gid",
        "70",
        "--home-dir",
        "/var/lib/postgresql",
        "--shell",
        "/bin/sh",
        "postgres",
    ),
    ("apt-get", "update"),
    (
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        f"postgresql-{PG_MAJOR}",
        "gosu",
    ),
    ("apt-get", "clean"),
    # As upstream's Dockerfile: the server listens on every address of the container.
    (
        "sed",
        "-ri",
        r"s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!",
        f"/usr/share/postgresql/{PG_MAJOR}/postgresql.conf.sample",
    ),
    ("install", "-d", "-o", "postgres", "-g", "postgres", "-m", "3777", "/var/run/postgresql"),
    ("install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0777", "/var/lib/postgresql/data"),
    ("rm", "-f", "/usr/sbin/policy-rc.d"),
)
IMAGE_FILES: dict[str, tuple[int, str]] = {
    "etc/apt/sources.list": (0o644, f"deb {simpi.MIRROR} {simpi.SUITE} main\n"),
    # No service starts inside the chroot, and no `main` cluster is made by the package.
    "usr/sbin/policy-rc.d": (0o755, "#!/bin/sh\nexit 101\n"),
    "etc/postgresql-common/createcluster.conf": (0o644, "create_main_cluster = false\n"),
    "usr/local/bin/docker-entrypoint.sh": (0o755, ENTRYPOINT_DOUBLE.read_text()),
}
IMPORT_CHANGES = (
    f"ENV PATH=/usr/lib/postgresql/{PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:"
    "/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV PGDATA=/var/lib/postgresql/data",
    'ENTRYPOINT ["docker-entrypoint.sh"]',
    'CMD ["postgres"]',
)


def recipe_hash() -> str:
    """Hash of everything that goes into the image."""
    recipe = {
        "suite": simpi.SUITE,
        "packages": PACKAGES,
        "commands": CHROOT_COMMANDS,
        "files": {path: [mode, content] for path, (mode, content) in IMAGE_FILES.items()},
        "changes": IMPORT_CHANGES,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _label(tag: str) -> str | None:
    """The image's test-double label; "" for an image without it; None when there is none."""
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        return None
    label = result.stdout.strip()
    return "" if label == "<no value>" else label


def unavailable_reason() -> str | None:
    """None when the image exists or can be built here; otherwise why not."""
    reason = simpi.docker_unavailable_reason()
    if reason:
        return reason
    if _label(TAG) == recipe_hash():
        return None
    if shutil.which("debootstrap") is None:
        return "debootstrap not found (apt-get install -y debootstrap)"
    return None if _is_root() else "building the PostgreSQL image needs root (debootstrap)"


def _is_root() -> bool:
    return os.geteuid() == 0


def ensure_image() -> float:
    """Make the stand-in `TAG` available (built once per recipe); the seconds it took."""
    start = time.monotonic()
    with simpi._build_lock():  # one builder at a time on the machine
        if _label(TAG) != recipe_hash():
            _build()
    return time.monotonic() - start


def _build() -> None:
    simpi.WORK_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="picluster-pg-image-", dir=simpi.WORK_DIR))
    root = tmp / "rootfs"
    try:
        simpi._log(f"building {TAG} (test double, recipe {recipe_hash()})")
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             simpi.SUITE, str(root), simpi.MIRROR],
            timeout=900,
        )  # fmt: skip
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        for rel, (mode, content) in IMAGE_FILES.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            path.chmod(mode)
        for command in CHROOT_COMMANDS:
            _run(["chroot", str(root), *command], timeout=600)
        for lists in (root / "var/lib/apt/lists").glob("*_*"):
            lists.unlink()
        (root / "etc/resolv.conf").unlink()
        changes = [*IMPORT_CHANGES, f"LABEL {LABEL}={recipe_hash()}"]
        simpi.import_root(root, TAG, changes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(argv: list[str], *, timeout: float) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"building {TAG} failed: {' '.join(argv)}\n{result.stdout}\n{result.stderr}"
        )
