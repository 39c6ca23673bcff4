"""The server extension's REST routes for the CampusHub Lab front-end, under the server's base URL:

- `GET campushub/session`: the node, Slurm job, time limit and GPUs of this server (session.py).
- `GET campushub/templates`: the scheduler's notebook templates with their parameters.
- `POST campushub/templates/copy`: a template, with parameters injected, saved in the home as a new
  notebook (never over an existing file).
- `GET|POST|PATCH|DELETE campushub/scheduler/api/...`: the scheduler service's API, for the few paths
  the Lab uses, called with this server's own hub token (so as the server's owner).

The browser only ever talks to its own server (same origin, the server's login and XSRF checks); the
server calls the scheduler at CAMPUSHUB_SCHEDULER_URL with JUPYTERHUB_API_TOKEN, which the hub gives
every server with access to the scheduler service.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import PurePosixPath
from urllib.parse import quote

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import ensure_async, url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .session import session_info

SCHEDULER_TIMEOUT = 30
SCHEDULER_PATHS = re.compile(r"api/(schedules(/\d+(/runs)?)?|runs/\d+(/cancel)?|templates|profiles)")
TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # as the scheduler names its templates
MAX_COPIES = 1000
NOT_ENABLED = "the scheduler service is not enabled on this hub"

# Choosing a free name and saving there happen under this lock, so two copies at once never pick the same.
_copy_lock = asyncio.Lock()


class SchedulerAnswer:
    def __init__(self, status: int, body: bytes, url: str):
        self.status, self.body, self.url = status, body, url

    def json(self):
        try:
            return json.loads(self.body) if self.body else None
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPError(
                502, f"the scheduler service at {self.url} answered {self.status} without JSON"
            ) from None

    def message(self) -> str:
        data = self.json()
        if isinstance(data, dict) and isinstance(data.get("error") or data.get("message"), str):
            return data.get("error") or data.get("message")
        return f"the scheduler service answered {self.status}"


async def ask_scheduler(method: str, path: str, query: str = "", body: bytes | None = None) -> SchedulerAnswer:
    """One request to the scheduler service, as this server's owner: its status and body, whatever the
    status. 503 when the hub has no scheduler, 502 when it cannot be reached."""
    base = os.environ.get("CAMPUSHUB_SCHEDULER_URL")
    if not base:
        raise web.HTTPError(503, NOT_ENABLED)
    url = base.rstrip("/") + "/" + path + (f"?{query}" if query else "")
    headers = {"Authorization": f"token {os.environ.get('JUPYTERHUB_API_TOKEN', '')}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if method in ("POST", "PATCH") and body is None:
        body = b""
    request = HTTPRequest(
        url, method=method, headers=headers, body=body, follow_redirects=False,
        connect_timeout=SCHEDULER_TIMEOUT, request_timeout=SCHEDULER_TIMEOUT,
    )  # fmt: skip
    try:
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
    except (OSError, HTTPClientError) as e:
        raise web.HTTPError(502, f"the scheduler service at {base} cannot be reached: {e}") from None
    return SchedulerAnswer(response.code, response.body or b"", base)


class CampusHubHandler(APIHandler):
    """JSON in and out; an error is {"message": "..."} with its status (jupyter_server's APIHandler)."""

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def json_object(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPError(400, "the body must be JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return data


class SessionHandler(CampusHubHandler):
    @web.authenticated
    async def get(self):
        self.write_json(await session_info())


class TemplatesHandler(CampusHubHandler):
    @web.authenticated
    async def get(self):
        answer = await ask_scheduler("GET", "api/templates")
        if answer.status != 200:
            raise web.HTTPError(_error_status(answer.status), answer.message())
        self.write_json(answer.json())


def _error_status(status: int) -> int:
    """A refusal of the scheduler's (4xx) passes on as it is; anything else is the scheduler's failure."""
    return status if 400 <= status < 500 else 502


def folder_problem(folder) -> str | None:
    if not isinstance(folder, str):
        return 'folder: give a folder in your home as a string, such as "projects/ml"'
    path = PurePosixPath(folder)
    if any(ord(ch) < 32 for ch in folder) or path.is_absolute() or ".." in path.parts or folder.startswith("~"):
        return f"folder: {folder[:200]!r} is not a folder in your home: give a path relative to it, without '..'"
    return None


class TemplateCopyHandler(CampusHubHandler):
    @web.authenticated
    async def post(self):
        body = self.json_object()
        unknown = sorted(set(body) - {"name", "parameters", "folder"})
        if unknown:
            raise web.HTTPError(400, f"{unknown[0][:40]}: not a setting of a copy (they are name, parameters, folder)")
        name, parameters, folder = body.get("name"), body.get("parameters", {}), body.get("folder", "")
        if not isinstance(name, str) or not name:
            raise web.HTTPError(400, 'name: give the name of a template, such as "gpu-check"')
        if not TEMPLATE_NAME.fullmatch(name):
            raise web.HTTPError(404, f"there is no template {name[:64]!r}")
        if not isinstance(parameters, dict):
            raise web.HTTPError(400, 'parameters: must be an object such as {"epochs": 3}')
        if problem := folder_problem(folder):
            raise web.HTTPError(400, problem)
        folder = folder.strip("/")
        contents = self.contents_manager
        if folder and not await ensure_async(contents.dir_exists(folder)):
            raise web.HTTPError(400, f"folder: {folder[:200]!r} is not a folder in your home")
        answer = await ask_scheduler(
            "POST", f"api/templates/{quote(name)}/notebook", body=json.dumps({"parameters": parameters}).encode()
        )
        if answer.status != 200:
            raise web.HTTPError(_error_status(answer.status), answer.message())
        notebook = answer.json()
        if not isinstance(notebook, dict) or "cells" not in notebook:
            raise web.HTTPError(502, "the scheduler service answered something that is not a notebook")
        async with _copy_lock:
            path = await self.free_path(folder, name)
            model = await ensure_async(contents.save({"type": "notebook", "format": "json", "content": notebook}, path))
        self.log.info("CampusHub: template %s copied to %s", name, model["path"])
        self.write_json({"path": model["path"]}, 201)

    async def free_path(self, folder: str, name: str) -> str:
        """<folder>/<name>.ipynb, or <name>-1.ipynb, <name>-2.ipynb ... where that is taken."""
        contents = self.contents_manager
        for n in range(MAX_COPIES):
            path = url_path_join(folder, f"{name}.ipynb" if n == 0 else f"{name}-{n}.ipynb").lstrip("/")
            if not await ensure_async(contents.exists(path)):
                return path
        raise web.HTTPError(409, f"{folder or 'your home'} holds {MAX_COPIES} copies of {name!r} already")


class SchedulerHandler(CampusHubHandler):
    """The scheduler's API, for the paths the Lab uses: status and JSON body passed back as they come."""

    async def forward(self, path: str) -> None:
        if not SCHEDULER_PATHS.fullmatch(path):
            raise web.HTTPError(404, f"there is no scheduler API {path[:200]!r} here")
        body = self.request.body if self.request.method in ("POST", "PATCH") else None
        answer = await ask_scheduler(self.request.method, path, self.request.query, body)
        if answer.status == 204:
            self.set_status(204)
            self.finish()
            return
        data = answer.json()
        if answer.status >= 400 and isinstance(data, dict) and "message" not in data:
            data = {**data, "message": answer.message()}  # the Lab's errors all carry a message
        if answer.status >= 500 or answer.status < 200 or 300 <= answer.status < 400:
            raise web.HTTPError(502, f"the scheduler service answered {answer.status}: {answer.message()}")
        self.write_json(data, answer.status)

    @web.authenticated
    async def get(self, path):
        await self.forward(path)

    @web.authenticated
    async def post(self, path):
        await self.forward(path)

    @web.authenticated
    async def patch(self, path):
        await self.forward(path)

    @web.authenticated
    async def delete(self, path):
        await self.forward(path)


def setup_handlers(web_app) -> None:
    base_url = web_app.settings["base_url"]
    routes = [
        ("campushub/session", SessionHandler),
        ("campushub/templates", TemplatesHandler),
        ("campushub/templates/copy", TemplateCopyHandler),
        ("campushub/scheduler/(.*)", SchedulerHandler),
    ]
    web_app.add_handlers(".*$", [(url_path_join(base_url, path), handler) for path, handler in routes])
