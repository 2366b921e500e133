"""The example studio (`examples/studio`): a game's build output and two service folders, one a
Node.js project with a migration, one with its own Dockerfile, deployable with no registry."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from components.app_model import build_app
from components.config import validate
from components.images import BuildKind
from tests.harness import ROOT, TEST_IMAGES

STUDIO = ROOT / "examples" / "studio"
APP: dict[str, Any] = yaml.safe_load((STUDIO / "Pulumi.studio.yaml").read_text())["config"][
    "picluster:app"
]
K3S: dict[str, Any] = {
    "target": "k3s",
    "ssh": {"privateKeyPath": None},
    "sshPrivateKey": "key",
    "nodes": [{"name": "pi-1", "host": "192.168.1.10", "role": "server"}],
    "k3s": {"version": "v1.31.4+k3s1"},
}


@pytest.mark.parametrize("raw", [{"target": "docker"}, K3S], ids=["docker", "k3s"])
def test_the_example_is_valid_config_on_both_targets(raw: dict[str, Any]) -> None:
    settings = validate(raw | {"app": APP}, project_dir=ROOT)
    app = build_app(settings.app, TEST_IMAGES)
    kinds = {w.name: w.build.kind for w in app.builds if w.build is not None}
    assert kinds == {
        "frontend": BuildKind.STATIC,
        "scores": BuildKind.NODE,
        "leaderboard": BuildKind.DOCKERFILE,
    }
    scores = next(s for s in app.services if s.name == "scores")
    assert scores.migrate == ("node", "migrate.js")
    assert scores.image == f"picluster-test/scores:{scores.build.tag if scores.build else ''}"
    # Pure-JavaScript dependencies: installed on the builder's platform, no emulation.
    assert scores.build is not None and scores.build.dockerfile is not None
    assert "--platform=$BUILDPLATFORM" in scores.build.dockerfile
    assert "RUN npm ci --omit=dev" in scores.build.dockerfile


def test_the_example_frontend_is_the_games_build_output_not_the_placeholder() -> None:
    app = build_app(validate({"target": "docker", "app": APP}, project_dir=ROOT).app, TEST_IMAGES)
    assert not app.uses_placeholder_page
    assert app.frontend.files == {}
    assert app.frontend.build is not None
    assert (app.frontend.build.context / "index.html").is_file()
