"""`bin/picluster manifests` validated by the real kube-apiserver at the pinned K3s's Kubernetes
version (tools/cluster: v1.31.4 for K3s v1.31.4+k3s1): the namespaces created, every other object
applied with `kubectl apply --dry-run=server` (admission, schema and defaulting for that minor,
unknown fields refused), and the `kubectl create secret` commands of `secrets.txt` too.

Starts the lab's control plane (no Pis, no engine) on a free port; run it under the lab lock like
every lab test: `flock /tmp/picluster-lab.lock .venv/bin/pytest tests/engine/test_manifests_*.py`.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cli import manifests
from tests.availability import CLUSTER, unavailable
from tests.engine.prod_lab import VERSION, missing_cluster_binaries
from tests.harness import ROOT, stack_file_config

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nlab\n-----END OPENSSH PRIVATE KEY-----\n"
STUDIO_APP = yaml.safe_load((ROOT / "examples" / "studio" / "Pulumi.studio.yaml").read_text())[
    "config"
]["picluster:app"]


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    missing = missing_cluster_binaries()
    if missing:
        unavailable(f"control-plane binaries missing: {', '.join(missing)}", CLUSTER)
    state = tmp_path_factory.mktemp("manifests-lab") / "lab"
    nodes = [f"{n['name']}:{n['role']}" for n in stack_file_config("prod")["nodes"]]
    subprocess.run(
        [str(ROOT / "tools/cluster/up.sh"), "--state", str(state), *nodes],
        check=True,
        capture_output=True,
        timeout=300,
    )
    try:
        yield state / "admin.kubeconfig"
    finally:
        subprocess.run(
            [str(ROOT / "tools/cluster/down.sh"), "--state", str(state), "--purge"],
            capture_output=True,
            timeout=120,
            check=False,
        )


def kubectl(
    kubeconfig: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        check=False,
    )


def rendered(tmp_path: Path, app: dict[str, object] | None) -> Path:
    config = {**stack_file_config("prod"), "sshPrivateKey": KEY}
    if app is not None:
        config["app"] = {**config.get("app", {}), **app}
    stack_file = tmp_path / "Pulumi.prod.yaml"
    stack_file.write_text(
        yaml.safe_dump({"config": {f"picluster:{k}": v for k, v in config.items()}})
    )
    out = tmp_path / "manifests"
    manifests.write(manifests.render("prod", stack_file), out, "prod")
    return out


def test_the_lab_is_the_pinned_minor(kubeconfig: Path) -> None:
    version = yaml.safe_load(kubectl(kubeconfig, "version", "-o", "yaml").stdout)
    server = version["serverVersion"]
    assert (server["major"], server["minor"]) == tuple(VERSION.removeprefix("v").split(".")[:2])


@pytest.mark.parametrize("app", [None, STUDIO_APP], ids=["default", "studio"])
def test_the_api_server_accepts_every_object_and_secret(
    kubeconfig: Path, tmp_path: Path, app: dict[str, object] | None
) -> None:
    out = rendered(tmp_path, app)
    namespaces = sorted(out.glob("00-namespace-*.yaml"))
    created = kubectl(kubeconfig, "apply", *(f"--filename={p}" for p in namespaces))
    assert created.returncode == 0, created.stderr
    applied = kubectl(kubeconfig, "apply", "--dry-run=server", f"--filename={out}")
    assert applied.returncode == 0, applied.stderr
    files = [p for p in out.glob("*.yaml")]
    assert applied.stdout.count("(server dry run)") == len(files)

    # secrets.txt's commands, with a file for each key, as a user runs them.
    commands = [
        line
        for line in (out / manifests.SECRETS_FILE).read_text().splitlines()
        if line.startswith("kubectl create secret")
    ]
    assert len(commands) == 3
    for command in commands:
        argv = shlex.split(command)[1:]
        for arg in argv:
            if arg.startswith("--from-file="):
                (out / arg.split("=./", 1)[1]).write_text("lab-value")
        created = kubectl(kubeconfig, *argv, "--dry-run=server", cwd=out)
        assert created.returncode == 0, (command, created.stderr)


def test_a_wrong_object_is_refused(kubeconfig: Path, tmp_path: Path) -> None:
    """The check above can fail: the same API server refuses an object a wrong field breaks."""
    out = rendered(tmp_path, None)
    kubectl(kubeconfig, "apply", *(f"--filename={p}" for p in out.glob("00-namespace-*.yaml")))
    path = next(out.glob("02-deployment-game-api.yaml"))
    deployment = yaml.safe_load(path.read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    path.write_text(yaml.safe_dump(deployment))
    applied = kubectl(kubeconfig, "apply", "--dry-run=server", f"--filename={path}")
    assert applied.returncode != 0
    assert "containerPort" in applied.stderr
