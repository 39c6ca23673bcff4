"""The scale benchmark's single-user servers: one asyncio process hosting many minimal servers that speak
what the hub and a browser ask of a real one, and the spawner that the real hub starts them with.

Each server listens on a port of its own and answers under its JUPYTERHUB_SERVICE_PREFIX: the prefix
itself (the hub's readiness check: a redirect to the Lab, as jupyterhub-singleuser answers), `api`
(the version, no login), and `api/status`, `api/kernels`, `api/sessions`, `api/terminals` for a request
with a token that the hub vouches for (GET /hub/api/user with that token, the answer cached for 300 s as
jupyterhub-singleuser's HubAuth caches it). Every JUPYTERHUB_ACTIVITY_INTERVAL seconds, starting at a random
point of the first interval, it POSTs its activity to JUPYTERHUB_ACTIVITY_URL with its own
JUPYTERHUB_API_TOKEN, as jupyterhub-singleuser does.

The process is run as `python -m benchmarks.scale_servers PORT`; PORT serves its control API, which
`benchmarks.scale_spawner.FakeSpawner` calls: POST /server?user=U&name=N {"env": ...} starts a server and answers its port, GET
/server?... tells whether it runs (200) or not (404), DELETE /server?... stops it (its port closes), GET /stats
gives the activity reports and token checks made, each as [epoch seconds, duration, outcome].
"""

from __future__ import annotations

import asyncio
import random
import resource
import socket
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version

import aiohttp
from aiohttp import web

CONTROL_ENV = "CAMPUSHUB_BENCH_SERVERS"  # the control API's URL, in the hub's environment
TOKEN_CACHE_SECONDS = 300
SERVER_API = {"api/kernels": [], "api/sessions": [], "api/terminals": []}


class FakeServer:
    def __init__(self, env: dict[str, str], sock: socket.socket):
        self.env = env
        self.prefix = env["JUPYTERHUB_SERVICE_PREFIX"]
        self.user = env["JUPYTERHUB_USER"]
        self.name = env.get("JUPYTERHUB_SERVER_NAME", "")
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.started = datetime.now(UTC).isoformat()
        self.site: web.SockSite | None = None
        self.reporter: asyncio.Task | None = None

    def allowed_by(self, model: dict) -> bool:
        scopes = set(model.get("scopes") or ())
        return bool(
            scopes
            & {"access:servers", f"access:servers!user={self.user}", f"access:servers!server={self.user}/{self.name}"}
        )


