"""Scheduler alerts, sent for real: to an SMTP server (aiosmtpd) and an HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from campushub import __version__
from campushub.scheduler.alerts import (
    AlertError,
    RunReport,
    alert_text,
    email_problem,
    send_email,
    send_webhook,
    webhook_payload,
    webhook_problem,
)
from campushub.site import SmtpSettings

# The login tests' SMTP server takes a password without TLS: on 127.0.0.1, on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

REPORT = RunReport(
    schedule_id=7,
    schedule_name="nightly-report",
    owner="ada",
    run_id=42,
    state="failed",
    attempt=2,
    notebook="projects/etl.ipynb",
    started=datetime(2026, 5, 1, 4, 0, 0, tzinfo=timezone(timedelta(hours=2))),
    finished=datetime(2026, 5, 1, 2, 3, 12, 250000, tzinfo=UTC),
    url="https://hub.campus.edu/services/scheduler/runs/42",
    error="ValueError: bad column 'x' (cell 4)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the texts


def test_subject_and_body_name_the_run():
    subject, body = alert_text(REPORT)
    assert subject == "[CampusHub] nightly-report failed (run 42)"
    for line in (
        "Schedule:  nightly-report (id 7)",
        "Owner:     ada",
        "Notebook:  projects/etl.ipynb",
        "State:     failed",
        "Attempt:   2",
        "Started:   2026-05-01T02:00:00+00:00",  # UTC, to the second
        "Finished:  2026-05-01T02:03:12+00:00",
        "ValueError: bad column 'x' (cell 4)",
        "Run page: https://hub.campus.edu/services/scheduler/runs/42",
    ):
        assert line in body.splitlines(), line


def test_subject_of_each_state_and_a_run_that_never_started():
    assert alert_text(replace(REPORT, state="timed_out"))[0] == "[CampusHub] nightly-report timed out (run 42)"
    assert alert_text(replace(REPORT, state="succeeded"))[0] == "[CampusHub] nightly-report succeeded (run 42)"
    subject, body = alert_text(replace(REPORT, state="cancelled", started=None, finished=None, error=""))
    assert subject == "[CampusHub] nightly-report was cancelled (run 42)"
    assert "Started:   not started" in body and "Error:" not in body


def test_a_name_with_a_line_break_stays_on_the_subject_line():
    subject, _ = alert_text(replace(REPORT, schedule_name="nightly\nBcc: eve@evil.example"))
    assert subject == "[CampusHub] nightly Bcc: eve@evil.example failed (run 42)"


def test_naive_times_are_taken_as_utc():
    _, body = alert_text(replace(REPORT, started=datetime(2026, 5, 1, 2, 0, 0, 999999)))
    assert "Started:   2026-05-01T02:00:00+00:00" in body


def test_webhook_payload_has_every_field_and_a_one_line_text():
    payload = json.loads(json.dumps(webhook_payload(REPORT)))
    assert payload["event"] == "run.failed"
    assert payload["run"] == {
        "schedule_id": 7,
        "schedule_name": "nightly-report",
        "owner": "ada",
        "run_id": 42,
        "state": "failed",
        "attempt": 2,
        "notebook": "projects/etl.ipynb",
        "started": "2026-05-01T02:00:00+00:00",
        "finished": "2026-05-01T02:03:12+00:00",
        "url": "https://hub.campus.edu/services/scheduler/runs/42",
        "error": "ValueError: bad column 'x' (cell 4)",
    }
    assert payload["text"] == (
        "[CampusHub] nightly-report failed (run 42): ValueError: bad column 'x' (cell 4) "
        "https://hub.campus.edu/services/scheduler/runs/42"
    )
    assert webhook_payload(replace(REPORT, state="succeeded", error=""))["event"] == "run.succeeded"


def test_webhook_text_escapes_what_slack_reads_as_markup():
    text = webhook_payload(replace(REPORT, error="KeyError: <x> & more\n  on two lines"))["text"]
    assert "KeyError: &lt;x&gt; &amp; more on two lines https://hub" in text


# --- email


class Inbox:
    """An aiosmtpd handler that keeps what it is given."""

    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(e.content, policy=email.policy.default) for e in self.envelopes]


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1: smtp_server(**options) -> (inbox, port)."""
    controllers = []

    def start(**options) -> tuple[Inbox, int]:
        inbox, port = Inbox(), free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return inbox, port

    yield start
    for controller in controllers:
        controller.stop()


