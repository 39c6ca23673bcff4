"""Each proxy (proxy.kind: chp, traefik) run as `campushub proxy` in front of a real hub (the demo's login and
local servers): a hub restart cuts no request to a user's server, nor an open websocket, and keeps every
route; the proxy's API answers only with its secret; `campushub up` runs and stops traefik too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket
import yaml

from tests.cluster.hub import RunningHub
from tests.cluster.slurm import free_port, processes, wait_for
from tests.integration.test_demo import another_program, listening, processes_under, site_on_free_ports

ADMIN = "ops"
USERS = ["ada", "bob"]


@pytest.fixture(params=["chp", "traefik"])
def hub(request, root_required, tmp_path):
    hub = RunningHub(
        tmp_path,
        {
            "proxy": {"kind": request.param},
            "auth": {"admin_users": [ADMIN]},
            "scheduler": {"enabled": False},
            "culling": {"enabled": False},
        },
    )
    homes = tmp_path / "state" / "homes"
    try:
        yield hub.start()
    finally:
        hub.close()
        # users' servers outlive the hub (they run in its homes): end them too
        for pid in processes_under(homes):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not processes_under(homes), 30, "the users' servers to stop")


def proxy_routes(hub: RunningHub) -> set[str]:
    """The routes the proxy itself has, from its API, with its secret."""
    state = Path(hub.site["hub"]["state_dir"])
    api = f"http://127.0.0.1:{hub.site['proxy']['api_port']}"
    if hub.site["proxy"]["kind"] == "chp":
        token = (state / "proxy_auth_token").read_text().strip()
        r = requests.get(f"{api}/api/routes", headers={"Authorization": f"token {token}"}, timeout=10)
        r.raise_for_status()
        return set(r.json())
    password = (state / "traefik_api_password").read_text().strip()
    r = requests.get(f"{api}/api/http/routers", auth=("campushub", password), timeout=10)
    r.raise_for_status()
    return {router["rule"] for router in r.json() if router["provider"] == "file"}


def has_route(routes: set[str], user: str) -> bool:
    # CHP names a route by its prefix; traefik's router has it in its rule
    return f"/user/{user}" in routes or any(f"PathPrefix(`/user/{user}/`)" in r for r in routes)


def test_a_hub_restart_cuts_no_request_and_keeps_every_route(hub):
    tokens = {user: hub.token(user) for user in USERS}
    for user in USERS:
        assert hub.spawn_and_wait(user, tokens[user])["ready"]
    assert all(has_route(proxy_routes(hub), user) for user in USERS)
    # a kernel's open websocket (what JupyterLab keeps open) across the restart too
    kernel = hub.user_request("POST", "bob", "api/kernels", tokens["bob"], json={}).json()["id"]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{hub.port}/user/bob/api/kernels/{kernel}/channels",
        header={"Authorization": f"token {tokens['bob']}"}, timeout=30,
    )  # fmt: skip
    assert kernel_info(ws) == "ok"

    with hub.asking("ada", "api/status", tokens["ada"]) as answers:
        time.sleep(1)
        hub.stop_hub()
        time.sleep(2)  # the hub is down: users' requests still flow through the proxy
        during = len(answers)
        routes_without_hub = proxy_routes(hub)
        hub.start_hub()
        time.sleep(1)

    assert during > 10 and len(answers) > during
    assert set(answers) == {200}, [a for a in answers if a != 200][:5]
    assert kernel_info(ws) == "ok", "the websocket opened before the restart still works"
    ws.close()
    # the proxy kept every route while the hub was away, and has them after the hub's start
    assert all(has_route(routes_without_hub, user) for user in USERS), routes_without_hub
    assert all(has_route(proxy_routes(hub), user) for user in USERS)
    for user in USERS:
        assert hub.server(user, tokens[user])["ready"]
        assert hub.user_get(user, "api/status", tokens[user]).status_code == 200
    # the hub's own view of the proxy's routes
    admin = hub.token(ADMIN, hub.admin_password)
    r = hub.api("GET", "/proxy", admin)
    r.raise_for_status()
    assert {"/", "/user/ada/", "/user/bob/"} <= set(r.json())


@pytest.mark.parametrize("hub", ["traefik"], indirect=True)
def test_a_traefik_restart_keeps_every_route(hub):
    """traefik reads the routes back from the state folder: no wait for the hub to add them again."""
    tokens = {user: hub.token(user) for user in USERS}
    for user in USERS:
        assert hub.spawn_and_wait(user, tokens[user])["ready"]
    hub.proxy.terminate()
    hub.proxy.wait(30)
    assert not listening(hub.port)
    hub.proxy = hub.launch("proxy", log="proxy.log")
    wait_for(lambda: listening(hub.port), 30, "traefik to listen")
    # traefik listens a moment before it has read its files (it answers 404 then); the hub would add
    # missing routes only at its next check, after culling.activity_interval (60 s)
    for user in USERS:
        wait_for(lambda u=user: hub.user_get(u, "api/status", tokens[u]).status_code == 200, 10, f"{user}'s route")


def kernel_info(ws: websocket.WebSocket) -> str:
    """Ask a kernel for its info over its websocket (Jupyter's JSON messages): the reply's status."""
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "kernel_info_request", "session": msg_id, "username": "", "version": "5.3"}
    ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell"}))
    while True:
        msg = json.loads(ws.recv())
        if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") == msg_id:
            return msg["content"]["status"]


def test_the_proxys_api_answers_only_with_its_secret(hub):
    api = f"http://127.0.0.1:{hub.site['proxy']['api_port']}"
    path = "/api/routes" if hub.site["proxy"]["kind"] == "chp" else "/api/http/routers"
    assert requests.get(f"{api}{path}", timeout=10).status_code in (401, 403)
    if hub.site["proxy"]["kind"] == "chp":
        wrong = requests.get(f"{api}{path}", headers={"Authorization": "token not-the-token"}, timeout=10)
    else:
        wrong = requests.get(f"{api}{path}", auth=("campushub", "not-the-password"), timeout=10)
        for page in ("/api/overview", "/dashboard/"):  # the dashboard too
            assert requests.get(f"{api}{page}", timeout=10).status_code == 401
    assert wrong.status_code in (401, 403)
    assert proxy_routes(hub), "with its secret, the API answers"
    # not on the users' address: there the hub answers (not found), not the proxy's API
    r = requests.get(f"{hub.url}{path}", timeout=10)
    assert r.status_code == 404 and r.url == f"{hub.url}/hub{path}", (r.url, r.text[:200])


def test_up_runs_traefik_and_ctrl_c_stops_it(root_required, tmp_path):
    ports = {"port": free_port(), "hub_port": free_port(), "api_port": free_port()}
    site = tmp_path / "campushub.yaml"
    site.write_text(
        yaml.safe_dump(
            {
                "hub": {"port": ports["port"], "hub_port": ports["hub_port"], "state_dir": str(tmp_path / "state")},
                "proxy": {"kind": "traefik", "api_port": ports["api_port"]},
                "scheduler": {"enabled": False},
            }
        )
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "campushub", "up", "--config", str(site)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in up.stdout:
            lines.append(line)
            if "CampusHub is ready" in line or "stopping" in line:
                break
        assert "CampusHub is ready" in lines[-1], "".join(lines)
        traefik = traefik_of(tmp_path / "state")
        assert traefik, "no traefik runs with this state folder"
        r = requests.get(f"http://127.0.0.1:{ports['port']}/hub/api/", timeout=10)
        assert r.status_code == 200 and "version" in r.json()
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=120)
    assert up.returncode == 0, out
    assert "campushub: stopped" in out
    assert not traefik_of(tmp_path / "state"), "traefik outlived `campushub up`"


@pytest.mark.parametrize("taken, what", [("port", "where users reach CampusHub"), ("api_port", "the proxy's API")])
def test_traefik_refuses_an_address_that_another_program_holds(tmp_path, taken, what):
    site, ports = site_on_free_ports(tmp_path)
    site.write_text(
        yaml.safe_dump(
            {**yaml.safe_load(site.read_text()), "proxy": {"kind": "traefik", "api_port": ports["api_port"]}}
        )
    )
    with another_program(ports[taken]):
        r = subprocess.run(
            [sys.executable, "-m", "campushub", "proxy", "--config", str(site)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert r.returncode == 2
    assert f"http://127.0.0.1:{ports[taken]} ({what}) is in use by another program" in r.stderr, r.stderr
    assert not traefik_of(tmp_path / "state")


def traefik_of(state: Path) -> list[int]:
    """The traefik processes run with this state folder's static config."""
    wanted = f"--configfile={state / 'traefik' / 'traefik.toml'}"
    return [pid for pid, argv in processes() if wanted in argv]
