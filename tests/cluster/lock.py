"""The machine's lock for everything that starts a Slurm cluster, unix users and hubs here: one
integration or browser test session, or one benchmark, at a time. They would share the test users,
the demo's ports and the CPU, and a benchmark's figures would measure the other run too."""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LOCK_FILE = "/run/lock/campushub-integration-tests.lock"


@contextmanager
def machine_lock(waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock for the block; if another run holds it, call waiting(message) and wait for it."""
    with open(LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                waiting(f"waiting for {LOCK_FILE}: an integration test session or a benchmark runs")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
