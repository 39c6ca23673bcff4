"""The CampusHub Lab extension in a real browser, in a user's JupyterLab that a real hub started as a job
on the test Slurm cluster, with the real scheduler service beside it.

One hub, one user and one server for the whole module (a spawn and a Lab load are the slow part):
(a) the status bar shows the job's node, its GPU and the time left on its walltime, as Slurm reports them,
    and warns that the walltime ends soon (the job has 14 minutes: under the first warning's 15);
(b) a template card in the launcher makes a notebook with the parameters typed in its dialog;
(c) the "Run nightly..." dialog makes a schedule that the scheduler service then lists; a cron expression
    the service refuses shows its message, with the dialog's values kept.
Screenshots: test-artifacts/lab-*.png.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
import requests
from playwright.sync_api import expect

from tests.cluster.hub import running_hub, slurm_site
from tests.cluster.slurm import wait_for
from tests.cluster.users import create_users, remove_user
from tests.conftest import CALL_FAILED
from tests.e2e.conftest import chromium

USER = "chub-lab-e2e"
PROFILES = [{"slug": "gpu-1", "display_name": "One GPU", "everyone": True, "default": True, "resources": {"gpus": 1}}]
# under the first warning's 15 minutes: the Lab warns as soon as it has read the session
WALLTIME = "00:14:00"
LAB_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def account(root_required):
    (user,) = create_users([USER])
    try:
        yield user
    finally:
        remove_user(USER)


@pytest.fixture(scope="module")
def hub(slurm, singleuser_env, account, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lab-e2e-hub")
    site = slurm_site(singleuser_env, profiles=PROFILES, scheduler={"check_interval": 1})
    site["spawner"]["slurm"]["walltime"] = WALLTIME
    with running_hub(slurm, workdir, site) as running:
        wait_for(lambda: _answers(f"{running.url}/services/scheduler/api/health"), 60, "the scheduler to answer")
        yield running


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def token(hub):
    return hub.token(USER)


@pytest.fixture(scope="module")
def job(hub, token, slurm):
    """The user's server, a running Slurm job: its id, node and end of walltime as squeue reports them."""
    hub.spawn_and_wait(USER, token, timeout=150)
    (found,) = slurm.jobs_of(USER)
    node, end = slurm.cmd("squeue", "-h", "-j", found["id"], "-o", "%N|%e").stdout.strip().split("|")
    return {"id": found["id"], "node": node, "end": datetime.fromisoformat(end).astimezone()}