def test_send_email_delivers_the_alert(smtp_server):
    inbox, port = smtp_server()
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="campushub@campus.edu")
    asyncio.run(send_email(smtp, ["ada@campus.edu", "lab@campus.edu"], REPORT, timeout=10))
    [envelope] = inbox.envelopes
    assert envelope.mail_from == "campushub@campus.edu"
    assert envelope.rcpt_tos == ["ada@campus.edu", "lab@campus.edu"]
    [message] = inbox.messages()
    assert message["From"] == "campushub@campus.edu"
    assert message["To"] == "ada@campus.edu, lab@campus.edu"
    assert message["Subject"] == "[CampusHub] nightly-report failed (run 42)"
    body = message.get_content()
    assert "ValueError: bad column 'x' (cell 4)" in body
    assert "https://hub.campus.edu/services/scheduler/runs/42" in body


def login_server(smtp_server) -> tuple[Inbox, int, list[str]]:
    """An SMTP server that takes mail only after a login as ada with the password s3cret."""
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        ok = (auth_data.login, auth_data.password) == (b"ada", b"s3cret")
        logins.append(f"{auth_data.login.decode()} {'accepted' if ok else 'refused'}")
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 235 or 535

    inbox, port = smtp_server(authenticator=authenticator, auth_required=True, auth_require_tls=False)
    return inbox, port, logins


def password_file(tmp_path, password: str):
    path = tmp_path / "smtp-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def test_send_email_logs_in_with_the_password_file(smtp_server, tmp_path):
    inbox, port, logins = login_server(smtp_server)
    smtp = SmtpSettings(
        host="127.0.0.1",
        port=port,
        sender="campushub@campus.edu",
        username="ada",
        password_file=password_file(tmp_path, "s3cret"),
    )
    asyncio.run(send_email(smtp, ["ada@campus.edu"], REPORT, timeout=10))
    assert logins == ["ada accepted"]
    assert [m["Subject"] for m in inbox.messages()] == ["[CampusHub] nightly-report failed (run 42)"]


def test_a_wrong_password_is_an_alert_error(smtp_server, tmp_path):
    inbox, port, logins = login_server(smtp_server)
    smtp = SmtpSettings(
        host="127.0.0.1",
        port=port,
        sender="campushub@campus.edu",
        username="ada",
        password_file=password_file(tmp_path, "wrong"),
    )
    with pytest.raises(AlertError) as e:
        asyncio.run(send_email(smtp, ["ada@campus.edu"], REPORT, timeout=10))
    assert f"127.0.0.1:{port}" in str(e.value) and "login as ada refused: 535" in str(e.value)
    assert logins and set(logins) == {"ada refused"}  # smtplib tries each mechanism the server offers
    assert inbox.envelopes == []


def test_an_unusable_password_file_is_an_alert_error(smtp_server, tmp_path):
    inbox, port, logins = login_server(smtp_server)
    settings = {"host": "127.0.0.1", "port": port, "sender": "campushub@campus.edu", "username": "ada"}
    with pytest.raises(AlertError, match="smtp.username is set without password_file"):
        asyncio.run(send_email(SmtpSettings(**settings), ["ada@campus.edu"], REPORT, timeout=10))
    readable = password_file(tmp_path, "s3cret")
    readable.chmod(0o644)
    with pytest.raises(AlertError, match="scheduler.smtp.password_file: .* is readable by every user: chmod 600 it"):
        asyncio.run(send_email(SmtpSettings(**settings, password_file=readable), ["ada@campus.edu"], REPORT))
    assert logins == [] and inbox.envelopes == []


def test_without_a_login_the_server_refuses_and_it_is_an_alert_error(smtp_server):
    inbox, port, logins = login_server(smtp_server)
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="campushub@campus.edu")
    with pytest.raises(AlertError, match=f"127.0.0.1:{port}: 530"):
        asyncio.run(send_email(smtp, ["ada@campus.edu"], REPORT, timeout=10))
    assert inbox.envelopes == []


