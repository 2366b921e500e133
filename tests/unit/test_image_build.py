"""The build commands and the Docker renderer's built images and migrations, under mocks, with
the engine's rules (`tests/engine_rules.py`) saying what a change would create, update, replace
or delete."""

from __future__ import annotations

import hashlib
import http.server
import re
import runpy
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi_command import Provider as CommandProvider

from components.app_model import DEMO_API, ImageSource, build_app
from components.config import AppConfig
from components.image_build import (
    IN_CLUSTER_REGISTRY_ADDRESS,
    LocalDaemon,
    RegistryPush,
    TunnelPush,
    build_values,
    declare_build,
    pushed_digest,
)
from components.images import plan_build
from components.on_docker.app import MIGRATION_LABEL, MigrationFailedError
from components.pi_node import SshTarget
from components.remote_script import script_path
from tests.engine_rules import Action, plan
from tests.harness import MAIN, Registration, Run, run, run_main

BUILD = "command:local:Command"
CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/remoteImage:RemoteImage"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nunit-image-build-key\n-----END OPENSSH...\n"
REGISTRY_PASSWORD = "unit-registry-Pa55word"


def header(stdin: str) -> dict[str, str]:
    """The `NAME='value'` lines before the script."""
    return {
        m[1]: m[2].strip("'")
        for m in re.finditer(r"^([A-Z0-9_]+)=(.*)$", stdin.split("#!")[0], re.M)
    }


def demo_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "api"
    shutil.copytree(DEMO_API, folder)
    return folder


def service(folder: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "api", "build": str(folder), "port": 3000, "path": "/api", **extra}


def docker_run(services: list[dict[str, Any]] | None = None, **config: Any) -> Run:
    app = {"services": services} if services is not None else {}
    return run_main({"target": "docker", "app": app, **config}, stack="local")


# --- the build command -------------------------------------------------------------------------


