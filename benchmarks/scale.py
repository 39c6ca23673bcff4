"""Scale benchmark: 1,000 users on one hub, 300 of them with a running server at once, through the real hub,
proxy and campus login (OpenID Connect), with each proxy kind side by side.

For each proxy (`--proxy chp,traefik`) it starts a real CampusHub (`campushub proxy` + `campushub hub`,
tests/cluster/hub.py) with a fresh state folder, SQLite, campus login through the test harness's OpenID
Connect provider (tests/cluster/idp.py, in a process of its own) and unix accounts from the directory. The
users' servers are minimal servers in one asyncio process (benchmarks/scale_servers.py) that the hub
starts through a benchmark-only spawner (benchmarks/scale_spawner.py, set with hub.extra_config): they
answer the hub's checks, report activity to the hub every minute and check browsers' tokens with the hub, so
that 300 fit on 2 cores beside the hub. The phases, each timed:

1. every user logs in once through the browser flow (the hub creates its users);
2. N users' servers start through the REST API (spawn to ready, the hub's route-add histogram), and each
   user's browser asks its server once through the proxy;
3. the load, for a minute: logins at a fixed rate (open loop: each starts on schedule, whatever the
   earlier ones do; a whole browser flow with a fresh cookie jar), every server's activity report, and each
   running user's browser polling its server through the proxy every few seconds with a token of that user;
   the hub's and the proxy's CPU and memory are sampled from /proc;
4. every server stops through the REST API.

The 1,000 unix accounts share the group `users` and one home folder, and are written into the account
files in one go under the system's account lock (useradd and userdel would take minutes), and removed the
same way. It needs root and takes the machine's test lock; everything is removed at the end, also on failure.

Run from the repository root:
    sudo make bench-scale [BENCH_ARGS="--write docs/benchmarks.md"]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import grp
import os
import pwd
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import requests

from campushub import __version__
from campushub.state import write_private
from tests.cluster.hub import RunningHub
from tests.cluster.lock import machine_lock
from tests.cluster.machines import descendants, proc_status
from tests.cluster.slurm import end_process, free_port, wait_for

from .measure import cpu_seconds
from .report import fmt, machine, publish
from .scale_servers import CONTROL_ENV
from .stats import pct

PREFIX = "chb-scale-"
ADMIN = f"{PREFIX}admin"
GROUP = "campus"
PROXIES = ("chp", "traefik")
TARGET_LOGIN_P95, TARGET_PROXIED_P95 = 1.0, 0.050
LOGIN_TIMEOUT, REQUEST_TIMEOUT, READY_TIMEOUT = 30.0, 10.0, 120.0
POLLED = ("api/kernels", "api/sessions", "api/status")  # what an open Lab asks its server over and over
RESULTS_START = "<!-- scale-results:start (written by benchmarks/scale.py --write; do not edit by hand) -->"
RESULTS_END = "<!-- scale-results:end -->"
SECTION = """
## Campus scale: 1,000 users, 300 running servers

`python -m benchmarks.scale` (`sudo make bench-scale`), in one run on this machine: 1,000 users, 300 of them
with a running server at once, through the real hub, proxy and campus login, for each proxy kind
(`proxy.kind`) one after the other, each on a fresh state folder, side by side in one table. Targets, during
the load: no error of any kind, login p95 at most 1 s, proxied request p95 at most 50 ms. The method is in
benchmarks/scale.py's docstring.

"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- pure parts ---


def user_names(count: int) -> list[str]:
    return [f"{PREFIX}{i:04d}" for i in range(1, count + 1)]


