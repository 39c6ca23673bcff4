"""Attacks on the hub host, tried for real: servers of the local backend never run as root, and no
command run as a user, nor a user's server, sees the hub's secrets in its environment."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.cluster.hub import environ_of, running_hub, slurm_site, uid_of
from tests.cluster.idp import campus_login
from tests.cluster.slurm import processes, wait_for

ALICE = "chub-alice"


def singleuser_processes_of(user: str) -> list[int]:
    """Processes of jupyterhub-singleuser serving `user` (JUPYTERHUB_USER in their environment)."""
    found = []
    for pid, argv in processes():
        try:
            if any("jupyterhub-singleuser" in a for a in argv) and environ_of(pid).get("JUPYTERHUB_USER") == user:
                found.append(pid)
        except OSError:
            continue
    return found


def test_local_servers_run_as_the_users_own_account(slurm, unix_users, singleuser_env, tmp_path):
    assert os.geteuid() == 0  # the hub runs as root, as a single-server site's does
    site = {
        "auth": campus_login(),
        "spawner": {"backend": "local", "local": {"python_env": str(singleuser_env)}},
    }
    with running_hub(slurm, tmp_path / "local-hub", site) as hub:
        token = hub.token(ALICE)
        hub.spawn_and_wait(ALICE, token)
        pids = singleuser_processes_of(ALICE)
        assert pids, "no server process of chub-alice"
        for pid in pids:
            assert uid_of(pid) == unix_users[ALICE].pw_uid
            assert b"allow_root" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert hub.user_get(ALICE, "api/status", token).status_code == 200
        hub.stop_server(ALICE, token)


RECORDER = """#!/bin/sh
# Records the environment of every command the hub runs as a user, then runs it.
env > "{folder}/$(date +%s%N)-$1.env"
exec "$@"
"""


@pytest.fixture
def shared_folder():
    """A folder the test users can reach (pytest's own temporary folders are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="campushub-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_no_command_run_as_a_user_sees_the_hubs_secrets(slurm, unix_users, singleuser_env, tmp_path, shared_folder):
    crypt_key, proxy_token = secrets.token_hex(32), secrets.token_hex(16)
    folder = shared_folder / "environments"
    folder.mkdir()
    folder.chmod(0o1777)
    recorder = shared_folder / "record-env"
    recorder.write_text(RECORDER.format(folder=folder))
    recorder.chmod(0o755)
    site = slurm_site(
        singleuser_env, spawner={"slurm": {"submit_prefix": ["sudo", "-E", "-u", "{username}", str(recorder)]}}
    )
    env = dict(os.environ, JUPYTERHUB_CRYPT_KEY=crypt_key, CONFIGPROXY_AUTH_TOKEN=proxy_token)
    with running_hub(slurm, tmp_path / "env-hub", site, env=env) as hub:
        token = hub.token(ALICE)
        hub.spawn_and_wait(ALICE, token)
        server_env = environ_of(slurm.server_pid(slurm.job_of(ALICE)["id"]))
        hub.stop_server(ALICE, token)
        wait_for(lambda: not slurm.jobs_of(ALICE), 60, "the job to end")

    recorded = {p.name.split("-", 1)[1].removesuffix(".env"): p.read_text() for p in sorted(folder.iterdir())}
    assert {"sbatch", "squeue", "scancel"} <= set(recorded), sorted(recorded)
    for command, text in [*recorded.items(), ("the server", "\n".join(f"{k}={v}" for k, v in server_env.items()))]:
        assert crypt_key not in text and proxy_token not in text, f"{command} saw a hub secret:\n{text}"
        assert "JUPYTERHUB_CRYPT_KEY" not in text and "CONFIGPROXY_AUTH_TOKEN" not in text, command
