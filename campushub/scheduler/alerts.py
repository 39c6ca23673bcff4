"""Alerts about scheduled runs: an email through the site's SMTP server, a JSON POST to the owner's webhook.

The checks (`webhook_problem`, `email_problem`) run when a schedule is defined, and the webhook's again
when it is sent. Sending raises `AlertError` with a message for a person; it never retries (the caller
logs the failure and goes on).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import re
import smtplib
import socket
import ssl
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import HTTPRequest
from tornado.netutil import Resolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from .. import __version__
from ..hubconfig import read_secret_file
from ..site import SiteError, SmtpSettings

USER_AGENT = f"CampusHub-scheduler/{__version__}"
MAX_URL_LENGTH = 2000

_STATE_WORDS = {"succeeded": "succeeded", "failed": "failed", "timed_out": "timed out", "cancelled": "was cancelled"}
# An address as HTML forms accept one (no display name, no quoting), with a dotted domain.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)


@dataclass(frozen=True)
class RunReport:
    """What an alert says about one run."""

    schedule_id: int
    schedule_name: str  # the schedule's display name, e.g. "nightly-report"
    owner: str  # hub user name
    run_id: int
    state: str  # "succeeded" | "failed" | "timed_out" | "cancelled"
    attempt: int  # 1 for the first try, 2 for the first retry ...
    notebook: str  # e.g. "template:run-report" or "projects/etl.ipynb"
    started: datetime | None
    finished: datetime | None
    url: str  # link to the run's page in the service, absolute
    error: str  # a summary of the error ("ValueError: bad column 'x' (cell 4)"), "" if none


class AlertError(Exception):
    """An alert that could not be sent; the message is meant for a person."""


def webhook_problem(url: str, allowed_hosts: Collection[str]) -> str | None:
    """Why this webhook URL is refused, or None.

    Only http and https, with a host and without credentials, at most 2000 characters. A host whose
    address (every address its name resolves to) is not a public one (loopback, private, link-local,
    multicast, reserved, unspecified, shared) is refused unless it is one of `allowed_hosts` (the site's
    scheduler.webhook_allowed_hosts, compared without case), so that users cannot make the service reach
    internal services. A name that does not resolve is refused.
    """
    return _vet(url, allowed_hosts)[0]


def email_problem(address: str) -> str | None:
    """Why this is not an alert recipient, or None: one plain address such as ada@campus.edu."""
    if not address:
        return "the email address is empty"
    if re.search(r"[\s,;<>\"()]", address):
        return f"{address!r} is not one plain email address: give it without a name, quotes or brackets"
    if len(address) > 254 or len(address.partition("@")[0]) > 64:
        return f"{address!r} is too long for an email address"
    if not _ADDRESS.fullmatch(address):
        return f"{address!r} is not an email address such as ada@campus.edu"
    return None


def alert_text(report: RunReport) -> tuple[str, str]:
    """(subject, body) of the alert email about `report`."""
    name = _one_line(report.schedule_name)
    lines = [
        f'The run {report.run_id} of the schedule "{name}" {_state_words(report.state)}.',
        "",
        f"Schedule:  {name} (id {report.schedule_id})",
        f"Owner:     {report.owner}",
        f"Notebook:  {report.notebook}",
        f"State:     {report.state}",
        f"Attempt:   {report.attempt}",
        f"Started:   {_iso(report.started) or 'not started'}",
        f"Finished:  {_iso(report.finished) or 'not finished'}",
    ]
    if report.error:
        lines += ["", "Error:", report.error.strip()]
    lines += ["", f"Run page: {report.url}", "", "-- ", "CampusHub nightly notebooks"]
    return _subject(report), "\n".join(lines) + "\n"


def webhook_payload(report: RunReport) -> dict[str, Any]:
    """The JSON body of the webhook: the event, every field of the run, and a one-line "text" with the
    link (what Slack's and Mattermost's incoming webhooks show)."""
    run = {
        field: _iso(value) if isinstance(value, datetime) else value
        for field, value in dataclasses.asdict(report).items()
    }
    text = _slack_escape(_subject(report))
    if report.error:
        text += ": " + _slack_escape(_one_line(report.error, limit=300))
    return {"event": f"run.{report.state}", "run": run, "text": f"{text} {report.url}"}


async def send_email(smtp: SmtpSettings, to: Sequence[str], report: RunReport, *, timeout: float = 30) -> None:
    """Send the alert email about `report` to `to` through the site's SMTP server (smtplib, in a thread)."""
    if isinstance(to, str):
        to = [to]
    if not to:
        raise AlertError("the alert email has no recipient")
    for address in to:
        if problem := email_problem(address):
            raise AlertError(problem)
    subject, body = alert_text(report)
    message = EmailMessage()
    message["From"] = smtp.sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=smtp.sender.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    await asyncio.to_thread(_smtp_send, smtp, list(to), message, timeout)


