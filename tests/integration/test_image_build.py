"""The studio's images built for real: `image-build.sh` run with exactly the stdin the program
gives its build commands, against this machine's Docker daemon.

- The demo API (`components/assets/demo-api`, a Node.js project) and a static frontend folder are
  built on the local daemon (the docker target), run the way the Docker renderer runs them (its
  network and alias, the service as the image's own non-root user on a read-only root with a
  tmpfs /tmp, the frontend with picluster's nginx config uploaded before it starts) and answer
  `GET /api/hello` through the frontend. A second run builds nothing and says so; a changed file
  gives a new tag and a new image.
- The push to the in-cluster registry (`TunnelPush`): a registry container from the
  `registry:2.8.3` stand-in, reached only through an SSH tunnel to a simulated Pi (the first
  server), whose host key is pinned; the manifest is there afterwards, a second run says
  "already in the registry", a wrong host key stops the push. The tunnel signs in with a
  passphrase-protected key (`sshKeyPassphrase`) or with a real ssh-agent alone (`ssh.agent`).

Base images cannot be pulled here: `tests/integration/baseimages.py` builds stand-ins tagged with
the pinned names (`node:22.12.0-alpine`, `nginx:1.27.3-alpine`, `registry:2.8.3`), which
picluster's Dockerfiles then find on the daemon. The stand-ins are amd64 only, so the arm64 build
a Pi needs cannot run here; the push test builds for linux/amd64 through the same path.
Skips with the reason when Docker or the stand-ins cannot work here;
PICLUSTER_REQUIRE_INTEGRATION=1 (CI) turns a skip into a failure. Every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi_command import Provider as CommandProvider

from components.app_model import ASSETS, DEMO_API, ImageSource, build_app
from components.config import AppConfig
from components.image_build import BuildTarget, RegistryPush, TunnelPush, declare_build
from components.images import ImageBuild, plan_build
from components.nginx import DOCKER_RESOLVER, nginx_conf
from components.pi_node import SshTarget
from tests.availability import INTEGRATION, unavailable
from tests.harness import run, run_main
from tests.integration import baseimages, simpi
from tests.integration.conftest import TIMINGS

pytestmark = pytest.mark.integration

SESSION = uuid.uuid4().hex[:8]
STACK = f"bt{SESSION}"
"""The stack the program is run as: its images are `picluster-<stack>/<name>:<tag>`."""
SUMMARY = "picluster image-build: "


def _docker(
    *argv: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *argv], capture_output=True, text=True, timeout=timeout, check=check
    )


def _image_id(ref: str) -> str | None:
    found = _docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def run_build(
    stdin: str,
    *,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    argv: tuple[str, ...] = ("bash", "-s"),
) -> tuple[int, str, str, float]:
    """Run the build as the local command does: `bash -s`, the stdin the program gave it."""
    start = time.monotonic()
    result = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - start


DIGEST = "picluster image-build: digest "
ACCEPT = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def printed_digest(stdout: str) -> str:
    """The digest line a push prints (before its summary)."""
    lines = [line.removeprefix(DIGEST) for line in stdout.splitlines() if line.startswith(DIGEST)]
    assert len(lines) == 1, stdout
    return lines[0]


def summary(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(SUMMARY)]
    assert lines, stdout
    return lines[-1].removeprefix(SUMMARY)


@pytest.fixture(scope="module")
def stand_ins() -> dict[str, str]:
    """The pinned base images on the daemon (stand-ins built once per recipe)."""
    for image in (baseimages.NODE, baseimages.NGINX, baseimages.REGISTRY_IMAGE):
        reason = baseimages.unavailable_reason(image)
        if reason:
            unavailable(reason, INTEGRATION)
    return {image.recipe: baseimages.ensure(image).tag for image in baseimages.ALL}


@pytest.fixture
def refs_to_remove() -> Iterator[list[str]]:
    """Image references a test created; removed at its end (the BuildKit cache stays)."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        _docker("image", "rm", ref, check=False)


def program_stdins(config: dict[str, Any]) -> dict[str, str]:
    """Each build command's stdin, by resource name, as the program declares it (under mocks)
    on the docker target of stack `STACK`."""
    result = run_main({"target": "docker", **config}, stack=STACK)
    return {r.name: str(r.value("stdin")) for r in result.of_type("command:local:Command")}


def _ref(stdin: str) -> str:
    for line in stdin.splitlines():
        if line.startswith("REF="):
            return line.removeprefix("REF=").strip("'")
    raise AssertionError("no REF in the stdin")


