"""Benchmark of the base-image stand-ins the tests build (tests/integration/baseimages.py): how
long a cold build takes (debootstrap of the shared base, then each stand-in on it) and how long
the tests wait once the images are there; prints figures, asserts nothing.

    .venv/bin/python bench/base_images.py          # needs Docker, debootstrap and root

The cold builds go to throwaway tags (removed at the end), so the pinned tags that other test
runs use are never touched; the stand-ins are built on a freshly bootstrapped base, so Docker's
build cache holds nothing for them. "cached" is `ensure` on the pinned tags, as a test session
after the first one sees it (the first `ensure` there may build them: shown separately).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration import baseimages  # noqa: E402


def _seconds(action: Callable[[], object]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def main() -> None:
    reason = baseimages.unavailable_reason(baseimages.NODE)
    if reason:
        sys.exit(f"cannot build here: {reason}")
    run = uuid.uuid4().hex[:8]
    base = f"picluster-bench/bookworm-minbase:{run}"
    tags = {image: f"picluster-bench/{image.recipe}:{run}" for image in baseimages.ALL}
    print("Cold build (fresh debootstrap, no Docker build cache)")
    try:
        seconds = _seconds(lambda: baseimages.build_base(base))
        total = seconds
        print(f"  {'base (debootstrap | docker import)':36} {seconds:6.1f} s")
        for image, tag in tags.items():
            seconds = _seconds(lambda image=image, tag=tag: baseimages.build(image, tag, base))
            total += seconds
            print(f"  {image.tag:36} {seconds:6.1f} s")
        print(f"  {'all three':36} {total:6.1f} s")
    finally:
        for tag in (*tags.values(), base):
            subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)

    print("\nensure() on the pinned tags")
    for image in baseimages.ALL:
        first = baseimages.ensure(image)
        again = baseimages.ensure(image)
        state = "built" if first.built else "there"
        print(
            f"  {image.tag:36} first {first.seconds:6.1f} s ({state})"
            f"   cached {again.seconds:5.2f} s"
        )
    size = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", *(i.tag for i in baseimages.ALL)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sizes = ", ".join(
        f"{image.tag} {int(b) / 1e6:.0f} MB" for image, b in zip(baseimages.ALL, size, strict=True)
    )
    print(f"\nImage sizes: {sizes}")


if __name__ == "__main__":
    main()