async def send_webhook(
    url: str, report: RunReport, *, allowed_hosts: Collection[str] = (), timeout: float = 10
) -> None:
    """POST `webhook_payload(report)` as JSON to `url`, checked again by `webhook_problem` first.

    The connection goes to the addresses that the check resolved (a name cannot resolve elsewhere in
    between), redirects are not followed, and any answer but 2xx is an AlertError.
    """
    problem, addresses = await asyncio.to_thread(_vet, url, allowed_hosts)
    if problem:
        raise AlertError(f"webhook refused: {problem}")
    where = _origin(url)
    answer = bytearray()

    def keep_start(chunk: bytes) -> None:  # the start of the answer, for the message; the rest is dropped
        answer.extend(chunk[: 300 - len(answer)])

    request = HTTPRequest(
        url,
        method="POST",
        body=json.dumps(webhook_payload(report)),
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        follow_redirects=False,
        connect_timeout=timeout,
        request_timeout=timeout,
        streaming_callback=keep_start,
    )
    client = SimpleAsyncHTTPClient(force_instance=True, resolver=_PinnedResolver(addresses=addresses))
    try:
        response = await client.fetch(request, raise_error=False)
    except Exception as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise AlertError(f"webhook {where}: no answer: {why}") from e
    finally:
        client.close()
    if response.code == 599:  # no HTTP answer (a timeout, a closed connection)
        raise AlertError(f"webhook {where}: no answer: {response.error}")
    if not 200 <= response.code < 300:
        said = _one_line(answer.decode("utf-8", "replace"), limit=200)
        moved = f" to {response.headers.get('Location')} (redirects are not followed)" if response.code < 400 else ""
        raise AlertError(
            f"webhook {where} answered {response.code} {response.reason}{moved}" + (f": {said}" if said else "")
        )


def _vet(url: str, allowed_hosts: Collection[str]) -> tuple[str | None, list[tuple[int, Any]]]:
    """(why `url` is refused or None, the (family, socket address) pairs to connect to)."""
    if len(url) > MAX_URL_LENGTH:
        return f"the URL is longer than {MAX_URL_LENGTH} characters", []
    if re.search(r"[\x00-\x20\x7f]", url):
        return "the URL holds spaces or control characters", []
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"the URL cannot be read: {e}", []
    if parts.scheme not in ("http", "https"):  # urlsplit lowercases the scheme
        scheme = f"{parts.scheme}:" if parts.scheme else "none"
        return f"a webhook URL must start with http:// or https:// (its scheme: {scheme})", []
    host = parts.hostname
    if not host:
        return "the URL has no host", []
    if "@" in parts.netloc:
        return "the URL must not hold a user name or password", []
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        addresses = [(family, (host, port) if family == socket.AF_INET else (host, port, 0, 0))]
    else:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            return f"the host {host} cannot be resolved: {why}", []
        addresses = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in found))
        if not addresses:
            return f"the host {host} cannot be resolved", []
    if host in {h.strip("[]").lower() for h in allowed_hosts}:
        return None, addresses
    for _, sockaddr in addresses:
        ip = ipaddress.ip_address(sockaddr[0].partition("%")[0])
        if kind := _not_public(ip):
            said = f"{host} is" if literal is not None else f"{host} resolves to {ip}, which is"
            return (
                f"{said} {'an' if kind[0] in 'aeiou' else 'a'} {kind} address: webhooks may not reach internal services "
                "(an admin can allow the host in scheduler.webhook_allowed_hosts)"
            ), []
    return None, addresses


def _not_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link-local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, "is_" + kind.replace("-", "_")):
            return kind
    return None if ip.is_global else "non-public"


class _PinnedResolver(Resolver):
    """Answers every name with the addresses that `_vet` checked."""

    def initialize(self, addresses: list[tuple[int, Any]]) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        return [(f, a) for f, a in self.addresses if family in (socket.AF_UNSPEC, f)]


def _smtp_send(smtp: SmtpSettings, to: list[str], message: EmailMessage, timeout: float) -> None:
    where = f"{smtp.host}:{smtp.port}"
    try:
        password = None
        if smtp.username:
            if smtp.password_file is None:
                raise AlertError(f"cannot send alert mail through {where}: smtp.username is set without password_file")
            password = read_secret_file(smtp.password_file, "scheduler.smtp.password_file")
        with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout) as server:
            if smtp.starttls:
                server.starttls(context=ssl.create_default_context())
            if smtp.username:
                server.login(smtp.username, password)
            refused = server.send_message(message, from_addr=smtp.sender, to_addrs=to)
    except AlertError:
        raise
    except SiteError as e:
        raise AlertError(f"cannot send alert mail through {where}: {e}") from e
    except smtplib.SMTPAuthenticationError as e:
        raise AlertError(f"cannot send alert mail through {where}: login as {smtp.username} refused: {_said(e)}") from e
    except smtplib.SMTPRecipientsRefused as e:
        raise AlertError(f"{where} refused every recipient: {_refused(e.recipients)}") from e
    except smtplib.SMTPResponseException as e:
        raise AlertError(f"cannot send alert mail through {where}: {_said(e)}") from e
    except (smtplib.SMTPException, OSError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise AlertError(f"cannot send alert mail through {where}: {why}") from e
    if refused:
        raise AlertError(f"{where} refused some recipients: {_refused(refused)}")


def _said(e: smtplib.SMTPResponseException) -> str:
    text = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
    return f"{e.smtp_code} {_one_line(text)}"


def _refused(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{to} ({code} {_one_line(text.decode('utf-8', 'replace'))})" for to, (code, text) in recipients.items()
    )


def _subject(report: RunReport) -> str:
    return f"[CampusHub] {_one_line(report.schedule_name)} {_state_words(report.state)} (run {report.run_id})"


def _state_words(state: str) -> str:
    return _STATE_WORDS.get(state, _one_line(state))


def _iso(moment: datetime | None) -> str | None:
    """UTC, ISO 8601, to the second; a naive datetime is taken as UTC."""
    if moment is None:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="seconds")


def _one_line(text: str, limit: int | None = None) -> str:
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _slack_escape(text: str) -> str:
    """Slack reads <, > and & as markup; Mattermost shows the entities as the characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL, for messages: the path may hold the webhook's secret token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else "(no host)"
