"""The scheduler's loop with real runs: papermill in local processes (the demo's executor, as this account).

Due times are driven by calling `tick(now)` with a chosen time; every run executes for real.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import pytest
from sqlalchemy import select

from campushub.scheduler.executors import executor_for
from campushub.scheduler.models import END_STATES, Run, Schedule, utcnow
from campushub.scheduler.service import Scheduler
from campushub.scheduler.store import open_store
from campushub.site import parse_site


def make_scheduler(tmp_path: Path, **settings) -> Scheduler:
    site = parse_site({"hub": {"state_dir": str(tmp_path / "state")}, "scheduler": settings})
    store = open_store(f"sqlite:///{tmp_path / 'scheduler.sqlite'}")
    return Scheduler(site, store, executor_for(site), None, tmp_path / "html", lambda i: f"http://hub/runs/{i}")


def notebook(home: Path, name: str, *sources: str, parameters: str = "") -> str:
    cells = [nbformat.v4.new_code_cell(src) for src in sources]
    if parameters:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        cells.insert(0, cell)
    home.mkdir(parents=True, exist_ok=True)
    (home / name).write_text(nbformat.writes(nbformat.v4.new_notebook(cells=cells)))
    return name


def home(s: Scheduler, owner: str = "ada") -> Path:
    return Path(s.executor.home(owner))


async def add(s: Scheduler, owner="ada", **body) -> int:
    made = await s.add(owner, {"cron": "0 2 * * *", **body})
    return made["id"]


def run_now(s: Scheduler, schedule_id: int) -> int:
    with s.session() as db:
        return s.run_now(db, db.get(Schedule, schedule_id))["id"]


def runs(s: Scheduler, schedule_id: int) -> list[Run]:
    with s.session() as db:
        return db.scalars(select(Run).where(Run.schedule_id == schedule_id).order_by(Run.id)).all()


def run(s: Scheduler, run_id: int) -> Run:
    with s.session() as db:
        return db.get(Run, run_id)


async def until_ended(s: Scheduler, run_id: int, timeout: float = 60) -> Run:
    deadline = time.monotonic() + timeout
    while (r := run(s, run_id)).state not in END_STATES:
        assert time.monotonic() < deadline, f"run {run_id} still {r.state}: {r.detail}"
        await s.tick()
        await asyncio.sleep(0.2)
    return r


async def until_running(s: Scheduler, run_id: int, timeout: float = 30) -> Run:
    deadline = time.monotonic() + timeout
    while (r := run(s, run_id)).state != "running":
        assert time.monotonic() < deadline and r.state not in END_STATES, f"run {run_id}: {r.state} {r.detail}"
        await s.tick()
        await asyncio.sleep(0.2)
    return r


async def test_a_run_executes_the_template_with_its_parameters_and_keeps_its_output(tmp_path):
    s = make_scheduler(tmp_path)
    schedule_id = await add(s, notebook="template:train-classifier", parameters={"epochs": 2, "seed": 7})
    r = await until_ended(s, run_now(s, schedule_id))
    assert r.state == "succeeded", r.detail
    assert r.exit_code == 0 and r.trigger == "manual" and r.started and r.finished
    folder = Path(r.folder)
    assert folder == home(s) / "campushub-runs" / str(schedule_id) / str(r.id)
    results = json.loads((folder / "results.json").read_text())
    assert results["parameters"]["epochs"] == 2 and len(results["history"]) == 2
    assert (folder / "output.ipynb").exists() and "Executing Cell" in (folder / "job.log").read_text()
    html = (tmp_path / "html" / f"{r.id}.html").read_text()
    assert r.has_html and "test_accuracy" in html


async def test_a_failing_notebook_fails_with_the_error_and_keeps_the_marked_output(tmp_path):
    s = make_scheduler(tmp_path)
    name = notebook(
        home(s), "etl.ipynb", "rows = 3", "raise ValueError(f'bad column x in {rows} rows')", "print('after')"
    )
    r = await until_ended(s, run_now(s, await add(s, notebook=name)))
    assert r.state == "failed"
    assert r.detail == "ValueError: bad column x in 3 rows (code cell 2)"
    assert r.exit_code not in (None, 0)
    output = nbformat.read(Path(r.folder) / "output.ipynb", as_version=4)
    failing = [c for c in output.cells if c.metadata.get("papermill", {}).get("exception")]
    assert len(failing) == 1 and "ValueError" in json.dumps(failing[0].outputs)
    assert r.has_html


async def test_a_run_over_its_timeout_is_cancelled_and_marked_timed_out(tmp_path):
    s = make_scheduler(tmp_path)
    name = notebook(home(s), "slow.ipynb", "import time\ntime.sleep(300)")
    r = await until_running(s, run_now(s, await add(s, notebook=name, timeout=60)))
    await s.tick(now=r.started + timedelta(seconds=61))
    r = run(s, r.id)
    assert r.state == "timed_out" and "timeout of 60 s" in r.detail
    pid = int(r.job_id)
    for _ in range(50):  # the process group was killed
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"the timed-out run's process {pid} still runs")


async def test_a_failed_run_is_retried_after_its_delay_then_gives_up(tmp_path):
    s = make_scheduler(tmp_path)
    name = notebook(home(s), "flaky.ipynb", "1/0")
    schedule_id = await add(s, notebook=name, retries=1, retry_delay=600)
    first = await until_ended(s, run_now(s, schedule_id))
    assert first.state == "failed" and first.detail.startswith("ZeroDivisionError")
    retry = runs(s, schedule_id)[-1]
    assert (retry.trigger, retry.attempt, retry.state) == ("retry", 2, "pending")
    assert retry.due - first.finished >= timedelta(seconds=599)
    await s.tick()
    assert run(s, retry.id).state == "pending", "a retry waits for its delay"
    await s.tick(now=retry.due + timedelta(seconds=1))
    second = await until_ended(s, retry.id)
    assert second.state == "failed"
    assert [r.attempt for r in runs(s, schedule_id)] == [1, 2], "no third try with retries: 1"


async def test_runs_keep_to_the_schedules_and_the_owners_limits(tmp_path):
    s = make_scheduler(tmp_path, max_active_runs_per_user=2)
    name = notebook(home(s), "short.ipynb", "import time\ntime.sleep(2)")
    one = await add(s, notebook=name, max_concurrent=1)
    two = await add(s, notebook=name, max_concurrent=3)
    ids = [run_now(s, one), run_now(s, one), run_now(s, two), run_now(s, two)]
    seen = []
    deadline = time.monotonic() + 90
    while any(run(s, i).state not in END_STATES for i in ids):
        assert time.monotonic() < deadline
        await s.tick()
        states = [run(s, i) for i in ids]
        active = [r for r in states if r.state in ("submitting", "queued", "running")]
        seen.append(len(active))
        assert sum(r.schedule_id == one for r in active) <= 1
        assert len(active) <= 2
        await asyncio.sleep(0.2)
    assert max(seen) == 2, "the limit is used, not only kept"
    assert all(run(s, i).state == "succeeded" for i in ids)
    waiting = [run(s, i).detail for i in ids]
    assert all(d == "" for d in waiting)


async def test_a_waiting_run_says_which_limit_holds_it(tmp_path):
    s = make_scheduler(tmp_path)
    name = notebook(home(s), "short.ipynb", "import time\ntime.sleep(3)")
    schedule_id = await add(s, notebook=name)
    first, second = run_now(s, schedule_id), run_now(s, schedule_id)
    await s.tick()
    assert run(s, first).state in ("queued", "running")
    assert run(s, second).state == "pending"
    assert run(s, second).detail == "waiting: the schedule's limit of 1 run(s) at once is reached"
    await until_ended(s, second)


async def test_missed_runs_follow_the_policy(tmp_path):
    s = make_scheduler(tmp_path)
    name = notebook(home(s), "quick.ipynb", "x = 1")
    skip = await add(s, notebook=name, cron="0 * * * *")
    once = await add(s, notebook=name, cron="0 * * * *", missed="run_once")
    down_since = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    with s.session() as db:
        for schedule_id in (skip, once):
            db.get(Schedule, schedule_id).next_due = down_since
        db.commit()
    back = datetime(2026, 11, 23, 12, 5, tzinfo=UTC)  # up again at 12:05: 09:00 to 12:00 were missed
    s.make_due_runs(back)
    assert runs(s, skip) == []
    assert [(r.trigger, r.state, r.due) for r in runs(s, once)] == [("missed", "pending", back)]
    with s.session() as db:
        assert [db.get(Schedule, i).next_due for i in (skip, once)] == [back.replace(hour=13, minute=0)] * 2
    s.make_due_runs(back + timedelta(seconds=1))
    assert runs(s, skip) == [] and len(runs(s, once)) == 1, "missed runs are handled once"
    # the next occurrence, seen in time (within the grace of a minute)
    s.make_due_runs(datetime(2026, 11, 23, 13, 0, 20, tzinfo=UTC))
    assert [(r.trigger, r.due.hour) for r in runs(s, skip)] == [("schedule", 13)]
    assert [r.trigger for r in runs(s, once)] == ["missed", "schedule"]


async def test_a_paused_schedule_makes_no_runs_and_resumes_from_now(tmp_path):
    s = make_scheduler(tmp_path)
    schedule_id = await add(s, notebook="template:run-report", cron="*/5 * * * *")
    with s.session() as db:
        schedule = db.get(Schedule, schedule_id)
        await s.update(db, schedule, {"paused": True})
        schedule.next_due = utcnow() - timedelta(hours=1)
        db.commit()
    s.make_due_runs(utcnow())
    assert runs(s, schedule_id) == []
    with s.session() as db:
        resumed = await s.update(db, db.get(Schedule, schedule_id), {"paused": False})
    assert resumed["paused"] is False and resumed["next_due"] > utcnow().isoformat()
    s.make_due_runs(utcnow())
    assert runs(s, schedule_id) == [], "what fell due while paused is not run"


async def test_a_restart_adopts_runs_in_flight_and_submits_nothing_twice(tmp_path):
    s = make_scheduler(tmp_path)
    name = notebook(home(s), "slow.ipynb", "import time\ntime.sleep(4)\nopen('done', 'w').write('x')")
    schedule_id = await add(s, notebook=name)
    running = await until_running(s, run_now(s, schedule_id))
    # a second run caught between its row and its job (the service died mid-submission)
    with s.session() as db:
        caught = s._new_run(db.get(Schedule, schedule_id), "manual", utcnow())
        caught.state = "submitting"
        db.add(caught)
        db.commit()
        caught_id = caught.id
    # a new service on the same store: another Scheduler, as after a restart
    again = make_scheduler(tmp_path)
    await again.reconcile()
    assert run(again, caught_id).state == "pending", "never submitted: submitted again, once"
    assert run(again, running.id).state == "running"
    first = await until_ended(again, running.id)
    assert first.state == "succeeded" and first.job_id == running.job_id
    second = await until_ended(again, caught_id)
    assert second.state == "succeeded"
    assert len(runs(again, schedule_id)) == 2


async def test_deleting_a_schedule_keeps_its_history(tmp_path):
    s = make_scheduler(tmp_path)
    name = notebook(home(s), "quick.ipynb", "x = 1")
    schedule_id = await add(s, notebook=name)
    done = await until_ended(s, run_now(s, schedule_id))
    waiting = run_now(s, schedule_id)
    with s.session() as db:
        s.delete(db, db.get(Schedule, schedule_id))
    assert run(s, done.id).state == "succeeded"
    assert run(s, waiting).state == "cancelled" and run(s, waiting).detail == "the schedule was deleted"
    with s.session() as db:
        db.get(Schedule, schedule_id).next_due = utcnow() - timedelta(seconds=5)
        db.commit()
    s.make_due_runs(utcnow())
    assert len(runs(s, schedule_id)) == 2


async def test_a_notebook_gone_from_the_home_fails_the_run_with_a_message(tmp_path):
    s = make_scheduler(tmp_path)
    name = notebook(home(s), "gone.ipynb", "x = 1")
    schedule_id = await add(s, notebook=name)
    (home(s) / name).unlink()
    r = await until_ended(s, run_now(s, schedule_id))
    assert r.state == "failed"
    assert r.detail == "notebook: there is no readable notebook 'gone.ipynb' in your home folder"


async def test_definitions_with_bad_parameters_or_missing_notebooks_are_not_stored(tmp_path):
    from campushub.scheduler.definitions import ScheduleError

    s = make_scheduler(tmp_path)
    name = notebook(home(s), "p.ipynb", "print(n)", parameters="n: int = 1")
    for body, message in [
        ({"notebook": name, "parameters": {"m": 1}}, "parameters.m: the notebook has no such parameter"),
        ({"notebook": name, "parameters": {"n": "one"}}, "parameters.n: must be int"),
        ({"notebook": "missing.ipynb"}, "no readable notebook 'missing.ipynb'"),
        ({"notebook": "template:no-such"}, "there is no template 'no-such'"),
        ({"notebook": name, "profile": "gpu"}, "profile: runs on this site are not Slurm jobs"),
        ({"notebook": name, "alerts": {"emails": ["ada@campus.edu"]}}, "this site sends no email"),
    ]:
        with pytest.raises(ScheduleError, match=message):
            await add(s, **body)
    with s.session() as db:
        assert db.scalars(select(Schedule)).all() == []


async def test_a_schedule_is_changed_as_a_whole_or_not_at_all(tmp_path):
    from campushub.scheduler.definitions import ScheduleError

    s = make_scheduler(tmp_path)
    schedule_id = await add(s, notebook="template:train-classifier", parameters={"epochs": 2})
    with s.session() as db:
        changed = await s.update(db, db.get(Schedule, schedule_id), {"cron": "30 4 * * 1", "timezone": "Asia/Tokyo"})
    assert (changed["cron"], changed["timezone"], changed["parameters"]) == ("30 4 * * 1", "Asia/Tokyo", {"epochs": 2})
    assert changed["next_due"].endswith("19:30:00+00:00")  # 04:30 in Tokyo, a Monday
    for body, message in [
        ({"cron": "99 * * * *"}, "cron"),
        ({"parameters": {"epochz": 3}}, "parameters.epochz"),
        ({"paused": "yes"}, "paused: must be true or false"),
        ({"owner": "bob"}, "owner: not a setting"),
        ({}, "must be a JSON object"),
    ]:
        with s.session() as db, pytest.raises(ScheduleError, match=message):
            await s.update(db, db.get(Schedule, schedule_id), body)
    with s.session() as db:
        kept = db.get(Schedule, schedule_id)
        assert (kept.cron, kept.timezone, kept.parameters, kept.owner) == (
            "30 4 * * 1",
            "Asia/Tokyo",
            {"epochs": 2},
            "ada",
        )
