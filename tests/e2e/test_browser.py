"""A researcher's first day, in a real browser: campus login, a GPU server as a Slurm job, code run in
JupyterLab.

Chromium opens the hub, signs in through the campus OpenID Connect provider's own form (the first
login creates the unix account), picks a GPU profile on the spawn page, waits for JupyterLab (a
Slurm job of that account), runs `1+1` in a new notebook and sees `2`. The screenshot of that is
test-artifacts/jupyterlab.png.
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.cluster.hub import running_hub, slurm_site, uid_of
from tests.cluster.idp import IdentityProvider
from tests.cluster.slurm import wait_for
from tests.cluster.users import remove_user

SUB = "grace-e2e-7f3a"
USER = "chub-grace"
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "everyone": True, "default": True},
    {"slug": "gpu-1", "display_name": "One GPU", "groups": ["researchers"], "resources": {"gpus": 1}},
    {"slug": "gpu-4", "display_name": "Four GPUs", "groups": ["deep-learning"], "resources": {"gpus": 4}},
]
SPAWN_TIMEOUT_MS = 150_000


@pytest.fixture(scope="module")
def idp():
    provider = IdentityProvider()
    provider.set_user(SUB, preferred_username=USER, email=f"{USER}@campus.example", groups=["researchers"])
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="module")
def hub(slurm, singleuser_env, idp, tmp_path_factory):
    remove_user(USER)  # a leftover of an interrupted run: the first login must create the account
    workdir = tmp_path_factory.mktemp("e2e-hub")
    secret = workdir / "client_secret"
    secret.write_text("e2e-client-secret\n")
    secret.chmod(0o600)
    site = slurm_site(
        singleuser_env,
        auth={
            "kind": "oidc",
            "oidc": {
                "issuer": idp.url,
                "client_id": "campushub-e2e",
                "client_secret_file": str(secret),
                "allowed_groups": ["researchers"],
                "admin_groups": ["hub-admins"],
            },
        },
        users={"accounts": "create"},
        profiles=PROFILES,
    )
    try:
        with running_hub(slurm, workdir, site) as running:
            yield running
    finally:
        remove_user(USER)


def test_a_researcher_signs_in_starts_a_gpu_server_and_runs_code(hub, idp, slurm, page, artifacts):
    # The hub sends a new visitor to its login page, which offers the campus login.
    page.goto(f"{hub.url}/")
    page.get_by_text("Sign in with your campus account").click()

    # The identity provider's own form.
    page.wait_for_url(f"{idp.url}/**")
    page.locator('input[name="sub"]').fill(SUB)
    page.get_by_role("button", name="Authorize").click()

    # Back at the hub: the first login created the unix account; the spawn page offers the profiles
    # granted to the user's campus groups, and no other.
    page.wait_for_url(f"{hub.url}/hub/**")
    assert urlsplit(page.url).path in ("/hub/spawn", f"/hub/spawn/{USER}"), page.url
    account = pwd.getpwnam(USER)
    assert account.pw_uid >= 1000
    slurm.add_users([USER])  # the account's Slurm association, as a site's account sync would make it
    offered = page.locator('input[name="profile"]')
    assert [offered.nth(i).get_attribute("value") for i in range(offered.count())] == ["cpu", "gpu-1"]
    expect(page.get_by_text("One GPU")).to_be_visible()
    expect(page.get_by_text("Four GPUs")).to_have_count(0)

    # Start a one-GPU server; JupyterLab opens once its Slurm job runs.
    page.locator('input[name="profile"][value="gpu-1"]').check()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(f"{hub.url}/user/{USER}/lab**", timeout=SPAWN_TIMEOUT_MS)
    (job,) = slurm.jobs_of(USER)  # squeue's user: the account the first login created
    assert (job["state"], job["name"]) == ("RUNNING", f"jupyter-{USER}")
    pids = slurm.job_pids(job["id"])
    assert pids and {uid_of(pid) for pid in pids} == {account.pw_uid}
    gres = slurm.cmd("squeue", "-h", "-j", job["id"], "-o", "%b").stdout.strip()
    assert re.search(r"gpu:1$", gres), gres

    # A new notebook from the launcher: 1+1, run at once (its kernel may still be starting), gives 2
    # within seconds (campushub_lab's run queue: JupyterLab alone would drop a run that comes before
    # the notebook's session has its kernel).
    launcher_card = page.locator('.jp-LauncherCard[data-category="Notebook"]').first
    expect(launcher_card).to_be_visible(timeout=60_000)
    launcher_card.click()
    editor = page.locator(".jp-NotebookPanel:visible .jp-Cell .cm-content").first
    expect(editor).to_be_visible(timeout=30_000)
    editor.click()
    page.keyboard.type("1+1")
    expect(editor).to_have_text("1+1", timeout=10_000)
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output").first).to_have_text("2", timeout=10_000)
    page.screenshot(path=artifacts / "jupyterlab.png")

    # Stopping the server from the hub's home page ends the job.
    # The button works once the page's scripts have loaded; "Start My Server" shows the stop is done.
    page.goto(f"{hub.url}/hub/home", wait_until="networkidle")
    page.locator("#stop").click()
    expect(page.locator("#stop")).to_be_hidden(timeout=60_000)
    expect(page.locator("#start")).to_have_text("Start My Server", timeout=60_000)
    wait_for(lambda: not slurm.jobs_of(USER), 60, f"{USER}'s job to end")


def test_a_nightly_runs_output_shows_in_the_browser_with_its_scripts_kept_from_running(hub, idp, page, artifacts):
    """A run's output holds another user's HTML in the hub's origin: Chromium renders it, runs none of its
    scripts, and lets it reach neither the hub's API nor the page's cookies."""
    import nbformat
    import requests

    page.goto(f"{hub.url}/hub/oauth_login")
    page.locator('input[name="sub"]').fill(SUB)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{hub.url}/hub/**")
    xsrf = next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf")
    r = page.request.post(f"{hub.url}/hub/api/users/{USER}/tokens", headers={"X-XSRFToken": xsrf}, data={})
    assert r.status == 201, r.text()
    token = r.json()["token"]

    account = pwd.getpwnam(USER)
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "from IPython.display import HTML, display\n"
                "display(HTML('<p id=\"visible\">rendered output</p>'\n"
                "             '<script>document.title = \"stolen\"; window.stolen = document.cookie;'\n"
                "             'fetch(\"/hub/api/users/' + 'x\")</script>'))"
            )
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    path = Path(account.pw_dir) / "report.ipynb"
    path.write_text(nbformat.writes(notebook))
    os.chown(path, account.pw_uid, account.pw_gid)
    api = f"{hub.url}/services/scheduler/api"
    headers = {"Authorization": f"token {token}"}
    made = requests.post(f"{api}/schedules", headers=headers, json={"notebook": "report.ipynb", "cron": "@daily"},
                         timeout=60)  # fmt: skip
    assert made.status_code == 201, made.text
    run = requests.post(f"{api}/schedules/{made.json()['id']}/runs", headers=headers, timeout=60).json()

    def ended():
        state = requests.get(f"{api}/runs/{run['id']}", headers=headers, timeout=30).json()["state"]
        assert state not in ("failed", "cancelled", "timed_out"), state
        return state == "succeeded"

    wait_for(ended, 120, "the run to succeed")

    # The service's page (through the hub's OAuth) lists the run; its HTML opens.
    page.goto(f"{hub.url}/services/scheduler/schedules/{made.json()['id']}")
    expect(page.get_by_role("cell", name="succeeded")).to_be_visible(timeout=30_000)
    page.screenshot(path=artifacts / "scheduler-runs.png")
    page.get_by_role("link", name="HTML").click()
    expect(page.locator("#visible")).to_have_text("rendered output", timeout=30_000)
    assert page.title() != "stolen"
    assert page.evaluate("window.stolen === undefined")
    assert page.evaluate("window.origin") == "null", "the sandbox gives the output no origin"