class Host:
    """Every server of the process, the control API, and the records of what they asked of the hub."""

    def __init__(self):
        self.servers: dict[tuple[str, str], FakeServer] = {}
        self.by_port: dict[int, FakeServer] = {}
        self.tokens: dict[str, tuple[float, asyncio.Future]] = {}
        self.activity: list[list] = []
        self.token_checks: list[list] = []
        self.hub_version = version("jupyterhub")
        self.runner = web.ServerRunner(web.Server(self.serve), access_log=None)
        self.session: aiohttp.ClientSession | None = None

    async def setup(self) -> None:
        await self.runner.setup()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
        )

    # --- control API ---

    def control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/server", self.start)
        app.router.add_get("/server", self.poll)
        app.router.add_delete("/server", self.stop)
        app.router.add_get("/stats", self.stats)
        return app

    @staticmethod
    def key(request: web.Request) -> tuple[str, str]:
        return request.query["user"], request.query.get("name", "")

    async def start(self, request: web.Request) -> web.Response:
        key = self.key(request)
        await self.close(key)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = FakeServer((await request.json())["env"], sock)
        server.site = web.SockSite(self.runner, sock)
        await server.site.start()
        self.servers[key] = self.by_port[server.port] = server
        interval = float(server.env.get("JUPYTERHUB_ACTIVITY_INTERVAL", "300"))
        server.reporter = asyncio.create_task(self.report_activity(server, interval))
        return web.json_response({"port": server.port})

    async def poll(self, request: web.Request) -> web.Response:
        server = self.servers.get(self.key(request))
        return web.json_response({"port": server.port}) if server else web.json_response({}, status=404)

    async def stop(self, request: web.Request) -> web.Response:
        await self.close(self.key(request))
        return web.Response(status=204)

    async def close(self, key: tuple[str, str]) -> None:
        server = self.servers.pop(key, None)
        if server is None:
            return
        self.by_port.pop(server.port, None)
        server.reporter.cancel()
        await server.site.stop()
        server.sock.close()

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"servers": len(self.servers), "activity": self.activity, "token_checks": self.token_checks}
        )

    # --- the servers ---

    async def report_activity(self, server: FakeServer, interval: float) -> None:
        url = server.env["JUPYTERHUB_ACTIVITY_URL"]
        headers = {"Authorization": f"token {server.env['JUPYTERHUB_API_TOKEN']}"}
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            now = datetime.now(UTC).isoformat()
            body = {"servers": {server.name: {"last_activity": now}}, "last_activity": now}
            began, t0 = time.time(), time.monotonic()
            try:
                async with self.session.post(url, json=body, headers=headers) as r:
                    outcome = r.status
            except (aiohttp.ClientError, TimeoutError) as e:
                outcome = type(e).__name__
            self.activity.append([began, time.monotonic() - t0, outcome])
            await asyncio.sleep(interval)

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse:
        server = self.by_port.get(request.transport.get_extra_info("sockname")[1]) if request.transport else None
        if server is None or not request.path.startswith(server.prefix):
            return web.Response(status=404)
        headers = {"X-JupyterHub-Version": self.hub_version}
        rest = request.path[len(server.prefix) :]
        if rest == "":
            return web.HTTPFound(server.prefix + "lab", headers=headers)
        if rest == "api":
            return web.json_response({"version": "2.17.0"}, headers=headers)
        if not await self.vouched(server, request.headers.get("Authorization", "")):
            return web.json_response({"message": "Forbidden"}, status=403, headers=headers)
        if rest == "api/status":
            body = {"started": server.started, "last_activity": server.started, "connections": 0, "kernels": 0}
            return web.json_response(body, headers=headers)
        if rest in SERVER_API:
            return web.json_response(SERVER_API[rest], headers=headers)
        if rest.startswith("lab"):
            return web.Response(text="<!doctype html><title>JupyterLab</title>", content_type="text/html")
        return web.json_response({"message": "Not found"}, status=404, headers=headers)

    async def vouched(self, server: FakeServer, authorization: str) -> bool:
        """Whether the hub says that the request's token may use this server (its answer cached per token)."""
        kind, _, token = authorization.partition(" ")
        if kind.lower() not in ("token", "bearer") or not token:
            return False
        entry = self.tokens.get(token)
        if entry is None or entry[0] < time.monotonic():
            future = asyncio.get_running_loop().create_future()
            self.tokens[token] = entry = (time.monotonic() + TOKEN_CACHE_SECONDS, future)
            future.set_result(await self.ask_hub(server, token))
        model = await entry[1]
        return model is not None and server.allowed_by(model)

    async def ask_hub(self, server: FakeServer, token: str) -> dict | None:
        began, t0 = time.time(), time.monotonic()
        url = server.env["JUPYTERHUB_API_URL"].rstrip("/") + "/user"
        model = None
        try:
            async with self.session.get(url, headers={"Authorization": f"token {token}"}) as r:
                outcome = r.status
                if r.status == 200:
                    model = await r.json()
        except (aiohttp.ClientError, TimeoutError) as e:
            outcome = type(e).__name__
        self.token_checks.append([began, time.monotonic() - t0, outcome])
        if model is None:
            self.tokens.pop(token, None)  # not cached: the next request asks again
        return model


async def serve_forever(port: int) -> None:
    host = Host()
    await host.setup()
    control = web.AppRunner(host.control_app(), access_log=None)
    await control.setup()
    await web.TCPSite(control, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> None:
    # a port per server, and a connection or two to each from the proxy
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve_forever(int(sys.argv[1])))


if __name__ == "__main__":
    main()
