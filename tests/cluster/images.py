"""The CampusHub single-user images (images/), for tests that run them: built through images/build,
the script `make images` runs, so a test uses what a site builds. Cached: when nothing changed, a
call takes seconds (the base, the wheels and podman's layers are all kept)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KINDS = ("cpu", "gpu")


def ensure_image(kind: str = "cpu") -> str:
    """Build the image of `kind` (cpu or gpu) if it is missing or out of date; its reference,
    e.g. localhost/campushub-singleuser:0.1.0 (in root's podman storage)."""
    if kind not in KINDS:
        raise ValueError(f"unknown image kind {kind!r}: one of {', '.join(KINDS)}")
    done = subprocess.run(
        [str(REPO / "images" / "build"), kind], cwd=REPO, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"images/build {kind} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def image_size(reference: str) -> int:
    """The image's size in bytes, as podman counts it (all its layers)."""
    out = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", reference],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return int(out.stdout.strip())