def test_starttls_is_asked_for_when_set(smtp_server):
    inbox, port = smtp_server()  # a server without TLS: it offers no STARTTLS
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="campushub@campus.edu", starttls=True)
    with pytest.raises(AlertError, match=f"127.0.0.1:{port}: STARTTLS extension not supported"):
        asyncio.run(send_email(smtp, ["ada@campus.edu"], REPORT, timeout=10))
    assert inbox.envelopes == []


def test_no_server_listening_is_an_alert_error_naming_it():
    port = free_port()
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="campushub@campus.edu")
    with pytest.raises(AlertError, match=f"cannot send alert mail through 127.0.0.1:{port}: Connection refused"):
        asyncio.run(send_email(smtp, ["ada@campus.edu"], REPORT, timeout=10))


def test_a_recipient_that_is_not_one_address_is_refused_before_sending(smtp_server):
    inbox, port = smtp_server()
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="campushub@campus.edu")
    with pytest.raises(AlertError, match="not one plain email address"):
        asyncio.run(send_email(smtp, ["ada@campus.edu\r\nBcc: eve@evil.example"], REPORT, timeout=10))
    with pytest.raises(AlertError, match="no recipient"):
        asyncio.run(send_email(smtp, [], REPORT, timeout=10))
    assert inbox.envelopes == []


# --- webhooks