# --- the docker target -------------------------------------------------------------------------


class Network:
    """A Docker network and the containers started on it, as the renderer starts them."""

    def __init__(self) -> None:
        self.name = f"picluster-bt-{SESSION}-{uuid.uuid4().hex[:4]}"
        self.containers: list[str] = []
        _docker("network", "create", self.name)

    def start(
        self,
        name: str,
        image: str,
        *,
        alias: str,
        env: dict[str, str],
        uploads: dict[str, str] | None = None,
        read_only: bool,
        publish: int | None = None,
    ) -> str:
        container = f"{self.name}-{name}"
        argv = ["create", "--name", container, "--network", self.name, "--network-alias", alias]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        if read_only:
            # The service contract: a read-only root with a writable /tmp, the image's own user.
            argv += ["--read-only", "--tmpfs", "/tmp"]
        if publish is not None:
            argv += ["-p", f"127.0.0.1::{publish}"]
        _docker(*argv, image)
        self.containers.append(container)
        for path, content in (uploads or {}).items():
            # The renderer's `uploads`: copied in before the container starts.
            subprocess.run(
                ["docker", "cp", "-", f"{container}:{Path(path).parent}"],
                input=_tar(Path(path).name, content),
                check=True,
                timeout=60,
            )
        _docker("start", container)
        return container

    def port(self, container: str, internal: int) -> int:
        out = _docker("port", container, f"{internal}/tcp").stdout.strip().splitlines()[0]
        return int(out.rsplit(":", 1)[1])

    def close(self) -> None:
        for container in self.containers:
            _docker("rm", "-f", container, check=False)
        _docker("network", "rm", self.name, check=False)


def _tar(name: str, content: str) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = content.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _get(url: str, *, timeout: float = 30) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s: {last}")


def test_the_demo_api_and_a_static_frontend_build_run_and_answer(
    stand_ins: dict[str, str], refs_to_remove: list[str]
) -> None:
    stdins = program_stdins({"app": {"frontend": {"static": str(ASSETS / "frontend")}}})
    assert set(stdins) == {"app-api-build", "app-frontend-build"}
    api_ref, frontend_ref = _ref(stdins["app-api-build"]), _ref(stdins["app-frontend-build"])
    assert api_ref == f"picluster-{STACK}/api:{plan_build('api', DEMO_API).tag}"
    refs_to_remove += [api_ref, frontend_ref]

    code, out, err, seconds = run_build(stdins["app-api-build"])
    assert code == 0, err
    assert summary(out) == f"{api_ref} built"
    TIMINGS["demo API build (base cached)"] = seconds
    code, out, err, _ = run_build(stdins["app-frontend-build"])
    assert code == 0, err
    assert summary(out) == f"{frontend_ref} built"

    user = _docker("image", "inspect", "--format", "{{.Config.User}}", api_ref).stdout.strip()
    assert user == "1000:1000"
    app = build_app(AppConfig.model_validate({}), ImageSource(repository="x", project_dir=ASSETS))
    network = Network()
    try:
        network.start(
            "api",
            api_ref,
            alias="api",
            env={"PORT": "3000", "ROUTE_PREFIX": "/api"},
            read_only=True,
        )
        frontend = network.start(
            "frontend",
            frontend_ref,
            alias="frontend",
            env={},
            uploads={"/etc/nginx/conf.d/default.conf": nginx_conf(app, resolver=DOCKER_RESOLVER)},
            read_only=False,
            publish=80,
        )
        base = f"http://127.0.0.1:{network.port(frontend, 80)}"
        status, body = _get(f"{base}/api/hello")
        assert status == 200 and json.loads(body)["message"].startswith("Hello from")
        status, page = _get(f"{base}/")
        assert status == 200
        assert page == (ASSETS / "frontend" / "index.html").read_text()
    finally:
        network.close()


def test_a_second_run_builds_nothing_and_says_so(
    stand_ins: dict[str, str], refs_to_remove: list[str]
) -> None:
    stdin = program_stdins({})["app-api-build"]
    ref = _ref(stdin)
    refs_to_remove.append(ref)
    code, out, err, _ = run_build(stdin)
    assert code == 0, err
    built = _image_id(ref)
    assert built is not None

    code, out, err, seconds = run_build(stdin)
    assert code == 0, err
    assert summary(out) == f"{ref} already built"
    assert "building" not in err
    assert _image_id(ref) == built
    TIMINGS["demo API, unchanged source (no build)"] = seconds
    # The program, run again on the same folder, gives the same stdin: the engine sees no change.
    assert program_stdins({})["app-api-build"] == stdin


