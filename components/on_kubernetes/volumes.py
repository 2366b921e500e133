"""Persistent volume claims, and what a bigger configured size can and cannot do to one.

A claim's storage request can only grow in place when its StorageClass has
`allowVolumeExpansion`; K3s's `local-path` has none, and the API server rejects the patch. So on
such a class the request is left out of updates (`ignore_changes`) and a changed size is
reported as a warning naming the config key, instead of failing `pulumi up` half-way.
local-path does not enforce a size at all: the volume is a directory on one node's disk.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.on_kubernetes.platform import KubernetesPlatform
from components.on_kubernetes.pods import metadata

STORAGE_REQUEST = "spec.resources.requests.storage"
"""The claim's size, as an `ignore_changes` property path."""

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$")
_UNITS = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity_bytes(quantity: str) -> float | None:
    """Bytes in a Kubernetes storage quantity (`5Gi`, `500M`), or None if it is not one."""
    match = _QUANTITY.match(quantity)
    return None if match is None else float(match[1]) * _UNITS[match[2]]


def resize_warning(
    config_key: str, configured: str, recorded: str, claim: str, platform: KubernetesPlatform
) -> str | None:
    """What to tell the user when `configured` differs from the size the claim has; None when
    they are the same quantity (`5Gi` and `5120Mi` are)."""
    if configured == recorded:
        return None
    configured_bytes, recorded_bytes = quantity_bytes(configured), quantity_bytes(recorded)
    if configured_bytes is not None and configured_bytes == recorded_bytes:
        return None
    return (
        f"{config_key} is {configured}, but the claim {claim} was created with {recorded} and "
        f"keeps it: the {platform.storage_class} StorageClass cannot resize a claim, so picluster "
        "leaves the size alone rather than send a patch the API server rejects. local-path does "
        "not enforce sizes anyway: the volume is a directory under /var/lib/rancher/k3s/storage "
        "on one node, limited only by that node's disk. To give it more room, free or grow that "
        "disk; to move the data to a bigger one, see the README section 'Storage sizes'. Set "
        f"{config_key} back to {recorded} to silence this warning."
    )


def _recorded_size(spec: Any) -> str | None:
    resources = getattr(spec, "resources", None)
    requests = getattr(resources, "requests", None) or {}
    size = requests.get("storage") if isinstance(requests, dict) else None
    return size if isinstance(size, str) else None


def persistent_volume_claim(
    resource_name: str,
    namespace: pulumi.Input[str],
    name: str,
    component: str,
    size: str,
    *,
    config_key: str,
    platform: KubernetesPlatform,
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.PersistentVolumeClaim:
    """A ReadWriteOnce claim of `size` on the platform's StorageClass.

    `config_key` names the setting `size` comes from (`picluster:app.database.storage`) for the
    warning given when it no longer matches the claim on a class that cannot expand.
    """
    fixed_size = not platform.storage_class_expands
    claim = k8s.core.v1.PersistentVolumeClaim(
        resource_name,
        metadata=metadata(name, namespace, component),
        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
            access_modes=["ReadWriteOnce"],
            storage_class_name=platform.storage_class,
            resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": size}),
        ),
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(ignore_changes=[STORAGE_REQUEST] if fixed_size else None)
        ),
    )
    if fixed_size:
        # With the request ignored, the claim's output keeps the size it was created with.
        def warn(spec: Any) -> None:
            recorded = _recorded_size(spec)
            message = (
                resize_warning(config_key, size, recorded, name, platform)
                if recorded is not None
                else None
            )
            if message is not None:
                pulumi.log.warn(message, resource=claim)

        claim.spec.apply(warn)
    return claim
