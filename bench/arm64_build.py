"""Benchmark: what an arm64 image costs to build on an x86 machine, emulated (QEMU user mode)
versus picluster's Node.js Dockerfile, whose dependency stage runs on the builder's own platform.
Prints figures, asserts nothing.

    .venv/bin/python bench/arm64_build.py       # root, Docker with BuildKit, debootstrap,
                                                # qemu-user-static + binfmt-support

It bootstraps a Debian bookworm arm64 root (`debootstrap --arch=arm64`, the second stage under
QEMU), installs Node.js and npm into it under emulation, and imports it as an arm64 image (the
stand-in of `node:22.12.0-alpine` for arm64: no image can be pulled here). Then it builds
`examples/studio/services/scores` (13 npm packages, pure JavaScript) for `linux/arm64` twice with
an empty build cache:

- emulated: `npm ci` runs inside the arm64 image, every instruction through QEMU, which is what a
  plain `docker buildx build --platform linux/arm64` of a usual Node.js Dockerfile does;
- picluster: the Dockerfile `components/images.py` writes, whose `deps` stage runs on
  `$BUILDPLATFORM` (native amd64) and whose final stage only copies (no instruction is emulated).

The arm64 root is kept in /var/tmp/picluster-bench-arm64 (delete it to measure the bootstrap
again). npm behind a TLS-intercepting proxy: the host's CA bundle is given to the builds as the
BuildKit secret `npm-ca` (`NODE_EXTRA_CA_CERTS`, or /etc/ssl/certs/ca-certificates.crt).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components import versions  # noqa: E402
from components.images import plan_build  # noqa: E402

WORK = Path("/var/tmp/picluster-bench-arm64")
ARM64_NODE = "picluster-bench/node-arm64:bookworm"
SERVICE = ROOT / "examples" / "studio" / "services" / "scores"
CA = Path(os.environ.get("NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt"))


def _run(*argv: str, **kwargs: object) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]
    return time.monotonic() - start


def _arm64_root() -> dict[str, float]:
    """The arm64 root with Node.js and npm, timed step by step (empty when it was there)."""
    rootfs = WORK / "rootfs"
    if (WORK / "done").is_file():
        return {}
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    times = {
        "debootstrap --arch=arm64 (2nd stage emulated)": _run(
            "debootstrap", "--arch=arm64", "--variant=minbase", "bookworm", str(rootfs), **quiet
        )
    }
    shutil.copy("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")
    script = (
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        "--no-install-recommends nodejs npm && apt-get clean && "
        "groupadd -g 1000 node && useradd -u 1000 -g 1000 -m -d /home/node node"
    )
    times["apt-get install nodejs npm (emulated)"] = _run(
        "chroot", str(rootfs), "/bin/sh", "-c", script, **quiet
    )
    (rootfs / "etc" / "resolv.conf").unlink()
    (WORK / "done").write_text("ok\n")
    return times


def _arm64_image() -> float:
    """Import the root as an arm64 image (`docker import` ignores --platform on Docker 20.10:
    a BuildKit build FROM scratch with the root as its layer gets the platform right)."""
    with tempfile.TemporaryDirectory() as context:
        subprocess.run(
            ["tar", "-C", str(WORK / "rootfs"), "-cf", f"{context}/rootfs.tar", "."], check=True
        )
        Path(context, "Dockerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["node"]\n')
        return _run(
            "docker",
            "build",
            "-q",
            "--platform",
            "linux/arm64",
            "-t",
            ARM64_NODE,
            context,
            stdout=subprocess.DEVNULL,
        )


def _dockerfiles() -> dict[str, str]:
    build = plan_build("scores", SERVICE)
    assert build.dockerfile is not None
    # The arm64 stand-in stands for the pinned image wherever the target platform is used.
    cross = build.dockerfile.replace(f"FROM {versions.NODE}\n", f"FROM {ARM64_NODE}\n")
    emulated = cross.replace(
        f"FROM --platform=$BUILDPLATFORM {versions.NODE} AS deps", f"FROM {ARM64_NODE} AS deps"
    )
    return {"emulated (npm ci under QEMU)": emulated, "picluster (deps on $BUILDPLATFORM)": cross}


def _build(dockerfile: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "Dockerfile")
        path.write_text(dockerfile)
        Path(folder, "Dockerfile.dockerignore").write_text("node_modules\n.git\n")
        argv = ["docker", "build", "-q", "--no-cache", "--platform", "linux/arm64"]
        if CA.is_file():
            argv += ["--secret", f"id=npm-ca,src={CA}"]
        return _run(*argv, "-f", str(path), str(SERVICE), stdout=subprocess.DEVNULL)


def main() -> None:
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_file():
        sys.exit("no arm64 emulation: install qemu-user-static and binfmt-support")
    print(
        "arm64 Node.js image (Debian's nodejs and npm), on this machine's", os.cpu_count(), "CPUs"
    )
    for step, seconds in _arm64_root().items():
        print(f"  {step:48} {seconds:7.1f} s")
    print(f"  {'import as a linux/arm64 image':48} {_arm64_image():7.1f} s")
    print("\nexamples/studio/services/scores for linux/arm64, no build cache")
    for name, dockerfile in _dockerfiles().items():
        print(f"  {name:48} {_build(dockerfile):7.1f} s")


if __name__ == "__main__":
    main()