def open_loop_schedule(rate: float, seconds: float) -> list[float]:
    """Start offsets (s) of the load's logins: one every 1/rate s, whatever the earlier ones are doing."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("the login rate and the load's length must be positive")
    return [i / rate for i in range(round(rate * seconds))]


def poll_offsets(browsers: int, interval: float) -> list[float]:
    """The first poll of each browser, spread evenly over one interval (they opened the Lab at different times)."""
    return [interval * i / browsers for i in range(browsers)]


def histogram(text: str, name: str, **labels: str) -> dict:
    """A histogram of Prometheus's text format: {"buckets": [(le, cumulative count)], "sum", "count"}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"buckets": [], "sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            if any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            if s.name.endswith("_bucket"):
                out["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                out["sum"] = s.value
            elif s.name.endswith("_count"):
                out["count"] = s.value
    out["buckets"].sort()
    return out


def histogram_delta(before: dict, after: dict) -> dict:
    """What was observed between two readings of the same histogram."""
    old = dict(before["buckets"])
    return {
        "buckets": [(le, n - old.get(le, 0.0)) for le, n in after["buckets"]],
        "sum": after["sum"] - before["sum"],
        "count": after["count"] - before["count"],
    }


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile (0..1) of cumulative buckets, interpolated within its bucket as Prometheus's
    histogram_quantile does; None with no observations; the highest finite bound if it falls in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = le, count
    return lower


def error_kind(outcome: int | str) -> str | None:
    """None for a success (a 2xx answer: redirects are followed where a browser follows them), else what went wrong."""
    if isinstance(outcome, int):
        return None if 200 <= outcome < 300 else f"HTTP {outcome}"
    return outcome


def timing(samples: list[dict]) -> dict:
    """n, errors (by kind), p50, p95 and max of the successful samples' seconds."""
    ok = [s["seconds"] for s in samples if not s.get("error")]
    errors = Counter(s["error"] for s in samples if s.get("error"))
    out = {"n": len(samples), "errors": dict(errors)}
    if ok:
        out.update(p50=pct(ok, 50), p95=pct(ok, 95), max=max(ok))
    return out


def from_records(records: list[list], since: float, until: float) -> list[dict]:
    """The server process's records ([epoch, seconds, outcome]) made in a time window, as samples."""
    return [{"seconds": s, "error": error_kind(o)} for t, s, o in records if since <= t < until]


# --- unix accounts ---


def account_files(change) -> None:
    """Run change() holding the system's lock of the account files (lckpwdf: useradd and userdel wait for it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.lckpwdf() != 0:
        raise RuntimeError(f"cannot lock the account files: {os.strerror(ctypes.get_errno())}")
    try:
        change()
    finally:
        libc.ulckpwdf()


def rewrite(path: Path, keep, extra: list[str]) -> None:
    """The file without the lines that keep() refuses, plus `extra`, replaced in one rename, same owner and mode."""
    st = path.stat()
    lines = [line for line in path.read_text().splitlines(keepends=True) if keep(line)]
    new = path.with_name(path.name + "+")
    new.write_text("".join(lines) + "".join(f"{line}\n" for line in extra))
    os.chown(new, st.st_uid, st.st_gid)
    os.chmod(new, st.st_mode & 0o7777)
    os.replace(new, path)


def free_uids(count: int, low: int = 1000, high: int = 60000) -> int:
    """The first uid of `count` free ones in a row, above every account already in the range."""
    used = [p.pw_uid for p in pwd.getpwall() if low <= p.pw_uid <= high]
    first = max(used, default=low - 1) + 1
    if first + count - 1 > high:
        raise RuntimeError(f"no {count} free uids in a row between {low} and {high}")
    return first


def add_accounts(names: list[str], home: Path) -> None:
    gid = grp.getgrnam("users").gr_gid
    first = free_uids(len(names))
    days = int(time.time() // 86400)

    def change():
        rewrite(Path("/etc/passwd"), lambda _: True,
                [f"{n}:x:{first + i}:{gid}:scale benchmark:{home}:/bin/bash" for i, n in enumerate(names)])  # fmt: skip
        rewrite(Path("/etc/shadow"), lambda _: True, [f"{n}:*:{days}:0:99999:7:::" for n in names])

    account_files(change)


def remove_accounts() -> None:
    """Every account of the benchmark (also those an interrupted run left)."""
    ours = lambda line: not line.startswith(PREFIX)  # noqa: E731
    account_files(lambda: [rewrite(Path(f), ours, []) for f in ("/etc/passwd", "/etc/shadow")])


# --- processes ---

# The test harness's provider in a process of its own. It imports its signing key from a dict for every token it
# issues (55 ms of CPU on this machine, the key's check): here it imports it once, as a production provider keeps its
# key, so that the provider does not eat the hub's CPU.
IDP = """
import logging, sys
from joserfc.jwk import import_key
from oidc_provider_mock import _app
from tests.cluster.idp import IdentityProvider

jwt_config, keys = _app.OpenIDCode.get_jwt_config, {}

def imported_once(self, grant, client=None):
    config = jwt_config(self, grant, client)
    config["key"] = keys.get("key") or keys.setdefault("key", import_key(config["key"]))
    return config

_app.OpenIDCode.get_jwt_config = imported_once
logging.getLogger("werkzeug").setLevel(logging.WARNING)
provider = IdentityProvider("127.0.0.1")
print(provider.url, flush=True)
sys.stdin.read()
"""


def start_provider(work: Path) -> tuple[subprocess.Popen, str]:
    """The test harness's OpenID Connect provider in a process of its own (not competing with the load's)."""
    proc = subprocess.Popen([sys.executable, "-c", IDP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(work / "idp.log", "w"), text=True)  # fmt: skip
    url = proc.stdout.readline().strip()
    if not url:
        raise RuntimeError(f"the identity provider did not start: {(work / 'idp.log').read_text()[-2000:]}")
    return proc, url


# --profile-hub: the hub's Python runs under cProfile (its main thread: the event loop), written out when it stops.
# Every process with this folder on its path loads it; the first to find the variable (the hub; the proxy's
# launcher execs the proxy first) takes it out of the environment, so that the hub's services are not profiled.
PROFILER = """
import atexit, cProfile, os
out = os.environ.pop("CAMPUSHUB_BENCH_PROFILE", None)
if out:
    profile = cProfile.Profile()
    profile.enable()
    atexit.register(lambda: (profile.disable(), profile.dump_stats(out)))
