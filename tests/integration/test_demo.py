"""`campushub up` with the embedded defaults: the demo a newcomer starts with `make demo`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.cluster.slurm import wait_for

URL = "http://127.0.0.1:8000"
DEMO_PORTS = (8000, 8001, 8081)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_under(folder: Path) -> list[int]:
    """Processes whose working folder lies in `folder` (the demo's servers run in its homes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


class Up:
    def __init__(self, cwd: Path):
        self.log = open(cwd / "up.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "campushub", "up"], cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "CAMPUSHUB_CONFIG"},
        )  # fmt: skip

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self):
        wait_for(lambda: "CampusHub is ready" in self.output() or self.proc.poll() is not None, 90, "the demo")
        assert self.proc.poll() is None, self.output()

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        return self.proc.wait(90)


@pytest.fixture
def demo_dir(tmp_path, root_required):
    busy = [p for p in DEMO_PORTS if listening(p)]
    if busy:
        pytest.fail(f"the demo's ports are taken on this machine: {busy}")
    yield tmp_path
    assert not processes_under(tmp_path), "a process of the demo outlived it"


def test_demo_runs_lab_and_ctrl_c_stops_everything(demo_dir):
    up = Up(demo_dir)
    try:
        up.wait_ready()
        out = up.output()
        password = re.search(r"this password \(shown once\): (\S+)", out).group(1)
        state = demo_dir / "campushub-state"
        for secret in ("demo_password", "proxy_auth_token", "jupyterhub_cookie_secret"):
            assert (state / secret).stat().st_mode & 0o777 == 0o600, secret
        assert state.stat().st_mode & 0o777 == 0o700
        assert (state / "jupyterhub.sqlite").exists()

        # log in as a browser does, start the server from the spawn URL, land in JupyterLab
        s = requests.Session()
        s.get(f"{URL}/hub/login").raise_for_status()
        r = s.post(
            f"{URL}/hub/login", data={"username": "ada", "password": "wrong-password", "_xsrf": s.cookies["_xsrf"]}
        )
        assert r.status_code == 403 and "Invalid username or password" in r.text
        r = s.post(f"{URL}/hub/login", data={"username": "ada", "password": password, "_xsrf": s.cookies["_xsrf"]})
        assert r.status_code == 200

        # the login starts the server (the spawn page has no form yet); /hub/user/ada/ leads to it once ready
        def lab():
            page = s.get(f"{URL}/hub/user/ada/")
            return page if "/user/ada/lab" in page.url else None

        r = wait_for(lab, 90, "JupyterLab", interval=1)
        assert "/user/ada/lab" in r.url, r.url
        assert r.status_code == 200 and "JupyterLab" in r.text
        servers = processes_under(state / "homes" / "ada")
        assert servers, "the user's server runs in its home under the state folder"
        # a user is not another
        assert s.get(f"{URL}/user/bob/api/status", allow_redirects=False).status_code in (302, 403, 404)
    finally:
        code = up.interrupt()
    assert code == 0, up.output()
    out = up.output()
    assert "stopping the hub and every user's server, then the proxy" in out
    assert not [p for p in DEMO_PORTS if listening(p)]
    assert not [p for p in servers if Path(f"/proc/{p}").exists()]


def test_second_start_keeps_state_and_does_not_print_the_password_again(demo_dir):
    first = Up(demo_dir)
    first.wait_ready()
    assert first.interrupt() == 0
    password = (demo_dir / "campushub-state" / "demo_password").read_text().strip()
    assert password in first.output()

    second = Up(demo_dir)
    try:
        second.wait_ready()
        out = second.output()
        assert password not in out
        assert f"the password in {demo_dir / 'campushub-state' / 'demo_password'}" in out
        s = requests.Session()
        s.get(f"{URL}/hub/login")
        r = s.post(f"{URL}/hub/login", data={"username": "ada", "password": password, "_xsrf": s.cookies["_xsrf"]},
                   allow_redirects=False)  # fmt: skip
        assert r.status_code == 302
    finally:
        assert second.interrupt() == 0
