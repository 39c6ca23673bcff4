"""The service's REST API and pages, under its prefix (/services/scheduler/). Thin handlers over the
Scheduler: users see and change only their own schedules and runs (another user's are a 404, as if
absent); admins see all. Who is calling comes from the hub (HubOAuth: a browser's cookie or an
`Authorization: token ...` header).

A run's HTML is another user's content in the hub's origin: it is served with a Content-Security-Policy
sandbox, so no script in it runs and it cannot reach the hub's cookies or API.
"""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from sqlalchemy import select
from sqlalchemy.orm import Session
from tornado import web

from .definitions import ScheduleError, inspect_parameters, list_templates
from .models import Run, Schedule
from .service import Scheduler, as_dict, run_dict

SANDBOX_CSP = (
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
    "form-action 'none'; frame-ancestors 'self'; base-uri 'none'"
)
PAGES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates" / "scheduler"), autoescape=True
)


class Handler(HubOAuthenticated, web.RequestHandler):
    @property
    def scheduler(self) -> Scheduler:
        return self.settings["scheduler"]

    @property
    def user(self) -> dict:
        return self.current_user

    def caller(self) -> dict:
        user = self.current_user
        if not user or user.get("kind") != "user":
            raise web.HTTPError(403, "log in to the hub as a user to use the scheduler")
        return user

    def visible(self, owner: str) -> bool:
        return owner == self.user["name"] or bool(self.user.get("admin"))

    def schedule(self, db: Session, schedule_id: str) -> Schedule:
        schedule = db.get(Schedule, int(schedule_id))
        if schedule is None or schedule.deleted is not None or not self.visible(schedule.owner):
            raise ScheduleError(f"there is no schedule {schedule_id}", status=404)
        return schedule

    def run(self, db: Session, run_id: str) -> Run:
        run = db.get(Run, int(run_id))
        if run is None or not self.visible(run.owner):
            raise ScheduleError(f"there is no run {run_id}", status=404)
        return run

    def body(self) -> object:
        try:
            return json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ScheduleError("the body must be JSON") from None

    def write_json(self, data: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, ScheduleError):
            return
        super().log_exception(typ, value, tb)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ScheduleError):
            self.send_error(e.status, reason=None, message=str(e))
            return
        super()._handle_request_exception(e)

    def error_message(self, **kwargs) -> str:
        """What went wrong, for the person who asked: a ScheduleError's or an HTTPError's message."""
        if kwargs.get("message"):
            return kwargs["message"]
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, web.HTTPError) and error.log_message:
            return error.log_message % error.args if error.args else error.log_message
        return self._reason

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "error": self.error_message(**kwargs)}))


class APIHandler(Handler):
    # A browser's cookie is accepted for a POST, PATCH or DELETE only with the hub's XSRF token (HubOAuth
    # checks it); a token in the Authorization header is never sent by a browser on its own.
    def prepare(self):
        self.caller()


class SchedulesAPI(APIHandler):
    def get(self):
        with self.scheduler.session() as db:
            query = select(Schedule).where(Schedule.deleted.is_(None)).order_by(Schedule.id)
            if not self.user.get("admin") or self.get_argument("mine", "") == "1":
                query = query.where(Schedule.owner == self.user["name"])
            self.write_json({"schedules": [as_dict(s) for s in db.scalars(query)]})

    async def post(self):
        schedule = await self.scheduler.add(self.user["name"], self.body())
        self.set_header("Location", f"{self.request.path.rstrip('/')}/{schedule['id']}")
        self.write_json(schedule, 201)


class ScheduleAPI(APIHandler):
    def get(self, schedule_id):
        with self.scheduler.session() as db:
            self.write_json(as_dict(self.schedule(db, schedule_id)))

    async def patch(self, schedule_id):
        with self.scheduler.session() as db:
            schedule = self.schedule(db, schedule_id)
            self.write_json(await self.scheduler.update(db, schedule, self.body()))

    def delete(self, schedule_id):
        with self.scheduler.session() as db:
            self.scheduler.delete(db, self.schedule(db, schedule_id))
        self.set_status(204)
        self.finish()


