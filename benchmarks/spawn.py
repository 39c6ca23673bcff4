#!/usr/bin/env python3
"""Spawn-to-ready benchmark: CampusHub's Slurm spawner, stock batchspawner 1.3.0, and the floor.

One run, one throwaway single-node Slurm cluster (tests/cluster/slurm.py), both hubs running side
by side against it, real unix users. Measured: the time from the spawn request
(POST /hub/api/users/NAME/server) until the hub reports the server ready (the POST answers 201, or
the progress stream sends its ready event), for

  campushub  a real CampusHub (`campushub proxy` + `campushub hub`) with the Slurm backend;
  stock      plain `jupyterhub -f CONFIG` with batchspawner.SlurmSpawner 1.3.0, same resources;
  floor      a bare jupyterhub-singleuser started as the user, no Slurm, no hub in the path:
             from exec until its HTTP port answers.

Sequential: one user, spawn / ready / stop / stopped, repeated; campushub, stock and floor take
turns in a rotating order, so that machine noise hits all three alike. Concurrent: N users at once
on one hub, then on the other (rounds in ABBA order). Milestones of each sequential spawn are read
from the hub, Slurm and job logs to show where the time goes.

Run as root, with the hub's environment:  .venv/bin/python benchmarks/spawn.py [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import pwd
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from tests.cluster.hub import RunningHub, environ_of  # noqa: E402
from tests.cluster.slurm import SlurmCluster, free_port, wait_for  # noqa: E402
from tests.cluster.users import create_users, remove_user  # noqa: E402

CHP = REPO / ".venv" / "bin" / "configurable-http-proxy"
USER_PREFIX = "chb-bench-"
LABELS = {
    "campushub": "CampusHub (campushub.spawners.slurm)",
    "stock": "stock batchspawner 1.3.0 (SlurmSpawner)",
    "floor": "floor: bare jupyterhub-singleuser, no Slurm",
}
RESULTS_START = "<!-- results:start (written by benchmarks/spawn.py --write; do not edit by hand) -->"
RESULTS_END = "<!-- results:end -->"


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the stock hub ------------------------------------------------------------------------------

STOCK_CONFIG = """\
# Stock JupyterHub + batchspawner 1.3.0, written by benchmarks/spawn.py. Imports nothing of campushub.
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

    def __init__(self, workdir: Path, singleuser_env: Path):  # noqa: super().__init__ writes a site file
        self.workdir = Path(workdir)
        self.state = self.workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port, self.hub_port, self.api_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
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
        if _alive(pid) and "configurable-http-proxy" in _cmdline(pid):
            os.kill(pid, signal.SIGTERM)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2, allow_redirects=False).status_code < 500
    except requests.RequestException:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """CPU time (user + system) a process has used; with children=True, also its waited-for children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICK


def child_pids(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# --- one spawn, timed ---------------------------------------------------------------------------


def spawn_to_ready(hub: RunningHub, user: str, token: str, timeout: float) -> dict:
    """POST the spawn and wait for ready: {'seconds', 'start' (epoch), 'ready' (epoch)}."""
    headers = {"Authorization": f"token {token}"}
    api = f"{hub.url}/hub/api/users/{user}/server"
    start_wall, t0 = time.time(), time.monotonic()
    deadline = t0 + timeout
    r = requests.post(api, headers=headers, json={}, timeout=timeout)
    if r.status_code == 201:  # ready within the hub's slow_spawn_timeout
        t1 = time.monotonic()
    elif r.status_code == 202:  # pending: the progress stream says when it is ready
        t1 = None
        with requests.get(f"{api}/progress", headers=headers, stream=True, timeout=(10, 30)) as stream:
            stream.raise_for_status()
            for line in stream.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("ready"):
                        t1 = time.monotonic()
                        break
                    if event.get("failed"):
                        raise BenchError(f"spawn of {user} failed: {event.get('message')}")
                if time.monotonic() > deadline:
                    break
        if t1 is None:
            raise BenchError(f"spawn of {user} not ready after {timeout:.0f} s")
    else:
        raise BenchError(f"spawn of {user}: {r.status_code} {r.text[:300]}")
    return {"seconds": t1 - t0, "start": start_wall, "ready": start_wall + (t1 - t0)}


def stop_server(hub: RunningHub, cluster: SlurmCluster, user: str, token: str, timeout: float = 90) -> None:
    """Stop the user's server and wait until the hub shows it stopped and Slurm lists no job of the user."""
    r = requests.delete(f"{hub.url}/hub/api/users/{user}/server", headers={"Authorization": f"token {token}"},
                        timeout=timeout)  # fmt: skip
    if r.status_code not in (202, 204, 400):  # 400: not running (a failed spawn)
        raise BenchError(f"stop of {user}: {r.status_code} {r.text[:300]}")
    wait_for(lambda: hub.server(user, token) is None, timeout, f"{user}'s server to stop", 0.2)
    wait_for(lambda: not [j for j in cluster.jobs() if j["user"] == user], timeout, f"{user}'s job to end", 0.2)


def job_id_of(cluster: SlurmCluster, user: str) -> str | None:
    jobs = [j["id"] for j in cluster.jobs() if j["user"] == user]
    return jobs[-1] if jobs else None