@pytest.fixture(scope="module")
def lab(hub, job, artifacts):
    """One Chromium page in the user's JupyterLab, logged in with the hub's cookie, for the module."""
    session = hub.login(USER)  # through the campus login, up to the hub's cookie
    with chromium() as context:
        context.add_cookies(
            [{"name": c.name, "value": c.value, "url": f"{hub.url}{c.path or '/'}"} for c in session.cookies]
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.goto(f"{hub.url}/user/{USER}/lab?reset")
        try:
            expect(page.locator(".jp-LauncherCard").first).to_be_visible(timeout=LAB_TIMEOUT_MS)
        except AssertionError:
            page.screenshot(path=artifacts / "lab-failed.png")
            raise
        yield page


@pytest.fixture(autouse=True)
def screenshot_on_failure(request, artifacts):
    """The shared page as a failing test left it: test-artifacts/<test name>-failed.png."""
    yield
    if request.node.stash.get(CALL_FAILED, False) and "lab" in request.fixturenames:
        request.getfixturevalue("lab").screenshot(path=artifacts / f"{request.node.name}-failed.png")


def time_left_minutes(text: str) -> int | None:
    """The minutes of `1:42 left` or `42 min left` in the status bar's text."""
    if m := re.search(r"(\d+):(\d\d) left", text):
        return int(m[1]) * 60 + int(m[2])
    if m := re.search(r"(\d+) min left", text):
        return int(m[1])
    return None


def test_status_bar_shows_the_jobs_node_and_time_left(lab, job, artifacts):
    status = lab.locator(".jp-campushub-SessionStatus")
    expect(status).to_contain_text(job["node"], timeout=30_000)
    expect(status).to_contain_text("1 GPU")
    expect(status).to_contain_text(" left")
    shown = time_left_minutes(status.inner_text())
    expected = (job["end"] - datetime.now().astimezone()).total_seconds() / 60
    assert shown is not None, status.inner_text()
    assert expected - 2 <= shown <= expected + 1, f"status bar: {status.inner_text()!r}, walltime ends {job['end']}"
    warning = lab.get_by_text(re.compile(r"^Your session ends in \d+ min")).first
    expect(warning).to_be_visible(timeout=30_000)
    lab.screenshot(path=artifacts / "lab-session-status.png")

    # Clicking it opens the Session panel: the job as Slurm knows it; no NVML on this machine's fake GPUs.
    status.click()
    panel = lab.locator(".jp-campushub-SessionPanel")
    expect(panel).to_contain_text(job["id"], timeout=15_000)
    expect(panel).to_contain_text(job["node"])
    expect(panel).to_contain_text("gpu-1")  # the profile
    expect(panel).to_contain_text("GPU use is not available")
    lab.screenshot(path=artifacts / "lab-session-panel.png")


def test_a_template_card_makes_a_notebook_with_the_chosen_parameters(lab, account, artifacts):
    lab.keyboard.press("Control+Shift+L")  # a new launcher (the first one is behind the Session panel)
    card = lab.locator('.jp-LauncherCard[data-category="Templates"]:visible', has_text="train-classifier")
    expect(card).to_be_visible(timeout=30_000)
    card.click()
    dialog = lab.locator(".jp-Dialog")
    expect(dialog).to_contain_text("train-classifier")
    epochs = dialog.locator('input[name="epochs"]')
    expect(epochs).to_have_value("30")  # the template's default
    epochs.fill("7")
    dialog.locator('input[name="learning_rate"]').fill("0.05")
    lab.screenshot(path=artifacts / "lab-template-dialog.png")
    dialog.get_by_role("button", name="Create").click()

    # The copy opens in the Lab, and in the home it holds papermill's injected cell with these values.
    expect(lab.get_by_role("tab", name=re.compile(r"train-classifier.*\.ipynb"))).to_be_visible(timeout=30_000)
    copies = sorted(Path(account.pw_dir).glob("train-classifier*.ipynb"))
    assert copies, list(Path(account.pw_dir).iterdir())
    notebook = nbformat.read(copies[-1], as_version=4)
    injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected, [c.metadata for c in notebook.cells]
    assert re.search(r"^epochs = 7$", injected[0].source, re.M), injected[0].source
    assert re.search(r"^learning_rate = 0\.05$", injected[0].source, re.M), injected[0].source
    lab.screenshot(path=artifacts / "lab-template-notebook.png")


def test_the_schedule_dialog_makes_a_schedule_that_the_scheduler_lists(lab, hub, token, account, artifacts):
    # A notebook of the user's own, with a parameters cell, opened in the Lab.
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("rows = 100  # rows to read", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("print(rows)"),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    r = hub.user_request(
        "PUT", USER, "api/contents/nightly-report.ipynb", token,
        data=json.dumps({"type": "notebook", "format": "json", "content": notebook}),
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    lab.goto(f"{hub.url}/user/{USER}/lab/tree/nightly-report.ipynb")
    # the Lab restores the workspace's other notebook too, and may show it last: bring this one forward
    tab = lab.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="nightly-report.ipynb")
    expect(tab).to_be_visible(timeout=LAB_TIMEOUT_MS)
    tab.click()
    expect(tab).to_have_class(re.compile(r"\blm-mod-current\b"))
    button = lab.locator(".jp-NotebookPanel:visible .jp-campushub-ScheduleButton")
    expect(button).to_be_visible(timeout=LAB_TIMEOUT_MS)
    button.click()
    dialog = lab.locator(".jp-Dialog")
    expect(dialog.locator('input[name="rows"]')).to_have_value("100", timeout=30_000)  # from the parameters cell
    timezone = dialog.locator('input[name="timezone"]').input_value()
    assert timezone  # the browser's own zone

    # A cron expression the service refuses: its message, and the dialog again with what was typed.
    dialog.locator('select[name="preset"]').select_option("custom")
    dialog.locator('input[name="cron"]').fill("61 2 * * *")
    dialog.locator('input[name="rows"]').fill("250")
    dialog.get_by_role("button", name="Schedule").click()
    error = lab.locator(".jp-Dialog .jp-campushub-error")
    expect(error).to_contain_text("cron", timeout=30_000)
    assert lab.locator('.jp-Dialog input[name="rows"]').input_value() == "250"
    assert lab.locator('.jp-Dialog input[name="cron"]').input_value() == "61 2 * * *"
    lab.screenshot(path=artifacts / "lab-schedule-refused.png")

    # Weekdays at 03:30: made, and listed by the scheduler service.
    dialog = lab.locator(".jp-Dialog")
    dialog.locator('select[name="preset"]').select_option("weekdays")
    dialog.locator('input[name="time"]').fill("03:30")
    lab.screenshot(path=artifacts / "lab-schedule-dialog.png")
    dialog.get_by_role("button", name="Schedule").click()
    expect(lab.get_by_text(re.compile(r"^Scheduled: nightly-report runs at")).first).to_be_visible(timeout=30_000)
    api = f"{hub.url}/services/scheduler/api"
    schedules = requests.get(f"{api}/schedules", headers={"Authorization": f"token {token}"}, timeout=30).json()
    (made,) = [s for s in schedules["schedules"] if s["notebook"] == "nightly-report.ipynb"]
    assert made["cron"] == "30 3 * * 1-5"
    assert made["timezone"] == timezone
    assert made["parameters"] == {"rows": 250}
    assert made["owner"] == USER

    # The Scheduled runs sidebar lists it.
    lab.locator('.jp-SideBar [data-id="campushub-scheduled-runs"]').click()
    listed = lab.locator(f'.jp-campushub-schedule[data-schedule-id="{made["id"]}"]')
    expect(listed).to_contain_text("nightly-report", timeout=30_000)
    expect(listed).to_contain_text("30 3 * * 1-5")
    lab.screenshot(path=artifacts / "lab-scheduled-runs.png")

    # Paused from the sidebar: the service has it paused.
    listed.get_by_role("button", name="Pause").click()
    expect(listed.get_by_role("button", name="Resume")).to_be_visible(timeout=30_000)
    r = requests.get(f"{api}/schedules/{made['id']}", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.json()["paused"] is True
