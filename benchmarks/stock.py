"""The stock peer: plain JupyterHub with batchspawner 1.3.0's SlurmSpawner, the same resources as CampusHub's
site, its own proxy, and nothing of CampusHub in its config."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.cluster.hub import HubClient, RunningHub
from tests.cluster.slurm import alive, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
CHP = REPO / ".venv" / "bin" / "configurable-http-proxy"

STOCK_CONFIG = """\
# Stock JupyterHub + batchspawner 1.3.0, written by benchmarks/stock.py. Imports nothing of campushub.
c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "http://127.0.0.1:{port}/"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.pid_file = "{state}/jupyterhub-proxy.pid"

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = "{password}"
c.SharedPasswordAuthenticator.allow_all = True

c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
# the same timeouts and URL as CampusHub's defaults
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 60
c.Spawner.poll_interval = 30
c.Spawner.env_keep = [
    "PATH", "PYTHONPATH", "CONDA_ROOT", "CONDA_DEFAULT_ENV", "VIRTUAL_ENV", "LANG", "LC_ALL",
    "JUPYTERHUB_SINGLEUSER_APP", "SLURM_CONF",
]
# the same resources as CampusHub's site: partition gpu, 1 CPU, 1G, 1 hour
c.SlurmSpawner.req_partition = "gpu"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_memory = "1G"
c.SlurmSpawner.req_runtime = "01:00:00"
# the server is the batch step itself, as in CampusHub (the default "srun" adds a job step)
c.SlurmSpawner.req_srun = ""
c.SlurmSpawner.batchspawner_singleuser_cmd = "{env}/bin/batchspawner-singleuser"
c.SlurmSpawner.cmd = ["{env}/bin/jupyterhub-singleuser"]
"""


class StockHub(RunningHub):
    """Plain `jupyterhub -f CONFIG` with batchspawner's SlurmSpawner; the hub starts its own proxy.

    Reuses RunningHub's client side (login, token, api, server) as is."""

    def __init__(self, workdir: Path, singleuser_env: Path):  # not RunningHub.__init__: that writes a site file
        self.workdir = Path(workdir)
        self.state = self.workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port, self.hub_port, self.api_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        HubClient.__init__(self, self.url, {})  # the client side, with no site: password logins
        self._password = secrets.token_urlsafe(12)
        self.config = self.workdir / "jupyterhub_config.py"
        self.config.write_text(STOCK_CONFIG.format(
            port=self.port, hub_port=self.hub_port, api_port=self.api_port, state=self.state,
            chp=CHP, password=self._password, env=singleuser_env,
        ))  # fmt: skip
        self.hub: subprocess.Popen | None = None
        self.proxy = None
        self.hub_starts = 0

    @property
    def password(self) -> str:
        return self._password

    def start(self) -> StockHub:
        self.hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.config)],
            cwd=self.state, stdout=open(self.workdir / "hub.log", "a"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_for(self.hub_answers, 90, f"the stock hub to answer (log: {self.workdir / 'hub.log'})", 0.25)
        # the hub answers before it has added its routes: wait for the proxy to serve the login page
        wait_for(lambda: _answers(f"{self.url}/hub/login"), 30, "the stock hub's proxy")
        return self

    def close(self) -> None:
        super().close()  # SIGTERM: the hub stops its servers (cleanup_servers) and its proxy
        pid_file = self.state / "jupyterhub-proxy.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if alive(pid) and "configurable-http-proxy" in _cmdline(pid):
            os.kill(pid, signal.SIGTERM)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2, allow_redirects=False).status_code < 500
    except requests.RequestException:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