class ScheduleRunsAPI(APIHandler):
    def get(self, schedule_id):
        limit = self.get_argument("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise ScheduleError("limit: a whole number from 1 to 1000")
        with self.scheduler.session() as db:
            schedule = self.schedule(db, schedule_id)
            runs = db.scalars(
                select(Run).where(Run.schedule_id == schedule.id).order_by(Run.id.desc()).limit(int(limit))
            )
            self.write_json({"runs": [run_dict(r) for r in runs]})

    def post(self, schedule_id):
        with self.scheduler.session() as db:
            self.write_json(self.scheduler.run_now(db, self.schedule(db, schedule_id)), 201)


class RunAPI(APIHandler):
    def get(self, run_id):
        with self.scheduler.session() as db:
            self.write_json(run_dict(self.run(db, run_id)))


class RunCancelAPI(APIHandler):
    async def post(self, run_id):
        with self.scheduler.session() as db:
            self.write_json(await self.scheduler.cancel(db, self.run(db, run_id)))


class TemplatesAPI(APIHandler):
    def get(self):
        templates = []
        for name, path in list_templates(self.scheduler.settings.templates_dir).items():
            parameters = inspect_parameters(path.read_bytes())
            templates.append({"name": name, "notebook": f"template:{name}", "parameters": list(parameters.values())})
        self.write_json({"templates": templates})


class TemplateNotebookAPI(APIHandler):
    def post(self, name):
        self.write_json(self.scheduler.template_notebook(name, self.body()))


class ProfilesAPI(APIHandler):
    async def get(self):
        self.write_json(await self.scheduler.profiles(self.user["name"]))


class Page(Handler):
    def render_page(self, name: str, **values) -> None:
        prefix = self.settings["prefix"]
        self.set_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'")
        self.finish(PAGES.get_template(name).render(prefix=prefix, user=self.user, **values))

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        page = PAGES.get_template("error.html")
        self.finish(
            page.render(prefix=self.settings["prefix"], status=status_code, message=self.error_message(**kwargs))
        )


class HomePage(Page):
    @web.authenticated
    def get(self):
        self.caller()
        with self.scheduler.session() as db:
            query = select(Schedule).where(Schedule.deleted.is_(None)).order_by(Schedule.id)
            if not self.user.get("admin"):
                query = query.where(Schedule.owner == self.user["name"])
            schedules = db.scalars(query).all()
            last = {}
            for s in schedules:
                last[s.id] = db.scalars(
                    select(Run).where(Run.schedule_id == s.id).order_by(Run.id.desc()).limit(1)
                ).first()
            self.render_page("home.html", schedules=schedules, last=last)


class SchedulePage(Page):
    @web.authenticated
    def get(self, schedule_id):
        self.caller()
        with self.scheduler.session() as db:
            schedule = self.schedule(db, schedule_id)
            runs = db.scalars(select(Run).where(Run.schedule_id == schedule.id).order_by(Run.id.desc()).limit(200))
            self.render_page("schedule.html", schedule=schedule, runs=runs.all())


class RunPage(Page):
    @web.authenticated
    def get(self, run_id):
        self.caller()
        with self.scheduler.session() as db:
            run = self.run(db, run_id)
            self.render_page("run.html", run=run, schedule=run.schedule)


class RunHTML(Page):
    """The run's output as HTML, sandboxed: no script in it runs, it has no origin of its own."""

    @web.authenticated
    def get(self, run_id):
        self.caller()
        with self.scheduler.session() as db:
            run = self.run(db, run_id)
            path = self.scheduler.html_dir / f"{run.id}.html"
            if not run.has_html or not path.is_file():
                raise ScheduleError(f"run {run.id} has no HTML output", status=404)
        self.set_header("Content-Security-Policy", SANDBOX_CSP)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "private, no-store")
        self.finish(path.read_bytes())


class Health(web.RequestHandler):
    def get(self):
        self.finish({"ok": True})


def app_handlers(prefix: str) -> list[tuple]:
    routes = [
        ("oauth_callback", HubOAuthCallbackHandler),
        ("api/health", Health),
        ("api/schedules", SchedulesAPI),
        (r"api/schedules/(\d+)", ScheduleAPI),
        (r"api/schedules/(\d+)/runs", ScheduleRunsAPI),
        (r"api/runs/(\d+)", RunAPI),
        (r"api/runs/(\d+)/cancel", RunCancelAPI),
        ("api/templates", TemplatesAPI),
        (r"api/templates/([^/]+)/notebook", TemplateNotebookAPI),
        ("api/profiles", ProfilesAPI),
        ("", HomePage),
        (r"schedules/(\d+)", SchedulePage),
        (r"runs/(\d+)", RunPage),
        (r"runs/(\d+)/output\.html", RunHTML),
    ]
    return [(prefix + path, handler) for path, handler in routes]
