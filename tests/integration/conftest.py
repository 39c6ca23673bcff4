"""The test users and a PostgreSQL server; the shared session fixtures (root_required, slurm,
singleuser_env) are in tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.cluster.postgres import PostgresServer, postgres_bin
from tests.cluster.users import create_users, remove_user

USERS = ["chub-alice", "chub-bob", "chub-carol", "chub-dave", "chub-erin", "chub-frank", "chub-ops"]


@pytest.fixture(scope="session")
def unix_users(root_required):
    accounts = create_users(USERS)
    try:
        yield {a.pw_name: a for a in accounts}
    finally:
        for name in USERS:
            remove_user(name)


@pytest.fixture(scope="session")
def postgres(root_required):
    """A real PostgreSQL server for the session: the role campushub owns the database scheduler."""
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed: `make test` installs it")
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()
