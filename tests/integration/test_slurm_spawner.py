"""Users' servers as real Slurm jobs, through a real CampusHub (proxy + hub) with real unix users.

The site's prologue gives test users a behaviour of their own: chub-carol's job fails while
loading its environment; chub-dave's job waits 20 s before starting its server (a spawn held
pending, to probe the port report); chub-erin's server holds a token that is not its own, so the
hub refuses its port report.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
import requests

from campushub.spawners.slurm import SlurmSpawner
from tests.cluster.hub import environ_of, running_hub, slurm_site, uid_of
from tests.cluster.slurm import wait_for

POLL_INTERVAL = 3
PROLOGUE = """\
case "$USER" in
  chub-carol) echo "loading the course environment failed: no such module 'cuda/99'" >&2; exit 3 ;;
  chub-dave) sleep 20 ;;
  chub-erin) export JUPYTERHUB_API_TOKEN=not-this-servers-token ;;
esac"""


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, tmp_path_factory):
    site = slurm_site(
        singleuser_env, spawner={"running_check_interval": POLL_INTERVAL, "slurm": {"prologue": PROLOGUE}}
    )
    with running_hub(slurm, tmp_path_factory.mktemp("slurm-hub"), site) as running:
        yield running


@pytest.fixture(scope="module")
def tokens(hub, unix_users):
    return {name: hub.token(name) for name in unix_users}


def running_job(hub, slurm, tokens, user) -> str:
    """The id of the user's server job, started first if the user has no ready server."""
    if not (hub.server(user, tokens[user]) or {}).get("ready"):
        hub.spawn_and_wait(user, tokens[user])
    return slurm.job_of(user)["id"]


def test_two_users_get_their_own_jobs_and_servers(hub, slurm, unix_users, tokens):
    alice, bob = "chub-alice", "chub-bob"
    for user in (alice, bob):
        server = hub.spawn_and_wait(user, tokens[user])
        assert server["ready"]

    for user in (alice, bob):
        job = slurm.job_of(user)
        assert job["state"] == "RUNNING"
        assert job["name"] == f"jupyter-{user}"
        pid = slurm.server_pid(job["id"])
        assert uid_of(pid) == unix_users[user].pw_uid
        assert Path(f"/proc/{pid}/cwd").resolve() == Path(unix_users[user].pw_dir)
        # through the proxy, with the user's own token
        r = hub.user_get(user, "api/status", tokens[user])
        assert r.status_code == 200, r.text

    # each job reported its port once its server listened, and the hub has that port
    for user in (alice, bob):
        job = slurm.job_of(user)["id"]
        log = (Path(unix_users[user].pw_dir) / ".campushub" / "logs" / f"jupyter-{job}.log").read_text()
        listening = re.search(r"is running at:\s*\n.*http://[^:/]+:(\d+)/user/", log)
        reported = re.search(r"CampusHub: reported port (\d+) to the hub", log)
        assert listening and reported, log
        assert listening.start() < reported.start()
        assert listening.group(1) == reported.group(1)
        assert f"Server job {job} of {user} runs at " in hub.log_tail(2000)
        assert re.search(rf"Server job {job} of {user} runs at \S+:{reported.group(1)}\b", hub.log_tail(2000))

    # a user's token opens no other user's server
    assert hub.user_get(bob, "api/status", tokens[alice]).status_code == 403
    assert hub.user_get(alice, "api/contents", tokens[bob]).status_code == 403
    # nor starts or stops it
    assert hub.api("DELETE", f"/users/{bob}/server", tokens[alice]).status_code in (403, 404)
    assert hub.server(bob, tokens[bob])["ready"]


