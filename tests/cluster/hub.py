"""A real CampusHub (`campushub proxy` + `campushub hub`) run from a site file, and a client for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import yaml

from .idp import CAMPUS_GROUP, campus_login, set_user
from .slurm import end_process, free_port, wait_for


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def slurm_site(singleuser_env, **extra) -> dict:
    """A site on the test cluster: campus login, the Slurm backend with small jobs, `extra` merged over it."""
    base = {
        "auth": campus_login(),
        "spawner": {
            "backend": "slurm",
            "start_timeout": 600,  # far beyond what any test waits: a slow failure shows as one
            "slurm": {
                "partition": "gpu",
                "memory": "1G",
                "walltime": "01:00:00",
                "python_env": str(singleuser_env),
                "startup_check_interval": 0.5,
            },
        },
    }
    return deep_merge(base, extra)


class HubClient:
    """A user's side of a CampusHub at `url` run from `site`: logins, tokens, spawns, requests to servers."""

    def __init__(self, url: str, site: dict):
        self.url = url
        self.site = site
        self.sessions: dict[str, requests.Session] = {}

    def log_tail(self, lines: int = 40) -> str:
        """The hub's last log lines, for a failure's message (where the client can read them)."""
        return ""

    @property
    def campus_login(self) -> bool:
        return self.site.get("auth", {}).get("kind") == "oidc"

    # --- users ---

    def login(self, user: str, password: str | None = None) -> requests.Session:
        """A logged-in session of `user`. With campus login: through the identity provider, as a member
        of the campus group, once per user (a new login would reset the groups tests gave through the API)."""
        if self.campus_login:
            if user not in self.sessions:
                set_user(self.site["auth"]["oidc"]["issuer"], user, preferred_username=user, groups=[CAMPUS_GROUP])
                # up to the hub's callback, not further: the spawn page would start a server
                s, r = self.oidc_login(user, follow=False)
                assert r.status_code == 302, f"login of {user} failed: {r.status_code} {r.text[:300]}"
                self.sessions[user] = s
            return self.sessions[user]
        s = requests.Session()
        s.get(f"{self.url}/hub/login", timeout=10).raise_for_status()
        r = s.post(
            f"{self.url}/hub/login",
            data={"username": user, "password": password or self.password, "_xsrf": s.cookies.get("_xsrf")},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 302, f"login of {user} failed: {r.status_code} {r.text[:300]}"
        return s

    def oidc_login(
        self, sub: str, next_url: str = "", follow: bool = True
    ) -> tuple[requests.Session, requests.Response]:
        """Log in through the identity provider's own form, as `sub`: (session, the page it ends on, or
        without `follow` the hub callback's answer)."""
        s = requests.Session()
        form = s.get(f"{self.url}/hub/oauth_login", params={"next": next_url} if next_url else None, timeout=30)
        assert form.status_code == 200 and 'name="sub"' in form.text, form.text[:500]
        if follow:
            return s, s.post(form.url, data={"sub": sub}, timeout=60)
        back = s.post(form.url, data={"sub": sub}, allow_redirects=False, timeout=30)
        return s, s.get(back.headers["location"], allow_redirects=False, timeout=60)

    def token(self, user: str, password: str | None = None) -> str:
        s = self.login(user, password)
        r = s.post(
            f"{self.url}/hub/api/users/{user}/tokens",
            headers={"X-XSRFToken": s.cookies.get("_xsrf")},
            json={"note": "tests"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def api(self, method: str, path: str, token: str, **kw) -> requests.Response:
        headers = {"Authorization": f"token {token}", **kw.pop("headers", {})}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=30, **kw)

    def server(self, user: str, token: str) -> dict | None:
        """The user's default server as the hub reports it, or None."""
        r = self.api("GET", f"/users/{user}", token)
        r.raise_for_status()
        return r.json()["servers"].get("")

    def spawn(self, user: str, token: str, **body) -> requests.Response:
        return self.api("POST", f"/users/{user}/server", token, json=body)

    def progress(self, user: str, token: str, timeout: float = 120, until=None) -> list[dict]:
        """The spawn's progress events, up to the last one (ready or failed) or one that `until` accepts."""
        r = self.api("GET", f"/users/{user}/server/progress", token, stream=True)
        r.raise_for_status()
        events, deadline = [], time.monotonic() + timeout
        try:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("ready") or events[-1].get("failed") or (until and until(events[-1])):
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no end of progress after {timeout} s: {events}")
        finally:
            r.close()
        return events

    def spawn_and_wait(self, user: str, token: str, timeout: float = 120, **options) -> dict:
        r = self.spawn(user, token, **options)
        assert r.status_code in (201, 202), r.text
        events = self.progress(user, token, timeout)
        assert events[-1].get("ready"), f"spawn of {user} failed: {events}\n{self.log_tail()}"
        return self.server(user, token)

    def stop_server(self, user: str, token: str, timeout: float = 60) -> None:
        r = self.api("DELETE", f"/users/{user}/server", token)
        assert r.status_code in (202, 204), r.text
        wait_for(lambda: self.server(user, token) is None, timeout, f"{user}'s server to stop")

    def user_request(self, method: str, user: str, path: str, token: str, **kw) -> requests.Response:
        """A request through the proxy to a user's server."""
        return requests.request(
            method, f"{self.url}/user/{user}/{path}", headers={"Authorization": f"token {token}"}, timeout=30, **kw
        )

    def user_get(self, user: str, path: str, token: str, **kw) -> requests.Response:
        return self.user_request("GET", user, path, token, **kw)

    @contextmanager
    def asking(self, user: str, path: str, token: str, interval: float = 0.05) -> Iterator[list]:
        """While the block runs, GET the user's `path` through the proxy every `interval` s: the list of
        answers' status codes (or the errors), growing as they come."""
        results: list[int | str] = []
        stop = threading.Event()

        def ask():
            while not stop.is_set():
                try:
                    results.append(self.user_get(user, path, token).status_code)
                except requests.RequestException as e:
                    results.append(repr(e))
                time.sleep(interval)

        asker = threading.Thread(target=ask)
        asker.start()
        try:
            yield results
        finally:
            stop.set()
            asker.join()


class RunningHub(HubClient):
    python = sys.executable  # whose campushub runs the hub and proxy
    cwd: Path | None = None  # their working folder (default: the tests')

    def __init__(self, workdir: Path, site: dict, env: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.hub_port = free_port()
        self.site = deep_merge(
            {
                "hub": {"port": self.port, "hub_port": self.hub_port, "state_dir": str(self.workdir / "state")},
                "proxy": {"api_port": free_port()},
                "scheduler": {"port": free_port()},
            },
            site,
        )
        super().__init__(f"http://127.0.0.1:{self.port}", self.site)
        self.site_file = self.workdir / "campushub.yaml"
        self.site_file.write_text(yaml.safe_dump(self.site))
        self.proxy: subprocess.Popen | None = None
        self.hub: subprocess.Popen | None = None
        self.hub_starts = 0
        self.env = env  # the environment of the hub and proxy processes (default: the tests')

    # --- processes ---

    def command(self, *args: str) -> list[str]:
        """`campushub ARGS --config SITE`, with the hub's Python."""
        return [str(self.python), "-m", "campushub", *args, "--config", str(self.site_file)]

    def launch(self, *args: str, log: str) -> subprocess.Popen:
        """`campushub ARGS` in a session of its own, its output appended to `log` in the work folder."""
        out = open(self.workdir / log, "a")
        return subprocess.Popen(
            self.command(*args), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
            cwd=self.cwd,
        )  # fmt: skip

    def start(self) -> RunningHub:
        self.proxy = self.launch("proxy", log="proxy.log")
        self.start_hub()
        return self

    def start_hub(self) -> None:
        self.hub_starts += 1
        self.hub = self.launch("hub", log="hub.log")
        wait_for(self.hub_answers, 60, f"the hub to answer (log: {self.workdir / 'hub.log'})", 0.25)

    def hub_answers(self) -> bool:
        if self.hub.poll() is not None:
            raise RuntimeError(f"the hub exited ({self.hub.returncode}): {self.log_tail()}")
        try:
            return requests.get(f"http://127.0.0.1:{self.hub_port}/hub/api/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop_hub(self) -> None:
        """SIGTERM, as a service manager stops it."""
        self.hub.send_signal(signal.SIGTERM)
        self.hub.wait(60)

    def close(self) -> None:
        for proc in (self.hub, self.proxy):
            end_process(proc, 60)

    def log_tail(self, lines: int = 40) -> str:
        text = (self.workdir / "hub.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    @property
    def password(self) -> str:
        return (Path(self.site["hub"]["state_dir"]) / "demo_password").read_text().strip()

    @property
    def admin_password(self) -> str | None:
        if self.campus_login:
            return None  # admins log in like everyone (auth.admin_users or the admin group)
        return (Path(self.site["hub"]["state_dir"]) / "demo_admin_password").read_text().strip()


@contextmanager
def running_hub(slurm, workdir: Path, site: dict, env: dict | None = None):
    """A RunningHub on the test cluster; at the end the hub and proxy stop and every job is cancelled."""
    hub = RunningHub(workdir, site, env).start()
    try:
        yield hub
    finally:
        hub.close()
        slurm.cancel_all()


def environ_of(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid
