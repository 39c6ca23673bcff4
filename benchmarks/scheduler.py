"""Scheduler benchmark: the per-run overhead of the nightly-notebooks service against a bare papermill
run of the same notebook, and 100 runs falling due in the same minute under the concurrency limits.

It drives campushub.scheduler's Scheduler in-process, with the demo's local executor (runs are
processes of the current account, homes in a throwaway state folder) and no hub: it needs only
`make install`, no root and no Slurm. What is measured and how: docs/benchmarks.md.

Run from the repository root, with the hub's environment:
    .venv/bin/python -m benchmarks.scheduler [--runs N] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import nbformat
from sqlalchemy import func, select

from campushub.scheduler.executors import executor_for
from campushub.scheduler.models import ACTIVE_STATES, END_STATES, Run, Schedule, utcnow
from campushub.scheduler.service import Scheduler
from campushub.scheduler.store import open_store
from campushub.site import SchedulerSettings, parse_site
from tests.cluster.lock import machine_lock

from . import scheduler_report as results
from .report import fmt, machine

NOTEBOOK = "bench"  # template:bench, the one notebook of every run
POLL = 0.02  # seconds between looks at a run's record
SAMPLE = 0.2  # seconds between samples of the store in the burst
DEFAULT_INTERVAL = SchedulerSettings.model_fields["check_interval"].default


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def write_notebook(folder: Path) -> Path:
    """A parameters cell and one cell doing a little work (a fraction of a second)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("n = 1_000_000  # how many squares to sum", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("total = sum(i * i for i in range(n))\nprint(f'sum of {n} squares: {total}')"),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{NOTEBOOK}.ipynb"
    nbformat.write(nb, path)
    return path


class Service:
    """A Scheduler on a store and state folder of its own, its loop running as a task."""

    def __init__(self, root: Path, templates: Path, scheduler: dict):
        root.mkdir(parents=True)
        settings = {"templates_dir": str(templates)} | scheduler
        site = parse_site({"hub": {"state_dir": str(root / "state")}, "scheduler": settings})
        self.s = Scheduler(
            site, open_store(f"sqlite:///{root}/scheduler.sqlite"), executor_for(site), None, root / "html",
            lambda i: f"http://127.0.0.1/services/scheduler/runs/{i}",
        )  # fmt: skip
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.s.run_forever())

    async def stop(self) -> None:
        for task in [self.task, *self.s.watchers]:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def add(self, owner: str, **fields) -> int:
        schedule = await self.s.add(owner, {"notebook": f"template:{NOTEBOOK}", **fields})
        return schedule["id"]

    async def pause(self, schedule_id: int) -> None:
        with self.s.session() as db:
            await self.s.update(db, db.get(Schedule, schedule_id), {"paused": True})

    def run_record(self, run_id: int) -> Run:
        with self.s.session() as db:
            return db.get(Run, run_id)

    async def cancel_active(self) -> None:
        with self.s.session() as db:
            for run in db.scalars(select(Run).where(Run.state.in_(ACTIVE_STATES + ("pending",)))).all():
                await self.s.cancel(db, run)


# --- overhead: one notebook, bare and through the service ---------------------------------------


async def papermill_once(notebook: Path, folder: Path) -> dict:
    """Bare papermill, as a user runs it by hand (the job's flags, its output into a log), start to exit."""
    folder.mkdir(parents=True)
    papermill = Path(sys.executable).parent / "papermill"
    argv = [papermill, "--no-progress-bar", "--log-output", "--cwd", folder, notebook, folder / "output.ipynb"]
    with open(folder / "job.log", "wb") as out:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*map(str, argv), stdout=out, stderr=out)
        code = await proc.wait()
        seconds = time.perf_counter() - started
    return {"seconds": seconds} if code == 0 else {"error": f"papermill exited with {code}: see {folder}/job.log"}


async def service_once(service: Service, schedule_id: int, timeout: float) -> dict:
    """From the API's run-now until the run's record is final; where the time went, from the record."""
    s = service.s
    started, wall = time.perf_counter(), time.time()
    with s.session() as db:
        run_id = s.run_now(db, db.get(Schedule, schedule_id))["id"]
    while (run := service.run_record(run_id)).state not in END_STATES:
        if time.perf_counter() - started > timeout:
            await service.cancel_active()
            return {"error": f"run {run_id} not ended after {timeout:.0f} s ({run.state})"}
        await asyncio.sleep(POLL)
    seconds, seen = time.perf_counter() - started, time.time()
    if run.state != "succeeded":
        return {"error": f"run {run_id} {run.state}: {run.detail}"}
    exited = Path(run.folder, "exit_code").stat().st_mtime  # the job writes it as papermill exits
    submitted, finished = run.submitted.timestamp(), run.finished.timestamp()
    phases = {
        "submit": submitted - wall,
        "job": exited - submitted,
        "finish": finished - exited,
        "seen": seen - finished,
    }
    return {"seconds": seconds, "phases": phases}


async def measure_overhead(args, root: Path, templates: Path) -> dict:
    notebook = templates / f"{NOTEBOOK}.ipynb"
    services: dict[str, Service] = {}
    schedules: dict[str, int] = {}
    for interval in args.intervals:
        name = f"service-{interval:g}s"
        services[name] = Service(root / name, templates, {"check_interval": interval})
        # the schedule itself never falls due here: its runs are the API's run-now
        schedules[name] = await services[name].add("ada", cron="0 2 * * *")
        await services[name].pause(schedules[name])
        services[name].start()
    variants = ["papermill", *services]
    samples: dict[str, list[dict]] = {v: [] for v in variants}
    count = itertools.count()

    async def once(variant: str) -> dict:
        if variant == "papermill":
            return await papermill_once(notebook, root / "papermill" / str(next(count)))
        return await service_once(services[variant], schedules[variant], args.run_timeout)

    try:
        for variant in variants:
            s = await once(variant)
            log(f"warm-up {variant}: {fmt(s.get('seconds'))} s {s.get('error', '')}")
        orders = list(itertools.permutations(variants))
        for i in range(args.runs):
            for variant in orders[i % len(orders)]:
                s = await once(variant)
                samples[variant].append(s)
                log(f"{i + 1}/{args.runs} {variant}: {fmt(s.get('seconds'))} s {s.get('error', '')}")
    finally:
        for service in services.values():
            await service.stop()
    return samples


# --- burst: many runs due in the same minute -----------------------------------------------------


class Sampler(threading.Thread):
    """Counts the active runs in the store every SAMPLE seconds, from a thread of its own."""

    def __init__(self, service: Service):
        super().__init__(daemon=True)
        self.sessions = service.s.sessions
        self.samples: list[dict] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with self.sessions() as db:
                active = db.execute(select(Run.owner, Run.schedule_id).where(Run.state.in_(ACTIVE_STATES))).all()
            self.samples.append(results.active_counts([tuple(a) for a in active]) | {"t": time.time()})
            self.done.wait(SAMPLE)


