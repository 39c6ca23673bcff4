"""Nightly notebooks on the real cluster: the scheduler as the hub starts it, its store on a real PostgreSQL
server, runs as Slurm jobs of their owners, alerts to a real SMTP server and a real webhook receiver."""

from __future__ import annotations

import email
import json
import os
import pwd
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import psycopg
import pytest
import requests
import sqlalchemy
from aiosmtpd.controller import Controller
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from campushub.scheduler.models import Base
from tests.cluster.hub import environ_of, running_hub, slurm_site
from tests.cluster.slurm import free_port, processes, wait_for

ALICE, BOB, CAROL, DAVE, ADMIN = "chub-alice", "chub-bob", "chub-carol", "chub-dave", "chub-ops"
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "everyone": True, "default": True},
    {"slug": "gpu-1", "display_name": "One GPU", "groups": ["gpu-users"], "resources": {"gpus": 1}},
]
END_STATES = ("succeeded", "failed", "timed_out", "cancelled")


class Mailbox:
    def __init__(self):
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


class Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


@pytest.fixture(scope="module")
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Receiver.received, f"http://127.0.0.1:{server.server_port}/hooks/secret-token"
    server.shutdown()


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, postgres, mailbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("scheduler-hub")
    database = postgres.fresh_database("scheduler_tests")
    site = slurm_site(
        singleuser_env,
        auth={"admin_users": [ADMIN]},
        profiles=PROFILES,
        scheduler={
            "check_interval": 1,
            "db_url": database,
            "db_password_file": str(postgres.password_file(workdir)),
            "smtp": {"host": "127.0.0.1", "port": mailbox[1], "sender": "campushub@campus.test"},
            "webhook_allowed_hosts": ["127.0.0.1"],
        },
    )
    with running_hub(slurm, workdir, site) as running:
        running.database = database
        wait_for(lambda: service_answers(running), 60, "the scheduler to answer")
        yield running


@pytest.fixture(scope="module")
def tokens(hub):
    found = {name: hub.token(name) for name in (ALICE, BOB, CAROL, DAVE, ADMIN)}
    r = hub.api("POST", "/groups/gpu-users", found[ADMIN], json={"users": [CAROL]})
    assert r.status_code == 201, r.text
    return found


def service_pid(hub) -> int:
    for pid, argv in processes():
        try:
            if "campushub.scheduler" in argv and environ_of(pid).get("CAMPUSHUB_CONFIG") == str(hub.site_file):
                return pid
        except OSError:
            continue
    raise AssertionError("the scheduler service does not run")


