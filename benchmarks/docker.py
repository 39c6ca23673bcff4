"""Docker backend benchmark: spawn to ready through CampusHub's DockerSpawner against the bare `podman run`
of the same image until its port answers, in the same run; then 10 users at once.

It starts root's `podman system service` on a socket of its own (the Docker API; no Docker engine here),
the single-user image of the tests (tests.cluster.images.ensure_image) and a real CampusHub
(`campushub proxy` + `campushub hub`, tests/cluster/hub.py) with `spawner.backend: docker` and the demo's
login. One user's spawn is timed from the REST request to the hub's "ready" (the server answered the
hub's check through its own port), alternating with the peer: `podman run -d` of the same image with the
same runtime options, its own command and the environment the hub gave that server (still running, idle), on a
free port, timed until that port answers HTTP as the hub's check wants. Then
10 users spawn at once; each must get ready. It needs root and takes the machine's test lock.

Run from the repository root:
    sudo make bench-docker [BENCH_ARGS="--write docs/benchmarks.md"]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from campushub import __version__
from tests.cluster.hub import RunningHub
from tests.cluster.images import ensure_image
from tests.cluster.lock import machine_lock
from tests.cluster.podman_service import PodmanService
from tests.cluster.slurm import free_port, wait_for

from .measure import BenchError, spawn_to_ready
from .report import machine, publish

TARGET_RATIO, CROWD = 1.3, 10
USERS = [f"bench-dk{i:02d}" for i in range(CROWD)]
LABEL = "campushub.benchmark=docker"
RESULTS_START = "<!-- docker-results:start (written by benchmarks/docker.py --write; do not edit by hand) -->"
RESULTS_END = "<!-- docker-results:end -->"
SECTION = """
## Docker backend: spawn to ready

`python -m benchmarks.docker` (`sudo make bench-docker`): one user's spawn through CampusHub's Docker
backend (DockerSpawner 14 against root's `podman system service`, the Docker API), timed from the REST
request to the hub's "ready", against the bare `podman run -d` of the same image with the same runtime
options, its own command (`jupyterhub-singleuser`) and the environment the hub gave the server just spawned
(still running, idle: its token holds), on a free port, timed until that port answers, alternating in the
same run. Then 10 users spawn at once. Targets: one user within 1.3x of the bare start; 10 at once with no
failure.

"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def site(engine: PodmanService, image: str) -> dict:
    return {
        "auth": {"admin_users": []},
        "scheduler": {"enabled": False},
        "culling": {"enabled": False},
        "spawner": {
            "backend": "docker",
            "start_timeout": 120,
            "docker": {
                "url": engine.url,
                "images": [image],
                "default_image": image,
                "network": "host",
                "runtime": "runc",
                "ulimits": {"nofile": 1024, "nproc": 1024},
                "pull_policy": "never",
                "home_volume": "campushub-bench-home-{username}",
            },
        },
    }


def hub_environment(engine: PodmanService, user: str) -> dict[str, str]:
    """The JUPYTERHUB_* environment the hub gave the user's running container."""
    (found,) = engine.client().containers(filters={"label": f"campushub.user={user}"})
    env = engine.client().inspect_container(found["Id"])["Config"]["Env"]
    return dict(item.split("=", 1) for item in env if item.startswith("JUPYTERHUB_"))


def bare_start(image: str, env: dict[str, str], timeout: float = 120) -> float:
    """`podman run -d` of the image with its own command and the hub's environment for it, on a free port, with
    the runtime options the backend uses; timed until the port answers as the hub's check wants (below 500)."""
    port = free_port()
    prefix = env["JUPYTERHUB_SERVICE_PREFIX"]
    env = dict(env, JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}{prefix}")
    argv = ["podman", "run", "-d", "--rm", "--label", LABEL, "--network", "host", "--runtime", "runc",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--pull", "never",
            *(f"--env={k}={v}" for k, v in env.items()), image]  # fmt: skip
    t0 = time.monotonic()
    started = subprocess.run(argv, capture_output=True, text=True)
    if started.returncode != 0:
        raise BenchError(f"podman run failed: {started.stderr.strip()[-500:]}")
    container = started.stdout.strip()
    try:
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}{prefix}api", timeout=1).status_code < 500:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"the bare container did not answer within {timeout} s")
            time.sleep(0.02)
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", container], capture_output=True)


def stop(hub: RunningHub, user: str, token: str) -> None:
    r = hub.api("DELETE", f"/users/{user}/server", token)
    if r.status_code not in (202, 204, 400):
        raise BenchError(f"stop of {user}: {r.status_code} {r.text[:300]}")
    wait_for(lambda: hub.server(user, token) is None, 90, f"{user}'s server to stop")


