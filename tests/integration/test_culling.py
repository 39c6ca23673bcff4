"""Culling through a real CampusHub with the Slurm backend: an idle server is stopped, a server
whose kernel is busy running silent code is not (the campushub_lab server extension), and the
culler service holds only its own scopes.

Both servers start together, then nothing reaches them: chub-erin's is left idle; chub-frank's
kernel runs `time.sleep(300)`, which sends no message while it runs. The tests share that timeline.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import websocket
from jupyterhub.scopes import expand_scopes

from campushub.hubconfig import CULLER_SCOPES
from campushub_lab.activity import CHECK_SECONDS as EXTENSION_CHECK  # the single-user environment's, same source
from tests.cluster.hub import environ_of, running_hub, slurm_site
from tests.cluster.slurm import wait_for

IDLE, BUSY = "chub-erin", "chub-frank"
IDLE_TIMEOUT = 30
CHECK_EVERY = 5
ACTIVITY_INTERVAL = 5
# Stopping a culled server: the hub's DELETE (scancel, batchspawner's polls until the job no longer
# runs), then up to Slurm's KillWait (5 s) until squeue lists the job no more. About 2-7 s here;
# the rest is margin for a loaded machine.
STOP_MARGIN = 25
# From a server's last activity to the hub listing it no more: the culler acts at its first check
# (every CHECK_EVERY s) after IDLE_TIMEOUT has passed, then the stop.
CULL_BOUND = IDLE_TIMEOUT + CHECK_EVERY + STOP_MARGIN
BUSY_FOR = 2 * IDLE_TIMEOUT  # how long the busy server must outlive its last traffic
ENDED = ("GONE", "COMPLETED", "CANCELLED")


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, tmp_path_factory):
    site = slurm_site(
        singleuser_env,
        spawner={"start_timeout": 120, "running_check_interval": 5},
        culling={"idle_timeout": IDLE_TIMEOUT, "check_every": CHECK_EVERY, "activity_interval": ACTIVITY_INTERVAL},
    )
    with running_hub(slurm, tmp_path_factory.mktemp("culling-hub"), site) as running:
        yield running


@pytest.fixture(scope="module")
def tokens(hub, unix_users):
    return {name: hub.token(name) for name in (IDLE, BUSY)}


def run_silently(hub, user: str, token: str, kernel: str, code: str) -> None:
    """Send an execute_request over the kernel's websocket, wait until the kernel is busy with it, hang up."""
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{hub.port}/user/{user}/api/kernels/{kernel}/channels",
        header=[f"Authorization: token {token}"],
        timeout=30,
    )
    try:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": user,
            "session": uuid.uuid4().hex,
            "date": datetime.now(UTC).isoformat(),
            "version": "5.3",
        }
        content = {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False}
        message = {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"}
        ws.send(json.dumps(message))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if (
                msg.get("msg_type") == "status"
                and msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["content"]["execution_state"] == "busy"
            ):
                return
        raise TimeoutError("the kernel never went busy with the request")
    finally:
        ws.close()


@pytest.fixture(scope="module")
def timeline(hub, slurm, tokens):
    """Start both servers; start frank's silent computation; from then on, no traffic to either."""
    t = {}
    t["spawn"] = time.monotonic()
    for user in (IDLE, BUSY):
        r = hub.spawn(user, tokens[user])
        assert r.status_code in (201, 202), r.text
    for user in (IDLE, BUSY):
        events = hub.progress(user, tokens[user], timeout=120)
        assert events[-1].get("ready"), f"spawn of {user} failed: {events}\n{hub.log_tail()}"
        t[f"ready:{user}"] = time.monotonic()
    t["jobs"] = {user: slurm.job_of(user)["id"] for user in (IDLE, BUSY)}

    r = hub.user_request("POST", BUSY, "api/kernels", tokens[BUSY], json={"name": "python3"})
    assert r.status_code == 201, r.text
    t["kernel"] = r.json()["id"]
    run_silently(hub, BUSY, tokens[BUSY], t["kernel"], "import time; time.sleep(300)")
    t["quiet"] = time.monotonic()
    t["quiet_wall"] = datetime.now(UTC)
    return t


def hub_last_activity(hub, user: str, token: str) -> datetime:
    return datetime.fromisoformat(hub.server(user, token)["last_activity"].replace("Z", "+00:00"))


def wait_culled(hub, slurm, user: str, token: str, job: str, deadline: float) -> float:
    """Wait until the hub lists the user's server no more (by `deadline`, monotonic); when that was seen."""
    wait_for(lambda: hub.server(user, token) is None, deadline - time.monotonic(), f"{user}'s server to be culled", 1)
    gone = time.monotonic()
    # the job has ended too (the hub's stop waits for squeue to stop listing it as running)
    wait_for(lambda: slurm.job_state(job) in ENDED, max(deadline - time.monotonic(), 5), f"job {job} to end", 1)
    assert f"Culling server {user}" in hub.log_tail(100000), "stopped, but not by the culler"
    return gone


def culler_pid(hub) -> int:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == hub.hub.pid and b"jupyterhub_idle_culler" in cmdline:
            return int(proc.name)
    raise AssertionError(f"no culler process under the hub (pid {hub.hub.pid})")


def test_culler_holds_exactly_its_scopes(hub):
    """The hub-managed culler service gets the role of CULLER_SCOPES and nothing more (read with its own token)."""
    token = environ_of(culler_pid(hub))["JUPYTERHUB_API_TOKEN"]
    r = hub.api("GET", "/user", token)
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["kind"] == "service" and me["name"] == "idle-culler"
    assert me["admin"] is False
    # the token's scopes are what the culler may do: the role's, expanded (read:servers implies
    # read:users:name), nothing more
    assert set(me["scopes"]) == expand_scopes(CULLER_SCOPES), me["scopes"]
    # what the role leaves out is refused
    assert hub.api("POST", f"/users/{IDLE}/server", token).status_code == 403
    assert hub.api("POST", f"/users/{IDLE}/tokens", token, json={}).status_code == 403
    assert hub.api("GET", "/proxy", token).status_code == 403
    assert hub.api("GET", "/services", token).status_code == 403


def test_idle_server_is_culled(hub, slurm, tokens, timeline):
    # its last activity is at most its readiness (the hub records the spawn's start as activity)
    deadline = timeline[f"ready:{IDLE}"] + CULL_BOUND
    gone = wait_culled(hub, slurm, IDLE, tokens[IDLE], timeline["jobs"][IDLE], deadline)
    # and not before IDLE_TIMEOUT: its spawn's start is its earliest possible last activity
    assert gone - timeline["spawn"] >= IDLE_TIMEOUT - 1
    assert not slurm.jobs_of(IDLE)


def test_server_with_a_busy_kernel_is_not_culled(hub, slurm, tokens, timeline):
    token = tokens[BUSY]
    job = timeline["jobs"][BUSY]
    # the servers report activity at the site's interval (the culler's precision)
    assert environ_of(slurm.server_pid(job)).get("JUPYTERHUB_ACTIVITY_INTERVAL") == str(ACTIVITY_INTERVAL)
    # only the hub's API is asked meanwhile: nothing reaches the server through the proxy
    while time.monotonic() < timeline["quiet"] + BUSY_FOR:
        server = hub.server(BUSY, token)
        assert server and server["ready"], (
            f"culled {time.monotonic() - timeline['quiet']:.0f} s after its last traffic, kernel busy\n{hub.log_tail()}"
        )
        time.sleep(2)
    # the busy kernel was reported as activity, long after the last traffic
    assert hub_last_activity(hub, BUSY, token) > timeline["quiet_wall"] + timedelta(seconds=BUSY_FOR - IDLE_TIMEOUT)
    assert slurm.job_state(job) == "RUNNING"
    r = hub.user_request("GET", BUSY, f"api/kernels/{timeline['kernel']}", token)
    assert r.status_code == 200 and r.json()["execution_state"] == "busy", r.text


def test_server_is_culled_once_its_kernel_is_idle(hub, slurm, tokens, timeline):
    token, kernel = tokens[BUSY], timeline["kernel"]
    assert hub.server(BUSY, token), "culled while its kernel was busy"
    r = hub.user_request("POST", BUSY, f"api/kernels/{kernel}/interrupt", token)
    assert r.status_code == 204, r.text
    wait_for(
        lambda: hub.user_request("GET", BUSY, f"api/kernels/{kernel}", token).json()["execution_state"] == "idle",
        30,
        "the interrupted kernel to be idle",
        1,
    )
    last_traffic = time.monotonic()
    # the extension may have recorded the kernel as busy up to one of its checks after the interrupt
    wait_culled(hub, slurm, BUSY, token, timeline["jobs"][BUSY], last_traffic + EXTENSION_CHECK + CULL_BOUND)
