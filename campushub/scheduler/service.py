"""The scheduler: definitions in, runs out. The service layer under the REST API, and the loop that makes
due schedules into runs, submits them within the limits, follows their jobs and ends them.

Every run is a row before it is a job: `pending` (waiting for its time, a retry delay or a free slot)
-> `submitting` (committed before sbatch, so a restart finds it) -> `queued` -> `running` -> `succeeded`,
`failed`, `timed_out` or `cancelled`. A restart reconciles the rows with the jobs: a job is adopted,
never submitted twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..profiles import (
    Profile,
    ProfileError,
    SlurmDefaults,
    default_profile,
    granted_profiles,
    resolve_request,
    site_profiles,
    summary,
)
from ..site import Site
from . import alerts
from .definitions import (
    TEMPLATE_NAME,
    TEMPLATE_PREFIX,
    Definition,
    ScheduleError,
    check_parameters,
    find_template,
    inspect_parameters,
    next_due,
    parameterized_notebook,
    parse_definition,
    with_kernel,
)
from .executors import Executor, JobState, LocalExecutor, RunJob
from .models import ACTIVE_STATES, END_STATES, Run, Schedule, utcnow
from .render import error_summary, render_html

log = logging.getLogger("campushub.scheduler")


class HubClient:
    """The hub's REST API, with the service's own token (its role: read users' names and groups, and groups)."""

    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/")
        self.token = token

    async def get(self, path: str) -> Any:
        request = HTTPRequest(f"{self.api_url}{path}", headers={"Authorization": f"token {self.token}"})
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if e.code == 404:
                return None
            raise
        return json.loads(response.body)

    async def user(self, name: str) -> dict | None:
        return await self.get(f"/users/{quote(name, safe='')}")

    async def groups(self, names: list[str]) -> dict[str, dict]:
        found = {}
        for name in names:
            group = await self.get(f"/groups/{quote(name, safe='')}")
            found[name] = (group or {}).get("properties") or {}
        return found


def as_dict(schedule: Schedule) -> dict:
    return {
        "id": schedule.id, "owner": schedule.owner, "name": schedule.name, "notebook": schedule.notebook,
        "parameters": schedule.parameters, "cron": schedule.cron, "timezone": schedule.timezone,
        "profile": schedule.profile, "timeout": schedule.timeout, "retries": schedule.retries,
        "retry_delay": schedule.retry_delay, "max_concurrent": schedule.max_concurrent, "missed": schedule.missed,
        "alerts": {
            "emails": schedule.alert_emails, "webhooks": schedule.alert_webhooks,
            "on_success": schedule.alert_on_success,
        },
        "paused": schedule.paused, "next_due": iso(schedule.next_due if not schedule.paused else None),
        "created": iso(schedule.created),
    }  # fmt: skip


def run_dict(run: Run) -> dict:
    return {
        "id": run.id, "schedule_id": run.schedule_id, "owner": run.owner, "state": run.state,
        "trigger": run.trigger, "attempt": run.attempt, "due": iso(run.due), "parameters": run.parameters,
        "folder": run.folder, "job_id": run.job_id, "node": run.node, "detail": run.detail,
        "note": run.note, "exit_code": run.exit_code, "has_html": run.has_html, "created": iso(run.created),
        "submitted": iso(run.submitted), "started": iso(run.started), "finished": iso(run.finished),
    }  # fmt: skip


def profile_dict(profile: Profile, defaults: SlurmDefaults) -> dict:
    """A profile as a user's Lab shows it: what a job with it gets (the site's defaults filled in)."""
    r, choices = profile.resources, profile.choices
    return {
        "name": profile.slug, "display_name": profile.display_name, "description": profile.description,
        "partition": r.partition or defaults.partition, "cpus": r.cpus or defaults.cpus,
        "memory": r.memory or defaults.memory, "gpus": r.gpus, "gpu_type": r.gpu_type,
        "walltime": r.walltime or defaults.walltime,
        "choices": {
            "gpus": choices.gpus.model_dump() if choices.gpus else None,
            "hours": choices.hours.model_dump() if choices.hours else None,
        },
        "summary": summary(profile, defaults),
    }  # fmt: skip


def iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


class Scheduler:
    def __init__(
        self,
        site: Site,
        sessions: sessionmaker,
        executor: Executor,
        hub: HubClient | None,
        html_dir: Path,
        run_url: Callable[[int], str],
        service_id: str = "",
    ):
        self.site = site
        self.settings = site.scheduler
        self.sessions = sessions
        self.executor = executor
        self.hub = hub
        self.html_dir = Path(html_dir)
        self.run_url = run_url
        self.service_id = service_id
        self.wakeup = asyncio.Event()
        self.watchers: set[asyncio.Task] = set()
        # an occurrence is on time while the service is up: it is seen within a check interval
        self.grace = timedelta(seconds=max(60.0, 3 * self.settings.check_interval))

    # --- definitions (the REST API's service layer) ---------------------------------------------------

    def session(self) -> Session:
        return self.sessions()

    def webhook_check(self, url: str) -> str | None:
        return alerts.webhook_problem(url, self.settings.webhook_allowed_hosts)

    async def notebook_bytes(self, owner: str, notebook: str) -> bytes:
        """The notebook a definition names: a template (the service's file), or read as the owner."""
        if notebook.startswith(TEMPLATE_PREFIX):
            return find_template(notebook.removeprefix(TEMPLATE_PREFIX), self.settings.templates_dir).read_bytes()
        path = str(Path(self.executor.home(owner)) / notebook)
        content = await self.executor.read(owner, path)
        if content is None:
            raise ScheduleError(f"notebook: there is no readable notebook {notebook!r} in your home folder")
        return content

    async def granted(self, owner: str) -> tuple[list, list]:
        """(the site's profiles, those granted to the owner now), from the owner's hub groups."""
        profiles = site_profiles(self.site.profiles)
        if self.hub is None:
            return profiles, profiles
        user = await self.hub.user(owner)
        if user is None:
            raise ScheduleError(f"the hub has no user {owner!r}", status=404)
        groups = await self.hub.groups(list(user.get("groups") or []))
        return profiles, granted_profiles(profiles, admin=bool(user.get("admin")), groups=groups)

    async def profiles(self, owner: str) -> dict:
        """The profiles granted to the owner now, and the one used when none is named (Slurm only: runs
        elsewhere take no profile)."""
        if self.executor.kind != "slurm":
            return {"profiles": [], "default": None}
        _, granted = await self.granted(owner)
        defaults = self.site.spawner.slurm
        return {
            "profiles": [profile_dict(p, defaults) for p in granted],
            "default": default_profile(granted).slug if granted else None,
        }

    def template_notebook(self, name: str, body: Any) -> dict:
        """A template with the given parameters injected, as its copy in a user's home starts (no file
        is written here)."""
        if not TEMPLATE_NAME.fullmatch(name):
            raise ScheduleError(f"there is no template {name[:64]!r}", status=404)
        try:
            path = find_template(name, self.settings.templates_dir)
        except ScheduleError as e:
            raise ScheduleError(str(e).removeprefix("notebook: "), status=404) from None
        if not isinstance(body, dict) or set(body) - {"parameters"}:
            raise ScheduleError('the body must be a JSON object such as {"parameters": {"epochs": 3}}')
        return parameterized_notebook(path.read_bytes(), body.get("parameters", {}))

    async def check(self, owner: str, definition: Definition) -> None:
        """Everything that needs the owner's files and grants."""
        if self.executor.kind == "slurm":
            profiles, granted = await self.granted(owner)
            options = {"profile": definition.profile} if definition.profile else {}
            try:
                resolve_request(options, profiles=profiles, granted=granted, defaults=self.site.spawner.slurm)
            except ProfileError as e:
                raise ScheduleError(str(e)) from None
        elif definition.profile:
            raise ScheduleError("profile: runs on this site are not Slurm jobs: leave profile unset")
        declared = inspect_parameters(await self.notebook_bytes(owner, definition.notebook))
        check_parameters(definition.parameters, declared)

    def parse(self, body: Any) -> Definition:
        return parse_definition(body, max_timeout=self.settings.max_timeout, webhook_check=self.webhook_check)

    def _fill(self, schedule: Schedule, definition: Definition) -> None:
        if definition.alerts.emails and self.settings.smtp is None:
            raise ScheduleError("alerts.emails: this site sends no email (scheduler.smtp is not set)")
        schedule.name = definition.display_name
        schedule.notebook = definition.notebook
        schedule.parameters = definition.parameters
        schedule.cron = definition.cron
        schedule.timezone = definition.timezone
        schedule.profile = definition.profile
        schedule.timeout = definition.timeout
        schedule.retries = definition.retries
        schedule.retry_delay = definition.retry_delay
        schedule.max_concurrent = definition.max_concurrent
        schedule.missed = definition.missed
        schedule.alert_emails = definition.alerts.emails
        schedule.alert_webhooks = definition.alerts.webhooks
        schedule.alert_on_success = definition.alerts.on_success
        schedule.next_due = next_due(definition.cron, definition.timezone, utcnow())

    async def add(self, owner: str, body: Any) -> dict:
        definition = self.parse(body)
        await self.check(owner, definition)
        schedule = Schedule(owner=owner)
        self._fill(schedule, definition)
        with self.session() as db:
            db.add(schedule)
            db.commit()
            log.info("Schedule %d of %s added: %s at %r %s", schedule.id, owner, schedule.notebook, schedule.cron,
                     schedule.timezone)  # fmt: skip
            return as_dict(schedule)

    async def update(self, db: Session, schedule: Schedule, body: Any) -> dict:
        """PATCH: `paused`, or any fields of the definition (the result is checked as a whole)."""
        if not isinstance(body, dict) or not body:
            raise ScheduleError('the body must be a JSON object such as {"paused": true}')
        paused = body.get("paused")
        if "paused" in body and not isinstance(paused, bool):
            raise ScheduleError("paused: must be true or false")
        fields = {k: v for k, v in body.items() if k != "paused"}
        if fields:
            current = as_dict(schedule)
            merged = {k: current[k] for k in Definition.model_fields if k != "name"} | {"name": schedule.name}
            definition = self.parse(merged | fields)
            await self.check(schedule.owner, definition)
            self._fill(schedule, definition)
        if paused is not None and paused != schedule.paused:
            schedule.paused = paused
            if not paused:  # resumed: from now on, nothing missed while paused
                schedule.next_due = next_due(schedule.cron, schedule.timezone, utcnow())
        db.commit()
        return as_dict(schedule)

    def delete(self, db: Session, schedule: Schedule) -> None:
        """Hidden and never run again; pending runs are cancelled, runs in flight end on their own.
        The history stays."""
        schedule.deleted = utcnow()
        for run in db.scalars(select(Run).where(Run.schedule_id == schedule.id, Run.state == "pending")):
            self._end(run, "cancelled", "the schedule was deleted")
        db.commit()

    def run_now(self, db: Session, schedule: Schedule) -> dict:
        run = self._new_run(schedule, "manual", utcnow())
        db.add(run)
        db.commit()
        self.wakeup.set()
        return run_dict(run)

    async def cancel(self, db: Session, run: Run) -> dict:
        if run.state in END_STATES:
            raise ScheduleError(f"run {run.id} has ended already ({run.state})", status=409)
        if run.job_id:
            await self.executor.cancel(self.job(run), run.job_id)
        self._end(run, "cancelled", "cancelled by its owner")
        db.commit()
        return run_dict(run)

    # --- the loop -----------------------------------------------------------------------------------

    def _new_run(self, schedule: Schedule, trigger: str, due: datetime, attempt: int = 1) -> Run:
        return Run(
            schedule_id=schedule.id, owner=schedule.owner, state="pending", trigger=trigger, due=due,
            attempt=attempt, parameters=schedule.parameters, detail="", note="",
        )  # fmt: skip

    def job(self, run: Run, request=None) -> RunJob:
        return RunJob(
            run_id=run.id, schedule_id=run.schedule_id, owner=run.owner, folder=run.folder or "",
            parameters=run.parameters, timeout=run.schedule.timeout, request=request, service_id=self.service_id,
        )  # fmt: skip

    async def run_forever(self) -> None:
        await self.reconcile()
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("The scheduler's check failed; trying again")
            try:
                await asyncio.wait_for(self.wakeup.wait(), self.settings.check_interval)
            except TimeoutError:
                pass
            self.wakeup.clear()

    async def tick(self, now: datetime | None = None) -> None:
        now = now or utcnow()
        self.make_due_runs(now)
        await self.follow_jobs(now)
        await self.submit_pending(now)

    def make_due_runs(self, now: datetime) -> None:
        with self.session() as db:
            due = db.scalars(
                select(Schedule).where(Schedule.deleted.is_(None), Schedule.paused.is_(False), Schedule.next_due <= now)
            )
            for schedule in due:
                latest = schedule.next_due
                while (following := next_due(schedule.cron, schedule.timezone, latest)) <= now:
                    latest = following
                if now - latest <= self.grace:
                    db.add(self._new_run(schedule, "schedule", latest))
                elif schedule.missed == "run_once":
                    log.info("Schedule %d missed runs while the service was down: running once", schedule.id)
                    db.add(self._new_run(schedule, "missed", now))
                else:
                    log.info("Schedule %d missed runs while the service was down: skipped", schedule.id)
                schedule.next_due = next_due(schedule.cron, schedule.timezone, now)
            db.commit()

    async def submit_pending(self, now: datetime) -> None:
        with self.session() as db:
            active = db.scalars(select(Run).where(Run.state.in_(ACTIVE_STATES))).all()
            total = len(active)
            by_owner: dict[str, int] = {}
            by_schedule: dict[int, int] = {}
            for run in active:
                by_owner[run.owner] = by_owner.get(run.owner, 0) + 1
                by_schedule[run.schedule_id] = by_schedule.get(run.schedule_id, 0) + 1
            pending = db.scalars(
                select(Run).where(Run.state == "pending", Run.due <= now).order_by(Run.due, Run.id)
            ).all()
            for run in pending:
                if total >= self.settings.max_active_runs:
                    break
                waiting = self._limit_reached(run, by_owner, by_schedule)
                if waiting:
                    run.detail = waiting
                    continue
                run.state, run.detail = "submitting", ""
                db.commit()  # a restart from here on finds the run and looks for its job
                total += 1
                by_owner[run.owner] = by_owner.get(run.owner, 0) + 1
                by_schedule[run.schedule_id] = by_schedule.get(run.schedule_id, 0) + 1
                await self.submit(db, run)
            db.commit()

    def _limit_reached(self, run: Run, by_owner: dict, by_schedule: dict) -> str:
        if by_schedule.get(run.schedule_id, 0) >= run.schedule.max_concurrent:
            return f"waiting: the schedule's limit of {run.schedule.max_concurrent} run(s) at once is reached"
        if by_owner.get(run.owner, 0) >= self.settings.max_active_runs_per_user:
            return f"waiting: your limit of {self.settings.max_active_runs_per_user} runs at once is reached"
        return ""

    async def submit(self, db: Session, run: Run) -> None:
        schedule = run.schedule
        try:
            request = None
            if self.executor.kind == "slurm":
                profiles, granted = await self.granted(run.owner)
                options = {"profile": schedule.profile} if schedule.profile else {}
                try:
                    request = resolve_request(
                        options, profiles=profiles, granted=granted, defaults=self.site.spawner.slurm
                    )
                except ProfileError as e:
                    if not granted:
                        raise ScheduleError(str(e)) from None
                    # withdrawn since the schedule was made: the owner's default profile, said so
                    request = resolve_request({}, profiles=profiles, granted=granted, defaults=self.site.spawner.slurm)
                    run.note = f"profile {schedule.profile!r} is no longer granted to you: ran with {request.profile!r}"
            notebook = await self.notebook_bytes(run.owner, schedule.notebook)
            check_parameters(run.parameters, inspect_parameters(notebook))
            notebook = with_kernel(notebook)
            run.folder = self.executor.run_folder(run.owner, schedule.id, run.id)
            db.commit()
            job = self.job(run, request)
            await self.executor.prepare(job, notebook)
            run.job_id = await self.executor.submit(job)
        except ScheduleError as e:
            self._end(run, "failed", str(e))
            db.commit()
            await self.after_end(run)
            return
        except Exception as e:  # noqa: BLE001 - any failure of the submission is the run's error
            log.exception("Submitting run %d failed", run.id)
            self._end(run, "failed", f"could not submit: {e}")
            db.commit()
            await self.after_end(run)
            return
        run.state, run.submitted = "queued", utcnow()
        db.commit()
        log.info("Run %d of schedule %d (%s) submitted: job %s", run.id, schedule.id, run.owner, run.job_id)
        if isinstance(self.executor, LocalExecutor):
            self._watch(run.job_id)

    def _watch(self, job_id: str) -> None:
        async def watch():
            await self.executor.wait(job_id)
            self.wakeup.set()

        task = asyncio.ensure_future(watch())
        self.watchers.add(task)
        task.add_done_callback(self.watchers.discard)

    async def follow_jobs(self, now: datetime) -> None:
        with self.session() as db:
            for run in db.scalars(select(Run).where(Run.state.in_(("queued", "running")))).all():
                state = await self.executor.state(self.job(run), run.job_id)
                await self.follow(db, run, state, now)
                db.commit()

    async def follow(self, db: Session, run: Run, state: JobState, now: datetime) -> None:
        if state.phase == "queued":
            run.detail = state.detail
        elif state.phase == "running":
            if run.state != "running":
                run.state, run.started, run.node, run.detail = "running", now, state.node, ""
            elif run.started and now - run.started > timedelta(seconds=run.schedule.timeout):
                log.info("Run %d is over its timeout of %d s: cancelling job %s", run.id, run.schedule.timeout,
                         run.job_id)  # fmt: skip
                await self.executor.cancel(self.job(run), run.job_id)
                self._end(run, "timed_out", f"cancelled after its timeout of {run.schedule.timeout} s")
                db.commit()
                await self.after_end(run)
        elif state.phase == "ended":
            await self.finish(db, run, state)

    async def finish(self, db: Session, run: Run, state: JobState) -> None:
        """A job that has ended: its state from its exit status and Slurm's, its output rendered."""
        run.started = run.started or run.submitted
        run.node = run.node or state.node or None
        raw = await self.executor.read(run.owner, f"{run.folder}/exit_code", limit=32)
        code = raw.decode().strip() if raw else ""
        if code.lstrip("-").isdigit():
            run.exit_code = int(code)
        if state.detail == "TIMEOUT":
            end, why = "timed_out", f"Slurm ended the job at its time limit ({run.schedule.timeout} s and a minute)"
        elif run.exit_code == 0:
            end, why = "succeeded", ""
        elif state.detail in ("CANCELLED", "PREEMPTED") and run.exit_code is None:
            end, why = "cancelled", f"the job was {state.detail.lower()} outside the service"
        elif run.exit_code is None:
            end, why = "failed", f"the job ended without an exit status ({state.detail or 'gone'}): see job.log"
        else:
            end, why = "failed", f"papermill exited with status {run.exit_code}"
        output = await self.executor.read(run.owner, f"{run.folder}/output.ipynb")
        if output is None and end == "failed":
            log_tail = await self.executor.tail(run.owner, f"{run.folder}/job.log")
            last = [line for line in log_tail.splitlines() if line.strip()]
            why = f"{why}: {last[-1].strip()[:300]}" if last else why
        if output is not None:
            if end != "succeeded":
                why = error_summary(output) or why
            try:
                html = await asyncio.to_thread(render_html, output)
                self.html_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                (self.html_dir / f"{run.id}.html").write_text(html)
                run.has_html = True
            except Exception as e:  # noqa: BLE001 - a notebook that does not render is said so, the run stays
                log.warning("Could not render run %d to HTML: %s", run.id, e)
        self._end(run, end, why)
        db.commit()
        log.info("Run %d of schedule %d ended: %s %s", run.id, run.schedule_id, end, why)
        await self.after_end(run)

    def _end(self, run: Run, state: str, detail: str) -> None:
        run.state, run.finished = state, utcnow()
        if detail:
            run.detail = detail

    async def after_end(self, run: Run) -> None:
        """Retry a failure while attempts are left; alert on the final failure (and success, if asked)."""
        schedule = run.schedule
        if run.state in ("failed", "timed_out") and run.attempt <= schedule.retries and schedule.deleted is None:
            with self.session() as db:
                retry = self._new_run(
                    schedule, "retry", utcnow() + timedelta(seconds=schedule.retry_delay), run.attempt + 1
                )
                db.add(retry)
                db.commit()
                log.info("Run %d failed: retry %d as run %d in %d s", run.id, run.attempt, retry.id,
                         schedule.retry_delay)  # fmt: skip
            return
        if run.state == "cancelled" or (run.state == "succeeded" and not schedule.alert_on_success):
            return
        report = alerts.RunReport(
            schedule_id=schedule.id, schedule_name=schedule.name, owner=run.owner, run_id=run.id, state=run.state,
            attempt=run.attempt, notebook=schedule.notebook, started=run.started, finished=run.finished,
            url=self.run_url(run.id), error=run.detail if run.state != "succeeded" else "",
        )  # fmt: skip
        for address in schedule.alert_emails:
            self._alert(alerts.send_email(self.settings.smtp, [address], report), run, address)
        for url in schedule.alert_webhooks:
            self._alert(alerts.send_webhook(url, report, allowed_hosts=self.settings.webhook_allowed_hosts), run, url)

    def _alert(self, sending, run: Run, to: str) -> None:
        async def send():
            try:
                await sending
                log.info("Alert for run %d sent to %s", run.id, to)
            except alerts.AlertError as e:
                log.warning("Alert for run %d to %s failed: %s", run.id, to, e)

        task = asyncio.ensure_future(send())
        self.watchers.add(task)
        task.add_done_callback(self.watchers.discard)

    async def reconcile(self) -> None:
        """After a start: runs caught mid-submission find their job or go back to pending; the others are
        followed as usual by the next check."""
        with self.session() as db:
            for run in db.scalars(select(Run).where(Run.state == "submitting")).all():
                job_id = await self.executor.find(self.job(run))
                if job_id:
                    run.job_id, run.state, run.submitted = job_id, "queued", run.submitted or utcnow()
                    log.info("Run %d: found its job %s after a restart", run.id, job_id)
                elif run.folder and await self.executor.read(run.owner, f"{run.folder}/exit_code", limit=32):
                    run.state = "queued"  # it ran and ended while the service was away: followed as ended
                    run.job_id = run.job_id or "0"
                else:
                    run.state, run.job_id = "pending", None
                    log.info("Run %d: its submission did not happen before a restart: submitting again", run.id)
            db.commit()

    async def stop_demo_runs(self) -> None:
        """The demo stops as a whole (`campushub up`, Ctrl-C): its runs in flight are cancelled with it.
        Elsewhere runs go on while the service is away, and it follows them when it is back."""
        if not (isinstance(self.executor, LocalExecutor) and self.executor.demo):
            return
        with self.session() as db:
            for run in db.scalars(select(Run).where(Run.state.in_(ACTIVE_STATES))).all():
                if run.job_id:
                    await self.executor.cancel(self.job(run), run.job_id)
                self._end(run, "cancelled", "the demo was stopped while it ran")
            db.commit()
