"""One integration session at a time, and a second one says what it waits for."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.cluster.slurm import wait_for

REPO = Path(__file__).parents[2]
LOCK = "/run/lock/campushub-integration-tests.lock"


def test_a_second_test_run_says_that_it_waits_and_for_whom(root_required, tmp_path):
    """This session holds the lock (root_required); a second pytest run, a process of its own, must say
    that it waits, and name this run's process, instead of hanging silently."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import root_required  # noqa: F401\n")
    (tmp_path / "test_waits.py").write_text("def test_waits(root_required):\n    pass\n")
    second = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []

    def read():
        for line in second.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(lambda: any("waiting" in line for line in lines), 30, "the second run's message")
        assert second.poll() is None, "the second run went on while this one holds the lock"
    finally:
        second.kill()
        second.wait()
    message = next(line for line in lines if "waiting" in line)
    assert message.startswith(f"waiting: another CampusHub test run holds {LOCK} (pid {os.getpid()}: ")