def _copy_of_demo(tmp_path: Path, edit: Callable[[Path], object]) -> Path:
    folder = tmp_path / "api"
    shutil.copytree(DEMO_API, folder)
    edit(folder)
    return folder


def test_a_changed_file_gives_a_new_tag_and_a_new_image(
    stand_ins: dict[str, str], refs_to_remove: list[str], tmp_path: Path
) -> None:
    def say_bonjour(folder: Path) -> None:
        server = folder / "server.js"
        server.write_text(server.read_text().replace("Hello from", "Bonjour from"))

    folder = _copy_of_demo(tmp_path, say_bonjour)
    service = {"name": "api", "build": str(folder), "port": 3000, "path": "/api"}
    stdin = program_stdins({"app": {"services": [service]}})["app-api-build"]
    original = _ref(program_stdins({})["app-api-build"])
    ref = _ref(stdin)
    refs_to_remove.append(ref)
    assert ref.rsplit(":", 1)[0] == original.rsplit(":", 1)[0]
    assert ref != original

    code, out, err, _ = run_build(stdin)
    assert code == 0, err
    assert summary(out) == f"{ref} built"
    result = _docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", ref, "cat", "server.js")
    assert "Bonjour from" in result.stdout


def test_local_secrets_and_the_folder_s_ignored_files_stay_out_of_a_node_image(
    stand_ins: dict[str, str], refs_to_remove: list[str], tmp_path: Path
) -> None:
    # picluster's `Dockerfile.dockerignore` replaces the folder's `.dockerignore` for BuildKit:
    # the folder's lines and the local secrets must be in it, or `COPY . .` takes them.
    def add_local_files(folder: Path) -> None:
        (folder / ".env").write_text("DATABASE_URL=postgres://not-for-the-image\n")
        (folder / "config").mkdir()
        (folder / "config" / ".env").write_text("TOKEN=not-for-the-image\n")
        (folder / "config" / "app.json").write_text("{}\n")
        (folder / "secret.txt").write_text("a token\n")
        (folder / ".dockerignore").write_text("secret.txt\n")

    folder = _copy_of_demo(tmp_path, add_local_files)
    service = {"name": "api", "build": str(folder), "port": 3000, "path": "/api"}
    stdin = program_stdins({"app": {"services": [service]}})["app-api-build"]
    ref = _ref(stdin)
    refs_to_remove.append(ref)
    code, out, err, _ = run_build(stdin)
    assert code == 0, err
    assert summary(out) == f"{ref} built"
    listing = _docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", ref, "ls", "-a", "/app")
    files = listing.stdout.split()
    assert "server.js" in files and "package.json" in files
    assert ".env" not in files
    assert "secret.txt" not in files
    nested = _docker("run", "--rm", ref, "ls", "-a", "/app/config").stdout.split()
    assert "app.json" in nested and ".env" not in nested


