"""The memory app + monitoring request on the default three Pis stays within 1.5 GiB, counted
the way the scheduler counts it (tests/footprint.py), whatever workloads the renderers add."""

from __future__ import annotations

import pytest

from tests.footprint import MEMORY_BUDGET_MIB, Footprint, footprints, mebibytes, millicores, table
from tests.harness import Run, run_main, stack_file_config

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nunit\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture(scope="module")
def prod() -> tuple[Run, int]:
    config = stack_file_config("prod")
    run = run_main({**config, "sshPrivateKey": KEY}, stack="prod", secret_keys=("sshPrivateKey",))
    return run, len(config["nodes"])


@pytest.fixture(scope="module")
def found(prod: tuple[Run, int]) -> list[Footprint]:
    return footprints(*prod)


def test_default_stack_is_three_pis(prod: tuple[Run, int]) -> None:
    assert prod[1] == 3


def test_app_and_monitoring_request_at_most_1_5_gib(found: list[Footprint]) -> None:
    requested = sum(f.memory_request_mib for f in found)
    assert requested <= MEMORY_BUDGET_MIB, table(found)
    # Each limit is at least its request, or the pod would not be admitted.
    for f in found:
        assert f.memory_limit_mib >= f.memory_request_mib > 0, f
        assert f.cpu_limit_m >= f.cpu_request_m > 0, f


def test_every_kind_of_workload_is_counted(found: list[Footprint]) -> None:
    by_name = {f.name: f for f in found}
    # The app, the database, monitoring, and the backup's CronJob pod.
    assert {"frontend", "api", "postgres", "prometheus", "grafana", "postgres-backup"} <= set(
        by_name
    )
    # The demo API is built from source, so the in-cluster registry it is pushed to counts too.
    assert {f.namespace for f in found} == {
        "game",
        "monitoring",
        "monitoring-node",
        "picluster-registry",
    }
    exporter = by_name["node-exporter"]
    assert (exporter.kind, exporter.copies) == ("DaemonSet", 3)


def test_quantities_are_read_as_kubernetes_reads_them() -> None:
    assert mebibytes("1Gi") == 1024 and mebibytes("64Mi") == 64 and mebibytes("512Ki") == 0.5
    assert mebibytes("128M") == pytest.approx(122.07, abs=0.01)
    assert millicores("250m") == 250 and millicores("1") == 1000 and millicores("0.5") == 500
    with pytest.raises(ValueError):
        mebibytes("100m")
