"""Session fixtures shared by tests/integration and tests/e2e: the machine-wide lock, a real Slurm
cluster and the single-user environment. They start nothing until a test asks for them, so
tests/unit runs without root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cluster.slurm import SlurmCluster


LOCK = Path("/run/lock/campushub-integration-tests.lock")


@pytest.fixture(scope="session")
def root_required(request):
    if os.geteuid() != 0:
        pytest.fail("these tests need root: they start Slurm daemons and create unix users (run `make test`)")
    # The test users and the demo's ports are the machine's: one integration session at a time.
    with open(LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            to_terminal(request.config, f"waiting: another CampusHub test run holds {LOCK} ({lock_holder(lock)})")
            waited = time.monotonic()
            fcntl.flock(lock, fcntl.LOCK_EX)
            to_terminal(request.config, f"{LOCK} is free after {time.monotonic() - waited:.0f} s: going on")
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


def to_terminal(config: pytest.Config, line: str) -> None:
    """A line on the terminal, past pytest's capture of what fixtures print."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter:
            reporter.write_line(line)
        else:
            print(line, file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def slurm(root_required):
    for tool in ("slurmctld", "slurmd", "munged", "sudo"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed: `make test` installs it")
    root = Path(tempfile.mkdtemp(prefix="campushub-slurm-"))
    cluster = SlurmCluster(root)
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        os.environ.pop("SLURM_CONF", None)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def singleuser_env() -> Path:
    env = Path(os.environ.get("CAMPUSHUB_TEST_SINGLEUSER_ENV", "/opt/campushub/test-singleuser"))
    for tool in ("jupyterhub-singleuser", "campushub-singleuser"):
        if not (env / "bin" / tool).exists():
            pytest.fail(f"{env}/bin/{tool} is missing: `make test` builds the single-user environment")
    return env


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(could not read {path}: {e})"


CALL_FAILED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(items):
    """tests/integration and tests/e2e carry the markers of their folder's name."""
    for item in items:
        folder = item.path.relative_to(Path(__file__).parent).parts[0]
        if folder in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, folder))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test's outcome goes into item.stash[CALL_FAILED] (the browser fixture screenshots a failure),
    and a failing test's report carries the tails of the hub's and Slurm's logs, so that a failure
    seen only in CI can be understood from its output."""
    report = yield
    if call.when == "call":
        item.stash[CALL_FAILED] = report.failed
    if report.failed and call.when == "call":
        from tests.cluster.hub import RunningHub

        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, RunningHub):
                report.sections.append((f"hub log ({name})", _tail(value.workdir / "hub.log", 120)))
            elif isinstance(value, SlurmCluster):
                for log in ("slurmctld.log", "slurmd.log"):
                    report.sections.append((log, _tail(value.root / "log" / log, 40)))
    return report
