"""The campushub_lab server extension in a real user's server: a Slurm job of the test cluster, started by
a real CampusHub, calling the real scheduler service through the hub's proxy with its own token."""

from __future__ import annotations

import json
import pwd
import re
from datetime import datetime, timedelta
from pathlib import Path

import nbformat
import pytest
import requests

from tests.cluster.hub import environ_of, running_hub, slurm_site
from tests.cluster.slurm import wait_for

ALICE = "chub-alice"
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "everyone": True, "default": True},
    {"slug": "gpu-1", "display_name": "One GPU", "everyone": True, "resources": {"gpus": 1}},
]


def scheduler_answers(hub) -> bool:
    try:
        return requests.get(f"{hub.url}/services/scheduler/api/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, tmp_path_factory):
    site = slurm_site(singleuser_env, profiles=PROFILES)
    with running_hub(slurm, tmp_path_factory.mktemp("lab-hub"), site) as running:
        wait_for(lambda: scheduler_answers(running), 60, "the scheduler to answer")
        yield running


def test_the_lab_server_in_a_slurm_job(hub, slurm):
    token = hub.token(ALICE)
    hub.spawn_and_wait(ALICE, token, profile="gpu-1")
    job_id = slurm.job_of(ALICE)["id"]
    env = environ_of(slurm.server_pid(job_id))

    # the session: this job, its node, its GPU and its time limit (the site's walltime, one hour)
    r = hub.user_get(ALICE, "campushub/session", token)
    assert r.status_code == 200, r.text
    session = r.json()
    assert (session["kind"], session["job_id"], session["partition"], session["profile"]) == (
        "slurm", job_id, "gpu", "gpu-1"
    )  # fmt: skip
    assert session["node"] == env["SLURMD_NODENAME"]
    assert session["gpus"] == env["CUDA_VISIBLE_DEVICES"].split(",") and len(session["gpus"]) == 1
    start, end, now = (datetime.fromisoformat(session[k]) for k in ("start", "end", "now"))
    assert end - start == timedelta(hours=1)
    assert end == datetime.fromisoformat(env["CAMPUSHUB_JOB_END"])
    assert start <= now < end
    assert session["scheduler"] == "/services/scheduler/"
    assert session["gpu_stats"] == [] and "no NVIDIA driver" in session["gpu_stats_error"]  # fake GPUs here

    # a schedule made through the server is its owner's
    r = hub.user_request(
        "POST", ALICE, "campushub/scheduler/api/schedules", token,
        json={"notebook": "template:gpu-check", "cron": "@daily", "profile": "gpu-1", "parameters": {"size": 32}},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    schedule = r.json()
    assert schedule["owner"] == ALICE and schedule["profile"] == "gpu-1"
    direct = requests.get(
        f"{hub.url}/services/scheduler/api/schedules/{schedule['id']}",
        headers={"Authorization": f"token {token}"}, timeout=30,
    )  # fmt: skip
    assert direct.status_code == 200 and direct.json()["owner"] == ALICE

    # the profiles granted to the server's owner
    r = hub.user_get(ALICE, "campushub/scheduler/api/profiles", token)
    assert r.status_code == 200, r.text
    assert [p["name"] for p in r.json()["profiles"]] == ["cpu", "gpu-1"] and r.json()["default"] == "cpu"

    # a template copied into the home: a file of the owner's, with the parameters injected
    home = Path(pwd.getpwnam(ALICE).pw_dir)
    r = hub.user_request(
        "POST", ALICE, "campushub/templates/copy", token, json={"name": "gpu-check", "parameters": {"size": 64}}
    )
    assert r.status_code == 201, r.text
    copy = home / r.json()["path"]
    assert copy.stat().st_uid == pwd.getpwnam(ALICE).pw_uid
    nb = nbformat.read(copy, as_version=4)
    assert any("size = 64" in c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))


def test_the_server_as_campushub_starts_it_shows_every_extension(hub, slurm):
    """campushub-singleuser runs the server in its own process with slow imports deferred
    (campushub_lab.startup): every server extension enabled in the environment is loaded and answers."""
    user = "chub-bob"
    token = hub.token(user)
    hub.spawn_and_wait(user, token)
    try:
        pid = slurm.server_pid(slurm.job_of(user)["id"])
        assert "campushub-singleuser" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()

        # JupyterLab, with the CampusHub front-end among its prebuilt extensions
        r = hub.user_get(user, "lab", token)
        assert r.status_code == 200, r.text
        page = json.loads(re.search(r'<script id="jupyter-config-data"[^>]*>(.*?)</script>', r.text, re.S).group(1))
        assert "campushub-lab" in [e["name"] for e in page["federated_extensions"]]
        r = hub.user_get(user, "lab/api/settings", token)
        assert r.status_code == 200 and any(s["id"].startswith("campushub-lab:") for s in r.json()["settings"])
        # jupyter_server_terminals: a terminal opens and is listed
        r = hub.user_request("POST", user, "api/terminals", token)
        assert r.status_code == 200, r.text
        name = r.json()["name"]
        assert name in [t["name"] for t in hub.user_get(user, "api/terminals", token).json()]
        assert hub.user_request("DELETE", user, f"api/terminals/{name}", token).status_code == 204
        # jupyter_lsp
        r = hub.user_get(user, "lsp/status", token)
        assert r.status_code == 200 and "sessions" in r.json(), r.text
        # campushub_lab: the session panel's facts
        r = hub.user_get(user, "campushub/session", token)
        assert r.status_code == 200 and r.json()["kind"] == "slurm", r.text
        # kernels: the environment's Python kernel is offered and starts
        r = hub.user_get(user, "api/kernelspecs", token)
        assert r.status_code == 200 and "python3" in r.json()["kernelspecs"], r.text
        r = hub.user_request("POST", user, "api/kernels", token, json={"name": "python3"})
        assert r.status_code == 201, r.text
        assert hub.user_request("DELETE", user, f"api/kernels/{r.json()['id']}", token).status_code == 204
    finally:
        hub.stop_server(user, token)
