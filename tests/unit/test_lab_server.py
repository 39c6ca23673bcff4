"""The campushub_lab server extension's routes, on a real jupyter server (a subprocess of this .venv,
with the extension from the source tree) talking to the real scheduler service's API.

The scheduler (its real handlers, service layer, store and templates) runs in a thread of this process
at CAMPUSHUB_SCHEDULER_URL. Only the hub's answer to "whose token is this?" is a stand-in (no hub runs
in the unit tests): ADA_TOKEN is ada's. The integration test (tests/integration/test_lab_server.py)
does the same through a real hub, in a real Slurm job.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import pytest
import requests
from jupyterhub.services.auth import HubOAuth
from tornado.web import Application

from campushub.scheduler.api import app_handlers
from campushub.scheduler.executors import executor_for
from campushub.scheduler.service import Scheduler
from campushub.scheduler.store import open_store
from campushub.site import parse_site
from tests.cluster.slurm import free_port, wait_for

EXTENSION = Path(__file__).resolve().parents[2] / "extensions" / "campushub-lab"
JUPYTER = Path(sys.executable).with_name("jupyter")
PREFIX = "/services/scheduler/"
ADA_TOKEN = "ada-server-token"
SERVER_TOKEN = "lab-token-for-the-tests"


class TokenOwners(HubOAuth):
    """The hub's answer for a token: ada's token is ada's, any other is nobody's."""

    async def _check_hub_authorization(self, url, api_token, cache_key=None, use_cache=True):
        return {"kind": "user", "name": "ada", "admin": False, "groups": []} if api_token == ADA_TOKEN else None


@pytest.fixture(scope="module")
def scheduler_url(tmp_path_factory):
    """The scheduler service's API on a free port of 127.0.0.1, until the module's tests end."""
    tmp = tmp_path_factory.mktemp("scheduler")
    site = parse_site({"hub": {"state_dir": str(tmp / "state")}})
    scheduler = Scheduler(
        site, open_store(f"sqlite:///{tmp / 'scheduler.sqlite'}"), executor_for(site), None, tmp / "html", str
    )
    auth = TokenOwners(api_token="service", api_url="http://hub.invalid/hub/api", oauth_client_id="service-scheduler",
                       base_url=PREFIX, cache_max_age=0)  # fmt: skip
    # the service's own routes, each asking `auth` who a token belongs to
    handlers = [
        (path, type(handler.__name__, (handler,), {"_hub_auth": auth})) for path, handler in app_handlers(PREFIX)
    ]
    port, ready, loop = free_port(), threading.Event(), asyncio.new_event_loop()

    async def start():
        Application(handlers, scheduler=scheduler, prefix=PREFIX, cookie_secret=b"x" * 32).listen(port, "127.0.0.1")
        ready.set()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(30)
    yield f"http://127.0.0.1:{port}{PREFIX}"
    loop.call_soon_threadsafe(loop.stop)


class LabServer:
    def __init__(self, root: Path, env: dict):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        state = root.parent / f"{root.name}-jupyter"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "CAMPUSHUB_", "SLURM", "CUDA_"))},
            "JUPYTER_CONFIG_DIR": str(state / "config"),
            "JUPYTER_DATA_DIR": str(state / "data"),
            "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
            "PYTHONPATH": str(EXTENSION),  # the extension of this source tree, over the installed copy
            **env,
        }
        (state / "config").mkdir(parents=True)
        extensions = {"ServerApp": {"jpserver_extensions": {"campushub_lab": True}}}
        (state / "config" / "jupyter_server_config.json").write_text(json.dumps(extensions))
        self.log = open(root.parent / f"{root.name}.log", "w")
        self.proc = subprocess.Popen(
            [str(JUPYTER), "server", "--allow-root", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
             f"--ServerApp.token={SERVER_TOKEN}", f"--ServerApp.root_dir={root}",
            ],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for(self.answers, 60, f"the jupyter server to answer (log: {self.log.name})", 0.25)

    def answers(self) -> bool:
        assert self.proc.poll() is None, Path(self.log.name).read_text()[-3000:]
        try:
            return self.get("api/status").status_code == 200
        except requests.RequestException:
            return False

    def request(self, method: str, path: str, token: str | None = SERVER_TOKEN, **kw) -> requests.Response:
        headers = {"Authorization": f"token {token}"} if token else {}
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw) -> requests.Response:
        return self.request("POST", path, json=body, **kw)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, scheduler_url):
    root = tmp_path_factory.mktemp("home")
    server = LabServer(root, {"CAMPUSHUB_SCHEDULER_URL": scheduler_url, "JUPYTERHUB_API_TOKEN": ADA_TOKEN})
    yield server
    server.close()


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if ".ipynb_checkpoints" not in p.parts}


def injected(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path} has {len(cells)} injected-parameters cells"
    return cells[0].source


# --- GET campushub/session ---


def test_the_session_outside_slurm_is_local_and_says_why_there_are_no_gpu_stats(lab):
    r = lab.get("campushub/session")
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["kind"] == "local" and session["node"] == socket.gethostname()
    assert [session[k] for k in ("job_id", "partition", "profile", "start", "end")] == [None] * 5
    assert session["gpus"] == [] and session["gpu_stats"] == []
    assert "no NVIDIA driver on this node" in session["gpu_stats_error"]  # this machine has no GPU
    now = datetime.fromisoformat(session["now"])
    assert now.tzinfo is not None and abs(now - datetime.now(UTC)) < timedelta(minutes=1)
    assert session["scheduler"] == PREFIX


# --- templates ---


def test_the_templates_are_the_schedulers(lab):
    r = lab.get("campushub/templates")
    assert r.status_code == 200, r.text
    templates = {t["name"]: t for t in r.json()["templates"]}
    assert {"gpu-check", "train-classifier"} <= set(templates)
    size = next(p for p in templates["gpu-check"]["parameters"] if p["name"] == "size")
    assert size["inferred_type_name"] == "int" and size["default"] == "8192"


def test_a_template_copy_never_overwrites_a_notebook(lab):
    first = lab.post("campushub/templates/copy", {"name": "gpu-check", "parameters": {"size": 64}})
    assert first.status_code == 201, first.text
    second = lab.post("campushub/templates/copy", {"name": "gpu-check", "parameters": {"size": 128}})
    assert second.status_code == 201, second.text
    assert (first.json(), second.json()) == ({"path": "gpu-check.ipynb"}, {"path": "gpu-check-1.ipynb"})
    assert "size = 64" in injected(lab.root / "gpu-check.ipynb")
    assert "size = 128" in injected(lab.root / "gpu-check-1.ipynb")
    third = lab.post("campushub/templates/copy", {"name": "gpu-check"})
    assert third.json() == {"path": "gpu-check-2.ipynb"}
    assert "size = 64" in injected(lab.root / "gpu-check.ipynb")  # the first copy as it was


def test_a_template_is_copied_into_a_folder_of_the_home(lab):
    (lab.root / "projects" / "ml").mkdir(parents=True)
    r = lab.post("campushub/templates/copy", {"name": "train-classifier", "parameters": {"epochs": 2}, "folder": "projects/ml"})  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json() == {"path": "projects/ml/train-classifier.ipynb"}
    assert "epochs = 2" in injected(lab.root / "projects" / "ml" / "train-classifier.ipynb")


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("../escape", "folder: '../escape' is not a folder in your home"),
        ("/tmp", "folder: '/tmp' is not a folder in your home"),
        ("nowhere", "folder: 'nowhere' is not a folder in your home"),
        ("a-file.txt", "folder: 'a-file.txt' is not a folder in your home"),
        (["x"], "folder: give a folder in your home as a string"),
    ],
)
def test_a_bad_folder_is_refused_and_nothing_is_written(lab, folder, message):
    (lab.root / "a-file.txt").write_text("x")
    before = files(lab.root)
    r = lab.post("campushub/templates/copy", {"name": "gpu-check", "folder": folder})
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith(message)
    assert files(lab.root) == before


def test_a_bad_parameter_or_template_is_the_schedulers_refusal(lab):
    before = files(lab.root)
    r = lab.post("campushub/templates/copy", {"name": "gpu-check", "parameters": {"size": "huge"}})
    assert r.status_code == 400
    assert r.json()["message"] == 'parameters.size: must be int, not str "huge"'
    r = lab.post("campushub/templates/copy", {"name": "no-such-template"})
    assert r.status_code == 404 and "there is no template 'no-such-template'" in r.json()["message"]
    r = lab.post("campushub/templates/copy", {"name": "../../x"})
    assert r.status_code == 404
    assert files(lab.root) == before


# --- campushub/scheduler/...: the scheduler's API as the server's owner ---


def test_schedules_made_through_the_server_are_its_owners(lab):
    api = "campushub/scheduler/api/"
    r = lab.post(api + "schedules", {"notebook": "template:gpu-check", "cron": "@daily", "parameters": {"size": 32}})
    assert r.status_code == 201, r.text
    schedule = r.json()
    assert schedule["owner"] == "ada" and schedule["parameters"] == {"size": 32}
    sid = schedule["id"]
    assert lab.get(api + f"schedules/{sid}").json()["name"] == "gpu-check"
    assert sid in [s["id"] for s in lab.get(api + "schedules?mine=1").json()["schedules"]]
    r = lab.request("PATCH", api + f"schedules/{sid}", json={"paused": True})
    assert r.status_code == 200 and r.json()["paused"] is True
    # the query string reaches the scheduler
    r = lab.get(api + f"schedules/{sid}/runs?limit=abc")
    assert r.status_code == 400 and r.json()["message"] == "limit: a whole number from 1 to 1000"
    assert lab.get(api + f"schedules/{sid}/runs?limit=5").json() == {"runs": []}
    # a bad definition is the scheduler's 400, with its message
    r = lab.post(api + "schedules", {"notebook": "template:gpu-check", "cron": "61 * * * *"})
    assert r.status_code == 400 and "cron: '61 * * * *' is not a valid cron expression" in r.json()["message"]
    r = lab.request("DELETE", api + f"schedules/{sid}")
    assert r.status_code == 204 and r.content == b""
    r = lab.get(api + f"schedules/{sid}")
    assert r.status_code == 404 and r.json()["message"] == f"there is no schedule {sid}"
    assert lab.get(api + "profiles").json() == {"profiles": [], "default": None}  # runs here are no Slurm jobs


@pytest.mark.parametrize(
    "path",
    ["api/health", "runs/1", "api/runs/1/output.html", "api/schedules/x", "", "api/templates/gpu-check/notebook"],
)
def test_scheduler_paths_outside_the_lab_s_list_are_not_forwarded(lab, path):
    r = lab.get(f"campushub/scheduler/{path}")
    assert r.status_code == 404, r.text
    assert "message" in r.json()


def test_a_request_without_the_servers_token_is_refused(lab):
    before = files(lab.root)
    for method, path in [("GET", "campushub/session"), ("GET", "campushub/templates"),
                         ("POST", "campushub/templates/copy"), ("POST", "campushub/scheduler/api/schedules")]:  # fmt: skip
        for token in (None, ADA_TOKEN):  # the hub token is not the server's
            r = lab.request(method, path, token=token, json={"name": "gpu-check"})
            assert r.status_code == 403, (method, path, r.status_code)
    assert files(lab.root) == before


def test_a_browser_post_needs_the_xsrf_token(lab):
    browser = requests.Session()
    browser.get(lab.url + f"lab?token={SERVER_TOKEN}", timeout=30)  # logged in: a cookie from now on
    assert browser.get(lab.url + "campushub/session", timeout=30).status_code == 200
    before = files(lab.root)
    r = browser.post(lab.url + "campushub/templates/copy", json={"name": "csv-profile"}, timeout=30)
    assert r.status_code == 403, r.text
    assert files(lab.root) == before
    r = browser.post(
        lab.url + "campushub/templates/copy", json={"name": "csv-profile"},
        headers={"X-XSRFToken": browser.cookies["_xsrf"]}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 201, r.text


# --- without a scheduler, or with one that cannot be reached ---


@pytest.fixture(scope="module")
def lonely_labs(tmp_path_factory):
    closed = free_port()
    servers = [
        LabServer(tmp_path_factory.mktemp("no-scheduler"), {}),
        LabServer(tmp_path_factory.mktemp("unreachable"), {"CAMPUSHUB_SCHEDULER_URL": f"http://127.0.0.1:{closed}/services/scheduler/", "JUPYTERHUB_API_TOKEN": ADA_TOKEN}),
    ]  # fmt: skip
    yield servers, closed
    for server in servers:
        server.close()


def test_without_a_scheduler_the_routes_say_so(lonely_labs):
    (none, unreachable), closed = lonely_labs
    for method, path in [("GET", "campushub/templates"), ("POST", "campushub/templates/copy"),
                         ("GET", "campushub/scheduler/api/schedules")]:  # fmt: skip
        r = none.request(method, path, json={"name": "gpu-check"})
        assert r.status_code == 503, r.text
        assert r.json()["message"] == "the scheduler service is not enabled on this hub"
        r = unreachable.request(method, path, json={"name": "gpu-check"})
        assert r.status_code == 502, r.text
        assert f"the scheduler service at http://127.0.0.1:{closed}/services/scheduler/ cannot be reached" in r.json()["message"]  # fmt: skip
    session = none.get("campushub/session").json()
    assert session["kind"] == "local" and session["scheduler"] is None
    assert files(none.root) == set() and files(unreachable.root) == set()