def test_hub_restart_keeps_servers_and_cuts_no_request(hub, slurm, tokens):
    users = ["chub-alice", "chub-bob"]
    jobs_before = {u: running_job(hub, slurm, tokens, u) for u in users}

    with hub.asking("chub-alice", "api/status", tokens["chub-alice"]) as results:
        time.sleep(1)
        hub.stop_hub()
        time.sleep(2)  # the hub is down: users' traffic still flows through the proxy
        during = len(results)
        hub.start_hub()
        time.sleep(1)

    assert during > 10 and len(results) > during
    assert set(results) == {200}, [r for r in results if r != 200][:5]
    for user in users:
        assert hub.server(user, tokens[user])["ready"]
        assert slurm.job_of(user)["id"] == jobs_before[user]
        assert hub.user_get(user, "api/status", tokens[user]).status_code == 200


def test_a_failing_squeue_drops_no_server(hub, slurm, tokens):
    """squeue fails with 'Protocol authentication error' while munge's socket is away; stock
    batchspawner 1.3.0 reads any such unknown error as "job gone" and drops the server."""
    user = "chub-alice"
    job = running_job(hub, slurm, tokens, user)
    slurm.munge_away()
    try:
        # each failing squeue takes about 4 s (munge retries): allow several hub polls
        time.sleep(POLL_INTERVAL * 4)
        failing = slurm.cmd("squeue", "-h", "-j", job, check=False)
        assert failing.returncode != 0 and "authentication" in failing.stderr
    finally:
        slurm.munge_back()
    assert "Could not query job" in hub.log_tail(400)
    assert hub.server(user, tokens[user])["ready"]
    assert hub.user_get(user, "api/status", tokens[user]).status_code == 200
    assert slurm.job_state(job) == "RUNNING"


def test_stop_cancels_the_job(hub, slurm, tokens):
    user = "chub-bob"
    job = running_job(hub, slurm, tokens, user)
    hub.stop_server(user, tokens[user])
    wait_for(lambda: slurm.job_state(job) in ("GONE", "CANCELLED", "COMPLETED"), 30, f"job {job} to end")
    assert not slurm.jobs_of(user)


def test_a_failing_scancel_is_tried_again(hub, slurm, tokens):
    """The hub forgets a server once its stop returns: a cancel that fails while munge is briefly
    away must be tried again, or the job would run on, unseen, until its time limit."""
    user = "chub-bob"
    job = running_job(hub, slurm, tokens, user)
    failed = f"scancel {job} failed (attempt 1 of"

    def bring_munge_back():
        try:
            wait_for(lambda: failed in hub.log_tail(400), 60, "the first scancel to fail")
        finally:
            slurm.munge_back()

    slurm.munge_away()
    back = threading.Thread(target=bring_munge_back)
    back.start()
    try:
        hub.stop_server(user, tokens[user], timeout=120)
    finally:
        back.join()
    wait_for(lambda: slurm.job_state(job) in ("GONE", "CANCELLED", "COMPLETED"), 60, f"job {job} to end")
    assert failed in hub.log_tail(400)


def test_job_killed_with_scancel_shows_stopped_within_poll_interval(hub, slurm, tokens):
    user = "chub-alice"
    job = running_job(hub, slurm, tokens, user)
    slurm.cmd("scancel", job)
    wait_for(lambda: slurm.job_state(job) != "RUNNING", 30, f"job {job} to end")
    ended = time.monotonic()
    # the hub polls every POLL_INTERVAL s (with JupyterHub's 10% jitter); the poll itself (sudo, squeue)
    # and the stop that follows take a few seconds more on a loaded 2-core machine
    bound = POLL_INTERVAL * 1.1 + 4
    wait_for(lambda: hub.server(user, tokens[user]) is None, bound, "the hub to see the stop")
    assert time.monotonic() - ended <= bound


