"""The studio's own images: what picluster builds from a source folder, and the tag it gets.

A `build` folder holds either its own `Dockerfile` or a Node.js project (`package.json`), which
picluster builds on the pinned `node:alpine` image; a frontend `static` folder (the game's build
output) is copied onto the pinned `nginx:alpine` image, and picluster's nginx config reaches it
as before (an upload on Docker, a ConfigMap on K3s), so a route change needs no rebuild.

The tag is a hash of what the build reads: every file of the folder that reaches the build (in
path order, with its read and execute bits), the Dockerfile (picluster's, with the pinned base
image, or the folder's own) and the ignore file in effect. Generated builds never send local
secrets (`.env`, `.npmrc`, `*.pem`) and keep the folder's own `.dockerignore` lines.
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

TAG_LENGTH = 12
"""Hex digits of the content hash in a tag (Docker's short-id length)."""
NODE_UID = 1000
"""The `node` user of the node images: services built from a package.json run as it."""
ALWAYS_IGNORED = (".git", "node_modules", ".DS_Store", "npm-debug.log")
"""Never part of a generated build's context: dependencies are installed by the build itself."""
SECRETS_IGNORED = ("**/.env", "**/.env.*", "**/.npmrc", "**/*.pem")
"""Never copied into a generated build's image (`COPY . .`), at any depth: local secrets and
tokens."""
NPM_CA_SECRET = "npm-ca"  # noqa: S105 - a name, not a value
"""The BuildKit secret carrying extra CA certificates for npm (optional)."""
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


def folder_problems(
    folder: Path, *, static: bool, key: str, dockerfile_only: bool = False
) -> list[str]:
    """Why `folder` cannot be built, one line per problem naming `key` (empty when it can).
    `dockerfile_only`: the folder must have its own Dockerfile (the frontend's `build`)."""
    if not folder.is_dir():
        return [f"{key}: {str(folder)!r} is not a folder (paths are relative to the project)"]
    if static:
        if not (folder / "index.html").is_file():
            return [f"{key}: {str(folder)!r} has no index.html (give the game's build output)"]
        return []
    dockerfile = folder / _DOCKERFILE
    if dockerfile.is_file():
        text = dockerfile.read_text(encoding="utf-8", errors="replace")
        problems = [
            f"{key}: {dockerfile} has FROM {image}, which is not pinned; give a version tag "
            "(not latest) or a digest, as every image picluster runs is pinned"
            for image in unpinned_bases(text)
        ]
        user = final_user(text)
        if user is not None and user.split(":")[0] in ("root", "0"):
            problems.append(
                f"{key}: {dockerfile} sets USER {user} in its final stage; services run as a "
                "non-root user (README: The service contract): remove it or name a non-root user"
            )
        return problems
    if dockerfile_only:
        return [
            f"{key}: {str(folder)!r} has no Dockerfile; give the game's build output as "
            "frontend.static, or a folder with a Dockerfile"
        ]
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


def own_dockerfile_uid(folder: Path) -> int | None:
    """The numeric uid the final stage of the folder's own Dockerfile runs as (`USER n` or
    `USER n:g`); None without a Dockerfile, without a USER or for a user name (resolved inside
    the image, not here)."""
    dockerfile = folder / _DOCKERFILE
    if not dockerfile.is_file():
        return None
    user = final_user(dockerfile.read_text(encoding="utf-8", errors="replace"))
    uid = (user or "").split(":")[0]
    return int(uid) if uid.isdecimal() else None


_FROM_FLAG = re.compile(r"^--\S+$")


def unpinned_bases(dockerfile: str) -> list[str]:
    """The `FROM` images of `dockerfile` that are not pinned: without a tag, or `latest`, and
    without a digest. An earlier stage's name, `scratch` and `$ARG` references are exempt (an
    ARG's value is the user's to pin)."""
    stages: set[str] = set()
    found: list[str] = []
    for line in _instructions(dockerfile):
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        args = [w for w in words[1:] if not _FROM_FLAG.match(w)]
        if not args:
            continue
        image = args[0]
        exempt = image.lower() in stages or image.lower() == "scratch" or "$" in image
        if len(args) >= 3 and args[1].upper() == "AS":
            stages.add(args[2].lower())
        if exempt or "@" in image:
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            found.append(image)
    return found


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
    """True when the dependencies must be installed on the image's own platform: a package runs
    an install script (usually a native addon), one is platform-specific (`cpu`, `os` or `libc`:
    napi-rs style prebuilt optional dependencies, which npm picks for the platform it runs on),
    or there is no lockfile (or one without v2/v3 `packages`) to tell."""
    lock = next((folder / name for name in _LOCKFILES if (folder / name).is_file()), None)
    if lock is None:
        return True
    try:
        data: object = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    if not isinstance(data, dict):
        return True
    packages: object = data.get("packages")  # pyright: ignore[reportUnknownMemberType]
    if packages is None:
        version: object = data.get("lockfileVersion")  # pyright: ignore[reportUnknownMemberType]
        return not (isinstance(version, int) and version >= 2)
    if not isinstance(packages, dict):
        return True
    for entry in packages.values():  # pyright: ignore[reportUnknownVariableType]
        if not isinstance(entry, dict):
            continue
        if entry.get("hasInstallScript") is True:  # pyright: ignore[reportUnknownMemberType]
            return True
        if any(k in entry for k in ("cpu", "os", "libc")):
            return True
    return False


# --- the Dockerfiles picluster writes ------------------------------------------------------------


def node_dockerfile(folder: Path) -> str:
    """The Dockerfile of a Node.js project: production dependencies only, run as `node` (1000).

    Dependencies are installed in a first stage; when the lockfile shows none is native (no
    install script, no platform-specific package) that stage runs on the builder's own platform
    (`$BUILDPLATFORM`), so an arm64 image builds on an x86 laptop without emulating a single
    instruction. The final stage only copies.
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
            # A TLS-intercepting proxy's CA, when the builder has one (NODE_EXTRA_CA_CERTS on the
            # machine running `pulumi up`), reaches npm as a build secret: never in a layer.
            # npm creates no node_modules for a project without dependencies (the demo API).
            f"RUN --mount=type=secret,id={NPM_CA_SECRET} "
            f"NODE_EXTRA_CA_CERTS=/run/secrets/{NPM_CA_SECRET} {install} && mkdir -p node_modules",
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
    """A `.dockerignore` pattern as Docker reads it (moby/patternmatcher): `*` and `?` never
    cross `/`, `**/` matches any number of folders (none included), a trailing `**` anything."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
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


def _ignore_lines(text: str) -> tuple[str, ...]:
    """The patterns of a `.dockerignore` text (blank lines and comments dropped)."""
    return tuple(
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )


def _simple(patterns: tuple[str, ...]) -> bool:
    """True when `patterns` can be applied exactly the way Docker does here: no `!` exception."""
    return not any(p.strip().startswith("!") for p in patterns)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


def _own_ignore_file(folder: Path) -> Path:
    """The ignore file BuildKit applies to a folder's own Dockerfile: `Dockerfile.dockerignore`
    next to the Dockerfile when there is one, else the context's `.dockerignore`."""
    specific = folder / f"{_DOCKERFILE}.dockerignore"
    return specific if specific.is_file() else folder / ".dockerignore"


def generated_ignore(folder: Path, base: tuple[str, ...]) -> tuple[str, ...]:
    """The `Dockerfile.dockerignore` picluster writes next to its Dockerfile (which BuildKit
    reads instead of the folder's `.dockerignore`): `base`, the local secrets, then the folder's
    own `.dockerignore` lines verbatim, so what the studio excludes stays excluded."""
    own = _read(folder / ".dockerignore").splitlines()
    return (*base, *SECRETS_IGNORED, *(line.rstrip("\r") for line in own))


def context_files(folder: Path, ignore: tuple[str, ...]) -> list[Path]:
    """The files of `folder` that reach the build, in a stable order (symlinks not followed: a
    symlink to a folder is listed as itself). FIFOs and devices are left out and sockets are
    never read (opening a FIFO would block the program). As BuildKit sends a context (checked
    here with Docker CLI 28.2 and daemon 20.10): a FIFO is skipped, a socket arrives as an
    empty file with the socket's permissions."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        kept = [d for d in dirs if not _ignored(rel_root + d, ignore)]
        # os.walk lists a symlink to a folder among `dirs` and does not descend into it.
        found += [Path(root) / d for d in kept if (Path(root) / d).is_symlink()]
        dirs[:] = sorted(d for d in kept if not (Path(root) / d).is_symlink())
        for name in files:
            path = Path(root) / name
            if _ignored(rel_root + name, ignore):
                continue
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def content_tag(folder: Path, recipe: str, ignore: tuple[str, ...]) -> str:
    """The tag: a hash of `recipe` (the Dockerfile and the ignore file in effect) and of the
    context's files (path, read and execute bits, bytes or link target). `ignore`: the
    patterns applied to the walk, when they are simple; otherwise every file is hashed (a safe
    over-approximation: at worst an extra build, never a missed one)."""
    digest = hashlib.sha256()
    digest.update(b"picluster-image-v2\0")
    digest.update(recipe.encode() + b"\0")
    patterns = _ignore_lines("\n".join(ignore))
    for path in context_files(folder, patterns if _simple(patterns) else ()):
        info = path.lstat()
        relative = path.relative_to(folder).as_posix()
        # Read and execute bits for user, group and others: the same under any umask that
        # keeps the file readable, and what a COPY keeps.
        mode = f"{stat.S_IMODE(info.st_mode) & 0o555:o}".encode()
        digest.update(relative.encode() + b"\0" + mode + b"\0")
        if stat.S_ISLNK(info.st_mode):
            digest.update(b"link\0" + os.readlink(path).encode() + b"\0")
        elif stat.S_ISSOCK(info.st_mode):
            digest.update(hashlib.sha256(b"").digest())  # an empty file in the image
        else:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:TAG_LENGTH]


def plan_build(name: str, folder: Path, *, static: bool = False) -> ImageBuild:
    """The build of `folder` (already checked by `folder_problems`)."""
    folder = folder.resolve()
    if static or not (folder / _DOCKERFILE).is_file():
        kind = BuildKind.STATIC if static else BuildKind.NODE
        dockerfile = static_dockerfile() if static else node_dockerfile(folder)
        ignore = generated_ignore(folder, ALWAYS_IGNORED)
        return ImageBuild(
            name=name,
            context=folder,
            kind=kind,
            dockerfile=dockerfile,
            ignore=ignore,
            tag=content_tag(folder, dockerfile + "\0" + "\n".join(ignore), ignore),
        )
    # The folder's own Dockerfile and ignore file are hashed as text even when the ignore file
    # excludes them from the context (BuildKit reads both anyway).
    own_ignore = _read(_own_ignore_file(folder))
    recipe = _read(folder / _DOCKERFILE) + "\0" + own_ignore
    return ImageBuild(
        name=name,
        context=folder,
        kind=BuildKind.DOCKERFILE,
        dockerfile=None,
        ignore=(),
        tag=content_tag(folder, recipe, _ignore_lines(own_ignore)),
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
