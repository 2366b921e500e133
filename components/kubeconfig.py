"""The kubeconfig K3s writes, made usable from outside the cluster.

K3s writes `/etc/rancher/k3s/k3s.yaml` for `https://127.0.0.1:6443` with cluster, user and context
all named `default`. picluster parses it as YAML (never string replacement), points the cluster at
the first server's address, and names everything after the stack, so it can sit next to other
clusters in a user's `~/.kube/config`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import yaml


class KubeconfigError(ValueError):
    """The kubeconfig read from the first server is unusable; the message never quotes it."""


def rewrite_kubeconfig(raw: str, server_url: str, name: str) -> str:
    """`raw` with every cluster's server set to `server_url` and its entries renamed to `name`.

    Raises KubeconfigError, without any of the content (it holds the admin credentials, and a
    YAML error would quote the offending line), when `raw` is not a kubeconfig.
    """
    try:
        return _rewrite(raw, server_url, name)
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError):
        pass
    raise KubeconfigError(
        f"the kubeconfig read from the first server ({len(raw)} bytes, content withheld: it "
        "holds the cluster's admin credentials) is not a K3s kubeconfig with clusters, users and "
        "contexts; on that server check /etc/rancher/k3s/k3s.yaml and `journalctl -u k3s`"
    )


def _rewrite(raw: str, server_url: str, name: str) -> str:
    document: dict[str, Any] = yaml.safe_load(raw)
    if not isinstance(document, dict) or not all(
        document.get(section) for section in ("clusters", "users", "contexts")
    ):
        raise ValueError("not a kubeconfig")
    renames: dict[str, str] = {}
    for section, key in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
        for entry in document.get(section) or []:
            renames[entry["name"]] = name
            entry["name"] = name
            if section == "clusters":
                entry[key]["server"] = server_url
    for entry in document.get("contexts") or []:
        context = entry["context"]
        context["cluster"] = renames.get(context.get("cluster"), context.get("cluster"))
        context["user"] = renames.get(context.get("user"), context.get("user"))
    document["current-context"] = name
    return yaml.safe_dump(document, sort_keys=False)


def ca_hash(raw: str) -> str:
    """The sha256 of the cluster CA in K3s's kubeconfig: the hash K3s's full token carries.

    K3s writes the bytes of its server CA file (server-ca.crt) into k3s.yaml's
    `certificate-authority-data`, serves the same bytes at /cacerts, and a joining node checks
    them against the token's hash (k3s-io/k3s pkg/clientaccess/token.go). Read from the
    kubeconfig that is read once, the hash is known in every later preview, so a re-run of the
    first server's install does not make every other node's token unknown.
    """
    try:
        document: dict[str, Any] = yaml.safe_load(raw)
        data = document["clusters"][0]["cluster"]["certificate-authority-data"]
        return hashlib.sha256(base64.b64decode(data, validate=True)).hexdigest()
    except (yaml.YAMLError, KeyError, IndexError, TypeError, binascii.Error):
        pass
    raise KubeconfigError(
        f"the kubeconfig read from the first server ({len(raw)} bytes, content withheld) has no "
        "cluster CA (certificate-authority-data), so the other nodes cannot check the cluster "
        "they join; on that server check /etc/rancher/k3s/k3s.yaml"
    )
