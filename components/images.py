"""The studio's own images: what picluster builds from a source folder, and the tag it gets.

A `build` folder holds either its own `Dockerfile` or a Node.js project (`package.json`), which
picluster builds on the pinned `node:alpine` image; a frontend `static` folder (the game's build
output) is copied onto the pinned `nginx:alpine` image, and picluster's nginx config reaches it
as before (an upload on Docker, a ConfigMap on K3s), so a route change needs no rebuild.

The tag is a hash of what the build reads: every file of the folder that reaches the build (in
path order, with its executable bit), the Dockerfile picluster writes and the pinned base image.
The same source gives the same tag on every machine, so an unchanged folder means no build, no
push and no new container or pod; a changed one means a new tag, and only its workload rolls.

Everything here is a pure function of the folder's files, so `components/config.py` can check a
folder before any resource is declared (`folder_problems`) and the app model can name the tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from components import versions

IN_CLUSTER_REGISTRY = "registry.picluster.internal"
"""The name pods pull the in-cluster registry's images by; every node maps it to the registry
through `/etc/rancher/k3s/registries.yaml` (it resolves nowhere else)."""
# TODO merge: components/registries.py (branch `registries`) defines the same two constants;
# keep one definition (config.py needs them without importing the Kubernetes renderer).
REGISTRY_CLUSTER_IP = "10.43.0.50"
"""The in-cluster registry Service's pinned clusterIP: in K3s's default service CIDR
10.43.0.0/16 and in the low band the API server keeps for fixed IPs (the first 256 addresses of
a /16, KEP-3070), so no Service that asked for any address can have taken it."""
REGISTRY_PORT = 5000
"""The in-cluster registry's port (Service and container)."""
TAG_LENGTH = 12
"""Hex digits of the content hash in a tag (Docker's short-id length)."""
NODE_UID = 1000
"""The `node` user of the node images: services built from a package.json run as it."""
ALWAYS_IGNORED = (".git", "node_modules", ".DS_Store", "npm-debug.log")
"""Never part of a generated build's context: dependencies are installed by the build itself."""
_DOCKERFILE = "Dockerfile"
_PACKAGE_JSON = "package.json"
_LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json")


class BuildKind(StrEnum):
    """How a folder becomes an image."""

    DOCKERFILE = "dockerfile"
    """The folder's own Dockerfile."""
    NODE = "node"
    """A Node.js project built on the pinned node image."""
    STATIC = "static"
    """Files served by the pinned nginx image."""


@dataclass(frozen=True, kw_only=True)
class ImageBuild:
    """One image picluster builds: its source, the Dockerfile it uses and its content tag."""

    name: str
    """Repository name, the workload's name."""
    context: Path
    """The source folder (absolute)."""
    kind: BuildKind
    dockerfile: str | None
    """The Dockerfile picluster writes (NODE, STATIC), or None for the folder's own."""
    ignore: tuple[str, ...]
    """The `.dockerignore` patterns picluster writes next to its Dockerfile (NODE, STATIC)."""
    tag: str
    """Content hash: changes exactly when what the build reads changes."""

    def ref(self, repository: str) -> str:
        """The image reference under `repository` (e.g. `registry.picluster.internal`)."""
        return f"{repository}/{self.name}:{self.tag}"


# --- what a folder is ----------------------------------------------------------------------------


def folder_problems(folder: Path, *, static: bool, key: str) -> list[str]:
    """Why `folder` cannot be built, one line per problem naming `key` (empty when it can)."""
    if not folder.is_dir():
        return [f"{key}: {str(folder)!r} is not a folder (paths are relative to the project)"]
    if static:
        if not (folder / "index.html").is_file():
            return [f"{key}: {str(folder)!r} has no index.html (give the game's build output)"]
        return []
    dockerfile = folder / _DOCKERFILE
    if dockerfile.is_file():
        user = final_user(dockerfile.read_text(encoding="utf-8", errors="replace"))
        if user is not None and user.split(":")[0] in ("root", "0"):
            return [
                f"{key}: {dockerfile} sets USER {user} in its final stage; services run as a "
                "non-root user (README: The service contract): remove it or name a non-root user"
            ]
        return []
    package = folder / _PACKAGE_JSON
    if not package.is_file():
        return [
            f"{key}: {str(folder)!r} has neither a Dockerfile nor a package.json; add one of them "
            "(README: Building the studio's images)"
        ]
    try:
        main = node_main(folder)
    except ValueError as error:
        return [f"{key}: {error}"]
    if not (folder / main).is_file():
        return [
            f"{key}: package.json names main {main!r}, which is not in {str(folder)!r}; "
            "set main to the file that starts the service"
        ]
    return []


