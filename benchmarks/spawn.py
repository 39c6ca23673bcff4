"""Spawn-to-ready benchmark: CampusHub's Slurm spawner, stock batchspawner 1.3.0, and the floor.

The run: a throwaway Slurm cluster, real users, both hubs side by side; sequential spawns of one
user and rounds of many users at once; then the report. What is measured and how, and how to read
the figures: docs/benchmarks.md.

Run as root, from the repository root, with the hub's environment:
    .venv/bin/python -m benchmarks.spawn [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from tests.cluster.hub import RunningHub
from tests.cluster.idp import campus_login, close_shared
from tests.cluster.lock import machine_lock
from tests.cluster.slurm import SlurmCluster, wait_for
from tests.cluster.users import create_users, remove_user

from . import report as results
from .measure import (
    BenchError,
    cpu_seconds,
    floor_env_from,
    floor_once,
    job_id_of,
    spawn_to_ready,
    stop_server,
)
from .milestones import job_log_path, milestones
from .report import fmt
from .stats import pct
from .stock import CHP, StockHub

USER_PREFIX = "chb-bench-"
# what the sequential runs take turns between; --startup: only CampusHub's spawn and the two floors
BACKENDS = ("campushub", "stock", "floor", "floor-startup")
STARTUP_BACKENDS = ("campushub", "floor", "floor-startup")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
        self.res: dict = {b: {"sequential": [], "concurrent": []} for b in BACKENDS}
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
        for tool in ("jupyterhub-singleuser", "campushub-singleuser", "batchspawner-singleuser")[
            : 2 if self.args.startup else 3
        ]:
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
        slurm = {"partition": "gpu", "memory": "1G", "walltime": "01:00:00", "python_env": str(self.env)}
        if self.args.campushub_poll_interval:
            slurm["startup_check_interval"] = self.args.campushub_poll_interval
        # users log in through the campus identity provider: the demo's shared password never drives Slurm
        site = {"auth": campus_login(), "spawner": {"backend": "slurm", "slurm": slurm}}
        self.hubs["campushub"] = RunningHub(self.root / "campushub", site).start()
        if not self.args.startup:
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
        for way in ("floor", "floor-startup"):
            s = floor_once(self.floor_env, user, self.env, self.floor_token, self.root / f"{way}-0.log", way=way)
            log(f"warm-up {way}: {s['seconds']:.2f} s")

    def sequential(self) -> None:
        user = self.users[0]
        orders = list(itertools.permutations(STARTUP_BACKENDS if self.args.startup else BACKENDS))
        for i in range(self.args.runs):
            for backend in orders[i % len(orders)]:
                self.check_time(f"sequential run {i + 1}")
                if backend.startswith("floor"):
                    try:
                        s = floor_once(self.floor_env, user, self.env, self.floor_token,
                                       self.root / f"{backend}-{i + 1}.log", way=backend)  # fmt: skip
                    except BenchError as e:
                        s = {"error": str(e)}
                    self.res[backend]["sequential"].append(s)
                    log(f"sequential {i + 1}/{self.args.runs} {backend}: {fmt(s.get('seconds'))} s"
                        f" (CPU {fmt(s.get('cpu'))} s)")  # fmt: skip
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
            threads = [
                threading.Thread(target=self._spawn_one, args=(hub, u, tokens[u], barrier, samples)) for u in self.users
            ]
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

    def _spawn_one(self, hub, user, token, barrier, samples):
        """One user's spawn in a concurrent round, released together with the others by the barrier."""
        barrier.wait()
        try:
            samples[user] = spawn_to_ready(hub, user, token, self.args.spawn_timeout)
        except (BenchError, requests.RequestException) as e:
            samples[user] = {"error": str(e)}

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
        close_shared()
        os.environ.pop("SLURM_CONF", None)
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            log(f"kept {self.root}")

    def meta(self, started: float) -> dict:
        """The run's facts for the report (the stock peer's version only where it ran)."""
        import batchspawner
        import jupyterhub

        return {
            **results.machine(),
            "slurm": self.slurm_version,
            "jupyterhub": jupyterhub.__version__,
            "batchspawner": batchspawner.__version__,
            "startup_only": bool(self.args.startup),
            "campushub_poll_interval": self.args.campushub_poll_interval or 1.0,
            "users": len(self.users),
            "runs": self.args.runs,
            "concurrent_rounds": self.rounds_done,
            "duration_s": time.monotonic() - started,
            "load_before": self.load_before,
            "load_after": load_average(),
        }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spawn", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="sequential spawns per hub, and floor starts (default 10)")
    p.add_argument("--users", type=int, default=20, help="users spawning at once (default 20)")
    p.add_argument("--concurrent-rounds", type=int, default=4,
                   help="concurrent rounds per hub, in the order A B B A ... (default 4)")  # fmt: skip
    p.add_argument("--spawn-timeout", type=float, default=180, help="seconds one spawn may take (default 180)")
    p.add_argument("--max-minutes", type=float, default=20,
                   help="time budget: past it, further concurrent rounds are skipped, and a run still in its "
                   "sequential part gives up and cleans up (default 20)")  # fmt: skip
    p.add_argument("--campushub-poll-interval", type=float, default=None,
                   help="spawner.slurm.startup_check_interval for CampusHub (default: the site default, 1.0 s)")  # fmt: skip
    p.add_argument("--singleuser-env", default=os.environ.get("CAMPUSHUB_TEST_SINGLEUSER_ENV", "/opt/campushub/test-singleuser"),
                   help="the single-user environment the jobs run (default: $CAMPUSHUB_TEST_SINGLEUSER_ENV "
                   "or /opt/campushub/test-singleuser)")  # fmt: skip
    p.add_argument("--startup", action="store_true",
                   help="only the server's start, in a few minutes: CampusHub's one-user spawn, the bare "
                   "jupyterhub-singleuser as it is and as CampusHub starts it, taking turns (no stock hub, no "
                   "concurrent rounds); --write puts it in the page's startup section")  # fmt: skip
    p.add_argument("--write", metavar="MD", help="write the results into this page (e.g. docs/benchmarks.md)")
    p.add_argument("--json", metavar="FILE", help="also save every sample as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs) for inspection")
    p.add_argument("--from-json", metavar="FILE", help="measure nothing: print (and --write) a run saved with --json")
    args = p.parse_args(argv)
    problem = results.page_problem(Path(args.write)) if args.write and not args.startup else None
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.from_json:
        return report(json.loads(Path(args.from_json).read_text()), args)
    if args.startup:
        args.users = 1  # one user's spawns: no concurrent rounds
    if os.geteuid() != 0:
        print("the benchmark must run as root: it starts Slurm daemons and creates unix users", file=sys.stderr)
        return 2

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    with machine_lock(say=log):
        return run(args)


def run(args) -> int:
    """Measure, clean up, report; 1 if the run failed (after cleaning up)."""
    started = time.monotonic()
    bench = Bench(args)
    try:
        bench.setup()
        bench.warm_up()
        bench.sequential()
        if not args.startup:
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
    if res["meta"].get("startup_only"):
        results.publish(res, results.startup_block(res), args, results.STARTUP_SECTION, log)
        return 0
    print(results.console(res))
    if args.write:
        results.write_doc(Path(args.write), res)
        log(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
