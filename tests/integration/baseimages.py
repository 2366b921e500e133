"""Local stand-ins for the pinned base images picluster builds on and runs, made by the tests.

No registry is reachable here, so `docker pull` of `node:22.12.0-alpine`, `nginx:1.27.3-alpine`
and `registry:2.8.3` fails. This module builds a test double of each from Debian bookworm and
tags it **with the pinned name itself**, so picluster's own Dockerfiles (`FROM node:...`), the
static frontend image and the in-cluster registry's container find it on the local daemon as
they would find the pulled image:

- `node:22.12.0-alpine` (`versions.NODE`): Debian's Node.js 18 and npm 9, the `node` user and
  group (uid/gid 1000, home /home/node), upstream's docker-entrypoint.sh, WORKDIR /, CMD node.
  `npm ci --omit=dev` of a project without dependencies works offline (`--network none`). With
  dependencies npm fetches them from registry.npmjs.org, as with the real image. This machine's
  containers reach it, but its egress re-signs TLS with a CA that only the host trusts, so a
  plain build fails (SELF_SIGNED_CERT_IN_CHAIN, the real image would too); `test_base_images.py`
  hands the build the host's CA bundle as a BuildKit secret and fetches `ms` that way. Code
  that needs Node.js 19 to 22 (`require()` of ES modules, `--env-file`, newer `node:` built-ins)
  fails on the stand-in, not on the real image.
- `nginx:1.27.3-alpine` (`versions.NGINX`): Debian's nginx-light (1.22) with the nginx.org
  package's nginx.conf and default.conf, the `nginx` user and group (uid/gid 101),
  /usr/share/nginx/html, /var/cache/nginx, `wget` and `curl` for health checks, upstream's
  docker-entrypoint.sh, CMD `nginx -g 'daemon off;'` and STOPSIGNAL SIGQUIT (upstream's, which
  `docker build` keeps, unlike pgimage's `docker import`).
- `registry:2.8.3` (`REGISTRY`): Debian's docker-registry (distribution 2.8.2) as `registry`, with
  upstream's /etc/docker/registry/config.yml (filesystem storage in /var/lib/registry, :5000,
  deletes off), entrypoint and CMD; runs as any uid that can write /var/lib/registry.

Each recipe is a folder under `doubles/base-images/` (its Dockerfile says what it copies from
where). Unlike `pgimage.TAG`, these take the real names because the issue asks for it and nothing
here keeps data: a stack that runs a stand-in by mistake loses nothing, and the PostgreSQL
stand-in's risk (Debian's 15 initialising a volume that the real 17 refuses) has no counterpart.
A real pull replaces a stand-in (`docker pull` moves the tag), and a tag that holds an image
without this module's label is taken to be a real one and never built over.

Builds share one debootstrap: Debian bookworm minbase is imported once per recipe as
`picluster-test/bookworm-minbase:<hash>` (`ensure_base`), and each stand-in is a `docker build`
of its folder on top of it (`apt-get install` inside, so the stand-ins cannot disturb one another
or the base). Each image carries the label `picluster.test-double` with its recipe hash (the base's
hash and every file of its folder) and is rebuilt only when that changes; a lock makes concurrent
test processes build once. Builds use Docker's classic builder, which every Docker client here
has; picluster's own builds use BuildKit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components import versions
from tests.integration import simpi

LABEL = "picluster.test-double"
"""Image label holding the recipe hash (the same label as pgimage's stand-in)."""
RECIPES = Path(__file__).parent / "doubles" / "base-images"
BASE_REPO = "picluster-test/bookworm-minbase"
REGISTRY = "registry:2.8.3"
"""The in-cluster registry's pin (issue 12's design; move to components/versions.py with it)."""

BASE_FILES: dict[str, tuple[int, str]] = {
    "etc/apt/sources.list": (0o644, f"deb {simpi.MIRROR} {simpi.SUITE} main\n"),
    # No service starts while a package installs (nginx, docker-registry ship units).
    "usr/sbin/policy-rc.d": (0o755, "#!/bin/sh\nexit 101\n"),
    # As Debian's own container images: no manuals or translations (npm pulls hundreds of
    # packages), copyright files kept.
    "etc/dpkg/dpkg.cfg.d/picluster-slim": (
        0o644,
        "path-exclude /usr/share/doc/*\n"
        "path-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\n"
        "path-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\n",
    ),
}
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["sh"]',
)