def test_a_cold_build_of_new_dependencies(
    stand_ins: dict[str, str], refs_to_remove: list[str], tmp_path: Path
) -> None:
    # A changed package.json: the dependency stage runs again too, as in a first build (only
    # the base image is cached). The figure the README quotes for the docker target.
    def new_manifest(folder: Path) -> None:
        manifest = json.loads((folder / "package.json").read_text())
        manifest["description"] = f"cold build {uuid.uuid4().hex}"
        (folder / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")

    folder = _copy_of_demo(tmp_path, new_manifest)
    service = {"name": "api", "build": str(folder), "port": 3000, "path": "/api"}
    stdin = program_stdins({"app": {"services": [service]}})["app-api-build"]
    refs_to_remove.append(_ref(stdin))
    code, out, err, seconds = run_build(stdin)
    assert code == 0, err
    assert summary(out).endswith(" built")
    assert not _cached(err, "npm ci --omit=dev")
    TIMINGS["demo API build (cold: new dependencies)"] = seconds


def _cached(log: str, title: str) -> bool:
    """Whether BuildKit's progress says the step whose title contains `title` was cached."""
    numbers = {
        line.split()[0] for line in log.splitlines() if line.startswith("#") and title in line
    }
    assert numbers, f"no step {title!r} in the build's output"
    return any(f"{number} CACHED" in log for number in numbers)


# --- the push through an SSH tunnel ------------------------------------------------------------


class Registry:
    """A registry container from the stand-in, on Docker's bridge: not published on the host."""

    def __init__(self, image: str) -> None:
        self.container = f"picluster-bt-{SESSION}-registry"
        _docker("run", "-d", "--name", self.container, image)
        self.address = (
            _docker(
                "inspect",
                "--format",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                self.container,
            ).stdout.strip()
            + ":5000"
        )

    def manifest(self, pi: simpi.SimPi, name: str, tag: str) -> dict[str, Any]:
        """The manifest as a node reads it (from the simulated Pi), or {} when there is none."""
        out = pi.exec(
            "curl",
            "-fsS",
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.v2+json",
            f"http://{self.address}/v2/{name}/manifests/{tag}",
            check=False,
        )
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {}

    def digest(self, pi: simpi.SimPi, name: str, tag: str) -> str:
        """The `Docker-Content-Digest` the registry serves a node for `name:tag`."""
        out = pi.exec(
            "curl", "-fsSI", *(arg for a in ACCEPT for arg in ("-H", f"Accept: {a}")),
            f"http://{self.address}/v2/{name}/manifests/{tag}",
        ).stdout  # fmt: skip
        [digest] = [
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.lower().startswith("docker-content-digest:")
        ]
        return digest

    def close(self) -> None:
        _docker("rm", "-f", "-v", self.container, check=False)


@pytest.fixture(scope="module")
def hop(sim_lab: simpi.SimPiLab) -> simpi.SimPi:
    """The first server the pushes tunnel through."""
    return sim_lab.start_pi("hop")


@pytest.fixture(scope="module")
def registry(stand_ins: dict[str, str]) -> Iterator[Registry]:
    found = Registry(stand_ins["registry"])
    try:
        yield found
    finally:
        found.close()


def declared_stdin(build: ImageBuild, ref: str, target: BuildTarget, secret: str) -> str:
    """The stdin the program gives a push build (declared under mocks with `declare_build`, as
    the K3s target declares it); `secret` is in it, and only there, as a secret."""

    def program() -> None:
        declare_build(
            pulumi.ComponentResource("picluster:test:Builds", "builds"),
            "build",
            build,
            ref,
            target,
            pulumi.ResourceOptions(provider=CommandProvider("command")),
        )

    command = run(program, {}).named("build")
    assert command.is_secret("stdin")
    assert secret not in " ".join(command.plain_strings())
    assert secret in str(command.value("stdin"))
    return str(command.value("stdin"))


def tunnel_stdin(
    build: ImageBuild,
    ref: str,
    pi: simpi.SimPi,
    host_key: str,
    address: str,
    *,
    key_path: Path | None = None,
    passphrase: str | None = None,
    agent: bool = False,
) -> str:
    """The stdin of a TunnelPush build through `pi` (the first server) to `address`, signed in
    with the lab's key (or `key_path`, with its `passphrase`), or with the agent alone
    (`agent` and no key)."""
    key = None if agent and key_path is None else (key_path or pi.key_path).read_text()
    target = TunnelPush(
        server=SshTarget(
            host=pi.host,
            port=pi.port,
            user=pi.user,
            private_key=None if key is None else pulumi.Output.secret(key),
            private_key_password=None if passphrase is None else pulumi.Output.secret(passphrase),
            agent=agent,
            host_key=host_key,
        ),
        platforms=("linux/amd64",),
        registry_address=address,
    )
    return declared_stdin(build, ref, target, passphrase or (key or "").strip() or host_key)


def _host_key(pi: simpi.SimPi) -> str:
    return " ".join(pi.read("/etc/ssh/ssh_host_ed25519_key.pub").split()[:2])


def test_a_push_through_the_tunnel_lands_in_the_registry_once(
    hop: simpi.SimPi, registry: Registry, refs_to_remove: list[str]
) -> None:
    pi = hop
    build = plan_build("api", DEMO_API)
    ref = build.ref("registry.picluster.internal")
    refs_to_remove.append(ref)
    stdin = tunnel_stdin(build, ref, pi, _host_key(pi), registry.address)
    before = set(Path("/tmp").glob("picluster-image-build.*"))

    code, out, err, seconds = run_build(stdin)
    assert code == 0, err
    assert summary(out) == f"{ref} pushed"
    TIMINGS["demo API push through the tunnel"] = seconds
    manifest = registry.manifest(pi, "api", build.tag)
    assert manifest.get("schemaVersion") == 2, manifest
    local_id = _image_id(ref)
    assert local_id is not None and manifest["config"]["digest"] == local_id
    # The digest the pods pin: the one the registry serves the nodes for the tag.
    digest = registry.digest(pi, "api", build.tag)
    assert printed_digest(out) == digest

    code, out, err, _ = run_build(stdin)
    assert code == 0, err
    assert summary(out) == f"{ref} already in the registry"
    assert printed_digest(out) == digest
    assert "building" not in err and "Pushed" not in err
    # The key's temp file went with the work directory; it never reached the output.
    assert set(Path("/tmp").glob("picluster-image-build.*")) <= before  # others may run too
    key = pi.key_path.read_text().strip()
    assert key not in out + err


def _ssh_pids(port: str) -> list[int]:
    """The ssh processes forwarding loopback port `port`."""
    ps = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, timeout=30, check=True
    )
    return [
        int(line.split(None, 1)[0])
        for line in ps.stdout.splitlines()
        if f"-L 127.0.0.1:{port}:" in line and " ssh " in f" {line.split(None, 1)[1]}"
    ]