def remove_leftovers(engine: PodmanService) -> None:
    client = engine.client()
    for found in client.containers(all=True, filters={"label": "campushub.user"}):
        if found["Labels"].get("campushub.user", "") in USERS:
            client.remove_container(found["Id"], force=True, v=True)
    subprocess.run(["podman", "rm", "-f", "--filter", f"label={LABEL}"], capture_output=True)
    for volume in (client.volumes() or {}).get("Volumes") or []:
        if volume["Name"].startswith("campushub-bench-home-"):
            client.remove_volume(volume["Name"], force=True)


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="campushub-bench-docker-"))
    engine = PodmanService()
    load_before = os.getloadavg()
    began = time.monotonic()
    try:
        engine.start()
        remove_leftovers(engine)
        image = ensure_image("cpu")
        size = engine.client().inspect_image(image).get("Size", 0)
        hub = RunningHub(work / "hub", site(engine, image)).start()
        try:
            tokens = {user: hub.token(user) for user in USERS}
            one, bare = [], []
            for i in range(args.rounds):
                one.append(spawn_to_ready(hub, USERS[0], tokens[USERS[0]], 120)["seconds"])
                # the bare start while that server still runs (idle), so the hub's token in its environment holds
                bare.append(bare_start(image, hub_environment(engine, USERS[0])))
                stop(hub, USERS[0], tokens[USERS[0]])
                log(f"round {i + 1}: spawn {one[-1]:.2f} s, bare podman run {bare[-1]:.2f} s")
            t0 = time.monotonic()
            with ThreadPoolExecutor(CROWD) as pool:
                outcomes = list(pool.map(lambda u: try_spawn(hub, u, tokens[u]), USERS))
            crowd_s = time.monotonic() - t0
            failures = [o for o in outcomes if isinstance(o, str)]
            answered = sum(hub.user_get(u, "api/status", tokens[u]).status_code == 200 for u in USERS)
            log(f"{CROWD} at once: {len(failures)} failure(s), all ready in {crowd_s:.1f} s, {answered} answer")
            for user in USERS:
                stop(hub, user, tokens[user])
        finally:
            hub.close()
    finally:
        if engine.running():
            remove_leftovers(engine)
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(engine.folder, ignore_errors=True)
    crowd = [o for o in outcomes if not isinstance(o, str)]
    return {
        **machine(),
        "campushub": __version__,
        "podman": subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.split()[-1],
        "image": image,
        "image_mb": size / 1e6,
        "one": one,
        "bare": bare,
        "crowd": crowd,
        "crowd_seconds": crowd_s,
        "failures": failures,
        "answered": answered,
        "load": [load_before, os.getloadavg()],
        "minutes": (time.monotonic() - began) / 60,
    }


def try_spawn(hub: RunningHub, user: str, token: str) -> float | str:
    try:
        return spawn_to_ready(hub, user, token, 180)["seconds"]
    except (BenchError, requests.RequestException) as e:
        return f"{user}: {e}"


def results_block(res: dict) -> str:
    one, bare = statistics.median(res["one"]), statistics.median(res["bare"])
    ratio = one / bare
    load = " / ".join(" ".join(f"{x:.1f}" for x in avg) for avg in res["load"])
    crowd = sorted(res["crowd"])
    lines = [
        RESULTS_START,
        "",
        f"Run of {res['date']} on `{res['host']}`: {res['cpus']} CPU cores; podman {res['podman']} (its API "
        f"service, runtime runc), CampusHub {res['campushub']}; image `{res['image']}` ({res['image_mb']:.0f} MB). "
        f"Load average before / after: {load}. The run took {res['minutes']:.1f} minutes.",
        "",
        "| one user, alternating | runs | median, s | min-max, s |",
        "|---|---:|---:|---:|",
        f"| spawn to ready through the Docker backend | {len(res['one'])} | {one:.2f} | "
        f"{min(res['one']):.2f}-{max(res['one']):.2f} |",
        f"| bare `podman run` until the port answers | {len(res['bare'])} | {bare:.2f} | "
        f"{min(res['bare']):.2f}-{max(res['bare']):.2f} |",
        "",
        f"- One user: **{ratio:.2f}x** the bare start. Target at most {TARGET_RATIO}x: "
        f"**{'met' if ratio <= TARGET_RATIO else 'not met'}**.",
        f"- {CROWD} users at once: **{len(res['failures'])} failure(s)**; "
        + (
            f"each ready in {crowd[0]:.1f}-{crowd[-1]:.1f} s, all within {res['crowd_seconds']:.1f} s; "
            if crowd
            else ""
        )
        + f"{res['answered']} of {CROWD} answered through the proxy. Target no failure: "
        f"**{'met' if not res['failures'] and res['answered'] == CROWD else 'not met'}**.",
    ]
    lines += [f"  - {f}" for f in res["failures"]]
    lines += ["", RESULTS_END]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.docker", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="one-user spawns and bare starts, alternating (default 5)")
    p.add_argument("--write", metavar="MD", help="write the results into this page (e.g. docs/benchmarks.md)")
    p.add_argument("--json", metavar="FILE", help="also save the figures as JSON")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("run it as root: it runs root's podman API service")
    with machine_lock(say=log):
        res = run(args)
    publish(res, results_block(res), args, (RESULTS_START, RESULTS_END, SECTION), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
