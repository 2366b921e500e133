"""The repository's own entry points: shell scripts pass shellcheck, the project file is sound."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = [
    ROOT / "bin" / "test",
    ROOT / "bin" / "up-local",
    ROOT / "bin" / "pulumi",
    ROOT / "bin" / "restore-db",
    ROOT / "bin" / "restore-datastore",
    ROOT / ".ci" / "run",
    *sorted((ROOT / "tools").glob("*/*.sh")),  # the engine and control-plane build scripts
]


@pytest.mark.parametrize("script", ENTRY_POINTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_entry_point_passes_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_the_passphrase_is_handled_in_one_place_and_never_on_a_command_line() -> None:
    """bin/pulumi owns the passphrase (tests/engine/test_pulumi_wrapper.py runs it); bin/up-local
    goes through it for every pulumi command."""
    wrapper = (ROOT / "bin" / "pulumi").read_text()
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" in wrapper
    assert "--passphrase" not in wrapper
    assert "umask 077" in wrapper
    up_local = (ROOT / "bin" / "up-local").read_text()
    assert "PASSPHRASE" not in up_local
    commands = [line.split()[0] for line in up_local.splitlines() if "pulumi " in line]
    assert commands and all(c == "bin/pulumi" for c in commands if not c.startswith("#")), commands


def test_project_disables_default_providers_and_keeps_state_local() -> None:
    import yaml

    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "picluster"
    assert project["runtime"]["options"] == {"toolchain": "pip", "virtualenv": ".venv"}
    assert project["backend"]["url"] == "file://./.pulumi-state"
    disabled = project["config"]["pulumi:disable-default-providers"]["value"]
    assert set(disabled) >= {"docker", "kubernetes", "command"}
    # Not declared: the CLI would refuse a stack without it before the program could say what
    # target takes and which command sets it (components/config.py).
    assert set(project["config"]) == {"pulumi:disable-default-providers"}