def test_the_demo_api_is_built_by_a_local_command_whose_stdin_carries_its_tag() -> None:
    result = docker_run()
    command = result.named("app-api-build")
    assert command.type == BUILD
    assert command.parent == result.named("app").urn
    assert command.provider.startswith(result.named("command").urn)
    tag = plan_build("api", DEMO_API).tag
    values = header(str(command.value("stdin")))
    assert values["MODE"] == "local"
    assert values["REF"] == f"picluster-local/api:{tag}"
    # Relative to the project directory: the same stdin in every checkout.
    assert values["CONTEXT"] == "components/assets/demo-api"
    assert values["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert "picluster image-build" in str(command.value("stdin"))
    # In place: the stdin is the trigger; never `triggers` (a replace), no delete (images stay).
    assert command.value("create") == command.value("update") == "bash -s"
    assert command.value("triggers") is None and command.value("delete") is None
    assert command.value("addPreviousOutputInEnv") is False


def test_the_build_runs_against_the_daemon_of_docker_host() -> None:
    result = docker_run(docker={"host": "ssh://pi@192.168.1.10"})
    values = header(str(result.named("app-api-build").value("stdin")))
    assert values["DOCKER_HOST"] == "ssh://pi@192.168.1.10"


def test_without_builds_or_nodes_there_is_no_command_provider() -> None:
    result = docker_run([{"name": "lobby", "image": "ghcr.io/studio/lobby:1.4.2", "port": 8081}])
    assert not result.of_type(BUILD)
    assert not result.of_type("pulumi:providers:command")


def test_the_built_image_waits_for_its_build_and_is_kept_on_the_daemon() -> None:
    result = docker_run()
    command = result.named("app-api-build")
    ref = header(str(command.value("stdin")))["REF"]
    [image] = [r for r in result.of_type(IMAGE) if r.value("name") == ref]
    assert command.urn in image.dependencies
    assert image.value("keepLocally") is True
    # Pinned images do not wait for any build.
    postgres = result.named("app-image-postgres-17-alpine")
    assert command.urn not in postgres.dependencies


def test_a_static_frontend_is_built_and_served_with_picluster_config(tmp_path: Path) -> None:
    game = tmp_path / "dist"
    game.mkdir()
    (game / "index.html").write_text("<html>game</html>")
    result = run_main(
        {"target": "docker", "app": {"frontend": {"static": str(game)}}}, stack="local"
    )
    values = header(str(result.named("app-frontend-build").value("stdin")))
    assert (
        values["REF"] == f"picluster-local/frontend:{plan_build('frontend', game, static=True).tag}"
    )
    frontend = result.named("app-frontend")
    uploads = {u["file"] for u in frontend.value("uploads")}
    assert uploads == {"/etc/nginx/conf.d/default.conf"}  # no placeholder page


def _registrations(build_target: Any) -> Run:
    def program() -> None:
        build = plan_build("api", DEMO_API)
        declare_build(
            pulumi.ComponentResource("picluster:test:Builds", "builds"),
            "build",
            build,
            build.ref("registry.picluster.internal"),
            build_target,
            pulumi.ResourceOptions(provider=CommandProvider("command")),
        )

    return run(program, {})


def _server() -> SshTarget:
    return SshTarget(
        host="192.168.1.11",
        port=22,
        user="pi",
        private_key=pulumi.Output.secret(PRIVATE_KEY),
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIunit",
    )


def test_a_tunnel_push_has_the_key_only_in_its_secret_stdin() -> None:
    target = TunnelPush(server=_server(), platforms=("linux/arm64",))
    command = _registrations(target).named("build")
    assert command.is_secret("stdin")
    assert not any("unit-image-build-key" in s for s in command.plain_strings())
    values = header(str(command.value("stdin")))
    assert values["MODE"] == "tunnel"
    assert values["SSH_HOST"] == "192.168.1.11" and values["SSH_USER"] == "pi"
    assert values["SSH_HOST_KEY"].startswith("ssh-ed25519 ")
    assert values["REGISTRY_ADDRESS"] == IN_CLUSTER_REGISTRY_ADDRESS == "10.43.0.50:5000"
    assert values["PLATFORMS"] == "linux/arm64"
    assert "unit-image-build-key" in str(command.value("stdin"))
    for key in ("create", "update", "environment"):
        assert "unit-image-build-key" not in str(command.value(key))


def test_a_registry_created_again_is_a_changed_stdin_so_the_images_are_pushed_again() -> None:
    # The registry's volume lost (its claim created again: a new uid) is an empty registry: the
    # stdin changes, so the build command is updated, runs, finds no manifest and pushes.
    def stdin(registry_id: str) -> str:
        target = TunnelPush(server=_server(), platforms=("linux/arm64",), registry_id=registry_id)
        return str(_registrations(target).named("build").value("stdin"))

    first, again, other = stdin("uid-1"), stdin("uid-1"), stdin("uid-2")
    assert header(first)["REGISTRY_ID"] == "uid-1"
    assert first == again
    assert first != other


def test_a_registry_push_has_the_password_only_in_its_secret_stdin() -> None:
    target = RegistryPush(
        platforms=("linux/arm64", "linux/amd64"),
        username="studio",
        password=pulumi.Output.secret(REGISTRY_PASSWORD),
    )
    command = _registrations(target).named("build")
    assert command.is_secret("stdin")
    assert not any(REGISTRY_PASSWORD in s for s in command.plain_strings())
    values = header(str(command.value("stdin")))
    assert values["MODE"] == "registry" and values["REGISTRY_USERNAME"] == "studio"
    assert values["PLATFORMS"] == "linux/arm64,linux/amd64"


def test_a_local_build_has_nothing_secret() -> None:
    command = _registrations(LocalDaemon(docker_host="unix:///var/run/docker.sock")).named("build")
    assert not command.is_secret("stdin")


def _script_reads() -> set[str]:
    """The header names image-build.sh reads: those its `main` defaults or requires."""
    text = script_path("image-build.sh").read_text()
    return set(re.findall(r"\$\{([A-Z0-9_]+):[?=]", text[text.index("\nmain() {") :]))


@pytest.mark.parametrize(
    "target",
    [
        LocalDaemon(docker_host="unix:///var/run/docker.sock"),
        TunnelPush(server=_server(), platforms=("linux/arm64",)),
        RegistryPush(platforms=("linux/arm64",), username="studio", password="x"),
        RegistryPush(platforms=("linux/arm64",)),
    ],
    ids=["local", "tunnel", "registry", "anonymous registry"],
)
def test_every_name_the_script_reads_is_in_the_header(target: Any) -> None:
    # An exported BUILDER or PLATFORMS in the user's shell must not change a local build: the
    # header assigns every name, empty when unused. DOCKER_HOST only for the daemon the docker
    # target names; a push goes through the user's own daemon, as the environment names it.
    values = header(str(_registrations(target).named("build").value("stdin")))
    reads = _script_reads()
    assert {"MODE", "REF", "BUILDER", "PLATFORMS", "SSH_PRIVATE_KEY"} <= reads
    expected = reads if isinstance(target, LocalDaemon) else reads - {"DOCKER_HOST"}
    # REGISTRY_ID is there only to change the stdin (a registry created again, empty).
    assert set(values) - {"REGISTRY_ID"} == expected
    if isinstance(target, LocalDaemon):
        assert values["BUILDER"] == values["PLATFORMS"] == values["SSH_PRIVATE_KEY"] == ""


def test_the_pushed_digest_is_read_from_the_build_s_stdout() -> None:
    digest = "sha256:" + "ab" * 32
    out = f"picluster image-build: digest {digest}\npicluster image-build: r:t pushed\n"
    assert pushed_digest(out) == digest
    with pytest.raises(ValueError, match="no digest"):
        pushed_digest("picluster image-build: r:t built\n")
    with pytest.raises(ValueError, match="no digest"):
        pushed_digest("picluster image-build: digest sha256:short\n")


def test_a_reference_must_carry_the_content_tag() -> None:
    build = plan_build("api", DEMO_API)
    with pytest.raises(ValueError, match="content tag"):
        build_values(build, "picluster-local/api:latest", LocalDaemon(docker_host="x"))


# --- what a change does ------------------------------------------------------------------------


def test_an_unchanged_folder_is_no_change_at_all(tmp_path: Path) -> None:
    folder = demo_copy(tmp_path)
    before = docker_run([service(folder)])
    after = docker_run([service(folder)])
    assert plan(before.registrations, after.registrations).steps == []


def test_a_changed_file_updates_its_build_and_rolls_only_its_workload(tmp_path: Path) -> None:
    folder = demo_copy(tmp_path)
    other = demo_copy(tmp_path / "other")
    services = [service(folder, replicas=2), {**service(other), "name": "scores", "path": "/s"}]
    before = docker_run(services)
    server = folder / "server.js"
    server.write_text(server.read_text() + "\n// a new release\n")
    after = docker_run(services)
    changes = plan(before.registrations, after.registrations)
    old_tag = header(str(before.named("app-api-build").value("stdin")))["REF"]
    new_tag = header(str(after.named("app-api-build").value("stdin")))["REF"]
    assert old_tag != new_tag
    slug = lambda ref: "app-image-" + re.sub(r"[^a-z0-9]+", "-", ref).strip("-")  # noqa: E731
    found = {a.value: sorted(changes.labels(a)) for a in Action if changes.labels(a)}
    assert found == {
        "create": [f"RemoteImage {slug(new_tag)}"],
        "update": ["Command app-api-build"],
        "replace": ["Container app-api-1", "Container app-api-2"],
        "delete": [f"RemoteImage {slug(old_tag)}"],
    }, changes.summary()
    assert changes.step("app-api-build").paths == ("stdin",)


# --- migrations --------------------------------------------------------------------------------


def _migration(result: Run) -> Registration:
    [migration] = [r for r in result.of_type(CONTAINER) if "-migrate-" in r.name]
    return migration


def test_a_migration_runs_once_per_release_to_completion_before_the_service(
    tmp_path: Path,
) -> None:
    folder = demo_copy(tmp_path)
    result = docker_run([service(folder, replicas=3, migrate=["node", "migrate.js"])])
    migration = _migration(result)
    tag = plan_build("api", folder).tag
    assert migration.name == f"app-api-migrate-{tag}"
    assert migration.value("name") == f"picluster-local-api-migrate-{tag}"
    assert migration.value("command") == ["node", "migrate.js"]
    assert migration.value("restart") == "no"
    assert migration.value("mustRun") is False
    assert migration.value("attach") is True and migration.value("logs") is True
    assert not migration.value("wait") and migration.value("healthcheck") is None
    assert "containerLogs" in migration.additional_secret_outputs
    api = result.named("app-api-1")
    assert migration.value("image") == api.value("image")
    assert migration.value("envs") == api.value("envs") and migration.is_secret("envs")
    assert result.named("app-postgres").urn in migration.dependencies
    for replica in (1, 2, 3):
        container = result.named(f"app-api-{replica}")
        labels = {label["label"]: label["value"] for label in container.value("labels")}
        assert labels == {MIGRATION_LABEL: migration.value("name")}
        assert migration.urn in container.property_dependencies["labels"]
    # Other containers carry nothing new.
    assert result.named("app-postgres").value("labels") is None
    assert result.named("app-postgres").value("mustRun") is None


def test_a_failed_migration_fails_the_program_before_the_service_is_declared(
    tmp_path: Path,
) -> None:
    folder = demo_copy(tmp_path)
    tag = plan_build("api", folder).tag
    config = {"target": "docker", "app": {"services": [service(folder, migrate=["false"])]}}
    seen: list[Registration] = []
    with pytest.raises(MigrationFailedError, match=f"api-migrate-{tag} exited with code 1"):
        run(
            lambda: runpy.run_path(str(MAIN), run_name="__main__"),
            config,
            stack="local",
            exit_codes={f"app-api-migrate-{tag}": 1},
            recorded=seen,
        )
    names = {r.name for r in seen}
    assert f"app-api-migrate-{tag}" in names
    # Never declared, so the engine never replaces the running release's containers (and a
    # failed program deletes nothing).
    assert "app-api-1" not in names


def test_a_new_release_runs_a_new_migration(tmp_path: Path) -> None:
    folder = demo_copy(tmp_path)
    services = [service(folder, migrate=["node", "migrate.js"])]
    before = docker_run(services)
    (folder / "migrate.js").write_text("// a new migration\n")
    after = docker_run(services)
    changes = plan(before.registrations, after.registrations)
    assert _migration(after).name in changes.names(Action.CREATE)
    assert _migration(before).name in changes.names(Action.DELETE)
    assert "app-api-1" in changes.names(Action.REPLACE)
    # The same release again: the migration does not run again.
    again = plan(after.registrations, docker_run(services).registrations)
    assert again.steps == []


def _release(image: str) -> str:
    return hashlib.sha256(image.encode()).hexdigest()[:12]


def test_a_pinned_image_s_migration_is_named_by_its_release_as_on_k3s() -> None:
    lobby = {"name": "lobby", "image": "ghcr.io/studio/lobby:1.4.2", "port": 8081}
    result = docker_run([{**lobby, "migrate": ["npm", "run", "migrate"]}])
    migration = _migration(result)
    release = _release("ghcr.io/studio/lobby:1.4.2")
    assert migration.value("name") == f"picluster-local-lobby-migrate-{release}"
    assert not result.of_type(BUILD)
    bumped = docker_run([{**lobby, "image": "ghcr.io/studio/lobby:1.4.3", "migrate": ["x"]}])
    release = _release("ghcr.io/studio/lobby:1.4.3")
    assert _migration(bumped).value("name") == f"picluster-local-lobby-migrate-{release}"
    # A digest reference: the release is a 12-digit hash too, not the digest's 64 hex digits.
    digest = "ghcr.io/studio/lobby@sha256:" + "ab" * 32
    pinned = docker_run([{**lobby, "image": digest, "migrate": ["x"]}])
    assert _migration(pinned).value("name") == f"picluster-local-lobby-migrate-{_release(digest)}"


# --- the Docker health check of a service built from its own Dockerfile -------------------------


def _own_dockerfile_service(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    folder = tmp_path / "lobby"
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text("FROM python:3.12-alpine\nUSER 1000\n")
    return {"name": "lobby", "build": str(folder), "port": 8000, **extra}


def _healthcheck(result: Run, name: str) -> list[str]:
    [container] = [r for r in result.of_type(CONTAINER) if r.value("name").endswith(f"-{name}-1")]
    return list(container.value("healthcheck")["tests"])


def test_node_services_keep_their_node_health_check(tmp_path: Path) -> None:
    node = _healthcheck(docker_run([service(demo_copy(tmp_path), healthPath="/api/hello")]), "api")
    script = (
        "require('http').get('http://127.0.0.1:3000/api/hello',"
        "r=>process.exit(r.statusCode<400?0:1)).on('error',()=>process.exit(1))"
    )
    assert node == ["CMD", "node", "-e", script]
    pinned = {"name": "lobby", "image": "ghcr.io/studio/lobby:1.4.2", "port": 8081}
    tcp = _healthcheck(docker_run([pinned]), "lobby")
    assert tcp[:3] == ["CMD", "node", "-e"] and "require('net').connect(8081" in tcp[3]


def test_an_own_dockerfile_service_is_checked_with_wget_curl_or_node(tmp_path: Path) -> None:
    http = _healthcheck(
        docker_run([_own_dockerfile_service(tmp_path, healthPath="/health")]), "lobby"
    )
    assert http[:3] == ["CMD", "sh", "-c"]
    assert http[3].startswith(
        "wget -q -O /dev/null http://127.0.0.1:8000/health || "
        "curl -fsS -o /dev/null http://127.0.0.1:8000/health || node -e "
    )
    tcp = _healthcheck(docker_run([_own_dockerfile_service(tmp_path / "t")]), "lobby")
    assert tcp[3].startswith("nc -z 127.0.0.1 8000 || node -e ")


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("tool", ["wget", "curl", "node"])
def test_the_own_dockerfile_health_check_works_with_any_one_of_its_tools(
    tmp_path: Path, tool: str
) -> None:
    # The check run for real by `sh`, with a PATH that holds `sh` and one tool only (an image
    # with busybox wget, one with curl, one with node).
    for needed in ("sh", tool):
        if shutil.which(needed) is None:
            pytest.skip(f"{needed} is not installed here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sh", tool):
        (bin_dir / name).symlink_to(str(shutil.which(name)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for path, healthy in (("/health", True), ("/sick", False)):
            config = AppConfig.model_validate(
                {
                    "services": [
                        _own_dockerfile_service(tmp_path / path[1:], port=port, healthPath=path)
                    ]
                }
            )
            [lobby] = build_app(config, ImageSource(repository="x", project_dir=tmp_path)).services
            result = subprocess.run(
                list(lobby.probe.command),
                env={"PATH": str(bin_dir)},
                executable=str(bin_dir / "sh"),
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert (result.returncode == 0) is healthy, (path, result.stderr)
    finally:
        server.shutdown()
