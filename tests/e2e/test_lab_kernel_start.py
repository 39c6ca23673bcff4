"""A cell run in a new notebook before its kernel is there runs once the kernel starts, in Chromium.

JupyterLab from the single-user environment, with the CampusHub Lab extension and the project's Lab
settings, the way a user's job starts it (no hub in front: the cause is the Lab's, see
extensions/campushub-lab/src/runqueue.ts). A new notebook from the launcher; `1+1` typed
and run at once, while the notebook's session is still being made. The server here makes each new
session 2 s late, like a slow proxy, so that the run always comes before the kernel. Without the
extension's fix JupyterLab drops that run: the prompt stays empty and no output ever comes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from tests.cluster.slurm import free_port, wait_for

SESSION_DELAY_SECONDS = 2
# well under the wait a dropped run would cause (forever), above the session delay and a kernel's start
OUTPUT_TIMEOUT_MS = 10_000
# A server config for this test only: POST /api/sessions (a notebook's new session and kernel) answers
# SESSION_DELAY_SECONDS late, as through a slow proxy.
SLOW_SESSIONS = f"""
import asyncio
from jupyter_server.services.sessions.handlers import SessionRootHandler

_post = SessionRootHandler.post

async def _late_post(self, *args, **kwargs):
    await asyncio.sleep({SESSION_DELAY_SECONDS})
    return await _post(self, *args, **kwargs)

SessionRootHandler.post = _late_post
"""


@pytest.fixture
def lab(singleuser_env, tmp_path):
    """JupyterLab of the single-user environment on a free port: (its URL, its token)."""
    home, config = tmp_path / "home", tmp_path / "config"
    home.mkdir()
    config.mkdir()
    (config / "jupyter_server_config.py").write_text(SLOW_SESSIONS)
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
    }
    command = [str(singleuser_env / "bin" / "jupyter-lab"), "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}"]  # fmt: skip
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = tmp_path / "lab.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers():
        assert server.poll() is None, f"JupyterLab exited: {Path(log).read_text(errors='replace')[-3000:]}"
        try:
            return requests.get(f"{url}/api/status", params={"token": token}, timeout=5).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(answers, 60, "JupyterLab to answer", 0.25)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_cell_run_while_the_new_notebooks_kernel_starts_shows_its_output(lab, page, artifacts):
    url, token = lab
    page.goto(f"{url}/lab?token={token}")
    launcher_card = page.locator('.jp-LauncherCard[data-category="Notebook"]').first
    expect(launcher_card).to_be_visible(timeout=60_000)
    launcher_card.click()
    editor = page.locator(".jp-NotebookPanel:visible .jp-Cell .cm-content").first
    expect(editor).to_be_visible(timeout=30_000)
    editor.click()
    page.keyboard.type("1+1")
    expect(editor).to_have_text("1+1", timeout=10_000)
    kernel_status = page.locator(".jp-StatusBar-TextItem", has_text="ipykernel").first
    page.keyboard.press("Shift+Enter")
    ran = time.monotonic()
    # The run came before the kernel: the status bar does not show it idle yet.
    assert not kernel_status.is_visible() or not kernel_status.inner_text().strip().endswith("Idle")

    output = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output").first
    expect(output).to_have_text("2", timeout=OUTPUT_TIMEOUT_MS)
    waited = time.monotonic() - ran
    expect(page.locator(".jp-NotebookPanel:visible .jp-InputPrompt").first).to_have_text("[1]:")
    page.screenshot(path=artifacts / "lab-run-while-kernel-starts.png")
    assert waited < OUTPUT_TIMEOUT_MS / 1000, waited