# --- the floor ----------------------------------------------------------------------------------


def floor_env_from(cluster: SlurmCluster, job_id: str, user: str, singleuser_env: Path) -> dict:
    """The environment the hub gave a real server (taken from its process in the job)."""
    for pid in wait_for(lambda: cluster.job_pids(job_id), 10, f"the processes of job {job_id}"):
        try:
            env = environ_of(pid)
        except OSError:
            continue
        if "JUPYTERHUB_API_TOKEN" in env:
            keep = {k: v for k, v in env.items() if k.startswith("JUPYTERHUB_")}
            keep.update({k: env[k] for k in ("HOME", "USER", "SHELL", "LANG") if k in env})
            keep["LOGNAME"] = user
            keep["PATH"] = f"{singleuser_env}/bin:/usr/local/bin:/usr/bin:/bin"
            return keep
    raise BenchError(f"no server process with a hub environment in job {job_id}")


def floor_once(env: dict, user: str, singleuser_env: Path, token: str, log_file: Path, timeout: float = 60) -> dict:
    """Start jupyterhub-singleuser as the user on a free port; time until its HTTP port answers."""
    port = free_port()
    prefix = env["JUPYTERHUB_SERVICE_PREFIX"]
    run_env = dict(env, JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}{prefix}", JUPYTERHUB_API_TOKEN=token)
    argv = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in run_env.items()),
            f"{singleuser_env}/bin/jupyterhub-singleuser"]  # fmt: skip
    url = f"http://127.0.0.1:{port}{prefix}"
    start_wall, t0 = time.time(), time.monotonic()
    out = open(log_file, "w")
    proc = subprocess.Popen(argv, cwd=env.get("HOME", "/"), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"jupyterhub-singleuser exited ({proc.returncode}) before answering")
            try:
                # what the hub's own check accepts: any answer below 500
                if requests.get(url, timeout=1, allow_redirects=False).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"jupyterhub-singleuser did not answer within {timeout} s")
            time.sleep(0.02)
        seconds = time.monotonic() - t0
        # runuser -> (env execs) jupyterhub-singleuser: the server's CPU time until it answered
        cpu = sum(cpu_seconds(c) for c in child_pids(proc.pid))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        out.close()
    listening = first_at(timed_lines(log_file, JH_TIME), r"is running at", start_wall, start_wall + seconds + 5)
    return {
        "seconds": seconds, "start": start_wall, "ready": start_wall + seconds, "cpu": cpu,
        "listening": None if listening is None else round(listening - start_wall, 3),
    }  # fmt: skip


# --- where the time goes: milestones from the logs -----------------------------------------------

JH_TIME = re.compile(r"^\[[A-Z] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")
SLURM_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] ")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace(" ", "T")).timestamp()  # local time, as the logs write it