"""


def hub_profile(path: Path, lines: int = 30) -> str:
    """The profiled hub's functions that took most of its time, themselves and with what they called."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("cumulative").print_stats(lines)
    stats.sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def start_servers(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.scale_servers", str(port)],
                            stdout=open(work / "servers.log", "w"), stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def answers():
        if proc.poll() is not None:
            raise RuntimeError(f"the server process exited: {(work / 'servers.log').read_text()[-2000:]}")
        try:
            return requests.get(f"{url}/stats", timeout=2).ok
        except requests.RequestException:
            return False

    wait_for(answers, 30, "the benchmark's server process", 0.1)
    return proc, url


STALL = re.compile(r"Event loop was unresponsive for at least ([0-9.]+)s")


def hub_log(text: str) -> dict:
    """The hub log's lines at level E, and the event loop's stalls that JupyterHub warned of (seconds)."""
    lines = text.splitlines()
    return {
        "hub_log_errors": sum(line.startswith("[E ") for line in lines),
        "stalls": [float(m.group(1)) for line in lines if (m := STALL.search(line))],
    }


def cpu_and_rss(pid: int, tree: bool = False) -> tuple[float, float]:
    """CPU seconds and resident MB of a process (with `tree`, and of its descendants)."""
    pids = [pid, *descendants(pid)] if tree else [pid]
    rss_kb = sum(int(proc_status(p).get("VmRSS", "0 kB").split()[0]) for p in pids)
    return sum(cpu_seconds(p) for p in pids), rss_kb / 1024


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# --- the browser side ---


class Bench:
    def __init__(self, hub: RunningHub, servers_url: str, metrics_token: str):
        self.hub = hub
        self.url = hub.url
        self.api = f"http://127.0.0.1:{hub.hub_port}/hub/api"
        self.servers_url = servers_url
        self.metrics_token = metrics_token
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout
        )
        self.admin_token = ""

    async def close(self) -> None:
        await self.client.close()

    async def login(self, user: str, session: aiohttp.ClientSession | None = None) -> dict:
        """The whole browser flow, with a fresh cookie jar: the hub's login -> the provider's form -> the
        hub's callback -> the hub's home page."""
        began, t0 = time.time(), time.perf_counter()
        own = session is None
        if own:
            session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                            timeout=aiohttp.ClientTimeout(total=LOGIN_TIMEOUT))  # fmt: skip
        error = None
        try:
            async with session.get(f"{self.url}/hub/oauth_login", params={"next": "/hub/home"}) as form:
                text = await form.text()
                form_url = form.url
            if form.status != 200 or 'name="sub"' not in text:
                error = error_kind(form.status) or "no login form"
            else:
                async with session.post(form_url, data={"sub": user}) as home:
                    await home.read()
                    error = error_kind(home.status) or (None if home.url.path == "/hub/home" else "not the home page")
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as e:
            error = f"connection: {type(e).__name__}"
        finally:
            if own:
                await session.close()
        return {"t": began, "seconds": time.perf_counter() - t0, "error": error, "user": user}

    def admin(self) -> dict:
        return {"Authorization": f"token {self.admin_token}"}

    async def hub_call(self, method: str, path: str, headers: dict, **kw) -> tuple[int, dict | None]:
        async with self.client.request(method, f"{self.api}{path}", headers=headers, **kw) as r:
            body = await r.json() if r.content_type == "application/json" else None
            return r.status, body

    async def admin_login(self) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            done = await self.login(ADMIN, s)
            if done["error"]:
                raise RuntimeError(f"the admin's login failed: {done['error']}")
            xsrf = next(c.value for c in s.cookie_jar if c.key == "_xsrf")
            async with s.post(f"{self.url}/hub/api/users/{ADMIN}/tokens", json={"note": "scale benchmark"},
                              headers={"X-XSRFToken": xsrf}) as r:  # fmt: skip
                if r.status != 201:
                    raise RuntimeError(f"no token for the admin: {r.status} {await r.text()}")
                self.admin_token = (await r.json())["token"]

    async def user_token(self, user: str) -> str:
        status, body = await self.hub_call("POST", f"/users/{user}/tokens", self.admin(), json={"note": "browser"})
        if status != 201:
            raise RuntimeError(f"no token for {user}: {status} {body}")
        return body["token"]

    async def spawn(self, user: str) -> dict:
        """Spawn to ready: the POST until it answers 201, or after a 202 until the hub says ready."""
        t0 = time.perf_counter()
        try:
            status, _ = await self.hub_call("POST", f"/users/{user}/server", self.admin())
            if status not in (201, 202):
                return {"seconds": time.perf_counter() - t0, "error": f"HTTP {status}"}
            while status == 202:
                if time.perf_counter() - t0 > READY_TIMEOUT:
                    return {"seconds": time.perf_counter() - t0, "error": "timeout"}
                await asyncio.sleep(0.2)
                _, model = await self.hub_call("GET", f"/users/{user}", self.admin())
                if (model["servers"].get("") or {}).get("ready"):
                    status = 201
        except TimeoutError:
            return {"seconds": time.perf_counter() - t0, "error": "timeout"}
        except aiohttp.ClientError as e:
            return {"seconds": time.perf_counter() - t0, "error": f"connection: {type(e).__name__}"}
        return {"seconds": time.perf_counter() - t0, "error": None}

    async def stop_server(self, user: str) -> dict:
        t0 = time.perf_counter()
        try:
            status, _ = await self.hub_call("DELETE", f"/users/{user}/server", self.admin())
            while status == 202:
                await asyncio.sleep(0.2)
                _, model = await self.hub_call("GET", f"/users/{user}", self.admin())
                status = 202 if model["servers"].get("") else 204
        except (TimeoutError, aiohttp.ClientError) as e:
            return {"seconds": time.perf_counter() - t0, "error": type(e).__name__}
        return {"seconds": time.perf_counter() - t0, "error": error_kind(status)}

    async def proxied(self, user: str, token: str, path: str) -> dict:
        """One request of the user's browser to its server, through the proxy."""
        began, t0 = time.time(), time.perf_counter()
        try:
            async with self.client.get(f"{self.url}/user/{user}/{path}", allow_redirects=False,
                                       headers={"Authorization": f"token {token}"}) as r:  # fmt: skip
                await r.read()
                error = error_kind(r.status)
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as e:
            error = f"connection: {type(e).__name__}"
        return {"t": began, "seconds": time.perf_counter() - t0, "error": error}

    async def metrics(self) -> str:
        async with self.client.get(f"http://127.0.0.1:{self.hub.hub_port}/hub/metrics",
                                   headers={"Authorization": f"token {self.metrics_token}"}) as r:  # fmt: skip
            r.raise_for_status()
            return await r.text()

    async def server_stats(self) -> dict:
        async with self.client.get(f"{self.servers_url}/stats") as r:
            return await r.json()


