"""What the default prod stack (Pulumi.prod.yaml: three Pis, the game, monitoring) asks of the
cluster: CPU and memory requests and limits of every workload it renders, DaemonSets once per
node, against the 1.5 GiB memory budget for app + monitoring. Runs under mocks in seconds.

    .venv/bin/python bench/footprint.py

Every Deployment, StatefulSet, DaemonSet and CronJob the renderers declare is counted
(tests/footprint.py), so a workload added later shows up here without a change to this script.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.footprint import MEMORY_BUDGET_MIB, footprints, table  # noqa: E402
from tests.harness import run_main, stack_file_config  # noqa: E402

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nbench\n-----END OPENSSH PRIVATE KEY-----\n"


def main() -> None:
    config = stack_file_config("prod")
    nodes = len(config["nodes"])
    result = run_main(
        {**config, "sshPrivateKey": KEY}, stack="prod", secret_keys=("sshPrivateKey",)
    )
    found = footprints(result, nodes)
    print(f"Workloads of the default prod stack on {nodes} Pis (requests and limits)\n")
    print(table(found))
    requested = sum(f.memory_request_mib for f in found)
    print(
        f"\nmemory requested: {requested:.0f} MiB of the {MEMORY_BUDGET_MIB} MiB budget "
        f"({requested / MEMORY_BUDGET_MIB:.0%}); the scheduler reserves requests, "
        "limits cap what a pod may use before it is OOM-killed"
    )


if __name__ == "__main__":
    main()
