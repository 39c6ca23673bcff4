"""STAND-IN for the single-user image of the tests (`ensure_image`), until the real one (built from
images/ with podman) replaces this module.

It makes a quick image for root's podman, no registry involved: a minimal Debian root
(`debootstrap --variant=minbase --include=python3 bookworm`, cached under CACHE), imported with
`podman import`, then `podman build` adds a non-root user `jovyan` (uid 1000, home /home/jovyan)
and copies in the single-user environment (CAMPUSHUB_TEST_SINGLEUSER_ENV, built from Debian's
/usr/bin/python3 3.11, the same Python as bookworm's) at the same path, first on PATH.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path("/var/cache/campushub-docker-dev")
TAG = "localhost/campushub-test-singleuser:dev"

CONTAINERFILE = """\
FROM {base}
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash jovyan
COPY env {env}
ENV PATH={env}/bin:/usr/local/bin:/usr/bin:/bin
USER 1000:1000
WORKDIR /home/jovyan
CMD ["jupyterhub-singleuser"]
"""


def _run(*argv: str, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def _exists(ref: str) -> bool:
    return subprocess.run(["podman", "image", "exists", ref], capture_output=True).returncode == 0


def _rootfs_tar() -> Path:
    tar = CACHE / "bookworm-minbase-python3.tar"
    if tar.exists():
        return tar
    root = CACHE / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    _run("debootstrap", "--variant=minbase", "--include=python3,passwd", "bookworm", str(root),
         "http://deb.debian.org/debian")  # fmt: skip
    _run("tar", "-C", str(root), "-cf", str(tar.with_suffix(".part")), ".")
    tar.with_suffix(".part").rename(tar)
    shutil.rmtree(root, ignore_errors=True)
    return tar


def ensure_image(kind: str = "cpu") -> str:
    """A local image reference that runs `jupyterhub-singleuser` as a non-root user (built once)."""
    if kind != "cpu":
        raise ValueError(f"the stand-in image has no kind {kind!r}")
    env = Path(os.environ.get("CAMPUSHUB_TEST_SINGLEUSER_ENV", "/opt/campushub/test-singleuser"))
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _exists(TAG):
            return TAG
        base = "localhost/campushub-test-bookworm:dev"
        if not _exists(base):
            _run("podman", "import", str(_rootfs_tar()), base)
        with tempfile.TemporaryDirectory(prefix="campushub-image-") as ctx:
            # the environment as the build context's env/ (hard links where the file system allows)
            shutil.copytree(env, Path(ctx) / "env", symlinks=True)
            (Path(ctx) / "Containerfile").write_text(CONTAINERFILE.format(base=base, env=env))
            _run("podman", "build", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit",
                 "nproc=1024:1024", "--pull=never", "-t", TAG, ctx)  # fmt: skip
    return TAG
