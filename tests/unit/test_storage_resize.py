"""A bigger configured storage size on K3s: no rejected PVC patch, a warning naming the key.

The engine applies `ignore_changes` by sending the stored value instead of the new one, so the
claim's outputs keep the size it was created with. `RecordedSizes` plays that part: it answers
for each claim with the size a first `pulumi up` recorded, whatever the program now asks for.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest

from components.on_kubernetes import volumes
from components.on_kubernetes.platform import KubernetesPlatform
from components.on_kubernetes.prometheus import retention_size
from tests import harness
from tests.harness import Run, run_main, stack_file_config, unwrap

PVC = "kubernetes:core/v1:PersistentVolumeClaim"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-resize-test-key\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
CREATED_WITH = {
    "postgres-data": "5Gi",
    "postgres-backups": "2Gi",
    "prometheus-data": "10Gi",
    "grafana-data": "1Gi",
    "alertmanager-data": "128Mi",
    "registry-data": "10Gi",
}
"""The defaults: what a first `pulumi up` gave each claim."""
BIGGER = {
    "app": {"database": {"storage": "20Gi", "backup": {"storage": "4Gi"}}},
    "monitoring": {"storage": "30Gi", "grafanaStorage": "2Gi", "alerts": {"storage": "256Mi"}},
    "images": {"registryStorage": "20Gi"},
}
KEYS = {
    "postgres-data": "picluster:app.database.storage",
    "postgres-backups": "picluster:app.database.backup.storage",
    "prometheus-data": "picluster:monitoring.storage",
    "grafana-data": "picluster:monitoring.grafanaStorage",
    "alertmanager-data": "picluster:monitoring.alerts.storage",
    "registry-data": "picluster:images.registryStorage",
}


class RecordedSizes(harness.ProgramMocks):
    """The mocks, with each claim's storage request as the engine returns it under
    `ignore_changes`: the size recorded when the claim was created."""

    def new_resource(self, args: Any) -> tuple[str | None, dict]:
        resource_id, state = super().new_resource(args)
        if args.typ == PVC:
            name = state["metadata"]["name"]
            state["spec"]["resources"]["requests"]["storage"] = CREATED_WITH[name]
        return resource_id, state


def run_prod(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch | None = None) -> Run:
    if monkeypatch is not None:
        monkeypatch.setattr(harness, "ProgramMocks", RecordedSizes)
    prod = stack_file_config("prod")
    merged = {**prod, **config}
    if "app" in config:
        merged["app"] = {**prod.get("app", {}), **config["app"]}
    return run_main(
        {**merged, "sshPrivateKey": PRIVATE_KEY, "k3sToken": "K10resize-token-0123456789"},
        stack="prod",
        secret_keys=("sshPrivateKey", "k3sToken"),
    )


def claims(result: Run) -> dict[str, Any]:
    return {r.value("metadata")["name"]: r for r in result.of_type(PVC)}


def test_every_claim_leaves_its_size_out_of_updates_on_local_path() -> None:
    found = claims(run_prod({}))
    assert set(found) == set(CREATED_WITH)
    for name, claim in found.items():
        assert claim.ignore_changes == [volumes.STORAGE_REQUEST], name
        assert claim.value("spec")["storageClassName"] == "local-path"


def test_a_bigger_size_warns_once_per_claim_naming_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = run_prod(BIGGER, monkeypatch)
    resize_warnings = [w for w in result.warnings if "cannot resize a claim" in w]
    assert len(resize_warnings) == len(KEYS)
    for claim, key in KEYS.items():
        (warning,) = [w for w in resize_warnings if w.startswith(f"{key} is ")]
        assert f"the claim {claim} was created with {CREATED_WITH[claim]}" in warning
        assert "local-path" in warning
        assert "'Storage sizes'" in warning


def test_unchanged_or_equal_sizes_do_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    # 5120Mi is 5Gi: the same quantity spelled differently is no resize.
    result = run_prod({"app": {"database": {"storage": "5120Mi"}}}, monkeypatch)
    assert not [w for w in result.warnings if "cannot resize a claim" in w]


def test_prometheus_retention_still_follows_monitoring_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = run_prod(BIGGER, monkeypatch)
    prometheus = next(
        r
        for r in result.of_type("kubernetes:apps/v1:Deployment")
        if r.value("metadata")["name"] == "prometheus"
    )
    args = unwrap(prometheus.inputs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--storage.tsdb.retention.size={retention_size('30Gi')}" in args


def test_a_class_that_expands_gets_the_patch_and_no_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(harness, "ProgramMocks", RecordedSizes)
    platform = KubernetesPlatform(storage_class="longhorn", storage_class_expands=True)
    result = harness.run(_claim_program(platform), {})
    (claim,) = result.of_type(PVC)
    assert claim.ignore_changes == []
    assert claim.value("spec")["storageClassName"] == "longhorn"
    assert result.warnings == []


def _claim_program(platform: KubernetesPlatform) -> Any:
    def body() -> None:
        provider = k8s.Provider("unit-k8s", kubeconfig="{}")
        volumes.persistent_volume_claim(
            "data",
            "game",
            "postgres-data",
            "storage",
            "20Gi",
            config_key="picluster:app.database.storage",
            platform=platform,
            opts=pulumi.ResourceOptions(provider=provider),
        )

    return body


@pytest.mark.parametrize(
    ("configured", "recorded", "warns"),
    [("20Gi", "5Gi", True), ("5Gi", "5Gi", False), ("5120Mi", "5Gi", False), ("4Gi", "5Gi", True)],
)
def test_resize_warning_compares_quantities(configured: str, recorded: str, warns: bool) -> None:
    message = volumes.resize_warning(
        "picluster:app.database.storage",
        configured,
        recorded,
        "postgres-data",
        KubernetesPlatform(),
    )
    assert (message is not None) is warns
    if message is not None:
        assert message.startswith(f"picluster:app.database.storage is {configured}, ")
