"""The tests' PostgreSQL server: the campushub role logs in with its password, and only with it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError


def engine(url: str, password: str) -> sa.Engine:
    return sa.create_engine(url, connect_args={"password": password}, poolclass=sa.pool.NullPool)


def test_campushub_logs_in_with_its_password_and_owns_the_scheduler_database(postgres, tmp_path):
    password = postgres.password_file(tmp_path).read_text().strip()
    assert (tmp_path / "postgres-password").stat().st_mode & 0o777 == 0o600
    with engine(postgres.url, password).begin() as db:
        db.execute(sa.text("CREATE TABLE runs (id serial PRIMARY KEY, notebook text NOT NULL)"))
        db.execute(sa.text("INSERT INTO runs (notebook) VALUES ('gpu-check.ipynb')"))
        assert db.execute(sa.text("SELECT notebook FROM runs")).scalars().all() == ["gpu-check.ipynb"]
        assert db.execute(sa.text("SELECT current_user, current_database()")).one() == ("campushub", "scheduler")


def test_a_wrong_password_is_refused(postgres):
    with pytest.raises(OperationalError, match="password authentication failed"):
        engine(postgres.url, "not-" + postgres.password).connect()


def test_a_fresh_database_is_empty_and_owned_by_campushub(postgres):
    """Asked for again by the same name, it is a new database: what a test before left in it is gone."""
    with engine(postgres.fresh_database("harness_fresh"), postgres.password).begin() as db:
        db.execute(sa.text("CREATE TABLE runs (id int)"))
    with engine(postgres.fresh_database("harness_fresh"), postgres.password).connect() as db:
        assert db.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).all() == []
        owner = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        assert db.execute(sa.text(owner)).scalar() == "campushub"
