"""What picluster builds from a source folder, the tag it gets, and the folders it refuses."""

from __future__ import annotations

import json
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
    assert f"FROM --platform=$BUILDPLATFORM {versions.NODE} AS deps" in lines
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
    native = node_project(
        tmp_path / "b",
        lock={"packages": {"node_modules/bcrypt": {"hasInstallScript": True}}},
    )
    dockerfile = plan_build("b", native).dockerfile
    assert dockerfile is not None
    assert f"FROM {versions.NODE} AS deps" in dockerfile.splitlines()


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
    (root / "Dockerfile").write_text("FROM a\nUSER root\n")
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
