"""Session fixtures: a real Slurm cluster, real unix users, the single-user environment."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.cluster.slurm import SlurmCluster
from tests.cluster.users import create_users, remove_user

USERS = ["chub-alice", "chub-bob", "chub-carol", "chub-dave", "chub-erin", "chub-frank"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def root_required():
    if os.geteuid() != 0:
        pytest.fail("integration tests need root: they start Slurm daemons and create unix users (run `make test`)")
    # The test users and the demo's ports are the machine's: one integration session at a time.
    with open("/run/lock/campushub-integration-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
def unix_users(root_required):
    accounts = create_users(USERS)
    try:
        yield {a.pw_name: a for a in accounts}
    finally:
        for name in USERS:
            remove_user(name)


@pytest.fixture(scope="session")
def singleuser_env() -> Path:
    env = Path(os.environ.get("CAMPUSHUB_TEST_SINGLEUSER_ENV", "/opt/campushub/test-singleuser"))
    for tool in ("jupyterhub-singleuser", "batchspawner-singleuser"):
        if not (env / "bin" / tool).exists():
            pytest.fail(f"{env}/bin/{tool} is missing: `make test` builds the single-user environment")
    return env
