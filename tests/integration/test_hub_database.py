"""The hub's database, day two, against real hubs (the demo's login and local servers, restarted like a
service) and a real PostgreSQL server: a hub on PostgreSQL keeps a server across a restart;
`campushub db upgrade` refuses while the hub runs, backs up, then migrates (SQLite and PostgreSQL);
`campushub backup` of a running hub restores into an empty state folder, where a hub starts with the same
users, groups, grants, schedules and running servers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from campushub.database import Database, jupyterhub_revisions, migrate
from tests.cluster.hub import RunningHub
from tests.cluster.slurm import wait_for

ADMIN = "ops"
OLDER = "4621fec11365"  # JupyterHub 4.1's schema: four of JupyterHub's migrations before 6.1's


def campushub(hub: RunningHub, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "campushub", *args, "--config", str(hub.site_file)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def demo_hub(workdir: Path, **site) -> RunningHub:
    return RunningHub(workdir, {"auth": {"admin_users": [ADMIN]}, "scheduler": {"enabled": False}, **site})


@pytest.fixture
def close_after(root_required):
    """Hubs to close at the end of the test (their users' servers end with the test's processes)."""
    hubs = []
    yield hubs.append
    for hub in hubs:
        hub.close()


def server_pid(hub: RunningHub, user: str, admin: str) -> int:
    """The pid of a user's server: its spawner state, as the admin API shows it."""
    r = hub.api("GET", f"/users/{user}", admin)
    r.raise_for_status()
    return r.json()["servers"][""]["state"]["pid"]