def timed_lines(path: Path, pattern: re.Pattern) -> list[tuple[float, str]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            out.append((_epoch(m.group(1)), line[m.end():]))
    return out


def first_at(lines, regex: str, after: float, before: float) -> float | None:
    rx = re.compile(regex)
    for t, msg in lines:
        if after - 0.01 <= t <= before + 0.01 and rx.search(msg):
            return t
    return None


SUBMIT_RX = {"campushub": r"Submitting server job for {user}", "stock": r"Spawner submitting command: .*"}
NOTICED_RX = {"campushub": r"Server job \d+ of {user} runs at", "stock": r"Notebook server job \d+ started at"}


def milestones(sample: dict, backend: str, user: str, hub_log: Path, cluster: SlurmCluster, job_log: Path | None):
    """Seconds from the spawn request to each milestone of one sequential spawn (None: not found)."""
    a, b = sample["start"], sample["ready"]
    hub = timed_lines(hub_log, JH_TIME)
    ctld = timed_lines(cluster.root / "log" / "slurmctld.log", SLURM_TIME)
    slurmd = timed_lines(cluster.root / "log" / "slurmd.log", SLURM_TIME)
    job = sample.get("job") or r"\d+"
    found = {
        "submit": first_at(hub, SUBMIT_RX[backend].format(user=user), a, b),
        "queued": first_at(ctld, rf"_slurm_rpc_submit_batch_job: JobId={job}\b", a, b),
        "allocated": first_at(ctld, rf"(Allocate|Started) JobId={job}\b", a, b),
        "launched": first_at(slurmd, rf"Launching batch job {job}\b", a, b),
        "reported": first_at(hub, rf"POST /hub/api/batchspawner \({user}@", a, b),
        "noticed": first_at(hub, NOTICED_RX[backend].format(user=user), a, b),
        "listening": first_at(timed_lines(job_log, JH_TIME), r"is running at", a, b) if job_log else None,
        "spawned": first_at(hub, rf"User {user} took [\d.]+ seconds to start", a, b),
        "ready": b,
    }
    return {k: (None if v is None else round(v - a, 3)) for k, v in found.items()}


def job_log_path(backend: str, user: str, job_id: str | None) -> Path | None:
    if not job_id:
        return None
    home = Path(pwd.getpwnam(user).pw_dir)
    if backend == "campushub":
        return home / ".campushub" / "logs" / f"jupyter-{job_id}.log"
    return home / f"jupyterhub_slurmspawner_{job_id}.log"


# --- statistics and the report ------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation between order statistics (numpy's default)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summary(samples: list[dict]) -> dict:
    ok = [s["seconds"] for s in samples if "seconds" in s]
    if not ok:
        return {"n": 0, "failed": len(samples)}
    return {
        "n": len(ok),
        "failed": len(samples) - len(ok),
        "p50": pct(ok, 50),
        "p95": pct(ok, 95),
        "min": min(ok),
        "max": max(ok),
        "mean": statistics.fmean(ok),
    }


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def results_table(res: dict) -> str:
    rows = [
        ("campushub", "sequential", f"{LABELS['campushub']}, sequential (1 user)"),
        ("stock", "sequential", f"{LABELS['stock']}, sequential (1 user)"),
        ("campushub", "concurrent", f"{LABELS['campushub']}, {res['meta']['users']} users at once"),
        ("stock", "concurrent", f"{LABELS['stock']}, {res['meta']['users']} users at once"),
        ("floor", "sequential", LABELS["floor"]),
    ]
    out = ["| spawn to ready, seconds | runs | p50 | p95 | min | max |", "|---|---:|---:|---:|---:|---:|"]
    for backend, mode, label in rows:
        s = summary(res[backend][mode])
        if not s["n"]:
            out.append(f"| {label} | 0 ({s['failed']} failed) | – | – | – | – |")
            continue
        runs = f"{s['n']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
        out.append(f"| {label} | {runs} | {fmt(s['p50'])} | {fmt(s['p95'])} | {fmt(s['min'])} | {fmt(s['max'])} |")
    return "\n".join(out)


PHASES = [
    ("request", "submit", "request → sbatch runs (hub, sudo)"),
    ("submit", "launched", "sbatch → batch script launched on the node (Slurm)"),
    ("launched", "listening", "launch → the server listens (its own start; stock reports its port first)"),
    ("listening", "spawned", "listening → the hub's HTTP check passes (CampusHub: the port report, then one check)"),
    ("spawned", "ready", "check passed → ready (proxy route, the answer)"),
    ("launched", "reported", "meanwhile: launch → port reported"),
    ("reported", "noticed", "meanwhile: port reported → the spawner's start() returns"),
]


def phase_median(res: dict, backend: str, a: str, b: str) -> float | None:
    vals = []
    for s in res[backend]["sequential"]:
        m = dict(s.get("milestones") or {}, request=0.0)
        if m.get(a) is not None and m.get(b) is not None:
            vals.append(m[b] - m[a])
    return statistics.median(vals) if vals else None


def phase_table(res: dict) -> str:
    out = ["| phase of one sequential spawn (median, seconds) | CampusHub | stock |", "|---|---:|---:|"]
    for a, b, text in PHASES:
        out.append(f"| {text} | {fmt(phase_median(res, 'campushub', a, b))} | {fmt(phase_median(res, 'stock', a, b))} |")
    total = [fmt(summary(res[x]["sequential"]).get("p50")) for x in ("campushub", "stock")]
    out.append(f"| spawn to ready (p50) | {total[0]} | {total[1]} |")
    return "\n".join(out)


def bootstrap(a: list[float], b: list[float], stat, n: int = 4000) -> tuple[float, float]:
    """95% bootstrap interval of stat(median of a, median of b), resampling each group."""
    rng = random.Random(0)
    vals = sorted(
        stat(statistics.median(rng.choices(a, k=len(a))), statistics.median(rng.choices(b, k=len(b))))
        for _ in range(n)
    )
    return vals[int(0.025 * n)], vals[int(0.975 * n) - 1]


def _ok(samples: list[dict]) -> list[float]:
    return [x["seconds"] for x in samples if "seconds" in x]


def round_p50s(res: dict, backend: str) -> list[tuple[int, float]]:
    rounds: dict[int, list[float]] = {}
    for x in res[backend]["concurrent"]:
        if "seconds" in x:
            rounds.setdefault(x["round"], []).append(x["seconds"])
    return sorted((r, pct(v, 50)) for r, v in rounds.items())


def verdicts(res: dict) -> list[str]:
    n = res["meta"]["users"]
    ch, st, fl = (_ok(res[b]["sequential"]) for b in ("campushub", "stock", "floor"))
    lines = []
    if ch and st:
        a, b = pct(ch, 50), pct(st, 50)
        lo, hi = bootstrap(ch, st, lambda x, y: x - y)
        noise = "within the noise of these runs" if lo <= 0 <= hi else ("slower" if lo > 0 else "faster")
        lines.append(
            f"- CampusHub no slower than stock, one user: **{'met' if a <= b else 'not met'}**: p50 {a:.2f} s "
            f"vs {b:.2f} s ({a / b:.2f}x), p95 {pct(ch, 95):.2f} s vs {pct(st, 95):.2f} s. The p50 difference, "
            f"{a - b:+.2f} s, has a 95% bootstrap interval of {lo:+.2f} to {hi:+.2f} s: {noise}."
        )
    cc, sc = _ok(res["campushub"]["concurrent"]), _ok(res["stock"]["concurrent"])
    if cc and sc:
        a, b = pct(cc, 50), pct(sc, 50)
        rounds = sorted(
            [(r, "CampusHub", v) for r, v in round_p50s(res, "campushub")]
            + [(r, "stock", v) for r, v in round_p50s(res, "stock")]
        )
        per_hub = {hub: [v for _, h, v in rounds if h == hub] for hub in ("CampusHub", "stock")}
        spread = max(max(v) - min(v) for v in per_hub.values())
        if min(len(v) for v in per_hub.values()) < 2:
            judged = "one round per hub, so no round-to-round spread to judge the difference by"
        elif abs(a - b) < spread:
            judged = "the difference is smaller than the spread between one hub's own rounds, so within the noise"
        else:
            judged = "the difference exceeds the spread between one hub's own rounds"
        lines.append(
            f"- CampusHub no slower than stock, {n} users at once: **{'met' if a <= b else 'not met'}**: p50 "
            f"{a:.2f} s vs {b:.2f} s ({a / b:.2f}x), p95 {pct(cc, 95):.2f} s vs {pct(sc, 95):.2f} s. "
            f"p50 of each round, in the order run: {', '.join(f'{h} {v:.1f} s' for _, h, v in rounds)}; {judged}."
        )
    if ch and fl:
        ratio = pct(ch, 50) / pct(fl, 50)
        lo, hi = bootstrap(ch, fl, lambda x, y: x / y)
        lines.append(
            f"- CampusHub within 1.5x of the floor for one user: **{'met' if ratio <= 1.5 else 'not met'}**: "
            f"p50 {pct(ch, 50):.2f} s vs floor {pct(fl, 50):.2f} s, {ratio:.2f}x (95% bootstrap interval "
            f"{lo:.2f}x to {hi:.2f}x; 1.5x would be {1.5 * pct(fl, 50):.2f} s). Stock batchspawner: "
            f"{pct(st, 50) / pct(fl, 50):.2f}x."
        )
    return lines


def _median_of(samples: list[dict], key: str) -> float | None:
    vals = [x[key] for x in samples if x.get(key) is not None]
    return statistics.median(vals) if vals else None


def cpu_lines(res: dict) -> list[str]:
    n = res["meta"]["users"]
    cores = res["meta"]["cpus"]
    per = {b: _median_of(res[b]["sequential"], "cpu") for b in ("campushub", "stock", "floor")}
    lines = [
        f"- CPU time of one server start, until ready (median): {fmt(per['campushub'])} s in a CampusHub job, "
        f"{fmt(per['stock'])} s in a stock job (campushub-singleuser or batchspawner-singleuser, then "
        "jupyterhub-singleuser), "
        f"{fmt(per['floor'])} s for the bare jupyterhub-singleuser. {n} such starts need at least "
        f"{fmt(None if per['campushub'] is None else n * per['campushub'] / cores)} s on {cores} cores "
        "before anything else runs.",
    ]
    rounds = {b: res[b].get("rounds", []) for b in ("campushub", "stock")}
    if rounds["campushub"] and rounds["stock"]:
        def med(b, k):
            return statistics.median(r[k] for r in rounds[b])

        lines.append(
            f"- While {n} servers started at once, each hub process with the Slurm commands it ran "
            f"(sudo, squeue, sbatch) used {med('campushub', 'hub_cpu'):.1f} s of CPU (CampusHub) and "
            f"{med('stock', 'hub_cpu'):.1f} s (stock), slurmctld {med('campushub', 'slurmctld_cpu'):.1f} s and "
            f"{med('stock', 'slurmctld_cpu'):.1f} s (medians over rounds): CPU the servers could not use."
        )
    return lines


def floor_note(res: dict) -> str:
    fl = res["floor"]["sequential"]
    logged = _median_of(fl, "listening")
    lags = [x["seconds"] - x["listening"] for x in fl if x.get("listening") is not None and "seconds" in x]
    lag = statistics.median(lags) if lags else None
    return (
        f"For comparison, the bare server logged that it was listening {fmt(logged)} s after its start and "
        f"answered the 20 ms poll {fmt(lag)} s after that line (medians): the time between a job's server "
        "logging it and the hub's check passing is the hub's waiting, not the server's."
    )


def results_block(res: dict) -> str:
    m = res["meta"]
    lines = [
        RESULTS_START,
        "",
        f"Run of {m['date']} on `{m['host']}`: {m['cpus']} CPU cores, {m['memory_gb']:.0f} GB RAM, {m['os']}; "
        f"Slurm {m['slurm']}, JupyterHub {m['jupyterhub']}, batchspawner {m['batchspawner']}. "
        f"CampusHub's Slurm poll interval {m['campushub_poll_interval']} s, stock's startup_poll_interval 0.5 s. "
        f"{m['runs']} sequential runs per row, {m['users']} users at once in {m['concurrent_rounds']} round(s) per hub "
        f"(pooled). Load average before / after the run: {m['load_before']} / {m['load_after']}. "
        f"The run took {m['duration_s'] / 60:.1f} minutes.",
        "",
        results_table(res),
        "",
        f"Concurrent: each user's time runs from its own spawn request to its ready event. All {m['users']} "
        f"servers were ready {fmt(_makespan(res, 'campushub'))} s (CampusHub) and "
        f"{fmt(_makespan(res, 'stock'))} s (stock) after the first request (median over rounds).",
        "",
        *cpu_lines(res),
        "",
        "Targets:",
        "",
        *verdicts(res),
        "",
        "Where the time of one spawn goes, from the hub's, Slurm's and the job's logs (each phase's median "
        "is taken separately, so they add up to the total only roughly; the two \"meanwhile\" rows overlap "
        "the others):",
        "",
        phase_table(res),
        "",
        floor_note(res),
        "",
        RESULTS_END,
    ]
    return "\n".join(lines)


def _makespan(res: dict, backend: str) -> float | None:
    rounds = {}
    for s in res[backend]["concurrent"]:
        if "seconds" in s:
            r = rounds.setdefault(s["round"], [])
            r.append(s)
    spans = [max(x["ready"] for x in r) - min(x["start"] for x in r) for r in rounds.values()]
    return statistics.median(spans) if spans else None


# --- the docs page --------------------------------------------------------------------------------

DOC_HEAD = """\
# Benchmark: spawn to ready

How long a user waits from the spawn request until the server is ready, with CampusHub's Slurm
spawner, with stock batchspawner 1.3.0 on the same cluster, and against the floor: the bare start
of `jupyterhub-singleuser` on the same machine, with no Slurm and no hub in the path.

## Method

`benchmarks/spawn.py` (`make bench`, as root) does everything in one run and cleans up after
itself, also when it fails:

- It starts one throwaway single-node Slurm cluster (`tests/cluster/slurm.py`: real munged,
  slurmctld and slurmd from Debian's Slurm 22.05, on free ports), with room for 20 one-CPU 1G jobs,
  and creates 20 unix users `chb-bench-01` to `chb-bench-20`.
- Two hubs run side by side against that cluster, each with its own ports, proxy and state folder:
  - **CampusHub**: `campushub proxy` + `campushub hub` from a site file (`backend: slurm`,
    partition `gpu`, 1 CPU, `memory: 1G`, walltime 1 hour, `python_env:
    /opt/campushub/test-singleuser`, no prologue, every other key at its default, so the Slurm
    poll interval is 1.0 s);
  - **stock**: plain `jupyterhub -f CONFIG` with `batchspawner.SlurmSpawner` 1.3.0 and the same
    resources (`req_partition=gpu`, `req_nprocs=1`, `req_memory=1G`, `req_runtime=01:00:00`,
    `req_srun=''` so that the server is the batch step itself, as with CampusHub), the same
    single-user environment (to which `make bench` adds batchspawner's `batchspawner-singleuser`),
    `SLURM_CONF` through `env_keep`, the same `start_timeout`,
    `http_timeout` and `default_url` as CampusHub, and the hub's own proxy. Its config imports
    nothing of CampusHub. Both hubs log users in with a shared password.
- **Spawn to ready** is the time from `POST /hub/api/users/NAME/server` until the hub says the
  server is ready: the POST answers 201, or (after a 202) the progress stream sends its `ready`
  event. That includes the route in the proxy: the user can open the server then.
- **Sequential**: one user; spawn, wait for ready, stop, wait until the hub shows the server
  stopped and Slurm lists no job of the user; 10 times per hub, after one unmeasured warm-up spawn
  per hub. CampusHub, stock and the floor take turns in a rotating order, so that noise on the
  machine falls on all three alike.
- **Concurrent**: 20 users send their spawn requests at once (released together by a barrier);
  each user's time is measured from its own request, 4 rounds per hub. The hubs take turns
  (A B B A A B B A), so that drift on the machine falls on both alike.
- **Floor**: `jupyterhub-singleuser` from the same environment, started as the same user
  (`runuser -u USER --`) with the environment a hub gives it (taken from the warm-up server's
  process in its Slurm job, with a port of its own and a valid token), timed from exec until its
  HTTP port answers (any answer below 500, as the hub's own check accepts), polled every 20 ms.
- p50 and p95 interpolate linearly between order statistics: with 10 runs, p95 lies between the
  two slowest.
- Milestones of each sequential spawn come from the hub's log, slurmctld's and slurmd's logs and
  the job's own log, all stamped to the millisecond on the same clock.

## Machine

A 2-core virtual machine with Debian 12. The Slurm "cluster" is a single-node test cluster on that
same host: slurmctld, slurmd, both hubs, both proxies, the benchmark client and every user's server
share the 2 cores. There is no network hop between the hub and the node, and no real queue wait.
Numbers from a production cluster (separate hub host, busy partitions, shared file systems) will be
larger, mostly in the queue; what this benchmark compares is the overhead each spawner adds.

## Results
"""


DOC_TAIL = """\

## Where the time goes

Read with the phase table above. One spawn, in order:

1. **The hub and sbatch** (tens of milliseconds): the request, then the spawner's
   `sudo -u USER sbatch` (CampusHub first creates the job's log folder, one more sudo).
2. **Slurm** (a few tenths of a second): slurmctld schedules the job at submission or at its next
   scheduling pass, and slurmd launches the batch script. On a production cluster the queue wait
   comes here, and it outweighs everything else.
3. **The server's own start** (the largest part, and the floor itself): Jupyter Server, JupyterLab
   and the hub extension load. It is CPU-bound: one start uses nearly as much CPU time as it takes
   (the CPU line above), and it is the same for both spawners.
4. **The port report and the hub's HTTP check.** Here the two spawners differ.
   - Stock: `batchspawner-singleuser` reports a free port to the hub first, then starts the server
     in the same process. Its `start()` returns about a second after launch, seconds before the
     server listens, and JupyterHub then polls the server with full-jitter exponential backoff
     (random waits of up to 0.2, 0.4, 0.8, 1.6 and 3.2 s, then 5 s): by the time the server
     answers the waits have grown long, and the hub finds it a random fraction of a second to a
     few seconds late.
   - CampusHub: `campushub-singleuser` picks the free port and starts the server; the
     `campushub_lab` server extension reports the port only once the server listens, and the
     report wakes the spawner's `start()` at once (no polling for the port). The hub's first HTTP
     check passes: the "listening → check passes" row is a few hundredths of a second.
5. **Ready**: adding the proxy route and answering take about 10 ms.

**Checks while a server starts.** Stock batchspawner asks Slurm only until the job runs, then waits
for the port without asking anything, so a job that dies then leaves its spawn hanging until
`start_timeout`. CampusHub keeps checking the job (`sudo -u USER squeue`) while it waits for the
port, so that such a spawn fails at once: after 3 poll intervals, then at doubling intervals up to
10. Each check is a sudo and an squeue on the hub host; with 20 servers starting on 2 cores they
are why CampusHub's hub uses somewhat more CPU than stock's (the hub CPU line above). On a real
deployment the hub host does not share its cores with the servers.

**Many users at once.** Twenty servers starting together on 2 cores share the CPU: they need at
least 20 times the CPU time of one start, divided by 2 cores (the CPU line), and the hubs, their
Slurm commands, slurmctld and the proxies take their share on top. The servers progress together
and finish loading within a second or two of each other; CampusHub's are ready as soon as they
listen, so its p50 and p95 are nearly equal, while stock's spread over the hub's backoff. On a
real cluster each server starts on its node's own cores, and the figure depends mostly on the
queue and on the hub.

**Caveats.** One 2-core machine runs everything, and other work may have run on it at the same
time (the load averages above). With 10 runs, p95 lies between the two slowest runs. Repeated
runs on this machine moved each one-user p50 by up to a second, and the floor with it, so the
ratio to the floor is the least stable figure here; the concurrent rounds of one hub differ by a
few seconds from round to round.
"""


def write_doc(path: Path, res: dict) -> None:
    block = results_block(res)
    if path.exists() and RESULTS_START in path.read_text() and RESULTS_END in path.read_text():
        text = path.read_text()
        head, rest = text.split(RESULTS_START, 1)
        _, tail = rest.split(RESULTS_END, 1)
        path.write_text(head + block + tail)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DOC_HEAD + "\n" + block + "\n" + DOC_TAIL)
    log(f"wrote {path}")