def test_a_killed_push_leaves_no_tunnel_and_no_key(
    hop: simpi.SimPi, registry: Registry, refs_to_remove: list[str], tmp_path: Path
) -> None:
    """A cancelled `pulumi up`: pulumi-command SIGKILLs the command's bash only (no trap runs).
    Killed while the tunnel is up (a source the registry does not have: it builds), no ssh stays
    behind and no key file is left on disk."""
    folder = _copy_of_demo(tmp_path, lambda f: (f / "cancelled.txt").write_text(f"{SESSION}\n"))
    build = plan_build("api", folder)
    ref = build.ref("registry.picluster.internal")
    refs_to_remove.append(ref)
    stdin = tunnel_stdin(build, ref, hop, _host_key(hop), registry.address)
    before = set(Path("/tmp").glob("picluster-image-build.*"))
    process = subprocess.Popen(
        ["bash", "-s"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdin is not None and process.stderr is not None
    process.stdin.write(stdin)
    process.stdin.close()
    lines: queue.Queue[str] = queue.Queue()
    stderr = process.stderr

    def read() -> None:
        for line in iter(stderr.readline, ""):
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    port = ""
    leftovers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not port and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if "tunnel to the registry" in line:
                port = line.rsplit(":", 1)[1].strip()
        assert port, "the tunnel never came up"
        assert _ssh_pids(port), "no ssh for the tunnel"
        assert process.poll() is None, "the build ended before it could be killed"
        process.kill()  # SIGKILL, as pulumi-command cancels
        process.wait(timeout=10)
        ends = time.monotonic() + 5
        while _ssh_pids(port) and time.monotonic() < ends:
            time.sleep(0.2)
        leftovers = _ssh_pids(port)
        assert leftovers == [], "ssh outlived the killed build"
        work = set(Path("/tmp").glob("picluster-image-build.*")) - before
        assert work, "no work directory"
        assert not [k for w in work if (k := w / "ssh" / "key").exists()], "the key file is left"
    finally:
        for pid in leftovers:  # only the ssh this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for w in set(Path("/tmp").glob("picluster-image-build.*")) - before:
            shutil.rmtree(w, ignore_errors=True)


def test_the_users_ssh_config_and_proxy_change_nothing(
    hop: simpi.SimPi, registry: Registry, refs_to_remove: list[str], tmp_path: Path
) -> None:
    """An ssh config that would send the connection elsewhere (a ProxyCommand) and an
    http_proxy in the environment, which would take the loopback probes: the push works."""
    build = plan_build("api", DEMO_API)
    ref = build.ref("registry.picluster.internal")
    refs_to_remove.append(ref)
    stdin = tunnel_stdin(build, ref, hop, _host_key(hop), registry.address)
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n    ProxyCommand /bin/false\n")
    proxy = "http://127.0.0.1:9"  # nothing listens there
    env = {
        **os.environ,
        **{k: proxy for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")},
        "no_proxy": "",
        "NO_PROXY": "",
    }
    # ssh reads the system-wide /etc/ssh/ssh_config (and ~/.ssh/config of the passwd home, not
    # $HOME): the test's config replaces it in a mount namespace of its own, for this run only.
    argv = (
        "unshare", "--mount", "--propagation", "private", "bash", "-c",
        'mount --bind "$0" /etc/ssh/ssh_config && exec bash -s', str(config),
    )  # fmt: skip
    code, out, err, _ = run_build(stdin, env=env, argv=argv)
    assert code == 0, err
    assert summary(out) in {f"{ref} pushed", f"{ref} already in the registry"}
    assert printed_digest(out) == registry.digest(hop, "api", build.tag)


PASSPHRASE = "tunnel-passphrase-3e9a"


def test_a_passphrase_protected_key_opens_the_tunnel_and_leaves_nothing(
    hop: simpi.SimPi, registry: Registry, refs_to_remove: list[str], tmp_path: Path
) -> None:
    """`sshKeyPassphrase`: ssh gets it from an SSH_ASKPASS helper reading a 0600 file, never from
    a command line or the environment; without it (or with a wrong one) the push stops."""
    key = simpi.generate_protected_key(tmp_path / "protected", PASSPHRASE)
    hop.authorize(key.with_suffix(".pub"))
    build = plan_build("api", DEMO_API)
    ref = build.ref("registry.picluster.internal")
    refs_to_remove.append(ref)
    work = tmp_path / "tmp"  # the build's own TMPDIR: what it leaves there is its own
    work.mkdir()
    no_agent = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"} | {"TMPDIR": str(work)}

    stdin = tunnel_stdin(
        build, ref, hop, _host_key(hop), registry.address, key_path=key, passphrase=PASSPHRASE
    )
    code, out, err, _ = run_build(stdin, env=no_agent)
    assert code == 0, err
    assert summary(out) in {f"{ref} pushed", f"{ref} already in the registry"}
    assert printed_digest(out) == registry.digest(hop, "api", build.tag)
    assert PASSPHRASE not in out + err
    assert list(work.iterdir()) == []  # the key, the passphrase and the helper went with it

    wrong = tunnel_stdin(
        build, ref, hop, _host_key(hop), registry.address, key_path=key, passphrase="wrong-one"
    )
    code, _, err, _ = run_build(wrong, env=no_agent)
    assert code != 0 and "could not reach the registry" in err
    missing = tunnel_stdin(build, ref, hop, _host_key(hop), registry.address, key_path=key)
    code, _, err, _ = run_build(missing, env=no_agent)
    assert code != 0 and "could not reach the registry" in err


def test_the_agent_alone_opens_the_tunnel(
    hop: simpi.SimPi, registry: Registry, refs_to_remove: list[str], tmp_path: Path
) -> None:
    """`ssh.agent`: no key in the stdin; the agent at the caller's SSH_AUTH_SOCK holds it (a
    passphrase-protected key, unlocked once with ssh-add)."""
    key = simpi.generate_protected_key(tmp_path / "agent-key", PASSPHRASE)
    hop.authorize(key.with_suffix(".pub"))
    build = plan_build("api", DEMO_API)
    ref = build.ref("registry.picluster.internal")
    refs_to_remove.append(ref)
    stdin = tunnel_stdin(build, ref, hop, _host_key(hop), registry.address, agent=True)
    assert "SSH_PRIVATE_KEY=''\n" in stdin and "SSH_AGENT=1\n" in stdin
    with simpi.SshAgent(tmp_path) as agent:
        # An agent without the key: refused.
        code, _, err, _ = run_build(stdin, env=agent.env())
        assert code != 0 and "could not reach the registry" in err
        agent.add(key, PASSPHRASE)
        code, out, err, _ = run_build(stdin, env=agent.env())
        assert code == 0, err
        assert summary(out) in {f"{ref} pushed", f"{ref} already in the registry"}
        assert printed_digest(out) == registry.digest(hop, "api", build.tag)
    no_agent = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    code, _, err, _ = run_build(stdin, env=no_agent)
    assert code != 0 and "ssh.agent is set but SSH_AUTH_SOCK is not" in err


def test_a_wrong_host_key_stops_the_push(
    sim_lab: simpi.SimPiLab, registry: Registry, refs_to_remove: list[str], tmp_path: Path
) -> None:
    pi = sim_lab.start_pi("impostor")
    (tmp_path / "other").mkdir()
    other = simpi.generate_key(tmp_path / "other").with_suffix(".pub").read_text().split()[:2]
    folder = _copy_of_demo(tmp_path, lambda f: (f / "extra.txt").write_text("not pushed\n"))
    build = plan_build("api", folder)
    ref = build.ref("registry.picluster.internal")
    refs_to_remove.append(ref)
    code, _, err, _ = run_build(tunnel_stdin(build, ref, pi, " ".join(other), registry.address))
    assert code != 0
    assert "could not reach the registry" in err
    assert registry.manifest(pi, "api", build.tag) == {}


def test_a_folder_with_its_own_dockerfile_builds_with_it_and_a_failing_build_fails(
    stand_ins: dict[str, str], refs_to_remove: list[str], tmp_path: Path
) -> None:
    folder = tmp_path / "own"
    folder.mkdir()
    (folder / ".dockerignore").write_text("secret.txt\n")
    (folder / "secret.txt").write_text("never in the image\n")
    (folder / "hello.txt").write_text("hello\n")
    (folder / "Dockerfile").write_text(
        f"FROM {stand_ins['node']}\nWORKDIR /srv\nCOPY . .\nUSER 1000:1000\n"
    )
    service = {"name": "own", "build": str(folder), "port": 3000}
    stdin = program_stdins({"app": {"services": [service]}})["app-own-build"]
    assert header_value(stdin, "DOCKERFILE_B64") == ""
    ref = _ref(stdin)
    refs_to_remove.append(ref)
    code, out, err, _ = run_build(stdin)
    assert code == 0, err
    assert summary(out) == f"{ref} built"
    listing = _docker("run", "--rm", ref, "ls", "/srv").stdout.split()
    assert "hello.txt" in listing and "secret.txt" not in listing  # its own .dockerignore

    (folder / "Dockerfile").write_text(f"FROM {stand_ins['node']}\nRUN exit 3\nUSER 1000\n")
    stdin = program_stdins({"app": {"services": [service]}})["app-own-build"]
    code, out, err, _ = run_build(stdin)
    assert code != 0
    assert SUMMARY not in out
    assert _image_id(_ref(stdin)) is None


def header_value(stdin: str, name: str) -> str:
    for line in stdin.splitlines():
        if line.startswith(f"{name}="):
            return line.removeprefix(f"{name}=").strip("'")
    raise AssertionError(f"no {name} in the stdin")


# --- a registry the user names -----------------------------------------------------------------

REGISTRY_USER = "studio"
REGISTRY_PASSWORD = f"registry-Pa55-{SESSION}"


@pytest.fixture(scope="module")
def private_registry(stand_ins: dict[str, str]) -> Iterator[str]:
    """A registry with an account (htpasswd, bcrypt), published on loopback: `host:port`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated, still in 3.11: the registry's htpasswd wants bcrypt

    folder = Path(tempfile.mkdtemp(prefix="picluster-bt-auth-"))
    (folder / "htpasswd").write_text(
        f"{REGISTRY_USER}:{crypt.crypt(REGISTRY_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"  # noqa: S324 - bcrypt
    )
    container = f"picluster-bt-{SESSION}-private-registry"
    _docker(
        "run", "-d", "--name", container, "-p", "127.0.0.1::5000",
        "-v", f"{folder}:/auth:ro",
        "-e", "REGISTRY_AUTH=htpasswd",
        "-e", "REGISTRY_AUTH_HTPASSWD_REALM=picluster-test",
        "-e", "REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd",
        stand_ins["registry"],
    )  # fmt: skip
    try:
        port = _docker("port", container, "5000/tcp").stdout.strip().splitlines()[0]
        address = f"127.0.0.1:{port.rsplit(':', 1)[1]}"
        _get_status(f"http://{address}/v2/", expect=401)
        yield address
    finally:
        _docker("rm", "-f", "-v", container, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _get_status(url: str, *, expect: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:
            status = None
        if status == expect:
            return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer {expect} in {timeout} s")


def _docker_config_snapshot() -> str:
    config = Path.home() / ".docker" / "config.json"
    return config.read_text() if config.exists() else "absent"


CREDENTIAL_HELPER = """#!/bin/sh
# TEST DOUBLE of the platform's credential helper (docker-credential-secretservice, the Linux
# keychain): the docker CLI picks it for a config with no auths when it is on PATH
# (docker/cli cli/config/config.go, credentials.DetectDefaultStore). It records each call.
printf '%s\\n' "$1" >>"$(dirname "$0")/calls"
case "$1" in
    get) echo "credentials not found in native keychain"; exit 1 ;;
    list) echo '{}' ;;
    *) cat >/dev/null ;;
