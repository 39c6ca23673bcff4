"""An upgrade of a running site, as docs/upgrade.md tells an admin to do it, on a real older installation:
CampusHub OLDER_VERSION with JupyterHub 5.5 (schema 4621fec11365) in its own virtualenv, its proxy and hub
running, two users' servers running with files in their homes. While one user keeps asking their server
through the proxy, this tree is installed over it with pip (JupyterHub 6.1.1), the hub stopped, started
once without `campushub db upgrade` (it refuses, saying what to run), `campushub db upgrade` run, and the
hub started again. Nothing is lost: every request answered, the same server processes, users, groups and
grants, files, and the new hub stops and starts servers. Then the rollback: the older version reinstalled
(it refuses the newer schema) and the backup copied back; the older hub finds the server that kept running."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from campushub import __version__
from campushub.database import Database, jupyterhub_revisions
from campushub.profiles import GROUP_PROPERTY
from tests.cluster.slurm import alive
from tests.cluster.upgrade import (
    OLDER_JUPYTERHUB,
    OLDER_REVISION,
    OLDER_VERSION,
    InstalledHub,
    install_newer,
    installed_versions,
    older_installation,
    older_wheel,
    reinstall_older,
    remove_installation,
)
from tests.integration.test_hub_database import ADMIN, hub_view, server_pid

NEWEST = "f460b0348206"  # JupyterHub 6.1.1's schema
USERS = ("ada", "bob")


@pytest.fixture
def older_release(tmp_path) -> Path:
    """This tree as the older CampusHub's wheel."""
    return older_wheel(tmp_path / "older-release")


@pytest.fixture
def older(root_required, older_release):
    """The older installation (a fresh copy of the cached one), removed at the end."""
    yield older_installation(older_release)
    remove_installation()


def jupyterhub_version(hub: InstalledHub) -> str:
    return requests.get(f"{hub.url}/hub/api/", timeout=10).json()["version"]


def write_file(hub: InstalledHub, user: str, token: str, name: str, text: str) -> None:
    """A file in the user's home, written by their server (Jupyter's contents API)."""
    body = {"type": "file", "format": "text", "content": text}
    r = hub.user_request("PUT", user, f"api/contents/{name}", token, json=body)
    assert r.status_code in (200, 201), r.text


def hub_refuses(hub: InstalledHub) -> tuple[int, str]:
    """`campushub hub` run to its end (it must end by itself: a hub that starts is stopped and fails the test)."""
    log = hub.workdir / "refused-hub.log"
    log.unlink(missing_ok=True)
    proc = hub.launch("hub", log=log.name)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        pytest.fail(f"the newer hub started on the older database schema: {log.read_text()[-2000:]}")
    return proc.returncode, log.read_text()


