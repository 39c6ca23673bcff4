"""The hub's database settings, and backup archives, without a hub: what needs no server to check."""

from __future__ import annotations

import json
import os
import sqlite3
import tarfile

import pytest

from campushub.cli import main
from campushub.database import (
    DatabaseError,
    backup,
    hub_database,
    jupyterhub_scripts,
    read_archive,
    restore,
    schema_problem,
    take_hub_lock,
)
from campushub.hubconfig import check_site, hub_config
from campushub.site import SiteError, load_site, parse_site
from campushub.state import StateDir


def problems(data) -> list[str]:
    with pytest.raises(SiteError) as e:
        parse_site(data)
    return e.value.problems


def test_the_default_is_sqlite_in_the_state_folder(tmp_path):
    c = hub_config(parse_site({"hub": {"state_dir": str(tmp_path)}}))
    assert c.JupyterHub.db_url == f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"


def test_postgresql_gets_psycopg_and_the_password_only_in_memory(tmp_path):
    secret = tmp_path / "db-password"
    secret.write_text("s3cret-word\n")
    secret.chmod(0o640)
    site = parse_site(
        {"hub": {"state_dir": str(tmp_path / "state"), "db_url": "postgresql://campushub@db.campus.edu/jupyterhub",
                 "db_password_file": str(secret)}}
    )  # fmt: skip
    c = hub_config(site)
    assert c.JupyterHub.db_url == "postgresql+psycopg://campushub@db.campus.edu/jupyterhub"
    assert "s3cret" not in str(c)
    # every connection to that database gets the password, whichever engine makes it (JupyterHub's own too)
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    from campushub.database import _add_password

    to_hub = {"host": "db.campus.edu", "dbname": "jupyterhub", "user": "campushub"}
    _add_password(PGDialect_psycopg(), None, [], to_hub)
    assert to_hub["password"] == "s3cret-word"
    elsewhere = {"host": "db.campus.edu", "dbname": "other", "user": "campushub"}
    _add_password(PGDialect_psycopg(), None, [], elsewhere)
    assert "password" not in elsewhere


@pytest.mark.parametrize("section", ["hub", "scheduler"])
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://campushub:pw@db/jupyterhub", "{s}.db_url: holds a password: take it out of the URL and put it in "
         "a file named by {s}.db_password_file"),
        ("mysql://hub@db/jupyterhub", "{s}.db_url: mysql databases are not supported"),
        ("postgresql+psycopg2://hub@db/jupyterhub", "{s}.db_url: postgresql+psycopg2 databases are not supported"),
        ("postgresql://campushub@db", "{s}.db_url: a PostgreSQL URL names a host and a database"),
        ("db.campus.edu/jupyterhub", "{s}.db_url: 'db.campus.edu/jupyterhub' is not a database URL"),
    ],
)  # fmt: skip
def test_a_bad_database_url_is_refused_with_its_key(section, url, problem):
    (found,) = problems({section: {"db_url": url}})
    assert found.startswith(problem.format(s=section)), found


@pytest.mark.parametrize("section", ["hub", "scheduler"])
def test_a_password_file_needs_a_postgresql_url(section):
    (found,) = problems({section: {"db_password_file": "/etc/campushub/pw"}})
    assert found == f"{section}.db_password_file: is for a PostgreSQL {section}.db_url (SQLite needs no password)"


@pytest.mark.parametrize("section", ["hub", "scheduler"])
def test_a_password_file_readable_by_all_is_refused(tmp_path, section):
    secret = tmp_path / "db-password"
    secret.write_text("pw\n")
    secret.chmod(0o644)
    site = parse_site(
        {
            "hub": {"state_dir": str(tmp_path)},
            section: {"db_url": "postgresql://h@db/j", "db_password_file": str(secret)},
        }
    )
    with pytest.raises(SiteError, match=rf"{section}.db_password_file: .* is readable by every user: chmod 600 it"):
        check_site(site)


def a_site(tmp_path, name="state"):
    return parse_site({"hub": {"state_dir": str(tmp_path / name)}, "scheduler": {"enabled": False}})


def a_state(tmp_path, name="state") -> tuple:
    site = a_site(tmp_path, name)
    state = StateDir(site.hub.state_dir).ensure()
    state.proxy_auth_token()
    db = sqlite3.connect(state.path / "jupyterhub.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE users (name TEXT)")
    db.execute("INSERT INTO users VALUES ('ada')")
    db.commit()  # left open: the row is in the write-ahead log, not yet in the file
    return site, state, db


def test_a_backup_is_private_holds_a_manifest_and_restores_into_an_empty_folder(tmp_path):
    site, state, _open = a_state(tmp_path)
    archive = backup(site, state, tmp_path, say=lambda _: None)
    assert archive.stat().st_mode & 0o777 == 0o600
    manifest, tar = read_archive(archive)
    tar.close()
    assert {f["name"] for f in manifest["files"]} == {"databases/hub.sqlite", "state/proxy_auth_token"}
    assert manifest["campushub"] and manifest["hub_database"] == "sqlite"
    site2 = a_site(tmp_path, "restored")
    state2 = StateDir(site2.hub.state_dir)
    restore(site2, state2, archive, say=lambda _: None)
    assert (state2.path / "proxy_auth_token").stat().st_mode & 0o777 == 0o600
    assert (state2.path / "proxy_auth_token").read_text() == (state.path / "proxy_auth_token").read_text()
    rows = sqlite3.connect(state2.path / "jupyterhub.sqlite").execute("SELECT name FROM users").fetchall()
    assert rows == [("ada",)]


