"""Every remote script passes shellcheck and keeps the invocation contract the components rely on
(`sudo bash -s` with values and script on stdin)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from components.remote_script import SCRIPTS_DIR

SCRIPTS = sorted(SCRIPTS_DIR.glob("*.sh"))
DOUBLES = sorted((Path(__file__).parents[1] / "integration" / "doubles").glob("*.sh"))


def test_the_scripts_are_there() -> None:
    names = {path.name for path in SCRIPTS}
    assert {"facts.sh", "prepare.sh", "reboot.sh", "cgroup-gate.sh", "docker.sh"} <= names


@pytest.mark.parametrize("path", SCRIPTS + DOUBLES, ids=lambda path: path.name)
def test_shellcheck_clean(path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
    result = subprocess.run(
        ["shellcheck", "-x", "--severity=style", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=path.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
def test_invocation_contract(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    # Nothing may read the rest of the script from stdin: `exec </dev/null` opens main().
    body = re.search(r"^main\(\) \{\n(?P<body>.*?)^\}$", text, re.MULTILINE | re.DOTALL)
    assert body is not None, "no main() { ... }"
    assert body["body"].lstrip().startswith("exec </dev/null\n")
    assert lines[-1] == 'main "$@"'
    assert not re.search(r"^\s*set -[a-z]*x", text, re.MULTILINE), "never set -x (secrets)"
    step = path.stem
    assert f"picluster {step}: " in text