async def bounded(items, worker, concurrency: int) -> list:
    """worker(item) for every item, at most `concurrency` at once, in the items' order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item):
        async with gate:
            return await worker(item)

    return await asyncio.gather(*(one(i) for i in items))


async def sample_processes(pids: dict[str, int], until: float, out: list[dict]) -> None:
    """Every second until `until` (monotonic): each process's CPU seconds and RSS (the proxy's with its children:
    `campushub proxy` may run it as one), and the machine's busy jiffies."""
    while True:
        out.append({"t": time.monotonic(), "busy": machine_busy(),
                    **{name: cpu_and_rss(pid, tree=name == "proxy") for name, pid in pids.items()}})  # fmt: skip
        if time.monotonic() >= until:
            return
        await asyncio.sleep(1.0)


def usage(samples: list[dict], names: list[str]) -> dict:
    """Per process: mean CPU (% of one core) over the samples, peak RSS (MB); the machine's busy % of all cores."""
    first, last = samples[0], samples[-1]
    wall = last["t"] - first["t"]
    out = {n: {"cpu": 100 * (last[n][0] - first[n][0]) / wall, "rss": max(s[n][1] for s in samples)} for n in names}
    busy = last["busy"][0] - first["busy"][0]
    out["machine_busy"] = 100 * busy / max(last["busy"][1] - first["busy"][1], 1)
    return out


