"""The hub config made from the site file: what needs no site file of its own."""

from __future__ import annotations


def test_the_hubs_sqlite_database_keeps_a_write_ahead_log(tmp_path):
    import sqlite3

    from sqlalchemy import create_engine, text

    from campushub.hubconfig import sqlite_write_ahead_log

    sqlite_write_ahead_log()
    engine = create_engine(f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}")
    with engine.connect() as db:
        assert db.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()
    # kept in the file: any later reader sees it
    assert sqlite3.connect(tmp_path / "jupyterhub.sqlite").execute("PRAGMA journal_mode").fetchone() == ("wal",)
