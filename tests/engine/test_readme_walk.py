"""The README walk: every ```sh block of README.md, in document order, run as written in a fresh
copy of the project by a new user (a fresh HOME: no passphrase, no Pulumi state, no kubeconfig),
with stdin closed (a prompt fails the block) and a time limit per block. A block fails the walk
when it exits non-zero, naming the block and the README line of the failing command. The
convention for blocks (```sh runs, ```text is an illustration) is tests/readme_walk.py's.

Where each command runs, honestly:
- Every `bin/...` script is the copy's own, run for real; `bin/pulumi` is the real wrapper.
- The `pulumi` it finds is a TEST DOUBLE (tests/engine/walk_pulumi.py) that hands every command
  to the real Pulumi CLI (tools/engine/build.sh) except the local stack's `up`, `preview`,
  `destroy` and `stack output` and `install`: the local stack needs the Docker provider plugin,
  which cannot be built here, so its program runs under the project's mocks, its secrets
  decrypted by the real CLI with the stack's passphrase. pulumi-random cannot be built here
  either: before the prod stack's `up` the double sets the three secrets the program would
  generate with it (through the real CLI, as the prod lab does). The double checks on every
  call that bin/pulumi set the stack's own 0600 passphrase file and no shared passphrase.
- The prod stack runs for real: the real CLI, the real command and kubernetes plugins, against
  the prod lab (tests/engine/prod_lab.py `lab()`: a real control plane, kwok, three simulated
  Pis with the K3s installer double), started before the first block that names prod or
  kubectl. What the README asks the user to do by hand before that block, the walk does:
  - "Edit the addresses": in the copy's Pulumi.prod.yaml each node's `host` becomes the Docker
    bridge's address and its `port` its simulated Pi's SSH port (`on_lab`), with the lab's
    settings a real Pi would not need: `upgrade: false`, `k3s.installUrl` the installer double,
    `images.platforms: [linux/amd64]` (the simulated Pis are amd64 containers);
  - flash the Pis with your key: ~/.ssh/id_ed25519 is the lab's key, unless a block made one,
    whose public half then goes into each Pi's authorized_keys;
  - the README's example addresses (192.168.1.10...) typed into `ssh-keyscan` or `ssh` reach
    the simulated Pis through a TEST DOUBLE of both (tests/engine/walk_doubles/ssh-keyscan).
- Docker is the machine's. The Docker CLI plugins (buildx) are linked from the machine's
  ~/.docker, as the prerequisites install them; kubectl is the lab's.

Run it under the lab's lock: `flock /tmp/picluster-lab.lock .venv/bin/pytest
tests/engine/test_readme_walk.py`. PICLUSTER_WALK_README=FILE walks a draft instead of README.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.availability import ENGINE, INTEGRATION, unavailable
from tests.engine import prod_lab
from tests.engine.conftest import ROOT
from tests.integration import simpi
from tests.readme_walk import Block, command_blocks, needs_prod_lab

pytestmark = [pytest.mark.engine, pytest.mark.integration]

DOUBLES = Path(__file__).parent / "walk_doubles"
LABEL = "picluster.readme-walk"
BLOCK_TIMEOUT = 300
"""Seconds a block may take, unless it runs a prod `up` or `destroy` (`LONG_TIMEOUT`)."""
LONG_TIMEOUT = 1200
HEADER = """set -eE -o pipefail
walk_line=$README_LINE
source "$WALK_DIR/env"
cd "$(cat "$WALK_DIR/cwd")"
trap 'echo "README.md:$((walk_line + LINENO - 6)): failed: $BASH_COMMAND" >&2' ERR
"""
"""Each block runs in a new bash with the exports and directory the earlier blocks left, as in
the shell a user pastes them into. The README line of a failing command is the block's first
line plus its line in the block (the header is 5 lines, the block starts on line 6)."""
FOOTER = """
export -p >"$WALK_DIR/env"
pwd >"$WALK_DIR/cwd"
"""


def _copy_project(target: Path) -> None:
    """The checkout's files as a clone has them (tracked and new, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    # The checkout's environment, so nothing is downloaded (bin/pulumi would make one).
    (target / ".venv").symlink_to((ROOT / ".venv").resolve())


