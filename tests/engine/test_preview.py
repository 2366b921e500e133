"""`pulumi preview` of the prod stack with the real engine, as a pull request runs it.

The engine applies the rules the mocks skip: a resource on a disabled default provider is refused
(prod was, before the command provider was made explicit), replaceOnChanges, secrets. With no
cluster yet, every remote step and Kubernetes object must be planned as a create.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from typing import Any

import pytest

from tests.engine.conftest import ROOT, Project

pytestmark = pytest.mark.engine

FAKE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nZW5naW5lLXRlc3QtbmV2ZXItZGlhbGxlZA==\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
"""Never dialled: a preview runs no remote command."""
SECRETS = {
    "k3sToken": "engine-preview-token-0123456789abcdef",
    "dbPassword": "engine-preview-db-password",
    "grafanaAdminPassword": "engine-preview-grafana-password",
}
"""Given, so no RandomPassword is needed (pulumi-resource-random cannot be built here)."""


def _preview(project: Project) -> dict[str, Any]:
    assert project.pulumi("stack", "init", "prod").returncode == 0
    project.set_secret("prod", "sshPrivateKey", FAKE_KEY)
    for key, value in SECRETS.items():
        project.set_secret("prod", key, value)
    result = project.pulumi("preview", "-s", "prod", "--json")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for value in (*SECRETS.values(), "ZW5naW5lLXRlc3QtbmV2ZXItZGlhbGxlZA"):
        assert value not in result.stdout + result.stderr
    return json.loads(result.stdout)


def test_prod_preview_on_a_fresh_stack_plans_every_step_as_a_create(project: Project) -> None:
    preview = _preview(project)
    steps = preview["steps"]
    assert {s["op"] for s in steps} == {"create"}
    types = Counter(s["urn"].split("::")[2].rsplit("$", 1)[-1] for s in steps)
    # Three Pis: prepare, gate, drain, K3s install and node check on each, one kubeconfig read,
    # and the single server's SQLite snapshot timer.
    assert types["command:remote:Command"] == 17
    assert types["pulumi:providers:command"] == 1
    assert types["pulumi:providers:kubernetes"] == 1
    assert types["kubernetes:apps/v1:StatefulSet"] == 1
    # Nothing fell back to a default provider (the engine would have refused it).
    assert not [s["urn"] for s in steps if "default_" in s["urn"].rsplit("::", 1)[-1]]
    assert preview["changeSummary"] == {"create": len(steps)}


def test_the_kubeconfig_and_the_install_stdin_stay_secret(project: Project) -> None:
    steps = {s["urn"].rsplit("::", 1)[-1]: s for s in _preview(project)["steps"]}
    install = steps["cluster-pi-agent-1-k3s"]["newState"]["inputs"]
    assert install["stdin"] == "[secret]"
    assert install["connection"] == "[secret]"
    assert "triggers" not in install  # a new version or config is an update, never a replace
    read = steps["cluster-kubeconfig"]["newState"]
    assert "stdout" in read["additionalSecretOutputs"]  # the admin kubeconfig
    assert read["inputs"]["logging"] == "stderr"


def test_the_policy_pack_runs_under_the_engine_and_the_prod_stack_passes(project: Project) -> None:
    # As a pull request's preview runs it: `--policy-pack policy`, the pack's venv (CONTRIBUTING.md:
    # "The policy pack") being the project's own here.
    shutil.copytree(ROOT / "policy", project.path / "policy", ignore=shutil.ignore_patterns("venv"))
    (project.path / "policy" / "venv").symlink_to(ROOT / ".venv")
    assert project.pulumi("stack", "init", "prod").returncode == 0
    project.set_secret("prod", "sshPrivateKey", FAKE_KEY)
    for key, value in SECRETS.items():
        project.set_secret("prod", key, value)
    result = project.pulumi("preview", "-s", "prod", "--policy-pack", "policy")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "picluster@v0.1.0 (local: policy)" in result.stdout
    assert "mandatory" not in result.stdout
