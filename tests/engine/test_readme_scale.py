"""The README's "Scale a service" recipe, run with the real Pulumi CLI's `config set --path` on the
committed prod stack, gives a configuration the loader accepts: the demo API, the same service as
picluster's default, with three replicas. The one-line recipe, on a stack that lists no services,
gives one the loader refuses (which is why the README does not give it for that stack)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.app_model import ImageSource, Workload, build_app
from components.config import ConfigError, Settings, validate
from components.registries import REGISTRY_NAME
from tests.engine.conftest import ROOT, Project, make_project

pytestmark = pytest.mark.engine

README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n### {title}\n")
    return README[start : README.index("\n### ", start + 1)]


def _blocks(section: str, fence: str) -> list[list[str]]:
    """The command lines of each ```fence block in `section`."""
    return [
        [line.strip() for line in block.splitlines() if line.strip()]
        for block in re.findall(rf"```{fence}\n(.*?)```", section, re.S)
    ]


def _run(project: Project, line: str) -> None:
    """A README line `bin/pulumi config set ...`, with the CLI itself (the test's environment
    holds the passphrase that bin/pulumi would pick)."""
    argv = shlex.split(line)
    assert argv[:3] == ["bin/pulumi", "config", "set"], line
    result = project.pulumi(*argv[1:])
    assert result.returncode == 0, result.stderr


def _settings(project: Project) -> Settings:
    stack = yaml.safe_load((project.path / "Pulumi.prod.yaml").read_text())["config"]
    raw: dict[str, Any] = {key.split(":", 1)[1]: value for key, value in stack.items()}
    return validate(raw, project_dir=ROOT)


def _api(settings: Settings) -> Workload:
    app = build_app(settings.app, ImageSource(repository=REGISTRY_NAME, project_dir=ROOT))
    [api] = [w for w in app.services if w.name == "api"]
    return api


@pytest.fixture
def prod(engine_bin: Path, tmp_path: Path) -> Project:
    project = make_project(engine_bin, tmp_path)
    result = project.pulumi("stack", "init", "prod")
    assert result.returncode == 0, result.stderr
    return project


def test_the_demo_api_recipe_gives_the_same_service_with_three_replicas(prod: Project) -> None:
    [recipe] = _blocks(_section("Scale a service"), "sh")
    assert recipe[-1] == "bin/pulumi up -s prod --yes"
    default = _api(_settings(prod))
    for line in recipe[:-1]:
        _run(prod, line)
    api = _api(_settings(prod))
    assert api.replicas == 3 and default.replicas == 1
    for field in ("image", "port", "route", "probe", "metrics_path", "secret_env"):
        assert getattr(api, field) == getattr(default, field), field


def test_the_one_line_recipe_is_refused_on_a_stack_without_services(prod: Project) -> None:
    [own_services] = [
        block
        for block in _blocks(_section("Scale a service"), "text")
        if any("replicas" in line for line in block)
    ]
    [line] = [line for line in own_services if "config set" in line]
    _run(prod, line)
    with pytest.raises(ConfigError) as refused:
        _settings(prod)
    assert "picluster:app.services[0].name: is required" in str(refused.value)
    assert "picluster:app.services[0].port: is required" in str(refused.value)