def service_answers(hub) -> bool:
    try:
        return requests.get(f"{hub.url}/services/scheduler/api/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def call(hub, method: str, path: str, token: str, **kw) -> requests.Response:
    return requests.request(
        method, f"{hub.url}/services/scheduler/{path}", headers={"Authorization": f"token {token}"}, timeout=60, **kw
    )


def add(hub, token: str, **body) -> dict:
    r = call(hub, "POST", "api/schedules", token, json={"cron": "0 3 * * *", **body})
    assert r.status_code == 201, r.text
    return r.json()


def run_now(hub, token: str, schedule_id: int) -> dict:
    r = call(hub, "POST", f"api/schedules/{schedule_id}/runs", token)
    assert r.status_code == 201, r.text
    return r.json()


def wait_run(hub, token: str, run_id: int, states=END_STATES, timeout: float = 120) -> dict:
    found = {}

    def reached():
        found.update(call(hub, "GET", f"api/runs/{run_id}", token).json())
        return found["state"] in states

    wait_for(reached, timeout, f"run {run_id} to reach {states} (now {found.get('state')}: {found.get('detail')})")
    return found


def user_notebook(user: str, name: str, *sources: str, parameters: str = "") -> str:
    """A notebook in the user's home, owned by the user."""
    cells = [nbformat.v4.new_code_cell(src) for src in sources]
    if parameters:
        cells.insert(0, nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    account = pwd.getpwnam(user)
    path = Path(account.pw_dir) / name
    path.write_text(nbformat.writes(nb))
    os.chown(path, account.pw_uid, account.pw_gid)
    return name


def test_the_service_runs_with_its_own_role_and_a_postgresql_store(hub, tokens):
    r = hub.api("GET", "/services/scheduler", tokens[ADMIN])
    assert r.status_code == 200, r.text
    assert r.json()["roles"] == ["campushub-scheduler"]
    service_token = environ_of(service_pid(hub))["JUPYTERHUB_API_TOKEN"]
    scopes = hub.api("GET", "/user", service_token).json()["scopes"]
    own = {"read:groups", "read:users:groups", "read:users:name"}  # and what those imply, and its own name
    assert own <= set(scopes) and all(s.startswith(tuple(own)) or s.endswith("!service=scheduler") for s in scopes)
    assert hub.api("GET", "/users", service_token).status_code == 403, "it cannot list users, only read one"
    made = add(hub, tokens[ALICE], notebook="template:run-report", name="stored")
    url = hub.database.replace("postgresql+psycopg://", "postgresql://")
    password = Path(hub.site["scheduler"]["db_password_file"]).read_text().strip()
    with psycopg.connect(url, password=password) as db:
        rows = db.execute("SELECT owner, name FROM schedules WHERE id = %s", (made["id"],)).fetchall()
        revision = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert rows == [(ALICE, "stored")] and revision == "0001"
    engine = sqlalchemy.create_engine(hub.database, connect_args={"password": password})
    with engine.connect() as connection:  # the migrations made exactly the models' schema on PostgreSQL too
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()
    call(hub, "DELETE", f"api/schedules/{made['id']}", tokens[ALICE])


def test_a_run_is_a_slurm_job_of_its_owner_and_its_output_is_kept(hub, tokens, slurm):
    made = add(hub, tokens[ALICE], notebook="template:train-classifier", parameters={"epochs": 2, "seed": 3})
    assert made["owner"] == ALICE and made["next_due"].endswith("03:00:00+00:00")
    run = run_now(hub, tokens[ALICE], made["id"])
    done = wait_run(hub, tokens[ALICE], run["id"])
    assert done["state"] == "succeeded", done["detail"]
    assert done["job_id"].isdigit() and done["exit_code"] == 0
    folder = Path(done["folder"])
    account = pwd.getpwnam(ALICE)
    assert folder == Path(account.pw_dir) / "campushub-runs" / str(made["id"]) / str(run["id"])
    for name in ("output.ipynb", "results.json", "job.log"):
        assert (folder / name).stat().st_uid == account.pw_uid, f"{name} is not the owner's"
    assert f"CampusHub run {run['id']} of schedule {made['id']}" in (folder / "job.log").read_text()
    assert json.loads((folder / "results.json").read_text())["parameters"]["seed"] == 3
    r = call(hub, "GET", f"runs/{run['id']}/output.html", tokens[ALICE])
    assert r.status_code == 200 and "test_accuracy" in r.text
    assert r.headers["Content-Security-Policy"].startswith("sandbox;")
    assert "allow-scripts" not in r.headers["Content-Security-Policy"]


def test_a_gpu_profile_run_gets_a_gpu_and_a_withdrawn_grant_falls_back(hub, tokens):
    made = add(hub, tokens[CAROL], notebook="template:gpu-check", profile="gpu-1", parameters={"cpu_size": 32})
    done = wait_run(hub, tokens[CAROL], run_now(hub, tokens[CAROL], made["id"])["id"])
    assert done["state"] == "succeeded", done["detail"]
    results = json.loads((Path(done["folder"]) / "results.json").read_text())
    assert results["cuda_visible_devices"] in ("0", "1", "2", "3"), "Slurm gave the run one GPU"
    assert results["gpu"] is None  # the test cluster's GPUs are not NVIDIA devices: "no GPU", cleanly
    r = hub.api("DELETE", "/groups/gpu-users/users", tokens[ADMIN], json={"users": [CAROL]})
    assert r.status_code == 200, r.text
    again = wait_run(hub, tokens[CAROL], run_now(hub, tokens[CAROL], made["id"])["id"])
    assert again["state"] == "succeeded"
    assert again["note"] == "profile 'gpu-1' is no longer granted to you: ran with 'cpu'"
    assert "GPUs: none" in (Path(again["folder"]) / "job.log").read_text()


def test_users_see_and_change_only_their_own_and_admins_see_all(hub, tokens):
    alices = add(hub, tokens[ALICE], notebook="template:run-report", name="alice's report")
    run = wait_run(hub, tokens[ALICE], run_now(hub, tokens[ALICE], alices["id"])["id"])
    for method, path in [
        ("GET", f"api/schedules/{alices['id']}"),
        ("PATCH", f"api/schedules/{alices['id']}"),
        ("DELETE", f"api/schedules/{alices['id']}"),
        ("GET", f"api/schedules/{alices['id']}/runs"),
        ("POST", f"api/schedules/{alices['id']}/runs"),
        ("GET", f"api/runs/{run['id']}"),
        ("POST", f"api/runs/{run['id']}/cancel"),
        ("GET", f"runs/{run['id']}/output.html"),
        ("GET", f"schedules/{alices['id']}"),
    ]:
        r = call(hub, method, path, tokens[BOB], json={"paused": True} if method == "PATCH" else None)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert alices["id"] not in [s["id"] for s in call(hub, "GET", "api/schedules", tokens[BOB]).json()["schedules"]]
    r = call(hub, "GET", f"api/schedules/{alices['id']}", tokens[ALICE])
    assert r.json()["paused"] is False, "bob's PATCH changed nothing"
    assert len(call(hub, "GET", f"api/schedules/{alices['id']}/runs", tokens[ALICE]).json()["runs"]) == 1
    everyone = call(hub, "GET", "api/schedules", tokens[ADMIN]).json()["schedules"]
    assert alices["id"] in [s["id"] for s in everyone]
    assert call(hub, "GET", f"runs/{run['id']}/output.html", tokens[ADMIN]).status_code == 200
    assert requests.get(f"{hub.url}/services/scheduler/api/schedules", timeout=10).status_code == 403


def test_bad_input_is_refused_with_a_message_and_nothing_is_stored(hub, tokens):
    name = user_notebook(DAVE, "params.ipynb", "print(size)", parameters="size: int = 4")
    before = call(hub, "GET", "api/schedules", tokens[DAVE]).json()["schedules"]
    cases = [
        ({"notebook": name, "cron": "61 * * * *"}, "cron: '61 * * * *' is not a valid cron expression"),
        ({"notebook": name, "cron": "0 2 * * *", "timezone": "Mars/Base"}, "timezone: unknown time zone"),
        ({"notebook": name, "cron": "0 2 * * *", "parameters": {"sise": 4}}, "parameters.sise: the notebook has no"),
        ({"notebook": name, "cron": "0 2 * * *", "parameters": {"size": "big"}}, "parameters.size: must be int"),
        ({"notebook": "../chub-alice/x.ipynb", "cron": "0 2 * * *"}, "outside your home folder"),
        ({"notebook": "/etc/shadow.ipynb", "cron": "0 2 * * *"}, "outside your home folder"),
        ({"notebook": "missing.ipynb", "cron": "0 2 * * *"}, "no readable notebook 'missing.ipynb'"),
        ({"notebook": name, "cron": "0 2 * * *", "profile": "gpu-1"}, "profile: 'gpu-1' is not granted to you"),
        ({"notebook": name, "cron": "0 2 * * *", "profile": "huge"}, "profile: there is no profile 'huge'"),
        ({"notebook": name, "cron": "0 2 * * *", "alerts": {"webhooks": ["http://10.1.2.3/x"]}}, "alerts.webhooks"),
        ({"notebook": name, "cron": "0 2 * * *", "owner": ALICE}, "owner: not a setting of a schedule"),
    ]
    for body, message in cases:
        r = call(hub, "POST", "api/schedules", tokens[DAVE], json=body)
        assert r.status_code == 400 and message in r.json()["error"], (body, r.status_code, r.text)
    r = call(hub, "POST", "api/schedules", tokens[DAVE], data=b"{not json")
    assert r.status_code == 400 and r.json()["error"] == "the body must be JSON"
    assert call(hub, "GET", "api/schedules", tokens[DAVE]).json()["schedules"] == before
    # an alice's notebook dave cannot read is as good as missing
    secret = user_notebook(ALICE, "secret.ipynb", "x = 1")
    r = call(hub, "POST", "api/schedules", tokens[DAVE], json={"notebook": f"../{ALICE}/{secret}", "cron": "@daily"})
    assert r.status_code == 400


def test_a_failed_run_alerts_by_email_and_webhook_with_the_error_and_a_link(hub, tokens, mailbox, webhook):
    box, _ = mailbox
    received, url = webhook
    name = user_notebook(DAVE, "etl.ipynb", "rows = 7", "raise KeyError(f'column price missing in {rows} rows')")
    made = add(hub, tokens[DAVE], notebook=name, name="nightly etl",
               alerts={"emails": ["dave@campus.test"], "webhooks": [url]})  # fmt: skip
    done = wait_run(hub, tokens[DAVE], run_now(hub, tokens[DAVE], made["id"])["id"])
    assert done["state"] == "failed"
    assert done["detail"] == "KeyError: 'column price missing in 7 rows' (code cell 2)"
    link = f"{hub.url}/services/scheduler/runs/{done['id']}"
    wait_for(lambda: box.messages and received, 30, "the alerts")
    mail = box.messages[-1]
    assert mail["To"] == "dave@campus.test" and "nightly etl" in mail["Subject"] and "failed" in mail["Subject"]
    body = mail.get_payload(decode=True).decode() if not mail.is_multipart() else mail.get_payload(0).get_payload()
    assert link in body and "column price missing in 7 rows" in body
    hook = received[-1]
    assert hook["run"]["url"] == link and "column price missing" in hook["run"]["error"]
    assert hook["event"] == "run.failed"
    # the failing cell is marked in the kept output notebook, which the page shows sandboxed
    output = nbformat.read(Path(done["folder"]) / "output.ipynb", as_version=4)
    assert any(c.metadata.get("papermill", {}).get("exception") for c in output.cells)
    assert call(hub, "GET", f"runs/{done['id']}/output.html", tokens[DAVE]).status_code == 200


def test_a_script_in_a_runs_output_is_served_where_it_cannot_run(hub, tokens):
    name = user_notebook(
        BOB, "xss.ipynb",
        "from IPython.display import HTML, display\n"
        "display(HTML('<script>fetch(\"/hub/api/users\").then(r => document.title = \"stolen\")</script>'))",
    )  # fmt: skip
    made = add(hub, tokens[BOB], notebook=name)
    done = wait_run(hub, tokens[BOB], run_now(hub, tokens[BOB], made["id"])["id"])
    r = call(hub, "GET", f"runs/{done['id']}/output.html", tokens[BOB])
    assert "<script>fetch(" in r.text, "the output carries the script"
    csp = r.headers["Content-Security-Policy"]
    assert csp.split(";")[0] == "sandbox" and "default-src 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_cancelling_a_run_ends_its_slurm_job(hub, tokens, slurm):
    name = user_notebook(ALICE, "slow.ipynb", "import time\ntime.sleep(120)")
    made = add(hub, tokens[ALICE], notebook=name)
    run = wait_run(hub, tokens[ALICE], run_now(hub, tokens[ALICE], made["id"])["id"], states=("running",))
    r = call(hub, "POST", f"api/runs/{run['id']}/cancel", tokens[ALICE])
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    wait_for(lambda: slurm.job_state(run["job_id"]) == "GONE", 30, "the job to leave Slurm")
    r = call(hub, "POST", f"api/runs/{run['id']}/cancel", tokens[ALICE])
    assert r.status_code == 409 and "has ended already" in r.json()["error"]


def test_a_restart_of_the_service_loses_no_run_and_starts_no_duplicate(hub, tokens, slurm):
    name = user_notebook(CAROL, "steady.ipynb", "import time\ntime.sleep(8)\nprint('done')")
    made = add(hub, tokens[CAROL], notebook=name)
    run = wait_run(hub, tokens[CAROL], run_now(hub, tokens[CAROL], made["id"])["id"], states=("queued", "running"))
    hub.stop_hub()  # the hub stops its services with it
    time.sleep(2)
    hub.start_hub()
    wait_for(lambda: service_answers(hub), 60, "the scheduler to answer again")
    done = wait_run(hub, tokens[CAROL], run["id"])
    assert done["state"] == "succeeded" and done["job_id"] == run["job_id"]
    runs = call(hub, "GET", f"api/schedules/{made['id']}/runs", tokens[CAROL]).json()["runs"]
    assert [r["id"] for r in runs] == [run["id"]]
    assert len(list((Path(done["folder"]).parent).iterdir())) == 1


def test_the_cli_adds_lists_runs_pauses_and_deletes(hub, tokens, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(tokens[DAVE])
    token_file.chmod(0o600)

    def cli(*args):
        env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_API_TOKEN"}
        return subprocess.run(
            [sys.executable, "-m", "campushub", "schedule", *args, "--url", f"{hub.url}/services/scheduler/",
             "--token-file", str(token_file)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip

    r = cli("add", "template:run-report", "--cron", "30 1 * * *", "--timezone", "Europe/Berlin",
            "-r", "title=From the terminal", "--name", "cli report")  # fmt: skip
    assert r.returncode == 0, r.stderr
    schedule_id = r.stdout.split()[1]
    assert r.stdout.startswith(f"schedule {schedule_id} added: cli report, next run ")
    assert "cli report" in cli("list").stdout
    r = cli("run-now", schedule_id)
    assert r.returncode == 0 and "/services/scheduler/runs/" in r.stdout
    run_id = int(r.stdout.split()[1])
    wait_run(hub, tokens[DAVE], run_id)
    r = cli("runs", schedule_id)
    assert r.returncode == 0 and f"{run_id}" in r.stdout and "succeeded" in r.stdout
    assert cli("pause", schedule_id).stdout.strip() == f"schedule {schedule_id} paused"
    assert "paused" in cli("list").stdout
    assert cli("resume", schedule_id).stdout.strip() == f"schedule {schedule_id} resumed"
    r = cli("add", "template:run-report", "--cron", "0 25 * * *")
    assert r.returncode == 2 and "cron: '0 25 * * *' is not a valid cron expression (HTTP 400)" in r.stderr
    r = cli("pause", "99999")
    assert r.returncode == 2 and "there is no schedule 99999 (HTTP 404)" in r.stderr
    assert cli("delete", schedule_id).returncode == 0
    assert "cli report" not in cli("list").stdout
    token_file.write_text("not-a-token")
    r = cli("list")
    assert r.returncode == 2 and "HTTP 403" in r.stderr


def test_a_users_server_schedules_with_its_own_token(hub, tokens, slurm):
    """What the Lab extension does: the server's own hub token reaches the scheduler, as its user."""
    hub.spawn_and_wait(ALICE, tokens[ALICE])
    try:
        env = environ_of(slurm.server_pid(slurm.job_of(ALICE)["id"]))
        url = env["CAMPUSHUB_SCHEDULER_URL"]
        assert url == f"{hub.url}/services/scheduler/"
        headers = {"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"}
        r = requests.post(f"{url}api/schedules", headers=headers, json={"notebook": "template:run-report",
                          "cron": "@weekly"}, timeout=60)  # fmt: skip
        assert r.status_code == 201 and r.json()["owner"] == ALICE, r.text
        mine = requests.get(f"{url}api/schedules", headers=headers, timeout=60).json()["schedules"]
        assert {s["owner"] for s in mine} == {ALICE}
        assert hub.api("GET", "/users", env["JUPYTERHUB_API_TOKEN"]).status_code == 403, "it is still a server token"
    finally:
        hub.stop_server(ALICE, tokens[ALICE])
