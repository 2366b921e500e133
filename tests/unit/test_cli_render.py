"""`bin/picluster manifests` and `bin/picluster compose` against the Pulumi path: what they write
equals what the program declares for `pulumi up` (recorded by the tests' own harness, under its
own mocks), for the committed stacks and for the example studio's app; no secret lands in a
written file; the objects validate against the pinned K3s minor's schemas."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import compose, manifests
from cli.__main__ import main
from tests.harness import Run, mock_digest, mock_image_id, run_main, stack_file_config
from tests.k8s_manifests import kubernetes_minor, validate_manifests
from tests.k8s_manifests import manifests as declared_manifests

ROOT = Path(__file__).resolve().parents[2]
STUDIO_APP = yaml.safe_load((ROOT / "examples" / "studio" / "Pulumi.studio.yaml").read_text())[
    "config"
]["picluster:app"]
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nunit\n-----END OPENSSH PRIVATE KEY-----\n"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def stack_file(tmp_path: Path, stack: str, config: dict[str, Any]) -> Path:
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump({"config": {f"picluster:{k}": v for k, v in config.items()}}))
    return path


PROD = {**stack_file_config("prod"), "ssh": {"user": "pi", "port": 22}, "sshPrivateKey": KEY}
CASES = {
    "prod": PROD,
    "prod-studio": {**PROD, "app": {**PROD.get("app", {}), **STUDIO_APP}},
}


def _key(manifest: dict[str, Any]) -> tuple[str, str, str]:
    meta = manifest["metadata"]
    return manifest["kind"], meta.get("namespace", ""), meta["name"]


def _pods(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def _essentials(manifest: dict[str, Any], built: dict[str, str]) -> dict[str, Any]:
    """Kind, name, namespace and the fields a deployer checks: images (a pushed image's digest
    taken off: `manifests` names the content tag), replicas, ports."""
    found: dict[str, Any] = {"key": _key(manifest)}
    if manifest["kind"] in (*WORKLOADS, "CronJob"):
        pods = _pods(manifest)
        containers = [*pods.get("initContainers", []), *pods["containers"]]
        found["images"] = [built.get(c["image"], c["image"]) for c in containers]
        found["ports"] = [p["containerPort"] for c in containers for p in c.get("ports", [])]
        found["replicas"] = manifest["spec"].get("replicas")
    if manifest["kind"] == "Service":
        found["ports"] = [(p["port"], p.get("targetPort")) for p in manifest["spec"]["ports"]]
    return found


def _pulumi_path(tmp_path: Path, case: str) -> tuple[Run, manifests.Rendered]:
    config = CASES[case]
    run = run_main(config, stack="prod", secret_keys=("sshPrivateKey",))
    rendered = manifests.render("prod", stack_file(tmp_path, "prod", config))
    return run, rendered


@pytest.mark.parametrize("case", CASES)
def test_manifests_are_the_objects_the_pulumi_path_declares(tmp_path: Path, case: str) -> None:
    run, rendered = _pulumi_path(tmp_path, case)
    declared = declared_manifests(run)
    built = {
        f"{r.value('name')}@{mock_digest(r.value('name'))}": r.value("name")
        for r in run.of_type("docker:index/remoteImage:RemoteImage")
    }
    # Built images: the harness pins the mocked push's digest.
    for command in run.of_type("command:local:Command"):
        ref = str(command.value("stdin")).split("REF=", 1)[1].split("\n", 1)[0].strip("'")
        built[f"{ref}@{mock_digest(ref)}"] = ref
    expected = sorted(
        (_essentials(m, built) for m in declared if m["kind"] != "Secret"), key=lambda e: e["key"]
    )
    got = sorted((_essentials(m, {}) for m in rendered.objects), key=lambda e: e["key"])
    assert got == expected
    assert len(got) > 40
    # Every Secret the Pulumi path declares is listed, with its keys.
    secrets = {(s.namespace, s.name): set(s.keys) for s in rendered.secrets}
    assert secrets == {
        (m["metadata"]["namespace"], m["metadata"]["name"]): set(m["stringData"])
        for m in declared
        if m["kind"] == "Secret"
    }


def test_manifests_name_each_built_image_by_its_content_tag(tmp_path: Path) -> None:
    _, rendered = _pulumi_path(tmp_path, "prod-studio")
    images = {
        c["image"]
        for m in rendered.objects
        if m["kind"] in (*WORKLOADS, "CronJob")
        for c in [*_pods(m).get("initContainers", []), *_pods(m)["containers"]]
    }
    refs = {b.ref for b in rendered.builds}
    assert {r.split("/")[1].split(":")[0] for r in refs} == {"frontend", "scores", "leaderboard"}
    assert refs <= images
    assert not [i for i in images if "@sha256:" in i]


def test_manifests_write_no_secret_and_say_which_secrets_the_pods_need(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = {**PROD, "dbPassword": "db-Secret-4711", "grafanaAdminPassword": "gf-Secret-4712"}
    path = stack_file(tmp_path, "prod", config)
    rendered = manifests.render("prod", path)
    written = manifests.write(rendered, out, "prod")
    text = "".join(p.read_text() for p in out.iterdir())
    assert "Secret-471" not in text
    assert not [p for p in written if yaml.safe_load(p.read_text())["kind"] == "Secret"]
    assert "checksum/secrets" not in text
    guide = (out / manifests.SECRETS_FILE).read_text()
    assert (
        "kubectl create secret generic app-secrets -n game "
        "--from-file=database-url=./app-secrets.database-url "
        "--from-file=db-password=./app-secrets.db-password"
    ) in guide
    # A password the stack sets is named by its key; a generated one by its resource.
    assert f"#   database-url: {manifests.KEY_DESCRIPTIONS['database-url']}" in guide
    assert "#   admin-password: <picluster:grafanaAdminPassword>" in guide
    generated = manifests.secrets_text(
        "prod", manifests.render("prod", stack_file(tmp_path, "p", PROD))
    )
    assert "#   db-password: <db-password>" in generated
    assert "read by StatefulSet/postgres" in guide
    assert "monitoring/grafana, read by Deployment/grafana" in guide


def test_manifests_validate_against_the_pinned_k3s_minor(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifests.write(manifests.render("prod", stack_file(tmp_path, "prod", PROD)), out, "prod")
    objects = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    assert objects[0]["kind"] == "Namespace" and objects[-1]["kind"] == "Ingress"
    assert validate_manifests(objects, kubernetes_minor(PROD["k3s"]["version"])) == []


def test_manifests_refuses_a_docker_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifests", "-s", "local"]) == 1
    assert "bin/picluster compose" in capsys.readouterr().err


# --- compose --------------------------------------------------------------------------------

LOCAL = {"target": "docker"}
LOCAL_CASES = {"local": LOCAL, "local-studio": {**LOCAL, "app": STUDIO_APP}}
CONTAINER = "docker:index/container:Container"


def _compose(tmp_path: Path, case: str) -> tuple[Run, compose.Compose, dict[str, str]]:
    out = tmp_path / "c" / "docker-compose.yml"
    out.parent.mkdir()
    composed, passwords = compose.render(
        "local", out, stack_file(tmp_path, "local", LOCAL_CASES[case])
    )
    compose.write(composed, passwords, out)
    run = run_main(
        {**LOCAL_CASES[case], **passwords},
        stack="local",
        secret_keys=tuple(passwords),
    )
    return run, composed, passwords


def _unescape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", LOCAL_CASES)
def test_compose_services_are_the_containers_the_pulumi_path_declares(
    tmp_path: Path, case: str
) -> None:
    run, composed, _ = _compose(tmp_path, case)
    document = _unescape(composed.document)
    by_id = {
        mock_image_id(r.value("name")): r.value("name")
        for r in run.of_type("docker:index/remoteImage:RemoteImage")
    }
    prefix = run.named("app-network").value("name").removesuffix("-app")
    volumes = {
        r.value("name"): r.value("name").removeprefix(f"{prefix}-")
        for r in run.of_type("docker:index/volume:Volume")
    }
    expected: dict[str, Any] = {}
    for c in run.of_type(CONTAINER):
        health = c.value("healthcheck")
        expected[c.value("name").removeprefix(f"{prefix}-")] = {
            "image": by_id[c.value("image")],
            "env": sorted(e.split("=", 1)[0] for e in c.value("envs") or []),
            "ports": sorted(
                f"{p['ip']}:{int(p['external'])}:{int(p['internal'])}"
                for p in c.value("ports") or []
            ),
            "mounts": sorted(
                (volumes.get(v.get("volumeName"), v.get("hostPath")), v["containerPath"])
                for v in c.value("volumes") or []
            ),
            "files": sorted(u["file"] for u in c.value("uploads") or []),
            "health": health and health["tests"],
            "command": c.value("command"),
            "aliases": c.value("networksAdvanced")[0].get("aliases"),
            "restart": c.value("restart"),
        }
    got: dict[str, Any] = {}
    for name, s in document["services"].items():
        env_files = [
            line.split("=", 1)[0]
            for f in s.get("env_file", [])
            for line in (tmp_path / "c" / f).read_text().splitlines()
        ]
        got[name] = {
            "image": s["image"],
            "env": sorted([*s.get("environment", {}), *env_files]),
            "ports": sorted(s.get("ports", [])),
            "mounts": sorted(tuple(v.split(":")[:2]) for v in s.get("volumes", [])),
            "files": sorted(x["target"] for x in [*s.get("configs", []), *s.get("secrets", [])]),
            "health": s.get("healthcheck", {}).get("test"),
            "command": s.get("command"),
            "aliases": s["networks"]["app"]["aliases"],
            "restart": s["restart"],
        }
    assert got == expected
    # Each uploaded file's content is the one Pulumi uploads.
    for c in run.of_type(CONTAINER):
        service = document["services"][c.value("name").removeprefix(f"{prefix}-")]
        for upload in c.value("uploads") or []:
            config = next(
                (x for x in service.get("configs", []) if x["target"] == upload["file"]), None
            )
            if config is None:
                secret = next(x for x in service["secrets"] if x["target"] == upload["file"])
                content = (
                    tmp_path / "c" / document["secrets"][secret["source"]]["file"]
                ).read_text()
            else:
                content = document["configs"][config["source"]]["content"]
            assert content == upload["content"], upload["file"]


def test_compose_waits_as_pulumi_up_does(tmp_path: Path) -> None:
    _, composed, _ = _compose(tmp_path, "local-studio")
    services = composed.document["services"]
    [migration] = [name for name in services if "-migrate-" in name]
    assert services[migration]["restart"] == "no"
    assert services[migration]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["scores-1"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        migration: {"condition": "service_completed_successfully"},
    }
    assert services["frontend"]["depends_on"]["scores-1"] == {"condition": "service_healthy"}
    # Built from picluster's Dockerfile, tagged as `pulumi up` tags it.
    scores = services["scores-1"]
    assert scores["image"].startswith("picluster-local/scores:")
    dockerfile = Path(scores["build"]["dockerfile"])
    assert "npm ci --omit=dev" in dockerfile.read_text()
    assert Path(f"{dockerfile}.dockerignore").is_file()
    assert services["leaderboard-1"]["build"] == {
        "context": str(ROOT / "examples" / "studio" / "services" / "leaderboard")
    }


def test_compose_keeps_secrets_in_files_and_escapes_dollars(tmp_path: Path) -> None:
    _, composed, passwords = _compose(tmp_path, "local")
    folder = tmp_path / "c"
    text = (folder / "docker-compose.yml").read_text()
    assert all(p not in text for p in passwords.values())
    secrets = folder / compose.SECRETS_DIR
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert (secrets / ".gitignore").read_text() == "*\n"
    assert (secrets / "db-password").read_text() == passwords["dbPassword"]
    assert stat.S_IMODE((secrets / "api-1.env").stat().st_mode) == 0o600
    assert passwords["dbPassword"] in (secrets / "api-1.env").read_text()
    # Compose interpolates `$`: the alert rules' `$labels` and `$value` survive as `$$`.
    rules = composed.document["configs"]["prometheus-etc-prometheus-alerts-yml"]["content"]
    assert "$$labels" in rules and "$labels" not in rules.replace("$$", "")
    # A second run keeps the passwords the database volume was initialised with.
    _, kept = compose.render("local", folder / "docker-compose.yml", None)
    assert kept == passwords


def test_compose_refuses_a_k3s_stack(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "c" / "docker-compose.yml"
    assert main(["compose", "-s", "prod", "--out", str(out)]) == 1
    assert "bin/picluster manifests" in capsys.readouterr().err
    assert not out.exists()


def test_the_commands_write_where_they_are_told(tmp_path: Path) -> None:
    out = tmp_path / "twin" / "docker-compose.yml"
    assert main(["compose", "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["name"] == "picluster-local-compose"
    assert main(["manifests", "-s", "prod", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / manifests.SECRETS_FILE).is_file()
    # A second run removes what the stack no longer declares.
    stale = tmp_path / "m" / "02-deployment-game-gone.yaml"
    stale.write_text("{}")
    assert main(["manifests", "-s", "prod", "--out", str(tmp_path / "m")]) == 0
    assert not stale.exists()