def test_a_hub_on_postgresql_keeps_a_server_across_a_restart_and_upgrades(postgres, tmp_path, close_after):
    url = postgres.fresh_database("hub_tests")
    password_file = postgres.password_file(tmp_path)
    plain = url.replace("postgresql+psycopg://", "postgresql://")  # as an admin writes it
    hub = demo_hub(tmp_path / "pg", hub={"db_url": plain, "db_password_file": str(password_file)})
    close_after(hub)
    hub.start()
    admin = hub.token(ADMIN, hub.admin_password)
    token = hub.token("ada")
    assert hub.spawn_and_wait("ada", token)["ready"]
    pid = server_pid(hub, "ada", admin)

    # the hub's rows are in PostgreSQL; no SQLite file; the password is in no log and on no command line
    db = Database(url, postgres.password)
    with db.engine().connect() as c:
        assert set(c.execute(sa.text("SELECT name FROM users")).scalars()) == {ADMIN, "ada"}
    assert not (Path(hub.site["hub"]["state_dir"]) / "jupyterhub.sqlite").exists()
    assert postgres.password not in (hub.workdir / "hub.log").read_text()
    assert postgres.password not in Path(f"/proc/{hub.hub.pid}/cmdline").read_text()

    hub.stop_hub()
    hub.start_hub()
    assert hub.server("ada", token)["ready"] and server_pid(hub, "ada", admin) == pid
    assert hub.user_get("ada", "api/status", token).status_code == 200

    # db upgrade refuses while the hub runs
    r = campushub(hub, "db", "upgrade")
    assert r.returncode == 2 and "the hub is running" in r.stderr and "nothing was changed" in r.stderr, r.stderr
    backups = Path(hub.site["hub"]["state_dir"]) / "backups"
    assert not backups.exists()

    # stopped, on an older schema: pg_dump first, then JupyterHub's migrations
    hub.stop_hub()
    migrate(db, OLDER, downgrade=True)
    r = campushub(hub, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    (dump,) = backups.glob("jupyterhub-*-4621fec11365.pgdump")
    assert f"Backed up the hub database ({url}) to {dump}" in r.stdout
    assert f"from revision {OLDER} to " in r.stdout and "Upgraded." in r.stdout
    assert dump.stat().st_mode & 0o777 == 0o600 and dump.read_bytes().startswith(b"PGDMP")
    assert jupyterhub_revisions(db)[0] == jupyterhub_revisions(db)[1]
    hub.start_hub()
    assert hub.server("ada", token)["ready"] and server_pid(hub, "ada", admin) == pid
    hub.stop_server("ada", token)


def test_db_upgrade_refuses_while_the_hub_runs_then_backs_up_and_migrates(tmp_path, close_after):
    hub = demo_hub(tmp_path)
    close_after(hub)
    hub.start()
    token = hub.token("ada")
    assert hub.spawn_and_wait("ada", token)["ready"]
    state = Path(hub.site["hub"]["state_dir"])
    database = state / "jupyterhub.sqlite"

    r = campushub(hub, "db", "upgrade")
    assert r.returncode == 2, r.stdout
    assert f"the hub is running (process {hub.hub.pid} holds {state / 'hub.lock'})" in r.stderr
    assert not (state / "backups").exists()

    hub.stop_hub()
    # on the current schema: a backup, and nothing else
    r = campushub(hub, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert "schema (revision f460b0348206): nothing to upgrade." in r.stdout, r.stdout
    # on an older schema: the backup keeps it as it was; the database gets the newest
    db = Database(f"sqlite:///{database}")
    migrate(db, OLDER, downgrade=True)
    r = campushub(hub, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    (copy,) = (state / "backups").glob(f"jupyterhub-*-{OLDER}.sqlite")
    assert f"to {copy}" in r.stdout and f"from revision {OLDER} to f460b0348206" in r.stdout
    assert copy.stat().st_mode & 0o777 == 0o600
    kept = sqlite3.connect(copy)
    assert kept.execute("SELECT version_num FROM alembic_version").fetchall() == [(OLDER,)]
    assert {name for (name,) in kept.execute("SELECT name FROM users")} == {ADMIN, "ada"}
    assert kept.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert jupyterhub_revisions(db)[0] == "f460b0348206"

    hub.start_hub()  # the upgraded database: the server is still there
    assert hub.server("ada", token)["ready"]
    assert hub.user_get("ada", "api/status", token).status_code == 200
    hub.stop_server("ada", token)


def hub_view(hub: RunningHub, admin: str) -> dict:
    """What the REST API reports: users (admin flag, groups, servers), groups (members, properties)."""
    users = hub.api("GET", "/users", admin).json()
    groups = hub.api("GET", "/groups", admin).json()
    return {
        "users": {
            u["name"]: (u["admin"], sorted(u["groups"]), {n: (s["url"], s["ready"]) for n, s in u["servers"].items()})
            for u in users
        },
        "groups": {g["name"]: (sorted(g["users"]), g["properties"]) for g in groups},
    }


def schedules(hub: RunningHub, token: str) -> list[dict] | None:
    """The user's schedules as the scheduler's API reports them; None until the proxy routes to it."""
    r = requests.get(
        f"{hub.url}/services/scheduler/api/schedules", headers={"Authorization": f"token {token}"}, timeout=30
    )
    if r.status_code != 200:
        return None
    items = r.json()["schedules"]
    return [{k: s.get(k) for k in ("id", "name", "owner", "notebook", "cron", "timezone", "parameters")} for s in items]


def test_a_backup_of_a_running_hub_restores_into_an_empty_state_folder(tmp_path, close_after):
    hub = RunningHub(tmp_path / "before", {"auth": {"admin_users": [ADMIN]}})  # with the scheduler
    close_after(hub)
    hub.start()
    admin = hub.token(ADMIN, hub.admin_password)
    for user in ("ada", "bob"):
        hub.token(user)
    assert hub.api("POST", "/groups/gpu-users", admin).status_code == 201
    assert hub.api("POST", "/groups/gpu-users/users", admin, json={"users": ["ada"]}).status_code == 200
    grant = {"campushub.profiles": ["gpu-1"]}
    assert hub.api("PUT", "/groups/gpu-users/properties", admin, json=grant).status_code == 200
    assert hub.api("PATCH", "/users/bob", admin, json={"admin": True}).status_code == 200
    ada = hub.token("ada")
    assert hub.spawn_and_wait("ada", ada)["ready"]
    demo = hub.token("demo")
    wait_for(lambda: schedules(hub, demo), 90, "the demo's example schedule")
    mine = {"name": "ada's weekly report", "notebook": "template:gpu-check", "cron": "0 3 * * 1", "parameters": {}}
    r = requests.post(f"{hub.url}/services/scheduler/api/schedules", json=mine,
                      headers={"Authorization": f"token {ada}"}, timeout=30)  # fmt: skip
    assert r.status_code == 201, r.text
    before, schedules_before = hub_view(hub, admin), schedules(hub, demo) + schedules(hub, ada)
    assert [s["name"] for s in schedules_before] == ["Example: nightly training run", "ada's weekly report"]
    assert before["users"]["ada"][2][""][1] and before["users"]["bob"][0]

    archive = tmp_path / "campushub.tar"
    r = campushub(hub, "backup", str(archive))  # while it runs
    assert r.returncode == 0, r.stderr
    assert f"to {archive} (mode 0600" in r.stdout and "databases/hub.sqlite" in r.stdout, r.stdout
    assert archive.stat().st_mode & 0o777 == 0o600
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "databases/hub.sqlite", "databases/scheduler.sqlite"} <= names
    assert {"state/jupyterhub_cookie_secret", "state/proxy_auth_token", "state/demo_admin_password"} <= names

    # not into the folder in use
    r = campushub(hub, "restore", str(archive))
    assert r.returncode == 2 and "is not empty: restore goes into an empty one" in r.stderr, r.stderr

    hub.close()  # the hub and the proxy stop; ada's server keeps running
    # the same site (addresses, ports) but for the state folder: a new, empty one
    after = RunningHub(
        tmp_path / "after", {**hub.site, "hub": {**hub.site["hub"], "state_dir": str(tmp_path / "after" / "state")}}
    )
    after.port, after.hub_port, after.url = hub.port, hub.hub_port, hub.url  # where it listens: the site's
    close_after(after)
    r = campushub(after, "restore", str(archive))
    assert r.returncode == 0, r.stderr
    state = tmp_path / "after" / "state"
    assert (state / "jupyterhub_cookie_secret").stat().st_mode & 0o777 == 0o600
    assert "Restored the state of" in r.stdout, r.stdout
    after.start()
    admin_after = after.token(ADMIN, after.admin_password)
    assert hub_view(after, admin_after) == before
    demo = after.token("demo")
    wait_for(lambda: schedules(after, demo), 90, "the scheduler behind the proxy")
    assert schedules(after, demo) + schedules(after, ada) == schedules_before
    # the tokens made before the backup still work, and ada's server answers through the new proxy
    assert after.user_get("ada", "api/status", ada).status_code == 200
    after.stop_server("ada", ada)