# --- the run ------------------------------------------------------------------------------------


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


class Bench:
    def __init__(self, args):
        self.args = args
        self.env = Path(args.singleuser_env)
        self.users = [f"{USER_PREFIX}{i:02d}" for i in range(1, args.users + 1)]
        self.root = Path(tempfile.mkdtemp(prefix="campushub-bench-"))
        self.root.chmod(0o755)  # users' Slurm commands read the cluster's config and munge socket below it
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.cluster: SlurmCluster | None = None
        self.hubs: dict[str, RunningHub] = {}
        self.tokens: dict[str, dict[str, str]] = {}
        self.res: dict = {b: {"sequential": [], "concurrent": []} for b in ("campushub", "stock", "floor")}
        self.floor_env: dict | None = None
        self.floor_token: str | None = None
        self.created_users: list[str] = []
        self.load_before = load_average()
        self.rounds_done = args.concurrent_rounds
        self.slurm_version = "?"

    def check_time(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise BenchError(f"out of time (--max-minutes {self.args.max_minutes}) before {what}")

    # set up

    def setup(self) -> None:
        for tool in ("slurmctld", "slurmd", "sudo", "runuser"):
            if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
                raise BenchError(f"{tool} is not installed (make test-system-packages)")
        for tool in ("jupyterhub-singleuser", "campushub-singleuser", "batchspawner-singleuser"):
            if not (self.env / "bin" / tool).exists():
                raise BenchError(f"{self.env}/bin/{tool} is missing (make bench installs it)")
        if not CHP.exists():
            raise BenchError(f"{CHP} is missing (make install)")
        n = len(self.users)
        log(f"work folder {self.root}; starting a Slurm cluster for {n} one-CPU 1G jobs")
        self.cluster = SlurmCluster(self.root / "slurm", cpus=max(8, n + 4), memory_mb=max(16000, 1100 * (n + 4)))
        os.environ["SLURM_CONF"] = str(self.cluster.conf)
        self.cluster.start()
        version = self.cluster.cmd("sinfo", "--version", check=False).stdout.split()
        self.slurm_version = version[-1] if version else "?"
        log(f"creating users {self.users[0]} .. {self.users[-1]}")
        self.created_users = list(self.users)
        create_users(self.users)
        log("starting CampusHub (campushub proxy + campushub hub)")
        site = {
            "spawner": {
                "backend": "slurm",
                "slurm": {
                    "partition": "gpu",
                    "memory": "1G",
                    "walltime": "01:00:00",
                    "python_env": str(self.env),
                    **({"poll_interval": self.args.campushub_poll_interval} if self.args.campushub_poll_interval else {}),
                },
            }
        }
        self.hubs["campushub"] = RunningHub(self.root / "campushub", site).start()
        log("starting stock JupyterHub + batchspawner (its own proxy)")
        self.hubs["stock"] = StockHub(self.root / "stock", self.env).start()
        log(f"logging {n} users in on both hubs")
        for backend, hub in self.hubs.items():
            self.tokens[backend] = {u: hub.token(u) for u in self.users}

    # phases

    def warm_up(self) -> None:
        user = self.users[0]
        for backend, hub in self.hubs.items():
            self.check_time("the warm-up")
            token = self.tokens[backend][user]
            s = spawn_to_ready(hub, user, token, self.args.spawn_timeout)
            log(f"warm-up {backend}: {s['seconds']:.2f} s")
            if backend == "campushub":
                job = job_id_of(self.cluster, user)
                self.floor_env = floor_env_from(self.cluster, job, user, self.env)
            stop_server(hub, self.cluster, user, token)
        self.floor_token = self.tokens["campushub"][user]
        s = floor_once(self.floor_env, user, self.env, self.floor_token, self.root / "floor-0.log")
        log(f"warm-up floor: {s['seconds']:.2f} s")

    def sequential(self) -> None:
        user = self.users[0]
        orders = list(itertools.permutations(("campushub", "stock", "floor")))
        for i in range(self.args.runs):
            for backend in orders[i % len(orders)]:
                self.check_time(f"sequential run {i + 1}")
                if backend == "floor":
                    try:
                        s = floor_once(self.floor_env, user, self.env, self.floor_token, self.root / f"floor-{i + 1}.log")
                    except BenchError as e:
                        s = {"error": str(e)}
                    self.res["floor"]["sequential"].append(s)
                    log(f"sequential {i + 1}/{self.args.runs} floor: {fmt(s.get('seconds'))} s")
                    continue
                hub, token = self.hubs[backend], self.tokens[backend][user]
                try:
                    s = spawn_to_ready(hub, user, token, self.args.spawn_timeout)
                    s["job"] = job_id_of(self.cluster, user)
                    # the CPU time the job's processes (the server) used until ready
                    s["cpu"] = sum(cpu_seconds(pid) for pid in self.cluster.job_pids(s["job"])) if s["job"] else None
                except (BenchError, requests.RequestException) as e:
                    s = {"error": str(e)}
                log(f"sequential {i + 1}/{self.args.runs} {backend}: {fmt(s.get('seconds'))} s"
                    + (f" ({s['error']})" if "error" in s else ""))  # fmt: skip
                stop_server(hub, self.cluster, user, token)
                if "seconds" in s:
                    s["milestones"] = milestones(
                        s, backend, user, hub.workdir / "hub.log", self.cluster,
                        job_log_path(backend, user, s.get("job")),
                    )  # fmt: skip
                self.res[backend]["sequential"].append(s)

    def concurrent(self) -> None:
        rounds = self.args.concurrent_rounds
        order = []  # A B, B A, A B, ...
        for r in range(rounds):
            order += ["campushub", "stock"] if r % 2 == 0 else ["stock", "campushub"]
        for rnd, backend in enumerate(order):
            if time.monotonic() > self.deadline and rnd >= 2 and rnd % 2 == 0:
                log(f"out of time (--max-minutes {self.args.max_minutes}): skipping the remaining concurrent rounds")
                self.rounds_done = rnd // 2
                break
            if rnd < 2:
                self.check_time(f"the concurrent round of {backend}")
            hub, tokens = self.hubs[backend], self.tokens[backend]
            samples: dict[str, dict] = {}
            barrier = threading.Barrier(len(self.users))

            def one(user):
                barrier.wait()
                try:
                    samples[user] = spawn_to_ready(hub, user, tokens[user], self.args.spawn_timeout)
                except (BenchError, requests.RequestException) as e:
                    samples[user] = {"error": str(e)}

            threads = [threading.Thread(target=one, args=(u,)) for u in self.users]
            ctld = next(d.pid for d in self.cluster.daemons if "slurmctld" in d.args[0])
            cpu0 = cpu_seconds(hub.hub.pid, children=True), cpu_seconds(ctld), time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # what the hub (with its sudo / Slurm commands) and slurmctld spent while the servers started
            self.res[backend].setdefault("rounds", []).append({
                "round": rnd,
                "hub_cpu": cpu_seconds(hub.hub.pid, children=True) - cpu0[0],
                "slurmctld_cpu": cpu_seconds(ctld) - cpu0[1],
                "seconds": time.monotonic() - cpu0[2],
            })  # fmt: skip
            ok = [s["seconds"] for s in samples.values() if "seconds" in s]
            errors = [s["error"] for s in samples.values() if "error" in s]
            log(f"concurrent {backend}: {len(ok)}/{len(self.users)} ready; "
                f"p50 {fmt(pct(ok, 50) if ok else None)} s, max {fmt(max(ok) if ok else None)} s"
                + (f"; first error: {errors[0]}" if errors else ""))  # fmt: skip
            for s in samples.values():
                s["round"] = rnd
                self.res[backend]["concurrent"].append(s)
            # stop them all at once, and wait until every job is gone
            stoppers = [threading.Thread(target=self._stop_quietly, args=(hub, u, tokens[u])) for u in self.users]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join()
            wait_for(lambda: not self.cluster.jobs(), 120, "every job to end", 0.5)

    def _stop_quietly(self, hub, user, token):
        try:
            stop_server(hub, self.cluster, user, token, timeout=120)
        except Exception as e:  # noqa: BLE001 (reported; the final wait catches what is left)
            log(f"stop of {user} failed: {e}")

    # tear down

    def cleanup(self) -> None:
        log("cleaning up: hubs, proxies, jobs, cluster, users")
        for hub in self.hubs.values():
            try:
                hub.close()
            except Exception as e:  # noqa: BLE001
                log(f"closing a hub: {e}")
        if self.cluster:
            try:
                self.cluster.cancel_all()
            except Exception as e:  # noqa: BLE001 (stop() below still ends the daemons and job steps)
                log(f"cancelling the jobs: {e}")
            try:
                self.cluster.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stopping the cluster: {e}; ending its daemons")
                for proc in self.cluster.daemons:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                subprocess.run(["pkill", "-f", f"slurmstepd.*{self.cluster.root}"], check=False)
        for user in self.created_users:
            remove_user(user)
        os.environ.pop("SLURM_CONF", None)
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            log(f"kept {self.root}")

    def meta(self, started: float) -> dict:
        import batchspawner
        import jupyterhub

        os_name = "Linux"
        try:
            os_name = dict(
                line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
            ).get("PRETTY_NAME", "Linux").strip('"')
        except OSError:
            pass
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "memory_gb": mem,
            "os": os_name,
            "slurm": self.slurm_version,
            "jupyterhub": jupyterhub.__version__,
            "batchspawner": batchspawner.__version__,
            "campushub_poll_interval": self.args.campushub_poll_interval or 1.0,
            "users": len(self.users),
            "runs": self.args.runs,
            "concurrent_rounds": self.rounds_done,
            "duration_s": time.monotonic() - started,
            "load_before": self.load_before,
            "load_after": load_average(),
        }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="sequential spawns per hub, and floor starts (default 10)")
    p.add_argument("--users", type=int, default=20, help="users spawning at once (default 20)")
    p.add_argument("--concurrent-rounds", type=int, default=4,
                   help="concurrent rounds per hub, in the order A B B A ... (default 4)")  # fmt: skip
    p.add_argument("--spawn-timeout", type=float, default=180, help="seconds one spawn may take (default 180)")
    p.add_argument("--max-minutes", type=float, default=20,
                   help="time budget: past it, further concurrent rounds are skipped, and a run still in its "
                   "sequential part gives up and cleans up (default 20)")  # fmt: skip
    p.add_argument("--campushub-poll-interval", type=float, default=None,
                   help="spawner.slurm.poll_interval for CampusHub (default: the site default, 1.0 s)")  # fmt: skip
    p.add_argument("--singleuser-env", default=os.environ.get("CAMPUSHUB_TEST_SINGLEUSER_ENV", "/opt/campushub/test-singleuser"),
                   help="the single-user environment the jobs run (default: $CAMPUSHUB_TEST_SINGLEUSER_ENV "
                   "or /opt/campushub/test-singleuser)")  # fmt: skip
    p.add_argument("--write", metavar="MD", help="write the results into this page (e.g. docs/benchmarks.md)")
    p.add_argument("--json", metavar="FILE", help="also save every sample as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs) for inspection")
    p.add_argument("--from-json", metavar="FILE", help="measure nothing: print (and --write) a run saved with --json")
    args = p.parse_args(argv)
    if args.from_json:
        return report(json.loads(Path(args.from_json).read_text()), args)
    if os.geteuid() != 0:
        print("benchmarks/spawn.py must run as root: it starts Slurm daemons and creates unix users", file=sys.stderr)
        return 2

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    bench = Bench(args)
    try:
        bench.setup()
        bench.warm_up()
        bench.sequential()
        bench.concurrent()
    except BaseException as e:
        log(f"benchmark failed: {type(e).__name__}: {e}")
        for name, hub in bench.hubs.items():
            try:
                log(f"last lines of the {name} hub's log:\n{hub.log_tail(20)}")
            except OSError:
                pass
        bench.cleanup()
        return 1
    bench.cleanup()
    res = dict(bench.res, meta=bench.meta(started))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return report(res, args)


def report(res: dict, args) -> int:
    print()
    print(results_table(res))
    print()
    print("\n".join(verdicts(res)))
    print("\n".join(cpu_lines(res)))
    print()
    print(phase_table(res))
    if args.write:
        write_doc(Path(args.write), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
