"""The measurements: one spawn timed until the hub says ready, one bare server timed until its port
answers (the floor), and the CPU time processes used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.cluster.hub import RunningHub, environ_of
from tests.cluster.slurm import SlurmCluster, free_port, wait_for

from .milestones import JH_TIME, first_at, timed_lines


class BenchError(RuntimeError):
    """A measurement or a step of the run that failed, with a message for a person."""


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


# the floor's two ways to start the server: as it is, and as CampusHub's jobs start it (without the port report)
FLOOR_COMMANDS = {
    "floor": ["bin/jupyterhub-singleuser"],
    "floor-startup": ["bin/python", "-m", "campushub_lab.startup"],
}


def floor_once(
    env: dict, user: str, singleuser_env: Path, token: str, log_file: Path, timeout: float = 60, way: str = "floor"
) -> dict:
    """Start the server as the user on a free port (FLOOR_COMMANDS[way]); time until its HTTP port answers."""
    port = free_port()
    prefix = env["JUPYTERHUB_SERVICE_PREFIX"]
    run_env = dict(env, JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}{prefix}", JUPYTERHUB_API_TOKEN=token)
    argv = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in run_env.items()),
            f"{singleuser_env}/{FLOOR_COMMANDS[way][0]}", *FLOOR_COMMANDS[way][1:]]  # fmt: skip
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
        # runuser -> (env execs) the server: the server's CPU time until it answered
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
