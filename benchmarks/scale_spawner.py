"""The scale benchmark's spawner, loaded into the real hub (hub.extra_config sets JupyterHub.spawner_class): it
starts, checks and stops a user's server in the benchmark's server process (benchmarks/scale_servers.py)."""

from __future__ import annotations

import os

import aiohttp
from jupyterhub.spawner import Spawner

from .scale_servers import CONTROL_ENV


class FakeSpawner(Spawner):
    """Starts, checks and stops the user's server in the benchmark's server process (its control API's URL in
    the hub's environment, CAMPUSHUB_BENCH_SERVERS). For the scale benchmark only."""

    _session: aiohttp.ClientSession | None = None

    async def _control(self, method: str, body: dict | None = None) -> tuple[int, dict]:
        if FakeSpawner._session is None:
            FakeSpawner._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        url = os.environ[CONTROL_ENV] + "/server"
        params = {"user": self.user.name, "name": self.name}
        async with FakeSpawner._session.request(method, url, params=params, json=body) as r:
            return r.status, (await r.json() if r.status in (200, 404) else {})

    async def start(self):
        status, answer = await self._control("POST", {"env": self.get_env()})
        if status != 200:
            raise RuntimeError(f"the benchmark's server process answered {status}")
        return "127.0.0.1", answer["port"]

    async def poll(self):
        status, _ = await self._control("GET")
        return None if status == 200 else 0

    async def stop(self, now=False):
        await self._control("DELETE")