async def measure(hub: RunningHub, kind: str, servers: tuple[subprocess.Popen, str], idp: subprocess.Popen,
                  metrics_token: str, users: list[str], args) -> dict:  # fmt: skip
    bench = Bench(hub, servers[1], metrics_token)
    res: dict = {"proxy": kind}
    try:
        log(f"[{kind}] phase 1: {len(users)} users log in, {args.concurrency} at a time")
        t0 = time.perf_counter()
        first = await bounded(users, bench.login, args.concurrency)
        res["first_logins"] = {**timing(first), "seconds": time.perf_counter() - t0}
        log(f"[{kind}]   {fmt_timing(res['first_logins'])}, all in {res['first_logins']['seconds']:.1f} s")

        await bench.admin_login()
        running = users[: args.servers]
        tokens = dict(zip(running, await bounded(running, bench.user_token, args.concurrency), strict=True))
        log(f"[{kind}] phase 2: {len(running)} servers start, {args.concurrency} at a time")
        before = histogram(await bench.metrics(), "jupyterhub_proxy_add_duration_seconds", status="success")
        t0 = time.perf_counter()
        spawns = await bounded(running, bench.spawn, args.concurrency)
        res["spawns"] = {**timing(spawns), "seconds": time.perf_counter() - t0}
        added = histogram_delta(before, histogram(await bench.metrics(), "jupyterhub_proxy_add_duration_seconds",
                                                  status="success"))  # fmt: skip
        res["route_add"] = {
            "n": added["count"],
            "mean": added["sum"] / added["count"] if added["count"] else None,
            "p50": histogram_quantile(0.5, added["buckets"]),
            "p95": histogram_quantile(0.95, added["buckets"]),
        }
        first_ask = await bounded(running, lambda u: bench.proxied(u, tokens[u], "api/status"), args.concurrency)
        res["first_requests"] = timing(first_ask)
        log(f"[{kind}]   spawn to ready {fmt_timing(res['spawns'])}; route add {fmt_route(res['route_add'])}; "
            f"first request through the proxy {fmt_timing(res['first_requests'])}")  # fmt: skip

        log(f"[{kind}] phase 3: {args.load_seconds} s of load: logins at {args.login_rate}/s, "
            f"{len(running)} browsers polling every {args.poll_interval} s, activity every minute")  # fmt: skip
        res["load"] = await load(bench, hub, servers[0], idp, users, running, tokens, args)

        log(f"[{kind}] phase 4: {len(running)} servers stop")
        t0 = time.perf_counter()
        res["stops"] = {**timing(await bounded(running, bench.stop_server, args.concurrency)),
                        "seconds": time.perf_counter() - t0}  # fmt: skip
        res["left_running"] = (await bench.server_stats())["servers"]
        log(f"[{kind}]   stopped in {res['stops']['seconds']:.1f} s, {res['left_running']} left running")
    finally:
        await bench.close()
    return res


