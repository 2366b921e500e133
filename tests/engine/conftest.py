"""Fixtures for the tests that run the real Pulumi engine (the CLI, the Python language host and
the provider plugins built from Go modules by `tools/engine/build.sh`).

They skip, saying why, when the binaries are absent; PICLUSTER_REQUIRE_ENGINE=1 turns the skip
into a failure. Each test works on a copy of the project's program and committed stack files,
with its own file backend and PULUMI_HOME, and reuses the checkout's `.venv`, so nothing is
downloaded. The plugins are found on PATH, as the CLI allows (sdk/go/common/workspace/plugins.go).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.availability import ENGINE, unavailable

ROOT = Path(__file__).resolve().parents[2]
ENGINE_CACHE = Path(
    os.environ.get(
        "PICLUSTER_ENGINE_CACHE",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "picluster" / "engine",
    )
)
BINARIES = (
    "pulumi",
    "pulumi-language-python",
    "pulumi-language-python-exec",
    "pulumi-resource-command",
    "pulumi-resource-kubernetes",
)
PROJECT_FILES = (
    "Pulumi.yaml",
    "Pulumi.prod.yaml",
    "Pulumi.local.yaml",
    "__main__.py",
    "requirements.txt",
    "components",
)


@dataclass(frozen=True)
class Up:
    """One `pulumi up`: the engine's summary, the remote steps it ran, its wall time."""

    summary: dict[str, int]
    remote_steps: int
    seconds: float


def engine_env(engine_bin: Path, tmp_path: Path) -> dict[str, str]:
    """The environment the CLI runs in: the built binaries first on PATH (plugins are found
    there), its own PULUMI_HOME and passphrase, no downloads and no update check."""
    env = {
        **os.environ,
        "PATH": f"{engine_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PULUMI_HOME": str(tmp_path / "pulumi-home"),
        "PULUMI_CONFIG_PASSPHRASE": "engine-test-passphrase",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
    }
    env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
    env.pop("PULUMI_IGNORE_AMBIENT_PLUGINS", None)
    return env


def documents(json_output: str) -> Iterator[dict[str, Any]]:
    """The JSON documents of a `--json` output: `up --json` prints the plan as one document,
    then the engine's events, one per line."""
    decoder, at = json.JSONDecoder(), 0
    while at < len(json_output):
        if json_output[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(json_output, at)
        yield document


def errors(json_output: str) -> list[str]:
    """The error diagnostics in a `--json` output (a failure's tail is mostly tracebacks)."""
    found = []
    for document in documents(json_output):
        diagnostics = [*document.get("diagnostics", []), document.get("diagnosticEvent") or {}]
        found += [d["message"] for d in diagnostics if d.get("severity") == "error"]
    return found


@dataclass(frozen=True)
class Project:
    """A copy of the project the real CLI runs in."""

    path: Path
    env: Mapping[str, str]

    def pulumi(
        self, *args: str, stdin: str | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """`pulumi ARGS` in the project (not checked: tests assert on the result)."""
        return subprocess.run(
            ["pulumi", *args, "--non-interactive"],
            cwd=self.path,
            env=dict(self.env),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def up(self, stack: str, *options: str, timeout: float = 1500) -> Up:
        """`pulumi up --yes -s STACK [OPTIONS]`, which must succeed."""
        start = time.monotonic()
        result = self.pulumi("up", "--yes", "--json", "-s", stack, *options, timeout=timeout)
        seconds = time.monotonic() - start
        assert result.returncode == 0, "\n".join(
            [*errors(result.stdout), result.stdout[-3000:], result.stderr[-3000:]]
        )
        summary, remote = None, 0
        for document in documents(result.stdout):
            if "summaryEvent" in document:
                summary = document["summaryEvent"]["resourceChanges"]
            metadata = (document.get("resourcePreEvent") or {}).get("metadata") or {}
            if metadata.get("type") == "command:remote:Command" and metadata.get("op") not in (
                None,
                "same",
                "read",
                "refresh",  # `up --refresh` reads each Command's state: nothing runs on the Pi
            ):
                remote += 1
        assert summary is not None, result.stdout[-3000:]
        return Up(summary, remote, seconds)

    def set_secret(self, stack: str, key: str, value: str) -> None:
        result = self.pulumi("config", "set", "--secret", key, "-s", stack, stdin=value)
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def engine_bin() -> Path:
    """The directory of the engine's binaries."""
    bin_dir = Path(os.environ.get("PICLUSTER_ENGINE_BIN", ENGINE_CACHE / "bin"))
    missing = [b for b in BINARIES if not (bin_dir / b).exists()]
    if missing:
        unavailable(
            f"engine binaries missing from {bin_dir}: {', '.join(missing)} "
            "(build them with tools/engine/build.sh)",
            ENGINE,
        )
    return bin_dir


def make_project(engine_bin: Path, tmp_path: Path) -> Project:
    """The project's program and committed stack files in `tmp_path`, no state yet."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        unavailable("the checkout has no .venv (run bin/test once)", ENGINE)
    path = tmp_path / "picluster"
    path.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, path / name)
    (path / ".venv").symlink_to(ROOT / ".venv")
    (path / ".pulumi-state").mkdir()
    return Project(path, engine_env(engine_bin, tmp_path))


def program_project(
    engine_bin: Path, tmp: Path, name: str, program: str, env: Mapping[str, str] | None = None
) -> Project:
    """A project `name` in `tmp/project` running a test's own `program` (its `__main__.py`) with
    the checkout's .venv, its file backend in `.state` beside it; no stack yet. `env` replaces
    the engine's environment (`engine_env`) when a test needs to change it."""
    path = tmp / "project"
    path.mkdir()
    (path / "Pulumi.yaml").write_text(
        f"name: {name}\nruntime:\n  name: python\n  options:\n"
        f"    toolchain: pip\n    virtualenv: {ROOT / '.venv'}\n"
        "backend:\n  url: file://./.state\n"
    )
    (path / "__main__.py").write_text(program)
    (path / ".state").mkdir()
    return Project(path, engine_env(engine_bin, tmp) if env is None else env)


@pytest.fixture
def project(engine_bin: Path, tmp_path: Path) -> Iterator[Project]:
    """The project's program and committed stack files in a fresh directory, no state yet."""
    yield make_project(engine_bin, tmp_path)