esac
"""


def _registry_digest(address: str, repository: str, tag: str) -> str:
    """The `Docker-Content-Digest` the named registry serves for `repository:tag`."""
    token = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"http://{address}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": ", ".join(ACCEPT), "Authorization": f"Basic {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["Docker-Content-Digest"]


def test_a_push_to_a_named_registry_logs_in_privately_and_pushes_once(
    private_registry: str, refs_to_remove: list[str], tmp_path: Path
) -> None:
    build = plan_build("api", DEMO_API)
    ref = build.ref(f"{private_registry}/studio")
    refs_to_remove.append(ref)
    target = RegistryPush(
        platforms=("linux/amd64",),
        username=REGISTRY_USER,
        password=pulumi.Output.secret(REGISTRY_PASSWORD),
    )
    stdin = declared_stdin(build, ref, target, REGISTRY_PASSWORD)
    config_before = _docker_config_snapshot()
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    helper = helpers / "docker-credential-secretservice"
    helper.write_text(CREDENTIAL_HELPER)
    helper.chmod(0o755)
    env = {**os.environ, "PATH": f"{helpers}:{os.environ['PATH']}"}

    code, out, err, _ = run_build(stdin, env=env)
    assert code == 0, err
    assert summary(out) == f"{ref} pushed"
    code, out2, err2, _ = run_build(stdin, env=env)
    assert code == 0, err2
    assert summary(out2) == f"{ref} already in the registry"
    assert "Pushed" not in err2
    assert REGISTRY_PASSWORD not in out + err + out2 + err2
    assert _docker_config_snapshot() == config_before  # the account stayed in its temp config
    # Never handed to the platform's keychain: the credential helper was never called.
    assert not (helpers / "calls").exists(), (helpers / "calls").read_text()
    # The digest the pods pin, as the registry serves it (asked with the account: Basic auth).
    repository, tag = ref.split("/", 1)[1].rsplit(":", 1)
    digest = _registry_digest(private_registry, repository, tag)
    assert printed_digest(out) == printed_digest(out2) == digest

    wrong = RegistryPush(
        platforms=("linux/amd64",),
        username=REGISTRY_USER,
        password=pulumi.Output.secret("not-the-password"),
    )
    code, _, err, _ = run_build(declared_stdin(build, ref, wrong, "not-the-password"))
    assert code != 0
    assert SUMMARY not in err.splitlines()[-1]


# --- either Docker client ----------------------------------------------------------------------


def _clients() -> dict[str, str | None]:
    """Why each way of building with BuildKit cannot run here (None: it can)."""
    first = shutil.which("docker")
    has_buildx = first is not None and _docker("buildx", "version", check=False).returncode == 0
    old = [
        path
        for path in dict.fromkeys(
            str(Path(d) / "docker") for d in os.environ.get("PATH", "").split(os.pathsep)
        )
        if Path(path).exists() and _major(path) < 23
    ]
    return {
        "buildx": None if has_buildx else "the docker client on PATH has no buildx plugin",
        "built-in BuildKit": None if old else "no docker client older than 23 on PATH",
    }


def _major(client: str) -> int:
    out = subprocess.run([client, "--version"], capture_output=True, text=True, check=False)
    try:
        return int(out.stdout.split()[2].split(".")[0])
    except (IndexError, ValueError):
        return 0


@pytest.mark.parametrize("client", ["buildx", "built-in BuildKit"])
def test_either_docker_client_builds_with_buildkit(
    client: str, stand_ins: dict[str, str], refs_to_remove: list[str], tmp_path: Path
) -> None:
    reason = _clients()[client]
    if reason:
        unavailable(reason, "PICLUSTER_REQUIRE_BUILDX" if client == "buildx" else INTEGRATION)

    def mark(folder: Path) -> None:
        (folder / "client.txt").write_text(client)
        (folder / "node_modules" / "left-behind").mkdir(parents=True)
        (folder / "node_modules" / "left-behind" / "index.js").write_text("// not sent\n")

    folder = _copy_of_demo(tmp_path, mark)
    service = {"name": "api", "build": str(folder), "port": 3000, "path": "/api"}
    stdin = program_stdins({"app": {"services": [service]}})["app-api-build"]
    refs_to_remove.append(_ref(stdin))
    env = dict(os.environ)
    if client == "built-in BuildKit":
        # No CLI plugins: a client from 23 on cannot build, so the script must take an older one.
        (tmp_path / "docker-config").mkdir()
        env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
    result = subprocess.run(
        ["bash", "-s"], input=stdin, capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout) == f"{_ref(stdin)} built"
    used = next(line for line in result.stderr.splitlines() if "image-build: with " in line)
    assert ("buildx" in used) == (client == "buildx"), used
    # The generated ignore file applied with this client too: no node_modules from the folder.
    listing = _docker("run", "--rm", _ref(stdin), "ls", "/app", "/app/node_modules").stdout
    assert "client.txt" in listing.split()
    assert "left-behind" not in listing
