"""`campushub doctor`'s pure parts: thresholds, the lines and the JSON, the prefix, and what it skips
without Slurm. The checks against a real cluster are in tests/integration/test_doctor.py."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time

import pytest

from campushub import doctor
from campushub.doctor import FAIL, OK, SKIP, WARN, Result
from campushub.site import parse_site

GiB, MiB = 1024**3, 1024**2


def campushub(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    return subprocess.run([sys.executable, "-m", "campushub", *args], capture_output=True, text=True, env=env, **kw)


@pytest.mark.parametrize(
    ("free", "total", "status"),
    [
        (50 * GiB, 100 * GiB, OK),
        (99 * MiB, 100 * GiB, FAIL),  # under 100 MiB: the database stops writing soon
        (900 * MiB, 2 * GiB, WARN),  # under 1 GiB
        (4 * GiB, 100 * GiB, WARN),  # under 5 %
        (6 * GiB, 100 * GiB, OK),
        (1 * GiB, 10 * GiB, OK),
    ],
)
def test_disk_thresholds(free, total, status):
    assert doctor.disk_status(free, total) == status


@pytest.mark.parametrize(("days", "status"), [(-1, FAIL), (0, FAIL), (3, WARN), (13.9, WARN), (14.1, OK), (90, OK)])
def test_certificate_thresholds(days, status):
    now = time.time()
    assert doctor.cert_status(now + days * 86400, now) == status


def test_a_line_carries_the_fix_unless_ok():
    assert Result("munge", OK, "works", "never shown").line() == "OK    munge: works"
    line = Result("munge", FAIL, "cannot make a credential", "start munged").line()
    assert line == "FAIL  munge: cannot make a credential Fix: start munged"
    assert "\n" not in line


def test_the_report_ends_with_a_summary_and_the_json_says_the_same():
    results = [
        Result("a", OK, "x"),
        Result("b", WARN, "y", "do y"),
        Result("c", FAIL, "z", "do z"),
        Result("d", SKIP, "w"),
    ]
    text = doctor.report(results).splitlines()
    assert len(text) == 5 and text[-1] == "4 checks: 1 OK, 1 WARN, 1 FAIL, 1 SKIP; fix what FAILs first"
    data = json.loads(doctor.report(results, as_json=True))
    assert data["ok"] is False and data["summary"] == text[-1]
    assert data["checks"][2] == {"check": "c", "status": "FAIL", "found": "z", "fix": "do z"}
    assert doctor.exit_code(results) == 1
    assert doctor.exit_code(results[:2] + results[3:]) == 0


def test_each_sudo_of_the_prefix_never_asks_a_password():
    assert doctor.non_interactive(["sudo", "-E", "-u", "{username}"]) == ["sudo", "-n", "-E", "-u", "{username}"]
    assert doctor.non_interactive(["/usr/bin/sudo", "-u", "hub", "sudo", "-u", "x"]) == [
        "/usr/bin/sudo", "-n", "-u", "hub", "sudo", "-n", "-u", "x",
    ]  # fmt: skip
    assert doctor.non_interactive(["runuser", "-u", "{username}", "--"]) == ["runuser", "-u", "{username}", "--"]


def test_the_munge_socket_comes_from_slurm_conf(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nAuthType=auth/munge\nAuthInfo=cred_expire=60,socket=/run/m/munge.sock\n")
    assert doctor.munge_socket(conf) == "/run/m/munge.sock"
    conf.write_text("AuthType=auth/munge\n")
    assert doctor.munge_socket(conf) is None
    assert doctor.munge_socket(tmp_path / "missing.conf") is None


def test_the_hub_api_url_is_the_one_servers_use():
    site = parse_site({"hub": {"hub_ip": "10.0.0.5", "hub_port": 8081, "base_url": "/hub1/"}})
    assert doctor.hub_api_url(site) == "http://10.0.0.5:8081/hub1/hub/api/"
    site = parse_site({"hub": {"hub_connect_url": "http://hub.campus.edu:8081/anything/", "base_url": "/h/"}})
    assert doctor.hub_api_url(site) == "http://hub.campus.edu:8081/h/hub/api/"


def test_a_command_past_its_time_limit_is_killed_with_its_children():
    began = time.monotonic()
    ran = doctor.run(["sh", "-c", "sleep 30 & sleep 30"], 0.5, dict(os.environ))
    assert ran.rc is None and "did not finish within 0.5 s" in ran.said
    assert time.monotonic() - began < 5
    assert doctor.run(["no-such-command-here"], 1, dict(os.environ)).said.endswith("not installed (not found on PATH)")


def test_without_slurm_the_slurm_checks_say_skip_and_the_rest_run(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(f"hub:\n  state_dir: {tmp_path / 'state'}\n")
    r = campushub("doctor", "--config", str(site), "--json")
    assert r.returncode == 0, r.stderr
    found = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert list(found) == list(doctor.CHECKS)
    for name in ("munge", "slurm-controller", "sudo-rule", "node-environment", "hub-api-from-node", "gpus"):
        assert found[name]["status"] == SKIP and "spawner.backend is local" in found[name]["found"]
    assert found["secret-files"]["status"] == OK and found["state-disk"]["status"] == OK
    assert found["tls-certificate"]["status"] == SKIP and "public_url is not set" in found["tls-certificate"]["found"]


def test_only_runs_the_named_checks_and_refuses_an_unknown_one(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(f"hub:\n  state_dir: {tmp_path}\n")
    r = campushub("doctor", "--config", str(site), "--only", "state-disk")
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("OK    state-disk: ")
    assert r.stdout.splitlines()[-1].startswith("1 checks: 1 OK")
    r = campushub("doctor", "--config", str(site), "--only", "disk")
    assert r.returncode == 2 and "no check named disk; the checks: munge, slurm-controller" in r.stderr


@pytest.mark.parametrize(
    ("user", "says"), [("no-such-user-x", "no such unix account"), ("root", "outside users.min_uid")]
)
def test_user_must_be_an_account_the_hub_would_serve(tmp_path, user, says):
    site = tmp_path / "site.yaml"
    site.write_text(f"hub:\n  state_dir: {tmp_path}\n")
    r = campushub("doctor", "--config", str(site), "--user", user)
    assert r.returncode == 2 and says in r.stderr


def test_a_check_that_cannot_run_fails_alone(monkeypatch):
    def broken(d):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setitem(doctor.CHECKS, "secret-files", broken)
    results = doctor.Doctor(parse_site({})).check(["secret-files", "state-disk"])
    assert [(r.check, r.status) for r in results] == [("secret-files", FAIL), ("state-disk", OK)]
    assert results[0].found == "the check could not run: PermissionError: [Errno 13] Permission denied"


def test_the_default_account_is_the_admin_who_ran_sudo_if_the_hub_would_serve_it(monkeypatch):
    from campushub.cli import doctor_user

    monkeypatch.setenv("SUDO_USER", "root")
    assert doctor_user(None, parse_site({})) is None  # uid 0: outside users.min_uid-max_uid
    system = pwd.getpwuid(1).pw_name  # daemon: an account of every Debian
    monkeypatch.setenv("SUDO_USER", system)
    assert doctor_user(None, parse_site({})) is None
    assert doctor_user(None, parse_site({"users": {"min_uid": 1}})).pw_name == system
    monkeypatch.setenv("SUDO_USER", "no-such-user-x")
    assert doctor_user(None, parse_site({})) is None
    monkeypatch.delenv("SUDO_USER")
    assert doctor_user(None, parse_site({})) is None
