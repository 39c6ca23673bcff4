"""The few Hub REST API calls a course needs, on one kept-alive connection.

Token scopes (the least that work): plan reads `list:users`, `read:users:name`, `read:groups`; apply
adds `admin:users` (creates users) and `admin:groups` (creates groups, sets members and properties);
retire adds `admin:servers` (sees and stops servers) and `delete:groups`. The course roles endpoint
(POST /hub/api/campushub/course-roles) asks for `admin:groups`, unfiltered. `admin:users`, `admin:groups`
and `admin:servers` hold all of these: see docs/courses.md for how to make such a token.
"""

from __future__ import annotations

import sys
from typing import Any

import requests

from . import CourseError
from .roles import SYNC_PATH

PAGE = 200  # JupyterHub's largest page by default (api_page_max_limit)
CHUNK = 50  # users per request when creating users (and the progress counter's step)
MEMBERS_CHUNK = 200  # users per request when adding members to an existing group


class Hub:
    def __init__(self, url: str, token: str, timeout: float = 60):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        self.timeout = timeout

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 204), **kw) -> Any:
        try:
            r = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kw)
        except requests.RequestException as e:
            raise CourseError(f"the hub at {self.url} cannot be reached: {e}") from None
        if r.status_code in (401, 403):
            raise CourseError(
                f"the hub refused {method} {path} ({r.status_code}): the token lacks a scope "
                "(see `campushub course --help` for the scopes)"
            )
        if r.status_code >= 400 and r.status_code in ok:
            return None  # an answer the caller expects, such as 404 (absent) or 409 (exists already)
        if r.status_code not in ok:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text[:300]
            raise CourseError(f"the hub answered {method} {path} with {r.status_code}: {message}")
        return r.json() if r.content else None

    def users(self) -> dict[str, dict]:
        """Every user of the hub, by name (one listing, page by page)."""
        found: dict[str, dict] = {}
        offset = 0
        while True:
            page = self.call("GET", "/users", params={"offset": offset, "limit": PAGE})
            for user in page:
                found[user["name"]] = user
            if len(page) < PAGE:
                return found
            offset += PAGE

    def group(self, name: str) -> dict | None:
        return self.call("GET", f"/groups/{name}", ok=(200, 404))

    def create_users(self, names: list[str], say=None) -> None:
        for done, chunk in chunks(names):
            self.call("POST", "/users", json={"usernames": chunk})
            progress(say, "hub users created", done, len(names))

    def create_group(self, name: str, members: list[str] = (), say=None) -> None:
        """A new group with its members in one request (the hub adds them in one go); if the group exists
        meanwhile, the members are added to it."""
        if self.call("POST", f"/groups/{name}", ok=(201, 409), json={"users": list(members)}) is None:
            self.add_members(name, list(members), say)
        elif say is not None and len(members) > CHUNK:
            say(f"  {len(members)}/{len(members)} added to {name}")

    def add_members(self, group: str, names: list[str], say=None) -> None:
        # bigger chunks: each answer lists the whole group, and the hub checks each name against it
        for done, chunk in chunks(names, MEMBERS_CHUNK):
            self.call("POST", f"/groups/{group}/users", json={"users": chunk})
            progress(say, f"added to {group}", done, len(names))

    def remove_members(self, group: str, names: list[str], say=None) -> None:
        for done, chunk in chunks(names):
            self.call("DELETE", f"/groups/{group}/users", json={"users": chunk})
            progress(say, f"removed from {group}", done, len(names))

    def set_properties(self, group: str, properties: dict) -> None:
        self.call("PUT", f"/groups/{group}/properties", json=properties)

    def delete_group(self, name: str) -> None:
        self.call("DELETE", f"/groups/{name}", ok=(204, 404))

    def sync_roles(self) -> dict:
        """The hub puts the course roles file in effect now (campushub.courses.rolesapi)."""
        return self.call("POST", SYNC_PATH)

    def stop_server(self, user: str, server: str = "") -> None:
        path = f"/users/{user}/server" + (f"s/{server}" if server else "")
        self.call("DELETE", path, ok=(202, 204, 404))


def chunks(names: list[str], size: int = CHUNK):
    for i in range(0, len(names), size):
        yield min(i + size, len(names)), names[i : i + size]


def progress(say, what: str, done: int, total: int) -> None:
    if say is not None and total > CHUNK:
        say(f"  {done}/{total} {what}")


def stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