def test_job_that_dies_before_its_server_fails_the_spawn_at_once(hub, slurm, tokens):
    user = "chub-carol"
    started = time.monotonic()
    r = hub.spawn(user, tokens[user])
    if r.status_code == 202:  # still going after the hub's 10 s: follow the progress stream
        final = hub.progress(user, tokens[user], timeout=60)[-1]
        assert final.get("failed"), final
        message = final["message"]
    else:  # failed within those 10 s: the REST answer carries the message
        assert r.status_code == 500, r.text
        message = r.json()["message"]
    # at once, not at start_timeout (600 s): the job's end is seen within a few polls
    assert time.monotonic() - started < 60
    assert "ended (FAILED)" in message
    assert "no such module 'cuda/99'" in message  # the tail of the job's own log
    assert hub.server(user, tokens[user]) is None
    assert not slurm.jobs_of(user)


def test_a_refused_port_report_stops_the_server_and_fails_the_spawn(hub, slurm, tokens):
    user = "chub-erin"
    r = hub.spawn(user, tokens[user])
    if r.status_code == 202:
        final = hub.progress(user, tokens[user], timeout=90)[-1]
        assert final.get("failed"), final
        message = final["message"]
    else:
        assert r.status_code == 500, r.text
        message = r.json()["message"]
    assert "before its server started" in message
    assert "the hub did not take this server's port (403" in message  # the job log's tail
    assert hub.server(user, tokens[user]) is None
    wait_for(lambda: not slurm.jobs_of(user), 30, f"{user}'s job to end")


def test_port_report_accepts_only_a_port_from_the_pending_spawn(hub, slurm, unix_users, tokens, tmp_path):
    user = "chub-dave"
    marker = Path("/tmp/campushub-port-report-marker")
    marker.unlink(missing_ok=True)
    r = hub.spawn(user, tokens[user])
    assert r.status_code == 202, r.text
    wait_for(lambda: [j for j in slurm.jobs_of(user) if j["state"] == "RUNNING"], 60, "dave's job")
    job = slurm.job_of(user)["id"]
    # the server's own token, as the job holds it (the prologue still sleeps: the spawn is pending)
    pids = wait_for(lambda: slurm.job_pids(job), 10, "the job's processes")
    server_token = next(e["JUPYTERHUB_API_TOKEN"] for e in map(environ_of, pids) if "JUPYTERHUB_API_TOKEN" in e)
    assert hub.server(user, tokens[user])["pending"] == "spawn"

    def report(body, token=server_token, raw=None):
        return requests.post(
            f"{hub.url}/hub/api/batchspawner",
            headers={"Authorization": f"token {token}"},
            data=raw if raw is not None else json.dumps(body),
            timeout=10,
        )

    evil = f"touch {marker}"
    # every attribute of the spawner but the port is refused, one by one and mixed with a port
    for name in sorted(set(SlurmSpawner.class_trait_names()) | {"job_id", "ip", "cmd", "exec_prefix"}):
        if name == "port":
            continue
        assert report({name: evil}).status_code == 400, name
        assert report({"port": 1234, name: evil}).status_code == 400, name
    for bad in ({"port": "1234"}, {"port": 0}, {"port": 70000}, {"port": True}, {"port": 12.5}, [1234], {}):
        assert report(bad).status_code == 400, bad
    assert report(None, raw="port=1234").status_code == 400
    # tokens that belong to no pending spawn: the user's own API token, another user's token
    assert report({"port": 1234}, token=tokens[user]).status_code == 403
    assert report({"port": 1234}, token=tokens["chub-bob"]).status_code == 403

    # nothing changed: the real report from the job arrives after the prologue, and the server works
    events = hub.progress(user, tokens[user], timeout=90)
    assert events[-1].get("ready"), events
    assert hub.user_get(user, "api/status", tokens[user]).status_code == 200
    # once running, the server's token can report nothing more
    assert report({"port": 1234}).status_code == 409
    assert hub.user_get(user, "api/status", tokens[user]).status_code == 200
    # queries and cancel still run Slurm's own commands: stop works, and no command of ours ran
    hub.stop_server(user, tokens[user])
    wait_for(lambda: slurm.job_state(job) != "RUNNING", 30, f"job {job} to end")
    assert not marker.exists()
    assert not os.path.exists(Path(unix_users[user].pw_dir) / "campushub-port-report-marker")
