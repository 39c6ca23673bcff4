"""The machine's lock for everything that starts a Slurm cluster, unix users and hubs here: one
integration or browser test session, or one benchmark, at a time. They would share the test users,
the demo's ports and the CPU, and a benchmark's figures would measure the other run too."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "/run/lock/campushub-integration-tests.lock"


@contextmanager
def machine_lock(say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock for the block; if another run holds it, say so, naming that run, and wait for it."""
    with open(LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting: another CampusHub test run holds {LOCK_FILE} ({lock_holder(lock)})")
            waited = time.monotonic()
            fcntl.flock(lock, fcntl.LOCK_EX)
            say(f"{LOCK_FILE} is free after {time.monotonic() - waited:.0f} s: going on")
        yield


def lock_holder(lock) -> str:
    """The process holding a flock on `lock`, as /proc/locks tells it."""
    st = os.fstat(lock.fileno())
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields and fields[1] == "FLOCK" and fields[5] == file_id:
            try:
                command = Path(f"/proc/{fields[4]}/cmdline").read_text().replace("\0", " ").strip()
            except OSError:
                command = "?"
            return f"pid {fields[4]}: {command}"
    return "its process is not known"
