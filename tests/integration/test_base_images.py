"""The stand-ins for the pinned base images (`baseimages.py`) do what picluster relies on.

- node: `node` runs as uid 1000 on a read-only root with a writable /tmp, through upstream's
  entrypoint; `npm ci --omit=dev` of a dependency-free project works in a BuildKit build with no
  network, and one with a dependency (`ms`) fetches it from registry.npmjs.org.
- nginx: serves /usr/share/nginx/html as uid 101 on a read-only root with picluster's own
  K3s configuration (`UNPRIVILEGED_NGINX_CONF` and `nginx_conf`), and started as root with the
  stock nginx.conf and picluster's Docker `default.conf`, its workers run as `nginx` and the
  frontend's own health check command passes.
- registry: as uid 1000 on a read-only root, it takes a `docker push 127.0.0.1:<port>/...` and
  serves the manifest back under the pushed digest; deletes are refused (upstream's config).
- a stale stand-in is rebuilt, a real (unlabelled) image under a pinned name is left alone.

Docker and root needed; each image is built once per recipe (about 80 s with the shared base,
then a few seconds per stand-in). `PICLUSTER_REQUIRE_INTEGRATION=1` turns skips into failures.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import versions
from components.app_model import AppModel, ImageSource, build_app
from components.config import AppConfig
from components.nginx import DOCKER_RESOLVER, nginx_conf
from components.on_kubernetes.app import UNPRIVILEGED_NGINX_CONF
from components.on_kubernetes.workloads import container_port
from tests.availability import INTEGRATION, unavailable
from tests.integration import baseimages

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO_API = ROOT / "components" / "assets" / "demo-api"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _docker(
    *argv: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *argv], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Unique names for what a test creates; every container and image named is removed after."""
    created: list[str] = []
    yield created
    for name in created:
        _docker("rm", "-f", "-v", name, timeout=60)
    for name in created:  # once no container uses them
        _docker("image", "rm", "-f", name, timeout=60)


def _name(names: list[str], prefix: str) -> str:
    name = f"picluster-test-{prefix}-{uuid.uuid4().hex[:8]}"
    names.append(name)
    return name


def _buildkit() -> None:
    """`DOCKER_BUILDKIT=1 docker build` works with this client, or the test cannot run."""
    version = _docker("version", "--format", "{{.Client.Version}}", timeout=30).stdout.strip()
    if version.split(".")[0].isdigit() and int(version.split(".")[0]) < 23:
        return  # clients before 23 drive the daemon's built-in BuildKit themselves
    if _docker("buildx", "version", timeout=30).returncode != 0:
        unavailable(
            f"Docker client {version} builds with BuildKit only through the buildx plugin, which "
            "is missing: run tools/buildx/build.sh",
            INTEGRATION,
        )


