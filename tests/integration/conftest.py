"""Fixtures for the simulated-Raspberry-Pi integration tests (see simpi.py).

The tests skip with the reason when Docker or the image build cannot work on this machine. The
pinned base images are local stand-ins built from Debian (baseimages.py), once per recipe. Set
PICLUSTER_REQUIRE_INTEGRATION=1 (CI does) to turn that skip into a failure, so a broken Docker
setup cannot pass silently.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.availability import INTEGRATION, sim_pis_unavailable_reason, unavailable
from tests.integration import baseimages, simpi

TIMINGS: dict[str, float] = {}
"""Seconds for the image build and the script runs worth benchmarking, printed after the run."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("simulated Pi timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")


@pytest.fixture(scope="session")
def sim_image() -> simpi.ImageBuild:
    """The simulated-Pi image, built once per recipe hash (about a minute), then reused."""
    reason = sim_pis_unavailable_reason()
    if reason:
        unavailable(reason, INTEGRATION)
    build = simpi.ensure_image()
    TIMINGS["image build" if build.built else "image (cached)"] = build.seconds
    return build


@pytest.fixture(scope="session")
def sim_lab(sim_image: simpi.ImageBuild) -> Iterator[simpi.SimPiLab]:
    """Starts simulated Pis with one ephemeral session key; removes them all at the end."""
    with simpi.SimPiLab(sim_image.tag) as lab:
        yield lab


def _stand_in(image: baseimages.StandIn) -> str:
    reason = baseimages.unavailable_reason(image)
    if reason:
        unavailable(reason, INTEGRATION)
    build = baseimages.ensure(image)
    TIMINGS[f"{image.tag} {'build' if build.built else '(cached)'}"] = build.seconds
    return build.tag


@pytest.fixture(scope="session")
def node_image() -> str:
    """`node:22.12.0-alpine`: the local stand-in (or a real pulled image), by its pinned name."""
    return _stand_in(baseimages.NODE)


@pytest.fixture(scope="session")
def nginx_image() -> str:
    """`nginx:1.27.3-alpine`: the local stand-in (or a real pulled image), by its pinned name."""
    return _stand_in(baseimages.NGINX)


@pytest.fixture(scope="session")
def registry_image() -> str:
    """`registry:2.8.3`: the local stand-in (or a real pulled image), by its pinned name."""
    return _stand_in(baseimages.REGISTRY_IMAGE)