class Walk:
    """The new user's shell: a fresh HOME and a copy of the project."""

    def __init__(self, tmp: Path, engine_bin: Path) -> None:
        self.project = tmp / "picluster"
        self.project.mkdir()
        _copy_project(self.project)
        self.home = tmp / "home"
        self.home.mkdir()
        plugins = Path.home() / ".docker" / "cli-plugins"
        if plugins.is_dir():
            (self.home / ".docker").mkdir()
            (self.home / ".docker" / "cli-plugins").symlink_to(plugins)
        self.dir = tmp / "walk"
        self.dir.mkdir()
        self.state = tmp / "double-state"
        self.state.mkdir()
        self.env: dict[str, str] = {
            "HOME": str(self.home),
            "PATH": os.pathsep.join(
                [
                    str(DOUBLES),
                    str(engine_bin),
                    str(prod_lab.CLUSTER_CACHE / "bin"),
                    "/usr/local/sbin",
                    "/usr/local/bin",
                    "/usr/sbin",
                    "/usr/bin",
                    "/sbin",
                    "/bin",
                ]
            ),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            # The machine's, not the user's: no plugin downloads, no update check.
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PICLUSTER_WALK_REAL_PULUMI": str(engine_bin / "pulumi"),
            "PICLUSTER_WALK_STATE": str(self.state),
            "PICLUSTER_WALK_ROOT": str(ROOT),
            "PICLUSTER_WALK_PYTHON": str(ROOT / ".venv" / "bin" / "python"),
            "PICLUSTER_WALK_LABEL": LABEL,
            "WALK_DIR": str(self.dir),
        }
        if "DOCKER_HOST" in os.environ:
            self.env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
        (self.dir / "env").write_text("")
        (self.dir / "cwd").write_text(f"{self.project}\n")
        self.timings: list[tuple[Block, float]] = []

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        """Run `block` as a user's shell would, in a new session: no controlling terminal, so a
        tool that asks on /dev/tty (ssh's "continue connecting?") fails at once instead of
        waiting, and a block that outlives its time limit is killed with everything it started."""
        script = self.dir / f"block-{block.line}.sh"
        script.write_text(HEADER + block.text + FOOTER)
        long = needs_prod_lab(block) and any(w in block.text for w in (" up", " destroy"))
        timeout = LONG_TIMEOUT if long else BLOCK_TIMEOUT
        start = time.monotonic()
        process = subprocess.Popen(
            ["bash", str(script)],
            cwd=self.project,
            env={**self.env, "README_LINE": str(block.line + 1)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(
                f"{block.name}: still running after {timeout} s (waiting on a prompt?)\n"
                f"{stdout[-2000:]}\n{stderr[-2000:]}"
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what the block left running
        self.timings.append((block, time.monotonic() - start))
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def export(self, name: str, value: str) -> None:
        self.env[name] = value

    def lab_edits(self, lab: prod_lab.Lab) -> None:
        """What the README asks the user to do by hand before the prod commands (module
        docstring): the addresses, the key the Pis were flashed with."""
        stack_file = self.project / "Pulumi.prod.yaml"
        document = yaml.safe_load(stack_file.read_text())
        config = document["config"]
        examples = {node["host"]: node["name"] for node in config["picluster:nodes"]}
        values = {
            "nodes": config["picluster:nodes"],
            "k3s": config.get("picluster:k3s", {}),
        }
        values = prod_lab.on_lab(values, lab.address, lab.pis)
        config["picluster:nodes"] = values["nodes"]
        config["picluster:k3s"] = values["k3s"]
        images = config.setdefault("picluster:images", {})
        images["platforms"] = ["linux/amd64"]
        stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
        ssh = self.home / ".ssh"
        key = ssh / "id_ed25519"
        if not key.exists():
            ssh.mkdir(mode=0o700, exist_ok=True)
            shutil.copy2(lab.key, key)
            shutil.copy2(lab.key.with_suffix(".pub"), key.with_suffix(".pub"))
            key.chmod(0o600)
        else:
            public = key.with_suffix(".pub").read_text()
            for pi in lab.pis.values():
                pi.exec("sh", "-c", f"echo '{public.strip()}' >>/home/pi/.ssh/authorized_keys")
        self.export(
            "PICLUSTER_WALK_PIS",
            " ".join(
                f"{host}={lab.address}:{lab.pis[name].port}" for host, name in examples.items()
            ),
        )


_LAB = Block("text", 0, "(the prod lab started, the user's edits made)\n", "before the prod blocks")


def _remove_walk_volumes() -> None:
    listed = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label={LABEL}=yes"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    if listed:
        subprocess.run(["docker", "volume", "rm", *listed], capture_output=True, check=False)


def test_the_readme_commands_run_in_order_without_a_prompt(
    engine_bin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = Path(os.environ.get("PICLUSTER_WALK_README", ROOT / "README.md"))
    blocks = command_blocks(readme.read_text())
    assert blocks, "the README has no ```sh block"
    reason = simpi.docker_unavailable_reason()
    if reason:
        unavailable(reason, INTEGRATION)
    if not (ROOT / ".venv" / "bin" / "python").exists():
        unavailable("the checkout has no .venv (run bin/test once)", ENGINE)
    if any(needs_prod_lab(b) for b in blocks):
        prod_lab.require_lab()
    walk = Walk(tmp_path, engine_bin)
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_walk_volumes)
        lab: prod_lab.Lab | None = None
        for block in blocks:
            if lab is None and needs_prod_lab(block):
                started = time.monotonic()
                lab = stack.enter_context(prod_lab.lab(tmp_path / "lab"))
                walk.lab_edits(lab)
                walk.timings.append((_LAB, time.monotonic() - started))
            result = walk.run(block)
            assert result.returncode == 0, (
                f"{block.name}: exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}"
                f"\n--- stderr\n{result.stderr[-3000:]}"
            )
    # Each stack the README made has its own passphrase, readable only by the user.
    passphrases = sorted((walk.home / ".config" / "picluster").glob("*.passphrase"))
    for path in passphrases:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert len({p.read_text() for p in passphrases}) == len(passphrases)
    with capsys.disabled():
        print("\nREADME walk, seconds per block:")
        for block, seconds in walk.timings:
            print(f"  {seconds:7.1f}  {block.name}")
