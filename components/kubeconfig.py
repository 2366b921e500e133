"""The kubeconfig K3s writes, made usable from outside the cluster.

K3s writes `/etc/rancher/k3s/k3s.yaml` for `https://127.0.0.1:6443` with cluster, user and context
all named `default`. picluster parses it as YAML (never string replacement), points the cluster at
the first server's address, and names everything after the stack, so it can sit next to other
clusters in a user's `~/.kube/config`.
"""

from __future__ import annotations

from typing import Any

import yaml


def rewrite_kubeconfig(raw: str, server_url: str, name: str) -> str:
    """`raw` with every cluster's server set to `server_url` and its entries renamed to `name`."""
    document: dict[str, Any] = yaml.safe_load(raw)
    if not isinstance(document, dict) or not document.get("clusters"):
        raise ValueError("the K3s kubeconfig has no clusters")
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
