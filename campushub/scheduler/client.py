"""`campushub schedule ...`: the scheduler's REST API from a terminal (a user's, in JupyterLab, or an admin's).

The service's address: --url, else $CAMPUSHUB_SCHEDULER_URL (set in every user's server), else the
site file's public address + services/scheduler/. The token: --token-file, else $JUPYTERHUB_API_TOKEN
(set in every user's server), else a token made on the hub's Token page.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class ClientError(Exception):
    """A failure reported in one message (the CLI exits 2)."""


class Client:
    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/") + "/"
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw).get("error") or raw.decode()
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace")[:300] or e.reason
            if e.code == 403 and not message:
                message = "the token was refused"
            raise ClientError(f"{message} (HTTP {e.code})") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ClientError(f"cannot reach the scheduler at {self.url}: {reason}") from None
        return json.loads(raw) if raw else None


def service_url(args) -> str:
    if args.url:
        return args.url
    if os.environ.get("CAMPUSHUB_SCHEDULER_URL"):
        return os.environ["CAMPUSHUB_SCHEDULER_URL"]
    from ..hubconfig import public_url
    from ..site import load_site

    site = load_site(args.config or os.environ.get("CAMPUSHUB_CONFIG") or None)
    return public_url(site).rstrip("/") + "/services/scheduler/"


def token(args) -> str:
    if args.token_file:
        try:
            value = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise ClientError(f"cannot read the token file {args.token_file}: {e.strerror}") from None
    else:
        value = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not value:
        raise ClientError(
            "no token: set JUPYTERHUB_API_TOKEN (it is set in your JupyterLab's terminals) or give --token-file "
            "with a token made on the hub's Token page"
        )
    return value


def parameter(text: str, raw: bool) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ClientError(f"parameter {text!r}: write it as name=value")
    if raw:
        return name, value
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def definition(args) -> dict:
    parameters = dict(parameter(p, False) for p in args.parameter or [])
    parameters |= dict(parameter(p, True) for p in args.raw_parameter or [])
    body: dict[str, Any] = {"notebook": args.notebook, "cron": args.cron, "timezone": args.timezone}
    optional = {
        "name": args.name, "profile": args.profile, "timeout": args.timeout, "retries": args.retries,
        "retry_delay": args.retry_delay, "max_concurrent": args.max_concurrent, "missed": args.missed,
    }  # fmt: skip
    body |= {k: v for k, v in optional.items() if v is not None}
    if parameters:
        body["parameters"] = parameters
    alerts = {"emails": args.email or [], "webhooks": args.webhook or [], "on_success": args.alert_on_success}
    if any(alerts.values()):
        body["alerts"] = alerts
    return body


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def show_schedules(schedules: list[dict]) -> str:
    if not schedules:
        return "no schedules"
    rows = [
        [s["id"], s["name"], s["owner"], s["notebook"], f"{s['cron']} {s['timezone']}",
         "paused" if s["paused"] else (s["next_due"] or "")]
        for s in schedules
    ]  # fmt: skip
    return table(rows, ["ID", "NAME", "OWNER", "NOTEBOOK", "WHEN", "NEXT (UTC)"])


def show_runs(runs: list[dict]) -> str:
    if not runs:
        return "no runs yet"
    rows = [
        [r["id"], r["state"], r["trigger"], r["attempt"], r["started"] or "", r["finished"] or "", r["job_id"] or "",
         (r["detail"] or "")[:80]]
        for r in runs
    ]  # fmt: skip
    return table(rows, ["RUN", "STATE", "TRIGGER", "TRY", "STARTED", "FINISHED", "JOB", "DETAIL"])


def run_command(args) -> str:
    client = Client(service_url(args), token(args))
    action = args.schedule_command
    if action == "add":
        made = client.call("POST", "api/schedules", definition(args))
        return f"schedule {made['id']} added: {made['name']}, next run {made['next_due']} (UTC)"
    if action == "list":
        return show_schedules(client.call("GET", "api/schedules")["schedules"])
    if action == "runs":
        runs = client.call("GET", f"api/schedules/{args.id}/runs?limit={args.limit}")["runs"]
        return show_runs(runs)
    if action == "run-now":
        run = client.call("POST", f"api/schedules/{args.id}/runs")
        return f"run {run['id']} of schedule {args.id} started: {client.url}runs/{run['id']}"
    if action in ("pause", "resume"):
        client.call("PATCH", f"api/schedules/{args.id}", {"paused": action == "pause"})
        return f"schedule {args.id} {'paused' if action == 'pause' else 'resumed'}"
    if action == "delete":
        client.call("DELETE", f"api/schedules/{args.id}")
        return f"schedule {args.id} deleted (its runs stay in the history)"
    raise ClientError(f"unknown command {action}")


def add_parser(commands, site_option, func) -> None:
    schedule = commands.add_parser(
        "schedule",
        help="nightly notebooks: add, list, run, pause and delete schedules",
        description="Schedule notebooks to run as you, on the cluster, whether or not your server runs. "
        "Talks to the scheduler service with your hub token.",
    )
    actions = schedule.add_subparsers(dest="schedule_command", metavar="SUBCOMMAND", required=True)

    def common(p):
        p.set_defaults(func=func)
        site_option(p)
        p.add_argument("--url", help="the scheduler's address (default: $CAMPUSHUB_SCHEDULER_URL, else the site's)")
        p.add_argument("--token-file", metavar="FILE", help="file holding a hub token (default: $JUPYTERHUB_API_TOKEN)")

    add = actions.add_parser(
        "add",
        help="schedule a notebook",
        description="Schedule a notebook of your home folder (a path relative to it) or a template "
        "(template:NAME). Parameters are checked against the notebook's cell tagged 'parameters'.",
        epilog='example: campushub schedule add template:train-classifier --cron "0 2 * * *" '
        "--timezone Europe/Berlin -p epochs=50 --email ada@campus.edu",
    )
    add.add_argument("notebook", help="path relative to your home, or template:NAME")
    add.add_argument("--cron", required=True, help="5-field cron expression ('0 2 * * *': 02:00 daily) or @daily ...")
    add.add_argument("--timezone", default="UTC", help="time zone of the cron expression, e.g. Europe/Berlin [UTC]")
    add.add_argument("--name", help="a name for the schedule [the notebook's]")
    add.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE",
                     help="a parameter; VALUE is read as JSON (5, 0.1, true, [1,2]) or else as text")  # fmt: skip
    add.add_argument("-r", "--raw-parameter", action="append", metavar="NAME=VALUE", help="a parameter, as text")
    add.add_argument("--profile", help="resource profile of the runs (see the hub's spawn page)")
    add.add_argument("--timeout", type=int, help="seconds a run may take once started [3600]")
    add.add_argument("--retries", type=int, help="tries again after a failure, 0-5 [0]")
    add.add_argument("--retry-delay", type=int, help="seconds before a retry [300]")
    add.add_argument("--max-concurrent", type=int, help="runs of this schedule at once, 1-10 [1]")
    add.add_argument("--missed", choices=["skip", "run_once"], help="runs missed while the service was down [skip]")
    add.add_argument("--email", action="append", metavar="ADDRESS", help="send an email when a run fails")
    add.add_argument("--webhook", action="append", metavar="URL", help="POST JSON to this URL when a run fails")
    add.add_argument("--alert-on-success", action="store_true", help="alert when a run succeeds, too")
    common(add)
    listing = actions.add_parser("list", help="your schedules (an admin's: everyone's)", description="List schedules.")
    common(listing)
    runs = actions.add_parser("runs", help="a schedule's runs, newest first", description="List a schedule's runs.")
    runs.add_argument("id", type=int, help="the schedule's id")
    runs.add_argument("--limit", type=int, default=20, help="how many runs [20]")
    common(runs)
    for name, text in [
        ("run-now", "run a schedule now, once"),
        ("pause", "stop a schedule's runs until resumed"),
        ("resume", "run a paused schedule again (what fell due while paused is not run)"),
        ("delete", "delete a schedule (its runs stay in the history)"),
    ]:
        p = actions.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        p.add_argument("id", type=int, help="the schedule's id")
        common(p)