def final_user(dockerfile: str) -> str | None:
    """The USER the final stage of `dockerfile` sets last, or None when it sets none."""
    user = None
    for line in _instructions(dockerfile):
        word, _, rest = line.partition(" ")
        instruction = word.upper()
        if instruction == "FROM":
            user = None
        elif instruction == "USER":
            user = rest.strip()
    return user


def _instructions(dockerfile: str) -> Iterator[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    pending = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield (pending + line).strip()
        pending = ""
    if pending.strip():
        yield pending.strip()


def node_main(folder: Path) -> str:
    """The file `node` starts: package.json's `main`, else `index.js` (npm's own default)."""
    try:
        package = json.loads((folder / _PACKAGE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder / _PACKAGE_JSON} is not valid JSON ({error})") from None
    if not isinstance(package, dict):
        raise ValueError(f"{folder / _PACKAGE_JSON} is not a JSON object")
    main = package.get("main", "index.js")  # pyright: ignore[reportUnknownMemberType]
    if not isinstance(main, str) or not re.fullmatch(r"[A-Za-z0-9_./-]+", main) or ".." in main:
        raise ValueError(f"{folder / _PACKAGE_JSON}: main must be a relative file path")
    return main.removeprefix("./")


def _native_dependencies(folder: Path) -> bool:
    """True when the lockfile says a dependency runs an install script (usually a native addon,
    which must be built on the image's own platform)."""
    for name in _LOCKFILES:
        lock = folder / name
        if lock.is_file():
            return '"hasInstallScript": true' in lock.read_text(encoding="utf-8", errors="replace")
    return False


# --- the Dockerfiles picluster writes ------------------------------------------------------------


def node_dockerfile(folder: Path) -> str:
    """The Dockerfile of a Node.js project: production dependencies only, run as `node` (1000).

    Dependencies are installed in a first stage; when none runs an install script (no native
    addon) that stage runs on the builder's own platform (`$BUILDPLATFORM`), so an arm64 image
    builds on an x86 laptop without emulating a single instruction. The final stage only copies.
    """
    lock = next((name for name in _LOCKFILES if (folder / name).is_file()), None)
    deps_platform = "" if _native_dependencies(folder) else " --platform=$BUILDPLATFORM"
    install = (
        "npm ci --omit=dev --no-audit --no-fund"
        if lock
        else "npm install --omit=dev --no-audit --no-fund --no-package-lock"
    )
    copy_manifest = f"COPY {_PACKAGE_JSON}{f' {lock}' if lock else ''} ./"
    return "\n".join(
        (
            "# Written by picluster (components/images.py) for a Node.js project.",
            f"FROM{deps_platform} {versions.NODE} AS deps",
            "WORKDIR /app",
            copy_manifest,
            f"RUN {install}",
            # npm creates no node_modules for a project without dependencies (the demo API).
            "RUN mkdir -p node_modules",
            f"FROM {versions.NODE}",
            "WORKDIR /app",
            "ENV NODE_ENV=production",
            "COPY --from=deps /app/node_modules ./node_modules",
            "COPY . .",
            f"USER {NODE_UID}:{NODE_UID}",
            f'CMD ["node", "{node_main(folder)}"]',
            "",
        )
    )


def static_dockerfile() -> str:
    """The Dockerfile of a static folder: its files in nginx's web root, owned by root and only
    readable by the nginx user (picluster's config arrives separately)."""
    return "\n".join(
        (
            "# Written by picluster (components/images.py) for a static folder.",
            f"FROM {versions.NGINX}",
            "COPY . /usr/share/nginx/html/",
            "",
        )
    )


# --- the content hash ----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A `.dockerignore` pattern as Go's `filepath.Match` reads it: `*` and `?` never cross `/`."""
    out = ""
    for char in pattern:
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
    return re.compile(out + r"\Z")


def _ignored(relative: str, patterns: tuple[str, ...]) -> bool:
    """True when `relative` (a path in the context) matches a pattern; a matched folder is
    pruned whole by the walk, as Docker excludes everything under it."""
    for pattern in patterns:
        pattern = os.path.normpath(pattern.strip()).lstrip("/")
        if pattern in ("", ".") or "[" in pattern:
            continue
        if _pattern_regex(pattern).match(relative):
            return True
    return False


def _folder_ignores(folder: Path) -> tuple[str, ...] | None:
    """The folder's own `.dockerignore` patterns when they are simple enough to apply exactly
    the way Docker does (no `!` exceptions, no `**`); None means hash every file (a safe
    over-approximation: at worst an extra build, never a missed one)."""
    path = folder / ".dockerignore"
    if not path.is_file():
        return ()
    lines = [
        line.strip()
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if any(line.startswith("!") or "**" in line for line in lines):
        return None
    return tuple(lines)


def context_files(folder: Path, ignore: tuple[str, ...]) -> list[Path]:
    """The files of `folder` that reach the build, in a stable order (symlinks not followed)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = sorted(d for d in dirs if not _ignored(rel_root + d, ignore))
        found += [Path(root) / f for f in files if not _ignored(rel_root + f, ignore)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def content_tag(folder: Path, dockerfile: str | None, ignore: tuple[str, ...]) -> str:
    """The tag: a hash of the context's files (path, executable bit, bytes) and the Dockerfile."""
    digest = hashlib.sha256()
    digest.update(b"picluster-image-v1\0")
    digest.update((dockerfile or "").encode() + b"\0")
    digest.update("\n".join(ignore).encode() + b"\0")
    for path in context_files(folder, ignore):
        info = path.lstat()
        relative = path.relative_to(folder).as_posix()
        executable = b"x" if info.st_mode & stat.S_IXUSR else b"-"
        digest.update(relative.encode() + b"\0" + executable + b"\0")
        if stat.S_ISLNK(info.st_mode):
            digest.update(b"link\0" + os.readlink(path).encode() + b"\0")
        else:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:TAG_LENGTH]


def plan_build(name: str, folder: Path, *, static: bool = False) -> ImageBuild:
    """The build of `folder` (already checked by `folder_problems`)."""
    folder = folder.resolve()
    if static:
        kind, dockerfile, ignore = BuildKind.STATIC, static_dockerfile(), (".git", ".DS_Store")
    elif (folder / _DOCKERFILE).is_file():
        kind, dockerfile = BuildKind.DOCKERFILE, None
        ignore = _folder_ignores(folder) or ()
    else:
        kind, dockerfile, ignore = BuildKind.NODE, node_dockerfile(folder), ALWAYS_IGNORED
    # The folder's own Dockerfile is part of the context, so its text is in the hash already.
    return ImageBuild(
        name=name,
        context=folder,
        kind=kind,
        dockerfile=dockerfile,
        ignore=ignore if kind is not BuildKind.DOCKERFILE else (),
        tag=content_tag(folder, dockerfile, ignore),
    )


_LOOPBACK_HOSTS = re.compile(r"^(localhost|127(\.\d{1,3}){3}|\[::1\]|::1)(:\d+)?$", re.IGNORECASE)


def registry_host(reference: str) -> str | None:
    """The registry host of an image reference, or None for Docker Hub's implicit one."""
    first, sep, _ = reference.partition("/")
    if not sep:
        return None
    if "." in first or ":" in first or first.lower() == "localhost" or first.startswith("["):
        return first
    return None


def is_loopback_registry(reference: str) -> bool:
    """True when the image lives on a loopback registry, which a Pi cannot reach."""
    host = registry_host(reference)
    return host is not None and bool(_LOOPBACK_HOSTS.match(host))
