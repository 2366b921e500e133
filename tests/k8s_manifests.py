"""Kubernetes objects a program run declared, as plain manifests, and their offline validation.

Each `kubernetes:*` registration's inputs are the object (apiVersion, kind, metadata, spec...),
with secret markers removed; `validate_manifests` checks them against the OpenAPI schema of one
Kubernetes minor version with `kubernetes-validate` (strict: unknown fields are errors).
"""

from __future__ import annotations

from typing import Any

from tests.harness import Run, unwrap

KUBERNETES_TYPE_PREFIX = "kubernetes:"


def manifests(run: Run) -> list[dict[str, Any]]:
    """Every Kubernetes object the run declared (providers excluded), as a manifest."""
    objects: list[dict[str, Any]] = []
    for registration in run.registrations:
        if not registration.type.startswith(KUBERNETES_TYPE_PREFIX):
            continue
        manifest = unwrap(registration.inputs)
        assert manifest.get("apiVersion") and manifest.get("kind"), registration.name
        objects.append(manifest)
    return objects


def kubernetes_minor(k3s_version: str) -> str:
    """`v1.31.4+k3s1` -> `1.31.0`, the schema version kubernetes-validate knows."""
    major, minor = k3s_version.removeprefix("v").split(".")[:2]
    return f"{major}.{minor}.0"


def validate_manifests(objects: list[dict[str, Any]], version: str) -> list[str]:
    """One message per object that does not validate against Kubernetes `version`."""
    import kubernetes_validate  # imported here: only these tests need it

    problems: list[str] = []
    for manifest in objects:
        name = f"{manifest['kind']}/{manifest.get('metadata', {}).get('name', '?')}"
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{name}: {error.message} at {list(error.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            api = manifest["apiVersion"]
            problems.append(f"{name}: {api} is not served by Kubernetes {version}")
    return problems


def assert_password_is_a_file(pod: dict[str, Any]) -> None:
    """The pod reads the database password from the app Secret's key mounted as a file, named by
    DB_PASSWORD_FILE; no environment variable carries it."""
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert not [name for name, e in env.items() if "valueFrom" in e], env
    path = env["DB_PASSWORD_FILE"]["value"]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"] == {
        "secretName": "app-secrets",
        "items": [{"key": "db-password", "path": path.rsplit("/", 1)[1]}],
        "defaultMode": 0o440,
    }
