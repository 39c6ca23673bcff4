"""`campushub up` with the embedded defaults: the demo a newcomer starts with `make demo`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from tests.cluster.slurm import free_port, processes, wait_for

URL = "http://127.0.0.1:8000"
DEMO_PORTS = (8000, 8001, 8081, 8090)


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
        # the banner says what the state folder holds, and where the logs go; both are checked below
        assert f"  state folder (database, secrets, users' files in homes/): {state}\n" in out
        assert "  the hub and the proxy log to this terminal\n" in out
        # the hub's log: it says so once its services have started too
        wait_for(lambda: "JupyterHub is now running" in up.output(), 60, "the hub's services")
        assert "[ConfigProxy]" in out
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
        notebook = state / "homes" / "ada" / "first.ipynb"
        r = s.put(f"{URL}/user/ada/api/contents/first.ipynb", json={"type": "notebook"},
                  headers={"X-XSRFToken": s.cookies.get("_xsrf", path="/user/ada/")})  # fmt: skip
        assert r.status_code == 201, r.text
        assert notebook.exists(), "a notebook saved in JupyterLab lands in the user's folder under homes/"
        # a user is not another
        assert s.get(f"{URL}/user/bob/api/status", allow_redirects=False).status_code in (302, 403, 404)

        # nightly notebooks: the example schedule of the user demo has run, and its output opens
        assert f"nightly notebooks: {URL}/services/scheduler/ (log in as demo" in out
        demo = requests.Session()
        demo.get(f"{URL}/hub/login")
        demo.post(f"{URL}/hub/login", data={"username": "demo", "password": password, "_xsrf": demo.cookies["_xsrf"]},
                  allow_redirects=False)  # fmt: skip
        page = wait_for(lambda: (p := demo.get(f"{URL}/services/scheduler/schedules/1")) and "succeeded" in p.text
                        and p, 60, "the example schedule's first run")  # fmt: skip
        assert "Example: nightly training run" in page.text
        run_id = re.search(r"runs/(\d+)/output\.html", page.text).group(1)
        html = demo.get(f"{URL}/services/scheduler/runs/{run_id}/output.html")
        assert html.status_code == 200 and "test_accuracy" in html.text
        assert s.get(f"{URL}/services/scheduler/schedules/1").status_code == 404, "ada does not see demo's"
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


# --- another program on CampusHub's address --------------------------------------------------


@contextmanager
def another_program(port: int):
    """A plain web server on 127.0.0.1:port, the way a newcomer's other project may hold it."""
    server = ThreadingHTTPServer(("127.0.0.1", port), SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def site_on_free_ports(folder: Path) -> tuple[Path, dict]:
    ports = {"port": free_port(), "hub_port": free_port(), "api_port": free_port(), "scheduler_port": free_port()}
    site = {
        "hub": {"port": ports["port"], "hub_port": ports["hub_port"], "state_dir": str(folder / "state")},
        "proxy": {"api_port": ports["api_port"]},
        "scheduler": {"port": ports["scheduler_port"]},
    }
    f = folder / "campushub.yaml"
    f.write_text(yaml.safe_dump(site))
    return f, ports


def proxy_loading(port: int) -> bool:
    return any(
        argv[:1] == ["node"] and "--port" in argv and argv[argv.index("--port") + 1] == str(port)
        for _, argv in processes()
    )


def start_up(site: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "campushub", "up", "--config", str(site)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(up: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """`up`'s output once it has ended; past the timeout, Ctrl-C ends it (with its hub and proxy)."""
    try:
        return up.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        up.send_signal(signal.SIGINT)
        return up.communicate(timeout=90)


@pytest.mark.parametrize(
    "taken, what",
    [
        ("port", "where users reach CampusHub"),
        ("hub_port", "the hub's API"),
        ("api_port", "the proxy's API"),
        ("scheduler_port", "the nightly-notebooks service"),
    ],
)
def test_up_refuses_an_address_that_another_program_holds(tmp_path, taken, what):
    site, ports = site_on_free_ports(tmp_path)
    with another_program(ports[taken]):
        up = start_up(site)
        out, err = finish(up, timeout=60)
    assert up.returncode != 0, out
    assert f"http://127.0.0.1:{ports[taken]} ({what}) is in use by another program" in err, err
    assert "CampusHub is ready" not in out
    assert not (tmp_path / "state").exists(), "nothing is made for a start that cannot happen"


@pytest.mark.parametrize("taken, what", [("port", "where users reach CampusHub"), ("api_port", "the proxy's API")])
def test_the_proxy_alone_refuses_an_address_that_another_program_holds(tmp_path, taken, what):
    """`campushub proxy`, as a service manager runs it: a taken address fails the unit, visibly."""
    site, ports = site_on_free_ports(tmp_path)
    with another_program(ports[taken]):
        proxy = subprocess.Popen(
            [sys.executable, "-m", "campushub", "proxy", "--config", str(site)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            out, err = proxy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proxy.kill()
            out, err = proxy.communicate()
    assert proxy.returncode not in (0, -signal.SIGKILL), "the proxy went on running"
    assert f"http://127.0.0.1:{ports[taken]} ({what}) is in use by another program" in err, err


def test_up_is_ready_only_once_its_address_answers_as_campushub(tmp_path):
    """Another program takes the users' address after `up` and the proxy checked it, while the proxy
    loads: the proxy cannot listen (it says so, and runs on), and `up` must not send users there."""
    site, ports = site_on_free_ports(tmp_path)
    up = start_up(site)
    # configurable-http-proxy has been started (both checks passed) and is loading, not yet listening
    wait_for(lambda: proxy_loading(ports["port"]), 30, "the proxy to start", interval=0.005)
    with another_program(ports["port"]):
        out, err = finish(up, timeout=90)
    assert up.returncode != 0, out
    assert f"http://127.0.0.1:{ports['port']} answers as another program" in err, err
    assert "CampusHub is ready" not in out
    assert "campushub: stopped" in out
    assert not listening(ports["hub_port"]) and not listening(ports["api_port"]), "the hub or proxy outlived `up`"