async def load(bench: Bench, hub: RunningHub, servers: subprocess.Popen, idp: subprocess.Popen, users: list[str],
               running: list[str], tokens: dict[str, str], args) -> dict:  # fmt: skip
    schedule = open_loop_schedule(args.login_rate, args.load_seconds)
    polls_each = int(args.load_seconds // args.poll_interval)
    offsets = poll_offsets(len(running), args.poll_interval)
    random.Random(0).shuffle(offsets)
    started, start = time.time(), time.monotonic() + 0.5
    samples: list[dict] = []
    pids = {"hub": hub.hub.pid, "proxy": hub.proxy.pid, "servers": servers.pid, "idp": idp.pid, "load": os.getpid()}
    sampler = asyncio.create_task(sample_processes(pids, start + args.load_seconds, samples))

    async def login_at(i: int, offset: float) -> dict:
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        return await bench.login(users[i % len(users)])

    async def browser(user: str, offset: float) -> list[dict]:
        out = []
        for k in range(polls_each):
            await asyncio.sleep(max(0.0, start + offset + k * args.poll_interval - time.monotonic()))
            out.append(await bench.proxied(user, tokens[user], POLLED[k % len(POLLED)]))
        return out

    logins = [asyncio.create_task(login_at(i, o)) for i, o in enumerate(schedule)]
    browsers = [asyncio.create_task(browser(u, o)) for u, o in zip(running, offsets, strict=True)]
    login_results = await asyncio.gather(*logins)
    poll_results = [s for b in await asyncio.gather(*browsers) for s in b]
    await sampler
    ended = time.time()
    stats = await bench.server_stats()
    use = usage(samples, list(pids))
    out = {
        "seconds": ended - started,
        "logins": timing(login_results),
        "login_rate": len(login_results) / args.load_seconds,
        "proxied": timing(poll_results),
        "activity": timing(from_records(stats["activity"], started, ended)),
        "token_checks": timing(from_records(stats["token_checks"], started, ended)),
        "usage": use,
    }
    log(f"  logins {fmt_timing(out['logins'])}; proxied {fmt_timing(out['proxied'], 1000, 'ms')}; "
        f"activity {fmt_timing(out['activity'], 1000, 'ms')}; hub CPU {use['hub']['cpu']:.0f}% of a core, "
        f"RSS {use['hub']['rss']:.0f} MB; proxy CPU {use['proxy']['cpu']:.0f}%; machine busy "
        f"{use['machine_busy']:.0f}%")  # fmt: skip
    return out


def fmt_timing(t: dict, scale: float = 1.0, unit: str = "s") -> str:
    errors = sum(t["errors"].values())
    if "p50" not in t:
        return f"{t['n']} with {errors} error(s)"
    return (f"{t['n']}: p50 {t['p50'] * scale:.2f} {unit}, p95 {t['p95'] * scale:.2f} {unit}, {errors} error(s)"
            + (f" {t['errors']}" if errors else ""))  # fmt: skip


def fmt_route(r: dict) -> str:
    if not r["n"]:
        return "none observed"
    return f"{r['n']:.0f} routes, mean {r['mean'] * 1000:.1f} ms, p95 {r['p95'] * 1000:.0f} ms"


# --- the run ---


def site(idp_url: str, secret: Path, metrics_token: Path, kind: str) -> dict:
    out = {
        "auth": {
            "kind": "oidc",
            "oidc": {
                "issuer": idp_url,
                "client_id": "campushub-scale",
                "client_secret_file": str(secret),
                "allowed_groups": [GROUP],
            },  # fmt: skip
            "admin_users": [ADMIN],
        },
        "users": {"accounts": "directory"},
        "scheduler": {"enabled": False},
        "metrics": {"token_file": str(metrics_token)},
        "hub": {"extra_config": {"JupyterHub": {"spawner_class": "benchmarks.scale_spawner.FakeSpawner"}}},
    }
    if kind != "chp":
        out["proxy"] = {"kind": kind}
    return out


async def register_users(idp_url: str, names: list[str]) -> None:
    async with aiohttp.ClientSession() as s:

        async def put(name: str) -> None:
            claims = {"preferred_username": name, "groups": [GROUP], "email": f"{name}@campus.example"}
            async with s.put(f"{idp_url}/users/{name}", json=claims) as r:
                if r.status != 204:
                    raise RuntimeError(f"the provider refused {name}: {r.status} {await r.text()}")

        await bounded(names, put, 20)


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="campushub-bench-scale-"))
    work.chmod(0o755)
    users = user_names(args.users)
    idp = servers = None
    runs = []
    load_before = os.getloadavg()
    began = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # hundreds of connections here and in the proxy
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        remove_accounts()
        t0 = time.perf_counter()
        add_accounts([*users, ADMIN], work)
        accounts_s = time.perf_counter() - t0
        idp, idp_url = start_provider(work)
        asyncio.run(register_users(idp_url, [*users, ADMIN]))
        log(f"{len(users)} unix accounts in {accounts_s:.2f} s, and at the identity provider")
        secret, token = work / "client_secret", work / "metrics_token"
        write_private(secret, "scale-benchmark-secret\n")
        write_private(token, os.urandom(16).hex() + "\n")
        for kind in args.proxy:
            servers = start_servers(work)
            env = dict(os.environ, PYTHONPATH=str(Path.cwd()), **{CONTROL_ENV: servers[1]})
            if args.profile_hub:
                (work / "profiler").mkdir(exist_ok=True)
                (work / "profiler" / "sitecustomize.py").write_text(PROFILER)
                env["PYTHONPATH"] = f"{work / 'profiler'}:{env['PYTHONPATH']}"
                env["CAMPUSHUB_BENCH_PROFILE"] = str(work / f"hub-{kind}.prof")
            hub = RunningHub(work / f"hub-{kind}", site(idp_url, secret, token, kind), env)
            try:
                hub.start()
                runs.append(asyncio.run(measure(hub, kind, servers, idp, token.read_text().strip(), users, args)))
                runs[-1].update(hub_log((hub.workdir / "hub.log").read_text(errors="replace")))
            finally:
                hub.close()
                end_process(servers[0])
                servers = None
            if args.profile_hub:
                log(f"[{kind}] where the hub's time went (cProfile of its main thread, the whole run):\n"
                    + hub_profile(work / f"hub-{kind}.prof"))  # fmt: skip
    finally:
        end_process(servers[0] if servers else None)
        end_process(idp)
        remove_accounts()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    import jupyterhub

    return {
        **machine(),
        "jupyterhub": jupyterhub.__version__,
        "campushub": __version__,
        "users": args.users,
        "servers": args.servers,
        "login_rate": args.login_rate,
        "load_seconds": args.load_seconds,
        "poll_interval": args.poll_interval,
        "concurrency": args.concurrency,
        "accounts_seconds": accounts_s,
        "runs": runs,
        "load": [load_before, os.getloadavg()],
        "minutes": (time.monotonic() - began) / 60,
    }