async def burst(args, root: Path, templates: Path) -> dict:
    limits = {"total": args.max_active, "per_owner": args.max_per_user, "per_schedule": 1}
    service = Service(
        root / "burst", templates,
        {"check_interval": args.burst_interval, "max_active_runs": limits["total"],
         "max_active_runs_per_user": limits["per_owner"]},
    )  # fmt: skip
    s = service.s
    owners = [f"owner-{i:02d}" for i in range(args.owners)]
    # each owner's schedules one after the other, as the service takes due runs in the order made: the first
    # owner's runs come first and meet the per-owner limit, and the next owners' fill the free slots
    ids = [
        await service.add(owners[i * len(owners) // args.schedules], name=f"burst-{i:03d}", cron="* * * * *",
                          max_concurrent=1)
        for i in range(args.schedules)
    ]  # fmt: skip
    # the boundary: a minute that has begun, with at least 20 s of it left to make the runs and pause
    if utcnow().second >= 40:
        await asyncio.sleep(61 - utcnow().second)
    due = utcnow().replace(second=0, microsecond=0)
    with s.session() as db:
        for schedule in db.scalars(select(Schedule)):
            schedule.next_due = due
        db.commit()
    log(f"burst: {len(ids)} schedules of {len(owners)} owners due at {due:%H:%M}; limits {limits}")
    sampler = Sampler(service)
    sampler.start()
    started = time.time()
    service.start()
    made = paused = None
    try:
        while True:
            with s.session() as db:
                runs = db.scalar(select(func.count()).select_from(Run))
                ended = db.scalar(select(func.count()).select_from(Run).where(Run.state.in_(END_STATES)))
            if made is None and runs >= len(ids):
                made = time.time() - started
                for i in ids:  # the next minute adds no runs; those made go on
                    await service.pause(i)
                paused = time.time() - started
                log(f"burst: {runs} runs made after {made:.2f} s; schedules paused")
            if made is not None and ended >= runs:
                break
            if time.time() - started > args.burst_timeout:
                log(f"burst: out of time after {args.burst_timeout:.0f} s, {ended}/{runs} ended: cancelling the rest")
                await service.cancel_active()
                break
            await asyncio.sleep(SAMPLE)
    finally:
        sampler.done.set()
        sampler.join()
        await service.stop()
    with s.session() as db:
        records = db.scalars(select(Run).order_by(Run.id)).all()
    epoch = lambda when: when.timestamp() if when else None  # noqa: E731
    runs = [
        {"id": r.id, "schedule_id": r.schedule_id, "owner": r.owner, "state": r.state, "trigger": r.trigger,
         "due": r.due.isoformat(), "submitted": epoch(r.submitted), "finished": epoch(r.finished)}
        for r in records
    ]  # fmt: skip
    last = max((r["finished"] for r in runs if r["finished"]), default=None)
    return {
        "limits": limits, "owners": len(owners), "schedule_ids": ids, "due": due.isoformat(),
        "check_interval": args.burst_interval, "cpus": os.cpu_count(), "samples": sampler.samples, "runs": runs,
        "made_s": made, "paused_s": paused, "seconds": last - started if last else None,
        "next_minute_s": (due + timedelta(minutes=1)).timestamp() - started - (paused or 0),
    }  # fmt: skip


# --- the run ---------------------------------------------------------------------------------------


def meta(args, started: float, load_before: str) -> dict:
    from importlib.metadata import version

    packages = ("papermill", "nbclient", "ipykernel", "nbconvert", "sqlalchemy", "campushub")
    return {
        **machine(),
        **{p: version(p) for p in packages},
        "runs": args.runs,
        "default_check_interval": DEFAULT_INTERVAL,
        "duration_s": time.monotonic() - started,
        "load_before": load_before,
        "load_after": load_average(),
    }


async def measure(args) -> dict:
    started, load_before = time.monotonic(), load_average()
    root = Path(tempfile.mkdtemp(prefix="campushub-bench-scheduler-"))
    try:
        templates = root / "templates"
        write_notebook(templates)
        log(f"work folder {root}; overhead: {args.runs} runs each of papermill and the service at {args.intervals} s")
        res = {"overhead": await measure_overhead(args, root, templates)}
        res["burst"] = await burst(args, root, templates)
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return res | {"meta": meta(args, started, load_before)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scheduler", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="runs of each way, for the overhead (default 20)")
    p.add_argument("--intervals", type=float, nargs="+", default=[DEFAULT_INTERVAL, 1.0],
                   help=f"the service's check_interval values to measure (default {DEFAULT_INTERVAL:g} 1)")  # fmt: skip
    p.add_argument("--schedules", type=int, default=100, help="schedules due in the same minute (default 100)")
    p.add_argument("--owners", type=int, default=10, help="owners the burst's schedules spread over (default 10)")
    p.add_argument("--max-active", type=int, default=6, help="scheduler.max_active_runs in the burst (default 6)")
    p.add_argument("--max-per-user", type=int, default=2,
                   help="scheduler.max_active_runs_per_user in the burst (default 2)")  # fmt: skip
    p.add_argument("--burst-interval", type=float, default=DEFAULT_INTERVAL,
                   help=f"the burst's check_interval (default {DEFAULT_INTERVAL:g}, the site's default)")  # fmt: skip
    p.add_argument("--run-timeout", type=float, default=120, help="seconds one measured run may take (default 120)")
    p.add_argument("--burst-timeout", type=float, default=900, help="seconds the burst may take (default 900)")
    p.add_argument("--write", metavar="MD", help="write the results into this page (e.g. docs/benchmarks.md)")
    p.add_argument("--json", metavar="FILE", help="also save every sample as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (run folders, logs, stores)")
    p.add_argument("--from-json", metavar="FILE", help="measure nothing: print (and --write) a run saved with --json")
    args = p.parse_args(argv)
    if args.runs < 1 or args.schedules < 1 or args.owners < 1:
        p.error("--runs, --schedules and --owners take 1 or more")
    problem = results.page_problem(Path(args.write)) if args.write else None
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
    else:
        with contextlib.ExitStack() as stack:
            try:  # another test run or benchmark on this machine would be measured too
                stack.enter_context(machine_lock(say=log))
            except PermissionError as e:
                log(f"not holding the machine's test lock ({e}): measuring anyway")
            res = asyncio.run(measure(args))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
    print(results.console(res))
    if args.write:
        results.write_doc(Path(args.write), res)
        log(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
