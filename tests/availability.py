"""Skip a test that needs what this machine lacks, saying why, unless it is required.

CI sets `PICLUSTER_REQUIRE_INTEGRATION=1`, `PICLUSTER_REQUIRE_ENGINE=1` and
`PICLUSTER_REQUIRE_CLUSTER=1` for what it made available; a test that would skip under one of
them fails instead, so a broken install cannot pass as a skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

INTEGRATION = "PICLUSTER_REQUIRE_INTEGRATION"
ENGINE = "PICLUSTER_REQUIRE_ENGINE"
CLUSTER = "PICLUSTER_REQUIRE_CLUSTER"


def unavailable(reason: str, required_by: str) -> NoReturn:
    """Skip with `reason`, or fail when the environment variable `required_by` is 1."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but: {reason}")
    pytest.skip(reason)


def sim_pis_unavailable_reason() -> str | None:
    """Why simulated Pis cannot run here (no Docker, no image), or None."""
    from tests.integration import simpi

    return simpi.docker_unavailable_reason() or simpi.image_unavailable_reason()
