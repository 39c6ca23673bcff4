"""Session fixtures shared by tests/integration and tests/e2e: the machine-wide lock, a real Slurm
cluster and the single-user environment. They start nothing until a test asks for them, so
tests/unit runs without root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cluster.lock import machine_lock
from tests.cluster.slurm import SlurmCluster


@pytest.fixture(scope="session")
def root_required(request):
    if os.geteuid() != 0:
        pytest.fail("these tests need root: they start Slurm daemons and create unix users (run `make test`)")
    # The test users and the demo's ports are the machine's: one integration session at a time.
    with machine_lock(say=lambda line: to_terminal(request.config, line)):
        yield


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
def slurm(root_required, request):
    for tool in ("slurmctld", "slurmd", "munged", "sudo", "slurmdbd", "mariadbd", "mariadb-install-db"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed: `make test` installs it")
    root = Path(tempfile.mkdtemp(prefix="campushub-slurm-"))
    cluster = SlurmCluster(root)
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        cluster.start()
        took = cluster.startup_seconds
        to_terminal(
            request.config,
            f"test Slurm cluster up in {took['total']:.1f} s (of which MariaDB and slurmdbd {took.get('accounting', 0):.1f} s)",
        )
        yield cluster
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
    and a failing test's report carries the tails of the hub's, Slurm's and PostgreSQL's logs, so that
    a failure seen only in CI can be understood from its output."""
    report = yield
    if call.when == "call":
        item.stash[CALL_FAILED] = report.failed
    if report.failed and call.when == "call":
        from tests.cluster.hub import RunningHub
        from tests.cluster.postgres import PostgresServer

        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, RunningHub):
                report.sections.append((f"hub log ({name})", _tail(value.workdir / "hub.log", 120)))
            elif isinstance(value, SlurmCluster):
                for log in ("slurmctld.log", "slurmd.log"):
                    report.sections.append((log, _tail(value.root / "log" / log, 40)))
            elif isinstance(value, PostgresServer):
                report.sections.append(("postgresql log", value.log_tail()))
    return report


def pytest_sessionfinish(session):
    """The campus login's shared provider: its thread would keep the test process alive."""
    from tests.cluster.idp import close_shared

    close_shared()
