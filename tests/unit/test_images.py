"""What picluster builds from a source folder, the tag it gets, and the folders it refuses."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from components import versions
from components.config import ConfigError, validate
from components.images import (
    BuildKind,
    final_user,
    folder_problems,
    is_loopback_registry,
    plan_build,
    unpinned_bases,
)


def node_project(folder: Path, *, main: str = "server.js", lock: dict[str, Any] | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text(json.dumps({"name": "svc", "main": main}))
    (folder / main).write_text("require('http').createServer().listen(process.env.PORT)\n")
    if lock is not None:
        (folder / "package-lock.json").write_text(json.dumps(lock))
    return folder


def test_a_node_project_gets_a_dockerfile_on_the_pinned_node_image_run_as_a_non_root_user(
    tmp_path: Path,
) -> None:
    build = plan_build("scores", node_project(tmp_path / "scores"))
    assert build.kind is BuildKind.NODE
    assert build.dockerfile is not None
    lines = build.dockerfile.splitlines()
    # No lockfile: nothing says the dependencies are portable, so they install on the target.
    assert f"FROM {versions.NODE} AS deps" in lines
    assert f"FROM {versions.NODE}" in lines
    assert (
        "RUN --mount=type=secret,id=npm-ca NODE_EXTRA_CA_CERTS=/run/secrets/npm-ca "
        "npm install --omit=dev --no-audit --no-fund --no-package-lock && mkdir -p node_modules"
    ) in lines
    assert final_user(build.dockerfile) == "1000:1000"
    assert lines[-1] == 'CMD ["node", "server.js"]'
    assert "node_modules" in build.ignore


def test_a_lockfile_means_npm_ci_and_an_install_script_means_deps_built_for_the_target(
    tmp_path: Path,
) -> None:
    plain = plan_build("a", node_project(tmp_path / "a", lock={"lockfileVersion": 3}))
    assert plain.dockerfile is not None
    assert "/run/secrets/npm-ca npm ci --omit=dev --no-audit --no-fund && mkdir" in plain.dockerfile
    assert "COPY package.json package-lock.json ./" in plain.dockerfile
    assert f"FROM --platform=$BUILDPLATFORM {versions.NODE} AS deps" in plain.dockerfile
    native = node_project(
        tmp_path / "b",
        lock={"packages": {"node_modules/bcrypt": {"hasInstallScript": True}}},
    )
    dockerfile = plan_build("b", native).dockerfile
    assert dockerfile is not None
    assert f"FROM {versions.NODE} AS deps" in dockerfile.splitlines()


PORTABLE = f"FROM --platform=$BUILDPLATFORM {versions.NODE} AS deps"
TARGET = f"FROM {versions.NODE} AS deps"


@pytest.mark.parametrize(
    ("lock", "deps"),
    [
        # Pure JavaScript dependencies: installed on the builder's platform, copied as they are.
        (
            {"lockfileVersion": 3, "packages": {"": {}, "node_modules/pg": {"version": "8"}}},
            PORTABLE,
        ),
        # napi-rs prebuilt optional dependencies: npm picks the one for the platform it runs on.
        (
            {
                "lockfileVersion": 3,
                "packages": {"node_modules/@node-rs/argon2-linux-arm64-musl": {"cpu": ["arm64"]}},
            },
            TARGET,
        ),
        ({"lockfileVersion": 2, "packages": {"node_modules/fsevents": {"os": ["darwin"]}}}, TARGET),
        ({"lockfileVersion": 3, "packages": {"node_modules/x": {"libc": ["musl"]}}}, TARGET),
        # A v1 lockfile has no `packages` to tell: the safe choice.
        ({"lockfileVersion": 1, "dependencies": {"left-pad": {"version": "1"}}}, TARGET),
        # Parsed, not searched: the words in a string value say nothing.
        (
            {
                "lockfileVersion": 3,
                "packages": {"node_modules/d": {"description": '"hasInstallScript": true'}},
            },
            PORTABLE,
        ),
    ],
)
def test_the_deps_stage_runs_on_the_target_unless_the_lockfile_shows_no_native_package(
    tmp_path: Path, lock: dict[str, Any], deps: str
) -> None:
    dockerfile = plan_build("a", node_project(tmp_path / "a", lock=lock)).dockerfile
    assert dockerfile is not None
    assert deps in dockerfile.splitlines()


def test_the_tag_is_stable_and_changes_exactly_when_what_the_build_reads_changes(
    tmp_path: Path,
) -> None:
    folder = node_project(tmp_path / "svc")
    first = plan_build("svc", folder).tag
    assert plan_build("svc", folder).tag == first
    assert len(first) == 12
    # What the build never reads does not change the tag.
    (folder / "node_modules" / "left-pad").mkdir(parents=True)
    (folder / "node_modules" / "left-pad" / "index.js").write_text("x")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    assert plan_build("svc", folder).tag == first
    # A source change, a new file, a mode change do.
    (folder / "server.js").write_text("// changed\n")
    second = plan_build("svc", folder).tag
    assert second != first
    (folder / "lib.js").write_text("module.exports = 1\n")
    third = plan_build("svc", folder).tag
    assert third != second
    (folder / "lib.js").chmod(0o755)
    assert plan_build("svc", folder).tag != third


def test_the_tag_does_not_depend_on_where_the_folder_is(tmp_path: Path) -> None:
    one = node_project(tmp_path / "one" / "svc")
    two = node_project(tmp_path / "two" / "svc")
    assert plan_build("svc", one).tag == plan_build("svc", two).tag


def test_an_own_dockerfile_is_used_as_is_and_its_dockerignore_is_honoured(tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM node:22.12.0-alpine\nUSER node\nCOPY . /app\n")
    (folder / ".dockerignore").write_text("*.log\ncoverage\n")
    build = plan_build("svc", folder)
    assert build.kind is BuildKind.DOCKERFILE
    assert build.dockerfile is None
    tag = build.tag
    (folder / "debug.log").write_text("noise")
    (folder / "coverage").mkdir()
    (folder / "coverage" / "x.json").write_text("{}")
    assert plan_build("svc", folder).tag == tag
    # `*` does not cross `/` in a .dockerignore: a nested log reaches the build, so it counts.
    (folder / "sub").mkdir()
    (folder / "sub" / "app.log").write_text("kept")
    assert plan_build("svc", folder).tag != tag
    (folder / "Dockerfile").write_text("FROM node:22.12.0-alpine\nUSER node\nCOPY . /srv\n")
    assert plan_build("svc", folder).tag != tag


def test_a_static_folder_is_copied_onto_the_pinned_nginx(tmp_path: Path) -> None:
    folder = tmp_path / "dist"
    folder.mkdir()
    (folder / "index.html").write_text("<html></html>")
    build = plan_build("frontend", folder, static=True)
    assert build.kind is BuildKind.STATIC
    assert build.dockerfile is not None
    assert f"FROM {versions.NGINX}" in build.dockerfile.splitlines()


@pytest.mark.parametrize(
    ("dockerfile", "user"),
    [
        ("FROM a\nUSER root\n", "root"),
        ("FROM a\nUSER 1000\nFROM b\n", None),
        ("FROM a AS x\nUSER 0:0\nRUN x \\\n  && y\n", "0:0"),
        ("# USER root\nFROM a\nuser node\n", "node"),
    ],
)
def test_final_user_reads_the_last_stage(dockerfile: str, user: str | None) -> None:
    assert final_user(dockerfile) == user


def test_folder_problems_name_the_key_and_what_to_do(tmp_path: Path) -> None:
    key = "picluster:app.services[0].build"
    assert "is not a folder" in folder_problems(tmp_path / "nope", static=False, key=key)[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    [problem] = folder_problems(empty, static=False, key=key)
    assert problem.startswith(f"{key}: ")
    assert "neither a Dockerfile nor a package.json" in problem
    root = tmp_path / "root"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM a:1\nUSER root\n")
    assert "non-root" in folder_problems(root, static=False, key=key)[0]
    missing_main = node_project(tmp_path / "m")
    (missing_main / "server.js").unlink()
    assert "main 'server.js'" in folder_problems(missing_main, static=False, key=key)[0]
    assert "no index.html" in folder_problems(empty, static=True, key="k")[0]
    assert folder_problems(node_project(tmp_path / "ok"), static=False, key=key) == []


@pytest.mark.parametrize(
    ("ref", "loopback"),
    [
        ("localhost:5000/api:1", True),
        ("127.0.0.1:5000/api:1", True),
        ("localhost/api:1", True),
        ("registry.lan:5000/api:1", False),
        ("node:22.12.0-alpine", False),
        ("studio/api:1.0", False),
    ],
)
def test_loopback_registries_are_recognised(ref: str, loopback: bool) -> None:
    assert is_loopback_registry(ref) is loopback


# --- the config keys ----------------------------------------------------------------------------


def problems(raw: dict[str, Any], project: Path) -> list[str]:
    with pytest.raises(ConfigError) as error:
        validate(raw, project_dir=project)
    return list(error.value.problems)


K3S = {
    "target": "k3s",
    "ssh": {"privateKeyPath": None},
    "sshPrivateKey": "key",
    "nodes": [{"name": "pi-1", "host": "192.168.1.10", "role": "server"}],
    "k3s": {"version": "v1.31.4+k3s1"},
}


def test_build_and_static_folders_are_relative_to_the_project(tmp_path: Path) -> None:
    node_project(tmp_path / "services" / "scores")
    (tmp_path / "game" / "dist").mkdir(parents=True)
    (tmp_path / "game" / "dist" / "index.html").write_text("<html/>")
    settings = validate(
        {
            "target": "docker",
            "app": {
                "frontend": {"static": "game/dist"},
                "services": [
                    {
                        "name": "scores",
                        "build": "services/scores",
                        "port": 3000,
                        "migrate": ["node", "migrate.js"],
                    }
                ],
            },
        },
        project_dir=tmp_path,
    )
    [service] = settings.app.services or []
    assert service.migrate == ["node", "migrate.js"]
    assert settings.app.frontend.static == "game/dist"


def test_each_source_problem_is_reported_once_under_its_key(tmp_path: Path) -> None:
    found = problems(
        {
            "target": "docker",
            "app": {
                "frontend": {"image": "nginx:1.27.3-alpine", "static": "dist"},
                "services": [
                    {"name": "a", "port": 1, "image": "node:22.12.0-alpine", "build": "a"},
                    {"name": "b", "port": 1},
                    {"name": "c", "port": 1, "build": "missing"},
                ],
            },
        },
        tmp_path,
    )
    text = "\n".join(found)
    assert "picluster:app.frontend: gives image and static; give one of" in text
    assert "picluster:app.services[0]: gives both image and build" in text
    assert "picluster:app.services[1]: gives neither image nor build" in text
    assert f"picluster:app.services[2].build: '{tmp_path / 'missing'}' is not a folder" in text


def test_a_migrate_command_is_a_list(tmp_path: Path) -> None:
    service = {"name": "d", "port": 1, "image": "node:22.12.0-alpine", "migrate": "npm run up"}
    [problem] = problems({"target": "docker", "app": {"services": [service]}}, tmp_path)
    assert problem.startswith("picluster:app.services[0].migrate: ")
    assert "['npm', 'run', 'up']" in problem


def test_k3s_refuses_image_references_the_pis_cannot_reach(tmp_path: Path) -> None:
    raw = K3S | {
        "app": {"services": [{"name": "api", "port": 3000, "image": "localhost:5000/api:1.0"}]},
        "images": {"registry": "127.0.0.1:5000"},
    }
    found = problems(raw, tmp_path)
    assert any(p.startswith("picluster:app.services[0].image: ") and "loopback" in p for p in found)
    assert any(p.startswith("picluster:images.registry: ") for p in found)
    # The same reference is fine for the local Docker target.
    validate(
        {"target": "docker", "app": raw["app"]},
        project_dir=tmp_path,
    )


def test_registry_credentials_come_in_pairs_and_only_for_a_named_registry(tmp_path: Path) -> None:
    found = problems(K3S | {"images": {"registryUsername": "ci"}}, tmp_path)
    assert any("registryPassword" in p for p in found)
    assert any("needs no account" in p for p in found)
    validate(
        K3S
        | {
            "images": {"registry": "registry.lan:5000/game", "registryUsername": "ci"},
            "registryPassword": "s3cret-value",
        },
        project_dir=tmp_path,
    )
    assert any(
        p.startswith("picluster:images.platforms")
        for p in problems(K3S | {"images": {"platforms": ["linux/arm/v7"]}}, tmp_path)
    )


# --- what reaches a generated build, and what the tag hashes -------------------------------------


def test_a_generated_build_never_copies_local_secrets_and_keeps_the_folder_s_own_ignores(
    tmp_path: Path,
) -> None:
    # BuildKit reads picluster's `Dockerfile.dockerignore` instead of the folder's `.dockerignore`,
    # so the folder's own lines are copied into it, after the secrets picluster always leaves out.
    folder = node_project(tmp_path / "svc")
    (folder / ".dockerignore").write_text("# local files\nsecret.txt\ncoverage\n")
    build = plan_build("svc", folder)
    for pattern in ("**/.env", "**/.env.*", "**/.npmrc", "**/*.pem", "node_modules", ".git"):
        assert pattern in build.ignore
    assert build.ignore[-3:] == ("# local files", "secret.txt", "coverage")
    tag = build.tag
    (folder / "config" / "certs").mkdir(parents=True)
    for name in (
        ".env",
        ".env.local",
        ".npmrc",
        "tls.pem",
        "secret.txt",
        "config/.env",
        "config/certs/server.pem",
    ):
        (folder / name).write_text("token")
        assert plan_build("svc", folder).tag == tag, name
    # Only the secrets' names are left out: a nested source file still counts.
    (folder / "config" / "settings.js").write_text("module.exports = {}\n")
    assert plan_build("svc", folder).tag != tag
    static = tmp_path / "dist"
    static.mkdir()
    (static / "index.html").write_text("<html/>")
    (static / ".env").write_text("KEY=1")
    assert "**/.env" in plan_build("frontend", static, static=True).ignore


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**/.env", ".env", True),
        ("**/.env", "a/b/.env", True),
        ("**/.env", "a/.envrc", False),
        ("**/*.pem", "certs/tls.pem", True),
        ("logs/**", "logs/a/b.log", True),
        ("*.log", "sub/app.log", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
    ],
)
def test_ignore_patterns_match_as_docker_s(pattern: str, path: str, matches: bool) -> None:
    from components.images import _ignored  # pyright: ignore[reportPrivateUsage]

    assert _ignored(path, (pattern,)) is matches


def test_ignore_patterns_the_hash_cannot_apply_exactly_mean_every_file_is_hashed(
    tmp_path: Path,
) -> None:
    folder = node_project(tmp_path / "svc")
    (folder / ".dockerignore").write_text("*.log\n!keep.log\n")
    tag = plan_build("svc", folder).tag
    # Docker sends keep.log (the exception) and not debug.log; the hash, which does not read
    # exceptions, counts both: an extra build at worst, never a missed one.
    (folder / "keep.log").write_text("kept")
    assert plan_build("svc", folder).tag != tag
    tag = plan_build("svc", folder).tag
    (folder / "debug.log").write_text("noise")
    assert plan_build("svc", folder).tag != tag


def test_an_own_dockerfile_excluded_by_its_dockerignore_still_changes_the_tag(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM node:22.12.0-alpine\nCOPY . /app\n")
    (folder / ".dockerignore").write_text("Dockerfile\n.dockerignore\n")
    tag = plan_build("svc", folder).tag
    (folder / "Dockerfile").write_text("FROM node:22.12.0-alpine\nCOPY . /srv\n")
    assert plan_build("svc", folder).tag != tag
    tag = plan_build("svc", folder).tag
    (folder / ".dockerignore").write_text("Dockerfile\n.dockerignore\nREADME.md\n")
    assert plan_build("svc", folder).tag != tag


def test_a_dockerfile_specific_ignore_file_is_the_one_in_effect(tmp_path: Path) -> None:
    # BuildKit prefers `<Dockerfile>.dockerignore` next to the Dockerfile over `.dockerignore`.
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM node:22.12.0-alpine\nCOPY . /app\n")
    (folder / ".dockerignore").write_text("notes.md\n")
    (folder / "Dockerfile.dockerignore").write_text("*.tmp\n")
    tag = plan_build("svc", folder).tag
    (folder / "scratch.tmp").write_text("x")
    assert plan_build("svc", folder).tag == tag
    (folder / "notes.md").write_text("sent: the .dockerignore is not read")
    assert plan_build("svc", folder).tag != tag


def test_the_hash_reads_read_and_execute_bits_not_the_umask_s_write_bits(tmp_path: Path) -> None:
    folder = node_project(tmp_path / "svc")
    (folder / "lib.js").write_text("x")
    (folder / "lib.js").chmod(0o644)
    tag = plan_build("svc", folder).tag
    (folder / "lib.js").chmod(0o664)  # a umask of 002 instead of 022
    assert plan_build("svc", folder).tag == tag
    (folder / "lib.js").chmod(0o600)  # no longer readable by the image's non-root user
    assert plan_build("svc", folder).tag != tag


def test_a_symlink_to_a_folder_is_hashed_by_its_target(tmp_path: Path) -> None:
    folder = node_project(tmp_path / "svc")
    for name in ("a", "b"):
        (folder / name).mkdir()
    (folder / "current").symlink_to("a")
    tag = plan_build("svc", folder).tag
    (folder / "current").unlink()
    (folder / "current").symlink_to("b")
    assert plan_build("svc", folder).tag != tag


def test_fifos_are_left_out_and_sockets_hashed_as_empty_files_never_read(tmp_path: Path) -> None:
    # What BuildKit sends (checked with Docker CLI 28.2, daemon 20.10: `COPY . /x` of a context
    # with a FIFO and a socket): no FIFO, the socket as an empty file with its permissions.
    folder = node_project(tmp_path / "svc")
    (folder / "sock").write_text("")
    with socket.socket(socket.AF_UNIX) as probe:
        probe.bind(str(tmp_path / "probe"))
        (folder / "sock").chmod(stat.S_IMODE((tmp_path / "probe").lstat().st_mode))
    tag = plan_build("svc", folder).tag
    (folder / "sock").unlink()
    os.mkfifo(folder / "pipe")  # reading it would block until a writer came
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(folder / "sock"))
        tags: list[str] = []
        worker = threading.Thread(target=lambda: tags.append(plan_build("svc", folder).tag))
        worker.daemon = True
        worker.start()
        worker.join(timeout=10)
        if worker.is_alive():  # blocked opening the FIFO: let it go, then fail
            os.close(os.open(folder / "pipe", os.O_WRONLY | os.O_NONBLOCK))
        assert not worker.is_alive() and tags == [tag]


# --- the folder checks ----------------------------------------------------------------------------


def test_a_frontend_build_folder_needs_its_own_dockerfile(tmp_path: Path) -> None:
    node_project(tmp_path / "web")
    found = problems({"target": "docker", "app": {"frontend": {"build": "web"}}}, tmp_path)
    assert found == [
        f"picluster:app.frontend.build: '{tmp_path / 'web'}' has no Dockerfile; give the "
        "game's build output as frontend.static, or a folder with a Dockerfile"
    ]


@pytest.mark.parametrize(
    ("dockerfile", "unpinned"),
    [
        ("FROM node\n", ["node"]),
        ("FROM node:latest AS build\nFROM build\n", ["node:latest"]),
        ("FROM --platform=$BUILDPLATFORM golang AS b\nFROM scratch\n", ["golang"]),
        ("FROM registry.lan:5000/base\n", ["registry.lan:5000/base"]),
        ("FROM node:22.12.0-alpine AS b\nFROM b\nFROM scratch\n", []),
        ("ARG BASE=node:22\nFROM ${BASE}\n", []),
        ("FROM registry.lan:5000/base@sha256:" + "a" * 64 + "\n", []),
        ("FROM registry.lan:5000/base:1.2\n", []),
    ],
)
def test_a_dockerfile_s_base_images_must_be_pinned(
    dockerfile: str, unpinned: list[str], tmp_path: Path
) -> None:
    assert unpinned_bases(dockerfile) == unpinned
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "Dockerfile").write_text(dockerfile)
    key = "picluster:app.services[2].build"
    found = folder_problems(folder, static=False, key=key)
    assert [p.split(" has FROM ")[1].split(",")[0] for p in found] == unpinned
    assert all(p.startswith(f"{key}: ") for p in found)


def _own_dockerfile(project: Path, user: str) -> None:
    (project / "svc").mkdir()
    (project / "svc" / "Dockerfile").write_text(f"FROM python:3.12-alpine\nUSER {user}\n")


@pytest.mark.parametrize(
    ("user", "error"), [("10001", True), ("10001:10001", True), ("app", False)]
)
def test_an_own_dockerfile_s_numeric_user_must_be_the_service_s_run_as_user(
    tmp_path: Path, user: str, error: bool
) -> None:
    _own_dockerfile(tmp_path, user)
    service = {"name": "svc", "build": "svc", "port": 8000}
    raw = {"target": "docker", "app": {"services": [service]}}
    if error:
        assert problems(raw, tmp_path) == [
            "picluster:app.services[0].runAsUser: the Dockerfile runs as 10001; "
            "set runAsUser: 10001"
        ]
    else:
        validate(raw, project_dir=tmp_path)
    validate(
        {"target": "docker", "app": {"services": [{**service, "runAsUser": 10001}]}},
        project_dir=tmp_path,
    )


def test_registry_credential_errors_say_which_half_is_missing(tmp_path: Path) -> None:
    named = {"registry": "registry.lan:5000/game"}
    [only_password] = problems(
        K3S | {"images": named, "registryPassword": "s3cret-value"}, tmp_path
    )
    assert only_password.startswith(
        "picluster:registryPassword: is set but picluster:images.registryUsername is not; "
    )
    [only_user] = problems(K3S | {"images": named | {"registryUsername": "ci"}}, tmp_path)
    assert only_user == (
        "picluster:images.registryUsername: needs the secret picluster:registryPassword "
        "(`bin/pulumi config set --secret registryPassword -s <stack>`)"
    )


def test_platforms_are_unique_and_a_loopback_registry_names_the_alternatives(
    tmp_path: Path,
) -> None:
    [twice] = problems(K3S | {"images": {"platforms": ["linux/arm64", "linux/arm64"]}}, tmp_path)
    assert twice.startswith("picluster:images.platforms: ")
    [loopback] = problems(K3S | {"images": {"registry": "localhost:5000"}}, tmp_path)
    assert loopback.startswith("picluster:images.registry: ")
    assert loopback.endswith("or name an HTTPS registry the Pis reach")
