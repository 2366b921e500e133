"""The repository's own shell entry points (`bin/`, `.ci/run`) pass shellcheck."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = [ROOT / "bin" / "test", ROOT / "bin" / "up-local", ROOT / ".ci" / "run"]


@pytest.mark.parametrize("script", ENTRY_POINTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_entry_point_passes_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_up_local_never_puts_the_passphrase_on_a_command_line() -> None:
    text = (ROOT / "bin" / "up-local").read_text()
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" in text
    assert "--passphrase" not in text
    assert "umask 077" in text