# --- the report ---


def errors_of(run: dict) -> int:
    parts = [run["first_logins"], run["spawns"], run["first_requests"], run["stops"]]
    parts += [run["load"][k] for k in ("logins", "proxied", "activity", "token_checks")]
    return sum(sum(p["errors"].values()) for p in parts) + run["left_running"]


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x * 1000:.1f}"


def rows(res: dict) -> list[tuple[str, list[str]]]:
    def each(f) -> list[str]:
        return [f(r) for r in res["runs"]]

    def err(r: dict, key: str, part: str | None = None) -> str:
        return str(sum((r[key][part] if part else r[key])["errors"].values()))

    return [
        (f"{res['users']} first logins, {res['concurrency']} at once: all done in, s",
         each(lambda r: f"{r['first_logins']['seconds']:.1f}")),
        ("first login p50 / p95, s", each(lambda r: f"{fmt(r['first_logins'].get('p50'))} / "
                                                    f"{fmt(r['first_logins'].get('p95'))}")),
        (f"{res['servers']} servers started: all ready in, s", each(lambda r: f"{r['spawns']['seconds']:.1f}")),
        ("spawn to ready p50 / p95, s", each(lambda r: f"{fmt(r['spawns'].get('p50'))} / {fmt(r['spawns'].get('p95'))}")),
        ("route add (hub's histogram): mean / p50 / p95, ms",
         each(lambda r: f"{ms(r['route_add']['mean'])} / {ms(r['route_add']['p50'])} / {ms(r['route_add']['p95'])}")),
        (f"**load: logins at {res['login_rate']:g}/s** (n)", each(lambda r: str(r["load"]["logins"]["n"]))),
        ("**login p50 / p95**, s", each(lambda r: f"{fmt(r['load']['logins'].get('p50'))} / "
                                                  f"**{fmt(r['load']['logins'].get('p95'))}**")),
        ("login max, s", each(lambda r: fmt(r["load"]["logins"].get("max")))),
        (f"**proxied requests** (every {res['poll_interval']:g} s from each browser, n)",
         each(lambda r: str(r["load"]["proxied"]["n"]))),
        ("**proxied p50 / p95**, ms", each(lambda r: f"{ms(r['load']['proxied'].get('p50'))} / "
                                                     f"**{ms(r['load']['proxied'].get('p95'))}**")),
        ("activity reports to the hub (n, p95 ms)",
         each(lambda r: f"{r['load']['activity']['n']}, {ms(r['load']['activity'].get('p95'))}")),
        ("token checks with the hub (n)", each(lambda r: str(r["load"]["token_checks"]["n"]))),
        ("hub CPU, % of one core (mean over the load)", each(lambda r: f"{r['load']['usage']['hub']['cpu']:.0f}")),
        ("hub memory (peak RSS), MB", each(lambda r: f"{r['load']['usage']['hub']['rss']:.0f}")),
        ("proxy CPU %, peak RSS MB", each(lambda r: f"{r['load']['usage']['proxy']['cpu']:.0f}, "
                                                     f"{r['load']['usage']['proxy']['rss']:.0f}")),
        ("servers' process / provider / load generator CPU %",
         each(lambda r: " / ".join(f"{r['load']['usage'][n]['cpu']:.0f}" for n in ("servers", "idp", "load")))),
        ("machine busy, % of all cores", each(lambda r: f"{r['load']['usage']['machine_busy']:.0f}")),
        ("of which other processes on the machine, % of one core", each(lambda r: f"{others(r, res['cpus']):.0f}")),
        (f"{res['servers']} servers stopped in, s", each(lambda r: f"{r['stops']['seconds']:.1f}")),
        ("errors: first logins / spawns / load logins / proxied / activity / token checks / stops",
         each(lambda r: " / ".join([err(r, "first_logins"), err(r, "spawns"), err(r, "load", "logins"),
                                    err(r, "load", "proxied"), err(r, "load", "activity"),
                                    err(r, "load", "token_checks"), err(r, "stops")]))),
        ("**errors, all kinds**", each(lambda r: f"**{errors_of(r)}**")),
        ("hub log lines at level E", each(lambda r: str(r["hub_log_errors"]))),
        ("hub's event loop stalls it warned of (whole run): n, longest s",
         each(lambda r: f"{len(r['stalls'])}, {max(r['stalls'], default=0):.2f}")),
    ]  # fmt: skip