@dataclass(frozen=True)
class StandIn:
    """A test double of a pinned image, built from its recipe folder on the shared base."""

    tag: str
    """The pinned reference it is tagged with."""
    recipe: str
    """Its folder under `RECIPES`: a Dockerfile taking `ARG BASE` and the files it copies."""

    @property
    def context(self) -> Path:
        return RECIPES / self.recipe

    def recipe_hash(self) -> str:
        """Hash of the base's recipe and every file (path, executable bit, bytes) of the folder."""
        digest = hashlib.sha256(base_recipe_hash().encode())
        for path in sorted(p for p in self.context.rglob("*") if p.is_file()):
            executable = os.access(path, os.X_OK)
            digest.update(f"\0{path.relative_to(self.context)}\0{executable}\0".encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()[:12]


NODE = StandIn(versions.NODE, "node")
NGINX = StandIn(versions.NGINX, "nginx")
REGISTRY_IMAGE = StandIn(REGISTRY, "registry")
ALL = (NODE, NGINX, REGISTRY_IMAGE)


@dataclass(frozen=True)
class Build:
    """What `ensure` did."""

    tag: str
    built: bool
    """True when this call built it; False when the current stand-in or a real image was there."""
    seconds: float


def base_recipe_hash() -> str:
    recipe = {
        "suite": simpi.SUITE,
        "mirror": simpi.MIRROR,
        "files": {path: [mode, content] for path, (mode, content) in BASE_FILES.items()},
        "changes": BASE_CHANGES,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def base_tag() -> str:
    return f"{BASE_REPO}:{base_recipe_hash()}"


def label(tag: str) -> str | None:
    """The image's test-double label; "" for an image without it (a real one); None if absent."""
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        return None
    value = result.stdout.strip()
    return "" if value == "<no value>" else value


def _current(image: StandIn) -> bool:
    """The tag holds this recipe's stand-in, or a real image (no label) that must stay."""
    return label(image.tag) in ("", image.recipe_hash())


def unavailable_reason(image: StandIn) -> str | None:
    """None when `image` is there or can be built here; otherwise why not."""
    reason = simpi.docker_unavailable_reason()
    if reason:
        return reason
    if _current(image):
        return None
    if label(base_tag()) != base_recipe_hash() and shutil.which("debootstrap") is None:
        return "debootstrap not found (apt-get install -y debootstrap)"
    if os.geteuid() != 0:
        return f"building the stand-in for {image.tag} needs root (debootstrap, chroot)"
    return None


def ensure(image: StandIn) -> Build:
    """Make `image.tag` available: the current stand-in, built once per recipe, or a real image."""
    start = time.monotonic()
    if _current(image):
        return Build(image.tag, built=False, seconds=time.monotonic() - start)
    with _build_lock():  # another test process building it: wait, then find it there
        if _current(image):
            return Build(image.tag, built=False, seconds=time.monotonic() - start)
        previous = _image_id(image.tag)
        build(image, image.tag, ensure_base())
        if previous and previous != _image_id(image.tag):
            _run(["docker", "image", "rm", previous], timeout=120, check=False)  # in use: stays
    return Build(image.tag, built=True, seconds=time.monotonic() - start)


def ensure_node() -> str:
    return ensure(NODE).tag


def ensure_nginx() -> str:
    return ensure(NGINX).tag


def ensure_registry() -> str:
    return ensure(REGISTRY_IMAGE).tag


def ensure_base() -> str:
    """The shared Debian bookworm minbase image, imported once per recipe (call under the lock)."""
    tag = base_tag()
    if label(tag) != base_recipe_hash():
        build_base(tag)
        listed = _run(["docker", "images", BASE_REPO, "--format", "{{.Repository}}:{{.Tag}}"])
        for older in listed.stdout.split():
            if older != tag:  # a stand-in built on it keeps its layers
                _run(["docker", "image", "rm", older], timeout=120, check=False)
    return tag


def build_base(tag: str) -> None:
    """debootstrap minbase bookworm | docker import, as `tag` (bench/base_images.py times it)."""
    simpi.WORK_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="picluster-base-image-", dir=simpi.WORK_DIR))
    root = tmp / "rootfs"
    try:
        _log(f"building {tag}: debootstrap {simpi.SUITE} (minbase)")
        _run(
            ["debootstrap", "--variant=minbase", simpi.SUITE, str(root), simpi.MIRROR],
            timeout=900,
        )
        for rel, (mode, content) in BASE_FILES.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            path.chmod(mode)
        _run(["chroot", str(root), "apt-get", "clean"], timeout=120)
        for lists in (root / "var/lib/apt/lists").glob("*_*"):
            lists.unlink()
        changes = [*BASE_CHANGES, f"LABEL {LABEL}={base_recipe_hash()}"]
        simpi.import_root(root, tag, changes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(image: StandIn, tag: str, base: str) -> None:
    """`docker build` of the recipe folder on `base`, as `tag`, labelled with the recipe hash."""
    _log(f"building {tag} (test double, recipe {image.recipe_hash()}) on {base}")
    _run(
        ["docker", "build", "--quiet", "--build-arg", f"BASE={base}",
         "--label", f"{LABEL}={image.recipe_hash()}", "--tag", tag, str(image.context)],
        timeout=900,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )  # fmt: skip


def _image_id(tag: str) -> str | None:
    result = _run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], check=False)
    return result.stdout.strip() if result.returncode == 0 else None


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    simpi.WORK_DIR.mkdir(parents=True, exist_ok=True)
    with open(simpi.WORK_DIR / "picluster-base-images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _log(message: str) -> None:
    print(f"[baseimages] {message}", file=sys.stderr, flush=True)


def _run(
    argv: list[str],
    *,
    timeout: float = 60,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return result