def test_restore_refuses_a_folder_in_use_and_a_damaged_archive_and_changes_nothing(tmp_path):
    site, state, _open = a_state(tmp_path)
    archive = backup(site, state, tmp_path / "backup.tar", say=lambda _: None)
    with pytest.raises(DatabaseError, match="is not empty: restore goes into an empty one"):
        restore(site, state, archive, say=lambda _: None)
    # one byte of the hub database changed
    data = bytearray(archive.read_bytes())
    with tarfile.open(archive) as tar:
        offset = tar.getmember("databases/hub.sqlite").offset_data
    data[offset + 200] ^= 0xFF
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    site2 = a_site(tmp_path, "restored")
    with pytest.raises(DatabaseError, match="is damaged: databases/hub.sqlite does not match its checksum"):
        restore(site2, StateDir(site2.hub.state_dir), damaged, say=lambda _: None)
    assert not (tmp_path / "restored").exists()
    (tmp_path / "not-a-tar").write_text("hello")
    with pytest.raises(DatabaseError, match="not a CampusHub backup"):
        restore(site2, StateDir(site2.hub.state_dir), tmp_path / "not-a-tar", say=lambda _: None)


def test_an_archive_is_not_overwritten(tmp_path):
    site, state, _open = a_state(tmp_path)
    (tmp_path / "exists.tar").write_text("keep")
    with pytest.raises(DatabaseError, match="exists: give a new file name"):
        backup(site, state, tmp_path / "exists.tar", say=lambda _: None)
    assert (tmp_path / "exists.tar").read_text() == "keep"


def test_the_hub_lock_is_held_once_and_not_by_children(tmp_path):
    state = StateDir(tmp_path).ensure()
    fd = take_hub_lock(state)
    assert fd is not None
    assert take_hub_lock(state) is None  # another open of the file: refused while this one holds it
    assert not os.get_inheritable(fd)
    os.close(fd)
    fd = take_hub_lock(state)
    assert fd is not None
    os.close(fd)


def test_db_upgrade_refuses_while_the_lock_is_held(tmp_path, capsys):
    site, state, _open = a_state(tmp_path)
    site_file = tmp_path / "site.yaml"
    site_file.write_text(json.dumps({"hub": {"state_dir": str(state.path)}, "scheduler": {"enabled": False}}))
    fd = take_hub_lock(state)
    try:
        assert main(["db", "upgrade", "--config", str(site_file)]) == 2
    finally:
        os.close(fd)
    assert "the hub is running" in capsys.readouterr().err
    assert not (state.path / "backups").exists()


def test_hub_database_reads_the_password_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("word\n")
    secret.chmod(0o600)
    site = parse_site(
        {"hub": {"state_dir": str(tmp_path), "db_url": "postgresql://h@db/j", "db_password_file": str(secret)}}
    )
    db = hub_database(site, StateDir(tmp_path))
    assert (db.url, db.password, db.kind) == ("postgresql+psycopg://h@db/j", "word", "postgresql")
    assert db.libpq_url() == "postgresql://h@db/j"


def test_an_archive_reaching_outside_the_state_folder_is_refused_and_nothing_stays(tmp_path):
    import hashlib
    import io

    files = {"state/cookie": b"kept?", "state/../outside": b"evil"}
    manifest = {"campushub": "0", "created": "now", "files": [
        {"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest(), "mode": "0o600"} for n, d in files.items()
    ]}  # fmt: skip
    archive = tmp_path / "crafted.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    site = a_site(tmp_path, "restored")
    with pytest.raises(DatabaseError, match=r"holds a path outside the state folder: state/\.\./outside"):
        restore(site, StateDir(site.hub.state_dir), archive, say=lambda _: None)
    assert not (tmp_path / "outside").exists()
    assert [p.name for p in (tmp_path / "restored").iterdir()] == ["hub.lock"]


@pytest.mark.parametrize(
    "revision, said",
    [
        (None, None),  # no database yet: the hub makes it
        ("head", None),
        ("4621fec11365", "has an older JupyterHub's schema (revision 4621fec11365); JupyterHub "),
        ("0123456789ab", "has schema revision 0123456789ab, which JupyterHub "),
    ],
)
def test_the_hub_refuses_a_schema_not_its_own_naming_campushub_db_upgrade(tmp_path, revision, said):
    site_file = tmp_path / "site.yaml"
    site_file.write_text(json.dumps({"hub": {"state_dir": str(tmp_path / "state")}}))
    site = load_site(site_file)
    state = StateDir(site.hub.state_dir).ensure()
    if revision:
        db = sqlite3.connect(state.path / "jupyterhub.sqlite")
        head = jupyterhub_scripts().get_current_head()
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        db.execute("INSERT INTO alembic_version VALUES (?)", (head if revision == "head" else revision,))
        db.commit()
        db.close()
    problem = schema_problem(site, state)
    if said is None:
        assert problem is None
        return
    assert problem.startswith(f"the hub database ({state.path / 'jupyterhub.sqlite'}) {said}")
    if revision == "4621fec11365":
        assert problem.endswith(f"run `campushub db upgrade --config {site_file}` (it backs the database up first), "
                                "then start the hub again")  # fmt: skip
    else:
        assert "a newer JupyterHub made it" in problem and str(state.path / "backups") in problem