class Receiver:
    """An HTTP server on 127.0.0.1 (in a thread) that records each request and answers `status`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self.location = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                answer = b"ok" if receiver.status < 400 else b"boom: the receiver broke"
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def test_the_webhook_posts_the_run_as_json_to_an_allowed_host(receiver):
    asyncio.run(send_webhook(f"{receiver.url}/hooks/T0/secret", REPORT, allowed_hosts=["127.0.0.1"]))
    [request] = receiver.requests
    assert request["path"] == "/hooks/T0/secret"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"] == f"CampusHub-scheduler/{__version__}"
    payload = json.loads(request["body"])
    assert payload["event"] == "run.failed"
    assert payload["run"]["run_id"] == 42 and payload["run"]["owner"] == "ada"
    assert payload["run"]["url"] == "https://hub.campus.edu/services/scheduler/runs/42"
    assert payload["text"].endswith(" https://hub.campus.edu/services/scheduler/runs/42")


def test_the_post_goes_to_the_address_that_was_checked(receiver, monkeypatch):
    """A name that resolves elsewhere after the check (DNS rebinding) does not move the connection."""
    real_getaddrinfo, lookups = socket.getaddrinfo, []

    def rebinding_dns(host, port, *args, **kwargs):
        if host != "hooks.example":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"  # nothing listens on 127.0.0.2
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    url = f"http://hooks.example:{receiver.port}/hook"
    asyncio.run(send_webhook(url, REPORT, allowed_hosts=["hooks.example"]))
    assert lookups == ["hooks.example"]
    [request] = receiver.requests
    assert request["headers"]["Host"] == f"hooks.example:{receiver.port}"


def test_a_loopback_host_that_is_not_allowed_is_refused_and_gets_nothing(receiver):
    for allowed in ((), ["10.0.0.1", "localhost"]):
        with pytest.raises(AlertError) as e:
            asyncio.run(send_webhook(f"{receiver.url}/hook", REPORT, allowed_hosts=allowed))
        assert str(e.value).startswith("webhook refused: 127.0.0.1 is a loopback address")
    assert receiver.requests == []


def test_an_error_answer_is_an_alert_error_without_the_secret_path(receiver):
    receiver.status = 500
    with pytest.raises(AlertError) as e:
        asyncio.run(send_webhook(f"{receiver.url}/hooks/T0/secret", REPORT, allowed_hosts=["127.0.0.1"]))
    message = str(e.value)
    assert message == f"webhook {receiver.url} answered 500 Internal Server Error: boom: the receiver broke"
    assert "secret" not in message
    assert len(receiver.requests) == 1


def test_a_redirect_is_not_followed(receiver):
    receiver.status = 302
    receiver.location = f"{receiver.url}/elsewhere"
    with pytest.raises(AlertError, match="answered 302 Found to .*/elsewhere \\(redirects are not followed\\)"):
        asyncio.run(send_webhook(f"{receiver.url}/hook", REPORT, allowed_hosts=["127.0.0.1"]))
    assert [r["path"] for r in receiver.requests] == ["/hook"]


def test_no_receiver_listening_is_an_alert_error():
    port = free_port()
    with pytest.raises(AlertError, match=f"webhook http://127.0.0.1:{port}: no answer: .*refused"):
        asyncio.run(send_webhook(f"http://127.0.0.1:{port}/hook", REPORT, allowed_hosts=["127.0.0.1"], timeout=5))


# --- checks at definition time


@pytest.mark.parametrize(
    "url, problem",
    [
        ("file:///etc/passwd", "must start with http:// or https:// (its scheme: file:)"),
        ("ftp://example.org/hook", "must start with http:// or https:// (its scheme: ftp:)"),
        ("example.org/hook", "must start with http:// or https:// (its scheme: none)"),
        ("https:///hook", "the URL has no host"),
        ("https://ada:s3cret@example.org/hook", "must not hold a user name or password"),
        ("https://token@example.org/hook", "must not hold a user name or password"),
        ("https://example.org/" + "x" * 2000, "longer than 2000 characters"),
        ("https://example.org/a hook", "spaces or control characters"),
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("http://[::1]:8080/hook", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1 is a loopback address"),
        ("http://0.0.0.0:8081/hub/api", "0.0.0.0 is an unspecified address"),
        ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
        ("http://100.64.0.1/", "100.64.0.1 is a non-public address"),
        ("http://localhost:8081/hub/api", "localhost resolves to 127.0.0.1, which is a loopback address"),
        ("http://2130706433/", "resolves to 127.0.0.1, which is a loopback address"),  # 127.0.0.1 as a number
        ("https://no-such-host.invalid/hook", "the host no-such-host.invalid cannot be resolved"),
    ],
)
def test_webhook_urls_refused(url, problem):
    found = webhook_problem(url, allowed_hosts=["hooks.campus.edu"])
    assert found is not None and problem in found, found


def test_internal_addresses_say_how_to_allow_them():
    assert "scheduler.webhook_allowed_hosts" in webhook_problem("http://10.0.0.1/", ())


@pytest.mark.parametrize("url", ["https://8.8.8.8/hook", "http://1.1.1.1", "https://[2606:4700:4700::1111]:8443/x"])
def test_public_ip_literals_are_accepted_without_a_lookup(url):
    assert webhook_problem(url, ()) is None


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("http://10.0.0.1/hook", ["10.0.0.1"]),
        ("http://LocalHost:8080/hook", ["localhost"]),
        ("http://localhost:8080/hook", ["LOCALHOST"]),
        ("http://[::1]/hook", ["[::1]"]),
        ("http://[::1]/hook", ["::1"]),
    ],
)
def test_allowed_hosts_may_be_internal(url, allowed):
    assert webhook_problem(url, allowed) is None
    assert webhook_problem(url, ()) is not None


@pytest.mark.parametrize(
    "address", ["ada@campus.edu", "ada.lovelace+reports@cs.campus.edu", "o'brien@campus.edu", "a@x.io"]
)
def test_good_email_addresses(address):
    assert email_problem(address) is None


@pytest.mark.parametrize(
    "address, problem",
    [
        ("", "empty"),
        ("ada", "not an email address"),
        ("ada@localhost", "not an email address"),
        ("@campus.edu", "not an email address"),
        ("ada@campus..edu", "not an email address"),
        (".ada@campus.edu", "not an email address"),
        ("ada..l@campus.edu", "not an email address"),
        ("ada@-campus.edu", "not an email address"),
        ("ada@@campus.edu", "not an email address"),
        ("Ada Lovelace <ada@campus.edu>", "not one plain email address"),
        ("ada@campus.edu, eve@campus.edu", "not one plain email address"),
        ("ada@campus.edu\nBcc: eve@evil.example", "not one plain email address"),
        ('"ada"@campus.edu', "not one plain email address"),
        ("a" * 65 + "@campus.edu", "too long"),
        ("ada@" + "x" * 250 + ".edu", "too long"),
    ],
)
def test_bad_email_addresses(address, problem):
    found = email_problem(address)
    assert found is not None and problem in found, found