def _build(context: Path, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return _docker(
        "build", "--progress", "plain", *extra, "--tag", tag, str(context),
        timeout=600, env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )  # fmt: skip


def _wait_http(url: str, *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def _host_port(container: str, port: str) -> int:
    published = _ok(_docker("port", container, port)).splitlines()[0]
    return int(published.rsplit(":", 1)[1])


# --- the stand-ins themselves ---------------------------------------------------------------------


def test_stand_ins_take_the_pinned_names() -> None:
    assert baseimages.NODE.tag == versions.NODE
    assert baseimages.NGINX.tag == versions.NGINX
    assert baseimages.REGISTRY_IMAGE.tag == "registry:2.8.3"


def test_recipe_hash_covers_the_folder_and_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(baseimages.RECIPES / "registry", tmp_path / "registry")
    monkeypatch.setattr(baseimages, "RECIPES", tmp_path)
    image = baseimages.StandIn("picluster-test/x:1", "registry")
    before = image.recipe_hash()
    assert image.recipe_hash() == before
    (tmp_path / "registry" / "entrypoint.sh").chmod(0o644)
    assert image.recipe_hash() != before, "the executable bit is part of the recipe"
    (tmp_path / "registry" / "entrypoint.sh").chmod(0o755)
    assert image.recipe_hash() == before
    with (tmp_path / "registry" / "config.yml").open("a") as config:
        config.write("# changed\n")
    changed = image.recipe_hash()
    assert changed != before
    monkeypatch.setitem(baseimages.BASE_FILES, "etc/picluster-test", (0o644, "x\n"))
    assert image.recipe_hash() != changed, "a new base rebuilds every stand-in"


def test_a_stale_stand_in_is_rebuilt_and_a_real_image_left_alone(
    registry_image: str, names: list[str], tmp_path: Path
) -> None:
    stale = _name(names, "stale")
    image = baseimages.StandIn(stale, "registry")
    # A stand-in of an older recipe under the tag: rebuilt, labelled with the current hash.
    _import(tmp_path, stale, f"LABEL {baseimages.LABEL}=000000000000")
    assert baseimages.label(stale) == "000000000000"
    assert baseimages.ensure(image).built
    assert baseimages.label(stale) == image.recipe_hash()
    assert _ok(_docker("run", "--rm", "--entrypoint", "registry", stale, "--version"))
    assert not baseimages.ensure(image).built, "the current recipe is not built again"
    # An image without the label (as a real pull leaves) under the tag: kept as it is.
    real = _name(names, "real")
    _import(tmp_path, real)
    assert baseimages.label(real) == ""
    before = _ok(_docker("image", "inspect", "--format", "{{.Id}}", real))
    assert not baseimages.ensure(baseimages.StandIn(real, "registry")).built
    assert _ok(_docker("image", "inspect", "--format", "{{.Id}}", real)) == before


def _import(directory: Path, ref: str, *changes: str) -> None:
    """A one-file image as `ref` (docker import of a tar made here: nothing to pull)."""
    tar_path = directory / f"{uuid.uuid4().hex[:8]}.tar"
    with tarfile.open(tar_path, mode="w") as tar:
        content = b"picluster base-image test\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    flags = [arg for change in changes for arg in ("--change", change)]
    _ok(_docker("import", *flags, str(tar_path), ref))


# --- node -----------------------------------------------------------------------------------------


NODE_CHECK = """
const fs = require("node:fs"), os = require("node:os");
fs.writeFileSync("/tmp/ok", "ok");
let rootWritable = true;
try { fs.writeFileSync("/x", "x"); } catch (e) { rootWritable = e.code !== "EROFS"; }
const user = os.userInfo();
console.log(JSON.stringify({uid: process.getuid(), gid: process.getgid(),
  user: user.username, home: user.homedir, shell: user.shell, cwd: process.cwd(),
  tmp: fs.readFileSync("/tmp/ok", "utf8"), rootWritable, npm: fs.existsSync("/usr/bin/npm")}));
"""


def test_node_runs_as_uid_1000_on_a_read_only_root(node_image: str) -> None:
    # `-e` as the first argument: upstream's entrypoint puts `node` in front.
    out = _ok(_docker("run", "--rm", "--user", "1000:1000", "--read-only", "--tmpfs", "/tmp",
                      node_image, "-e", NODE_CHECK))  # fmt: skip
    assert json.loads(out) == {
        "uid": 1000,
        "gid": 1000,
        "user": "node",
        "home": "/home/node",
        "shell": "/bin/sh",
        "cwd": "/",
        "tmp": "ok",
        "rootWritable": False,
        "npm": True,
    }
    config = json.loads(
        _ok(_docker("image", "inspect", "--format", "{{json .Config}}", node_image))
    )
    assert config["Cmd"] == ["node"]
    assert config["Entrypoint"] == ["docker-entrypoint.sh"]
    assert config.get("WorkingDir", "") in ("", "/")
    assert not config.get("User")


def test_npm_ci_without_dependencies_builds_offline(
    node_image: str, names: list[str], tmp_path: Path
) -> None:
    _buildkit()
    shutil.copytree(DEMO_API, tmp_path / "api")
    (tmp_path / "api" / "Dockerfile").write_text(
        f"FROM {node_image}\n"
        "WORKDIR /app\n"
        "COPY package.json package-lock.json ./\n"
        "RUN npm ci --omit=dev --no-audit --no-fund\n"
        "COPY server.js ./\n"
        "USER 1000:1000\n"
        'CMD ["node", "server.js"]\n'
    )
    tag = _name(names, "api")
    build = _build(tmp_path / "api", tag, "--network", "none")
    assert build.returncode == 0, build.stdout + build.stderr
    assert "npm ci" in build.stdout + build.stderr
    container = _name(names, "api")
    _ok(_docker("run", "-d", "--name", container, "--read-only", "--tmpfs", "/tmp",
                "-e", "PORT=3000", "-p", "127.0.0.1::3000", tag))  # fmt: skip
    port = _host_port(container, "3000/tcp")
    _wait_http(f"http://127.0.0.1:{port}/api/hello")
    top = _ok(_docker("exec", container, "node", "-p", "process.getuid()"))
    assert top.strip() == "1000"


def test_npm_ci_fetches_a_dependency_from_the_npm_registry(
    node_image: str, names: list[str], tmp_path: Path
) -> None:
    """As a studio's build does: the npm registry is reached from the build container. This
    machine's egress re-signs TLS with a CA of its own, in the host's bundle only, so the build
    gets the host's bundle as a BuildKit secret (NODE_EXTRA_CA_CERTS); elsewhere the bundle is
    the public CAs and changes nothing."""
    _buildkit()
    try:
        urllib.request.urlopen("https://registry.npmjs.org/ms", timeout=10).close()
    except (urllib.error.URLError, OSError) as error:
        pytest.skip(f"registry.npmjs.org not reachable from this machine ({error})")
    project = tmp_path / "ms"
    project.mkdir()
    (project / "package.json").write_text(
        json.dumps({"name": "ms-user", "version": "1.0.0", "dependencies": {"ms": "2.1.3"}})
    )
    (project / "package-lock.json").write_text(
        json.dumps(
            {
                "name": "ms-user",
                "version": "1.0.0",
                "lockfileVersion": 3,
                "requires": True,
                "packages": {
                    "": {"name": "ms-user", "version": "1.0.0", "dependencies": {"ms": "2.1.3"}},
                    "node_modules/ms": {
                        "version": "2.1.3",
                        "resolved": "https://registry.npmjs.org/ms/-/ms-2.1.3.tgz",
                        "integrity": "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/"
                        "s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==",
                        "license": "MIT",
                    },
                },
            }
        )
    )
    (project / "index.js").write_text('console.log(require("ms")("2h"));\n')
    (project / "Dockerfile").write_text(
        f"FROM {node_image}\n"
        "WORKDIR /app\n"
        "COPY package.json package-lock.json ./\n"
        "RUN --mount=type=secret,id=ca,target=/run/host-ca.crt "
        "NODE_EXTRA_CA_CERTS=/run/host-ca.crt npm ci --omit=dev --no-audit --no-fund\n"
        "COPY index.js ./\n"
        "USER 1000:1000\n"
        'CMD ["node", "index.js"]\n'
    )
    tag = _name(names, "ms")
    build = _build(project, tag, "--secret", f"id=ca,src={HOST_CA_BUNDLE}")
    assert build.returncode == 0, build.stdout + build.stderr
    out = _ok(_docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", tag))
    assert out.strip() == "7200000"


# --- nginx ----------------------------------------------------------------------------------------


def _app_model() -> AppModel:
    return build_app(AppConfig(), ImageSource(repository="picluster-test", project_dir=ROOT))


def test_nginx_serves_as_uid_101_with_picluster_k3s_config(
    nginx_image: str, names: list[str], tmp_path: Path
) -> None:
    app = _app_model()
    port = container_port(app.frontend)
    (tmp_path / "nginx.conf").write_text(UNPRIVILEGED_NGINX_CONF)
    (tmp_path / "default.conf").write_text(nginx_conf(app, resolver=None, listen_port=port))
    (tmp_path / "hello.txt").write_text("hello from the stand-in\n")
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    container = _name(names, "nginx-k3s")
    _ok(_docker("run", "-d", "--name", container, "--user", "101:101", "--read-only",
                "--tmpfs", "/tmp", "--tmpfs", "/var/cache/nginx",
                "-v", f"{tmp_path / 'nginx.conf'}:/etc/nginx/nginx.conf:ro",
                "-v", f"{tmp_path / 'default.conf'}:/etc/nginx/conf.d/default.conf:ro",
                "-v", f"{tmp_path / 'hello.txt'}:/usr/share/nginx/html/hello.txt:ro",
                "-p", f"127.0.0.1::{port}", nginx_image))  # fmt: skip
    host_port = _host_port(container, f"{port}/tcp")
    _wait_http(f"http://127.0.0.1:{host_port}/healthz")
    with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/hello.txt", timeout=5) as response:
        assert response.read() == b"hello from the stand-in\n"
    # The frontend's health check command, pointed at the unprivileged port.
    url = f"http://127.0.0.1:{port}/healthz"
    _ok(_docker("exec", container, "sh", "-c", f"wget -q -O /dev/null {url}"))
    assert _uids(container) == {101}


def test_nginx_started_as_root_runs_workers_as_nginx_and_passes_the_health_check(
    nginx_image: str, names: list[str], tmp_path: Path
) -> None:
    """The Docker target: the image's own nginx.conf, picluster's default.conf on the frontend's
    port, started as root (as upstream, which drops to `user nginx` for the workers)."""
    app = _app_model()
    (tmp_path / "default.conf").write_text(nginx_conf(app, resolver=DOCKER_RESOLVER))
    (tmp_path / "default.conf").chmod(0o644)
    container = _name(names, "nginx-docker")
    _ok(_docker("run", "-d", "--name", container,
                "-v", f"{tmp_path / 'default.conf'}:/etc/nginx/conf.d/default.conf:ro",
                nginx_image))  # fmt: skip
    command = app.frontend.probe.command
    assert command is not None
    deadline = time.monotonic() + 30
    while (result := _docker("exec", container, *command)).returncode != 0:
        assert time.monotonic() < deadline, result.stdout + result.stderr
        time.sleep(0.3)
    assert "wget" in " ".join(command)
    page = _ok(_docker("exec", container, "wget", "-q", "-O", "-", "http://127.0.0.1:80/"))
    assert "Welcome to nginx" in page
    assert _uids(container) == {0, 101}, "master as root, workers as nginx"
    signal = _ok(_docker("image", "inspect", "--format", "{{.Config.StopSignal}}", nginx_image))
    assert signal.strip() == "SIGQUIT"
    started = time.monotonic()
    _ok(_docker("stop", "--time", "20", container))
    assert time.monotonic() - started < 10, "SIGQUIT stops nginx gracefully, not at the timeout"
    state = _ok(_docker("inspect", "--format", "{{.State.ExitCode}}", container))
    assert state.strip() == "0"


def _uids(container: str) -> set[int]:
    """The real uids of the container's nginx processes."""
    out = _ok(_docker("exec", container, "sh", "-c",
                      "for s in /proc/[0-9]*/status; do "
                      "if grep -q '^Name:.*nginx' $s 2>/dev/null; then "
                      "sed -n 's/^Uid:[[:space:]]*\\([0-9]*\\).*/\\1/p' $s; fi; done"))  # fmt: skip
    return {int(uid) for uid in out.split()}


# --- registry -------------------------------------------------------------------------------------


def test_registry_takes_a_push_and_serves_the_manifest(
    registry_image: str, names: list[str], tmp_path: Path
) -> None:
    container = _name(names, "registry")
    _ok(_docker("run", "-d", "--name", container, "--user", "1000:1000", "--read-only",
                "--tmpfs", "/var/lib/registry:uid=1000,gid=1000",
                "-p", "127.0.0.1::5000", registry_image))  # fmt: skip
    port = _host_port(container, "5000/tcp")
    _wait_http(f"http://127.0.0.1:{port}/v2/")
    repository = f"picluster-test-{uuid.uuid4().hex[:8]}"
    ref = f"127.0.0.1:{port}/{repository}:tag"
    names.append(ref)
    _import(tmp_path, ref)
    push = _ok(_docker("push", ref))
    digest = push.split("digest: ")[1].split()[0]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/{repository}/manifests/tag", headers={"Accept": MANIFEST_V2}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == digest
        assert json.loads(response.read())["mediaType"] == MANIFEST_V2
    delete = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/{repository}/manifests/{digest}", method="DELETE"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(delete, timeout=5)
    assert refused.value.code == 405, "deletes are off in upstream's config"
    stored = _ok(_docker("exec", container, "find", "/var/lib/registry", "-name", "data"))
    assert stored.strip(), "the layers are stored under /var/lib/registry"