def others(run: dict, cpus: int) -> float:
    """CPU that processes outside the benchmark took during the load (% of one core): they share the machine."""
    use = run["load"]["usage"]
    ours = sum(use[n]["cpu"] for n in ("hub", "proxy", "servers", "idp", "load"))
    return max(0.0, use["machine_busy"] * cpus - ours)


def verdicts(res: dict) -> list[str]:
    out = []
    for r in res["runs"]:
        login, proxied, errors = r["load"]["logins"].get("p95"), r["load"]["proxied"].get("p95"), errors_of(r)
        checks = [
            (f"0 errors ({errors})", errors == 0),
            (f"login p95 at most {TARGET_LOGIN_P95:g} s ({fmt(login)} s)", login is not None and login <= TARGET_LOGIN_P95),
            (f"proxied request p95 at most {TARGET_PROXIED_P95 * 1000:.0f} ms ({ms(proxied)} ms)",
             proxied is not None and proxied <= TARGET_PROXIED_P95),
        ]  # fmt: skip
        out.append(f"- {r['proxy']}: " + "; ".join(f"{text}: **{'met' if ok else 'not met'}**" for text, ok in checks))
    return out


def results_block(res: dict) -> str:
    load = " / ".join(" ".join(f"{x:.1f}" for x in avg) for avg in res["load"])
    lines = [
        RESULTS_START,
        "",
        f"Run of {res['date']} on `{res['host']}`: {res['cpus']} CPU cores; Python {res['python']}, JupyterHub "
        f"{res['jupyterhub']} on SQLite, CampusHub {res['campushub']}. {res['users']} users, {res['servers']} running "
        f"servers, {res['load_seconds']:g} s of load. {res['users']} unix accounts written in "
        f"{res['accounts_seconds']:.2f} s. Load average before / after: {load}. The run took "
        f"{res['minutes']:.1f} minutes.",
        "",
        "| | " + " | ".join(r["proxy"] for r in res["runs"]) + " |",
        "|---|" + "---:|" * len(res["runs"]),
        *(f"| {label} | " + " | ".join(values) + " |" for label, values in rows(res)),
        "",
        "Targets (during the load):",
        "",
        *verdicts(res),
        "",
        RESULTS_END,
    ]
    return "\n".join(lines)


def proxies(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in PROXIES]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: name one or more of {', '.join(PROXIES)}, separated by commas")
    return kinds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--proxy", type=proxies, default=list(PROXIES), help="proxies, one after the other (default chp,traefik)"
    )
    p.add_argument("--users", type=int, default=1000, help="users, each logs in once first (default 1000)")
    p.add_argument("--servers", type=int, default=300, help="users with a running server (default 300)")
    p.add_argument("--load-seconds", type=float, default=60, help="length of the load (default 60)")
    p.add_argument("--login-rate", type=float, default=10, help="logins a second during the load (default 10)")
    p.add_argument("--poll-interval", type=float, default=5, help="seconds between a browser's requests (default 5)")
    p.add_argument("--concurrency", type=int, default=10, help="first logins, spawns and stops at once (default 10)")
    p.add_argument("--write", metavar="MD", help="write the results into this page (e.g. docs/benchmarks.md)")
    p.add_argument("--json", metavar="FILE", help="also save the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (the hubs' state and logs)")
    p.add_argument("--profile-hub", action="store_true", help="run the hub under cProfile and print where its time "
                   "went (it slows the hub: not for the figures)")  # fmt: skip
    args = p.parse_args(argv)
    if not 1 <= args.servers <= args.users:
        p.error("--servers must be between 1 and --users")
    if min(args.load_seconds, args.login_rate, args.poll_interval, args.concurrency) <= 0:
        p.error("--load-seconds, --login-rate, --poll-interval and --concurrency must be positive")
    if os.geteuid() != 0:
        p.error("run it as root: it writes the users' unix accounts")
    with machine_lock(say=log):
        res = run(args)
    publish(res, results_block(res), args, (RESULTS_START, RESULTS_END, SECTION), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