def test_an_older_campushub_upgrades_in_place_while_servers_run(older, older_release, tmp_path):
    site = {"auth": {"admin_users": [ADMIN]}, "scheduler": {"enabled": False}}
    hub = InstalledHub(older, tmp_path / "site", site)
    state = Path(hub.site["hub"]["state_dir"])
    pids: dict[str, int] = {}
    try:
        hub.start()
        assert installed_versions(older, tmp_path) == (OLDER_VERSION, OLDER_JUPYTERHUB)
        assert jupyterhub_version(hub) == OLDER_JUPYTERHUB
        admin = hub.token(ADMIN, hub.admin_password)
        tokens = {user: hub.token(user) for user in USERS}
        assert hub.api("POST", "/groups/gpu-users", admin).status_code == 201
        assert hub.api("POST", "/groups/gpu-users/users", admin, json={"users": ["ada"]}).status_code == 200
        grant = {GROUP_PROPERTY: ["gpu-1"]}
        assert hub.api("PUT", "/groups/gpu-users/properties", admin, json=grant).status_code == 200
        for user in USERS:
            assert hub.spawn_and_wait(user, tokens[user])["ready"]
            pids[user] = server_pid(hub, user, admin)
            assert str(older / "bin" / "jupyterhub-singleuser") in Path(f"/proc/{pids[user]}/cmdline").read_text()
            write_file(hub, user, tokens[user], "notes.txt", f"{user}'s notes, written before the upgrade\n")
        homes = {user: state / "homes" / user / "notes.txt" for user in USERS}
        files = {user: (path.read_bytes(), path.stat().st_mtime_ns) for user, path in homes.items()}
        before = hub_view(hub, admin)
        assert before["groups"]["gpu-users"] == (["ada"], grant)

        with hub.asking("ada", "api/contents/notes.txt", tokens["ada"]) as answers:
            installing = time.monotonic()
            install_newer(older, tmp_path / "wheels")  # while the older hub runs
            assert installed_versions(older, tmp_path) == (__version__, "6.1.1")
            stopped = time.monotonic()
            hub.stop_hub()
            # the newer hub on the older schema: refused, naming the command that upgrades it
            code, said = hub_refuses(hub)
            assert code != 0, said
            refused = time.monotonic()
            r = hub.campushub("db", "upgrade")
            upgraded = time.monotonic()
            hub.start_hub()
            back = time.monotonic()
            asked_while = len(answers)
            time.sleep(1)  # and on, with the newer hub
        print(
            f"\npip install {stopped - installing:.1f} s; hub down {back - stopped:.1f} s (of which the refused start {refused - stopped:.1f} s, "
            f"db upgrade {upgraded - refused:.1f} s, the newer hub's start {back - upgraded:.1f} s); "
            f"{len(answers)} requests to ada's server"
        )

        assert code == 2, said
        assert (
            f"campushub: the hub database ({state / 'jupyterhub.sqlite'}) has an older JupyterHub's schema (revision "
            f"{OLDER_REVISION}); JupyterHub 6.1.1 needs revision {NEWEST}: run `campushub db upgrade --config "
            f"{hub.site_file}` (it backs the database up first), then start the hub again"
        ) in said, said
        assert r.returncode == 0, r.stderr
        (backup,) = (state / "backups").glob(f"jupyterhub-*-{OLDER_REVISION}.sqlite")
        assert f"Backed up the hub database ({state / 'jupyterhub.sqlite'}) to {backup}" in r.stdout, r.stdout
        assert f"from revision {OLDER_REVISION} to {NEWEST} (JupyterHub 6.1.1)" in r.stdout, r.stdout
        assert jupyterhub_revisions(Database(f"sqlite:///{state / 'jupyterhub.sqlite'}")) == (NEWEST, NEWEST)
        assert jupyterhub_revisions(Database(f"sqlite:///{backup}"))[0] == OLDER_REVISION

        # every request through the proxy was answered, before, during and after the hub's absence
        assert len(answers) > asked_while > 0
        assert set(answers) == {200}, Counter(answers)

        assert jupyterhub_version(hub) == "6.1.1"
        assert hub_view(hub, admin) == before  # users, admins, groups, grants and ready servers
        for user in USERS:
            assert hub.server(user, tokens[user])["ready"]
            assert server_pid(hub, user, admin) == pids[user] and alive(pids[user])
            assert (homes[user].read_bytes(), homes[user].stat().st_mtime_ns) == files[user]
            r = hub.user_get(user, "api/contents/notes.txt", tokens[user])
            assert r.status_code == 200 and r.json()["content"] == files[user][0].decode()

        # the newer hub stops a server the older one started, and starts it again
        hub.stop_server("ada", tokens["ada"])
        assert not alive(pids["ada"])
        assert hub.spawn_and_wait("ada", tokens["ada"])["ready"]
        pids["ada"] = server_pid(hub, "ada", admin)
        r = hub.user_get("ada", "api/contents/notes.txt", tokens["ada"])
        assert r.status_code == 200 and r.json()["content"] == files["ada"][0].decode()

        # the rollback: ada's new server stopped, the hub stopped, the older version reinstalled, which refuses
        # the newer schema; the backup copied back (SQLite's side files gone first); the older hub started
        hub.stop_server("ada", tokens["ada"])
        hub.stop_hub()
        reinstall_older(older, older_release, tmp_path / "older")
        assert installed_versions(older, tmp_path) == (OLDER_VERSION, OLDER_JUPYTERHUB)
        code, said = hub_refuses(hub)
        assert code == 2 and f"has schema revision {NEWEST}, which JupyterHub {OLDER_JUPYTERHUB} does not know" in said
        database = state / "jupyterhub.sqlite"
        for side in ("-wal", "-shm"):
            Path(f"{database}{side}").unlink(missing_ok=True)
        shutil.copy(backup, database)
        hub.start_hub()
        assert jupyterhub_version(hub) == OLDER_JUPYTERHUB
        after = hub_view(hub, admin)
        assert after["users"]["ada"][2] == {}  # the server the backup knew ended (restarted after the upgrade)
        after["users"]["ada"] = before["users"]["ada"]
        assert after == before
        assert server_pid(hub, "bob", admin) == pids["bob"] and alive(pids["bob"])
        assert hub.user_get("bob", "api/contents/notes.txt", tokens["bob"]).status_code == 200
    finally:
        hub.close()
        for pid in pids.values():  # servers outlive the hub (cleanup_servers is off)
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
