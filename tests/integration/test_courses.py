"""Courses against a real hub (the demo's login and local servers, restarted like a service) and real
unix users: plan, apply and re-apply, the staff role's reach, grants, shared folders with unix groups,
an interrupted apply, bad input, and retiring with an archive."""

from __future__ import annotations

import grp
import html
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.hub import RunningHub
from tests.cluster.slurm import wait_for
from tests.cluster.users import create_users, remove_user

ADMIN = "chub-ops"
X_STAFF, Y_STAFF = "chub-alice", "chub-dave"
X_STUDENTS = ["chub-bob", "chub-carol", "chub-frank"]
Y_STUDENTS = ["chub-erin"]
OUTSIDER = "chub-nobody"  # a unix account in no course
APPLY_SCOPES = ["admin:users", "admin:groups"]
RETIRE_SCOPES = [*APPLY_SCOPES, "admin:servers"]


@pytest.fixture(scope="module")
def hub(slurm, unix_users, tmp_path_factory):
    """A hub beside the test cluster, whose Slurm accounting keeps the courses' GPU quotas."""
    create_users([OUTSIDER])
    running = RunningHub(
        tmp_path_factory.mktemp("courses-hub"), {"auth": {"admin_users": [ADMIN]}, "scheduler": {"enabled": False}}
    ).start()
    try:
        yield running
    finally:
        running.close()
        remove_user(OUTSIDER)


@pytest.fixture(scope="module")
def shared():
    """The shared filesystem's folder for courses: root's, readable by all (its courses are not)."""
    path = Path(tempfile.mkdtemp(prefix="campushub-courses-", dir="/srv" if os.path.isdir("/srv") else None))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
    for group in ("course-x", "course-x-staff", "course-y", "course-y-staff"):
        subprocess.run(["groupdel", group], capture_output=True, check=False)


@pytest.fixture(scope="module")
def tokens(hub, tmp_path_factory):
    admin = hub.token(ADMIN, hub.admin_password)
    folder = tmp_path_factory.mktemp("tokens")
    files = {}
    for name, scopes in (("apply", APPLY_SCOPES), ("retire", RETIRE_SCOPES), ("groups-only", ["admin:users"])):
        r = hub.api("POST", f"/users/{ADMIN}/tokens", admin, json={"scopes": scopes, "note": f"courses {name}"})
        assert r.status_code == 201, r.text
        files[name] = folder / name
        files[name].write_text(r.json()["token"])
    files["admin"] = admin
    return files


def manifest(folder: Path, course_id: str, staff: str, students: list[str], shared: Path | None, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "roster.csv").write_text("username,email,name,section\n" + "".join(
        f"{s},{s}@campus.example,Student {s},A\n" for s in students))  # fmt: skip
    data = {
        "id": course_id,
        "title": f"Course {course_id.upper()}",
        "term": {"start": "2026-09-01", "end": "2026-12-18"},
        "staff": {"instructors": [staff]},
        "roster": "roster.csv",
        "profiles": ["default"],
        "gpu_quota": {"max_gpus_per_student": 1, "max_gpus": 4},
        **({"folders": {"root": str(shared / course_id)}} if shared else {}),
        **extra,
    }
    path = folder / "course.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def course(hub: RunningHub, command: str, path: Path, token_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "campushub", "course", command, str(path), "--config", str(hub.site_file),
         "--token-file", str(token_file), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=30)


def form_fields(page: str) -> list[tuple[str, str]]:
    """The named inputs of a page's form (hidden ones and checked boxes), as a browser would post them."""
    fields = []
    for tag in re.findall(r"<input\b[^>]*>", page):
        name, value = re.search(r'name="([^"]*)"', tag), re.search(r'value="([^"]*)"', tag)
        kind = re.search(r'type="([^"]*)"', tag)
        if name and (not kind or kind.group(1) != "checkbox" or "checked" in tag):
            fields.append((name.group(1), html.unescape(value.group(1) if value else "")))
    return fields


def group(hub, name, token):
    r = hub.api("GET", f"/groups/{name}", token)
    return r.json() if r.status_code == 200 else None


@pytest.fixture(scope="module")
def applied(hub, tokens, shared, tmp_path_factory):
    """Courses x and y applied (their new staff roles in effect with no hub restart)."""
    root = tmp_path_factory.mktemp("courses")
    paths = {
        "x": manifest(root / "x", "x", X_STAFF, X_STUDENTS, shared),
        "y": manifest(root / "y", "y", Y_STAFF, Y_STUDENTS, shared),
    }
    results = {name: course(hub, "apply", path, tokens["apply"]) for name, path in paths.items()}
    for r in results.values():
        assert r.returncode == 0, r.stderr
    return {"paths": paths, "results": results}


def test_a_bad_manifest_and_roster_list_every_problem_and_change_nothing(hub, tokens, shared, tmp_path):
    path = manifest(tmp_path, "bad", "chub-nosuchstaff", ["chub-bob"], shared,
                    term={"start": "2026-09-01", "end": "2026-08-01"})  # fmt: skip
    (tmp_path / "roster.csv").write_text("username,email\nchub-bob,b@x.org\nBad Name,x@x.org\nchub-bob,c@x.org\n,\n")
    r = course(hub, "apply", path, tokens["apply"])
    assert r.returncode == 2, r.stdout
    assert "term: the term ends (2026-08-01) before it starts (2026-09-01)" in r.stderr, r.stderr
    r = course(hub, "apply", manifest(tmp_path, "bad", "chub-nosuchstaff", ["chub-bob"], shared), tokens["apply"])
    assert (
        r.returncode == 2 and "course.yaml:8: staff.instructors[0]: chub-nosuchstaff is an unknown user" in r.stderr
    ), r.stderr
    (tmp_path / "roster.csv").write_text("username,email\nchub-bob,b@x.org\nBad Name,x@x.org\nchub-bob,c@x.org\n")
    r = course(hub, "apply", manifest_path := tmp_path / "course.yaml", tokens["apply"])
    assert r.returncode == 2
    assert f"{tmp_path}/roster.csv:3: 'Bad Name' is not a valid user name" in r.stderr, r.stderr
    assert f"{tmp_path}/roster.csv:4: chub-bob is already on line 2" in r.stderr, r.stderr
    assert "nothing was changed" in r.stderr
    assert manifest_path.exists()
    assert group(hub, "course-bad-students", tokens["admin"]) is None
    assert not (shared / "bad").exists()


def slurm_members(slurm, account: str) -> list[str]:
    out = slurm.cmd("sacctmgr", "-n", "-P", "show", "assoc", "where", f"account={account}", "format=user").stdout
    return sorted(line for line in out.split() if line)


def test_plan_shows_every_change_and_apply_then_changes_nothing(hub, tokens, shared, applied, slurm):
    x = applied["results"]["x"].stdout
    assert "course x: applied" in x
    assert "create group course-x-students with 3 member(s)" in x
    assert "grant profiles ['default'] to course-x-students" in x
    assert "add role course-x-staff" in x and "in effect at once" in x and "restart" not in x
    assert "add Slurm account course-x under root" in x and "add 3 users to Slurm account course-x" in x
    assert "set the GPU limit of each user of Slurm account course-x from no limit to 1 GPU" in x
    assert "charge course-x-students's servers to Slurm account course-x" in x
    assert slurm_members(slurm, "course-x") == X_STUDENTS
    qos = slurm.cmd("sacctmgr", "-n", "-P", "show", "qos", "where", "name=course-x", "format=maxtrespu").stdout
    assert qos.strip() == "gres/gpu=1"
    r = course(hub, "apply", applied["paths"]["x"], tokens["apply"])
    assert r.returncode == 0, r.stderr
    assert "no changes: the hub matches the manifest" in r.stdout, r.stdout
    r = course(hub, "plan", applied["paths"]["x"], tokens["apply"])
    assert "no changes" in r.stdout, r.stdout
    g = group(hub, "course-x-students", tokens["admin"])
    assert sorted(g["users"]) == X_STUDENTS
    assert g["properties"] == {"campushub_profiles": ["default"], "campushub_slurm_account": "course-x"}
    assert group(hub, "course-x-staff", tokens["admin"])["roles"] == ["course-x-staff"]


def test_only_an_unfiltered_admin_groups_token_puts_the_roles_file_in_effect(hub, tokens, applied):
    r = hub.api("POST", f"/users/{ADMIN}/tokens", tokens["admin"],
                json={"scopes": ["admin:groups!group=course-x-staff"], "note": "filtered"})  # fmt: skip
    filtered = r.json()["token"]
    for token in (filtered, Path(tokens["groups-only"]).read_text(), hub.token(X_STAFF)):
        r = hub.api("POST", "/campushub/course-roles", token)
        assert r.status_code == 403, r.text
    r = hub.api("POST", "/campushub/course-roles", Path(tokens["apply"]).read_text())
    assert r.status_code == 200, r.text
    assert {"course-x-staff", "course-y-staff"} <= set(r.json()["courses"]) and r.json()["added"] == []
    assert hub.api("POST", "/campushub/course-roles", "not-a-token").status_code == 403


def test_staff_reach_their_own_students_servers_only(hub, applied):
    bob, erin = "chub-bob", "chub-erin"
    own = {u: hub.token(u) for u in (bob, erin, "chub-carol", X_STAFF, Y_STAFF)}
    for student in (bob, erin):
        hub.spawn_and_wait(student, own[student], timeout=120)
    try:
        assert hub.user_get(bob, "api/status", own[X_STAFF]).status_code == 200  # x's staff opens x's student's
        assert hub.user_get(erin, "api/status", own[X_STAFF]).status_code == 403  # not y's
        assert hub.user_get(bob, "api/status", own[Y_STAFF]).status_code == 403
        assert hub.user_get(erin, "api/status", own[Y_STAFF]).status_code == 200
        assert hub.user_get(bob, "api/status", own["chub-carol"]).status_code == 403  # students: not each other's
        assert hub.user_get(bob, "api/status", own[bob]).status_code == 200
        # in a browser too: the hub's OAuth hands the server a token that opens it
        staff_browser = hub.login(X_STAFF)
        page = staff_browser.get(f"{hub.url}/user/{bob}/lab", timeout=60)
        # the hub asks before it lets anyone into another's server: the staff member confirms
        assert page.status_code == 200 and "/hub/api/oauth2/authorize" in page.url, (page.status_code, page.url)
        page = staff_browser.post(page.url, data=form_fields(page.text), timeout=60)
        assert page.status_code == 200 and page.url.endswith(f"/user/{bob}/lab"), (page.status_code, page.url)
        assert staff_browser.get(f"{hub.url}/user/{bob}/api/status", timeout=30).status_code == 200
        assert hub.login(Y_STAFF).get(f"{hub.url}/user/{bob}/lab", timeout=60).status_code == 403
        # list and read: only their own course's students
        listed = {u["name"] for u in hub.api("GET", "/users", own[X_STAFF]).json()}
        assert set(X_STUDENTS) <= listed <= {*X_STUDENTS, X_STAFF}, listed
        assert hub.api("GET", f"/users/{erin}", own[X_STAFF]).status_code in (403, 404)
        # admin of servers: stop x's student's, not y's
        assert hub.api("DELETE", f"/users/{erin}/server", own[X_STAFF]).status_code in (403, 404)
        assert hub.api("DELETE", f"/users/{bob}/server", own[X_STAFF]).status_code in (202, 204)
    finally:
        for student in (bob, erin):
            if hub.server(student, own[student]):
                hub.stop_server(student, own[student])


def test_folders_let_the_permitted_writes_through_and_no_other(applied, shared):
    x = shared / "x"
    assert stat.S_IMODE(x.stat().st_mode) == 0o750 and grp.getgrgid(x.stat().st_gid).gr_name == "course-x"
    assert set(grp.getgrnam("course-x").gr_mem) == {*X_STUDENTS, X_STAFF}
    ok = lambda r: r.returncode == 0  # noqa: E731
    assert ok(as_user(X_STAFF, "sh", "-c", f"echo lecture > {x}/materials/week1.txt"))
    assert ok(as_user("chub-bob", "cat", f"{x}/materials/week1.txt"))
    assert not ok(as_user("chub-bob", "sh", "-c", f"echo no > {x}/materials/bob.txt"))
    assert not ok(as_user("chub-bob", "sh", "-c", f"echo no >> {x}/materials/week1.txt"))
    assert ok(as_user("chub-bob", "sh", "-c", f"echo mine > {x}/exchange/chub-bob/hw1.txt"))
    assert not ok(as_user("chub-bob", "sh", "-c", f"echo no > {x}/exchange/chub-carol/hw1.txt"))
    assert not ok(as_user("chub-bob", "ls", f"{x}/exchange"))  # students cannot list the others' folders
    assert not ok(as_user("chub-carol", "cat", f"{x}/exchange/chub-bob/hw1.txt"))
    assert ok(as_user(X_STAFF, "cat", f"{x}/exchange/chub-bob/hw1.txt"))  # staff read every student's
    assert ok(as_user(X_STAFF, "ls", f"{x}/exchange"))
    assert not ok(as_user(X_STAFF, "sh", "-c", f"echo no > {x}/exchange/chub-bob/grade.txt"))  # read only
    assert not ok(as_user(Y_STAFF, "cat", f"{x}/materials/week1.txt"))  # another course's staff
    assert not ok(as_user("chub-erin", "ls", f"{x}/materials"))
    assert not ok(as_user(OUTSIDER, "ls", str(x)))


def test_apply_follows_no_symlink_a_student_planted(hub, tokens, applied, shared):
    # bob replaces nothing he may not (exchange/ is root's), but a folder apply makes must never be a link
    bob_dir = shared / "x" / "exchange" / "chub-bob"
    assert as_user("chub-bob", "ln", "-s", "/etc", f"{bob_dir}/etc").returncode == 0
    subprocess.run(["rm", "-rf", str(shared / "x" / "exchange" / "chub-frank")], check=True)
    os.symlink("/etc", shared / "x" / "exchange" / "chub-frank")  # as if planted: apply refuses to walk it
    r = course(hub, "apply", applied["paths"]["x"], tokens["apply"])
    assert r.returncode == 2 and "exchange/chub-frank: a symlink or not a folder: refused" in r.stderr, r.stderr
    assert stat.S_IMODE(os.stat("/etc").st_mode) == 0o755 and os.stat("/etc").st_uid == 0
    os.unlink(shared / "x" / "exchange" / "chub-frank")
    assert course(hub, "apply", applied["paths"]["x"], tokens["apply"]).returncode == 0


def test_a_dropped_student_leaves_the_groups_and_keeps_account_and_home(hub, tokens, applied, shared):
    path = applied["paths"]["x"]
    (path.parent / "roster.csv").write_text("username\nchub-bob\nchub-frank\n")
    r = course(hub, "apply", path, tokens["apply"])
    assert r.returncode == 0, r.stderr
    assert "remove 1 member(s) from course-x-students (accounts and homes stay): chub-carol" in r.stdout
    assert sorted(group(hub, "course-x-students", tokens["admin"])["users"]) == ["chub-bob", "chub-frank"]
    assert hub.api("GET", "/users/chub-carol", tokens["admin"]).status_code == 200
    assert Path("/home/chub-carol").is_dir()
    assert "chub-carol" not in grp.getgrnam("course-x").gr_mem
    assert course(hub, "apply", path, tokens["apply"]).stdout.count("no changes") == 1


def test_an_interrupted_apply_converges_when_run_again(hub, tokens, applied, tmp_path):
    students = [f"chub-z{i:03d}" for i in range(300)]
    path = manifest(tmp_path, "big", X_STAFF, students, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "campushub", "course", "apply", str(path), "--config", str(hub.site_file),
         "--token-file", str(tokens["apply"])], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stderr:
        if "/300 hub users created" in line or "added to" in line:
            proc.send_signal(signal.SIGKILL)  # in the middle of creating users
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    members = (group(hub, "course-big-students", tokens["admin"]) or {}).get("users", [])
    assert len(members) < 300
    # a token short of a scope changes nothing more; the right one converges
    r = course(hub, "apply", path, tokens["groups-only"])
    assert r.returncode == 2 and "the token lacks a scope" in r.stderr, r.stderr
    r = course(hub, "apply", path, tokens["apply"])
    assert r.returncode == 0, r.stderr
    assert sorted(group(hub, "course-big-students", tokens["admin"])["users"]) == students
    assert "no changes" in course(hub, "apply", path, tokens["apply"]).stdout


def test_retire_archives_verifies_then_removes(hub, tokens, applied, shared, tmp_path, slurm):
    path = applied["paths"]["y"]
    erin = "chub-erin"
    y = shared / "y"
    assert as_user(Y_STAFF, "sh", "-c", f"echo notes > {y}/materials/notes.txt").returncode == 0
    assert as_user(erin, "sh", "-c", f"echo answer > {y}/exchange/{erin}/hw.txt").returncode == 0
    assert as_user(erin, "ln", "-s", "/etc/shadow", f"{y}/exchange/{erin}/shadow").returncode == 0
    erin_token = hub.token(erin)
    hub.spawn_and_wait(erin, erin_token, timeout=120)

    dry = course(hub, "retire", path, tokens["retire"], "--archive-dir", str(tmp_path))
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing changed" in dry.stdout and "stop 1 running server(s)" in dry.stdout, dry.stdout
    assert not list(tmp_path.iterdir()) and group(hub, "course-y-students", tokens["admin"])

    r = course(hub, "retire", path, tokens["retire"], "--archive-dir", str(tmp_path), "--yes")
    assert r.returncode == 0, r.stderr
    (archive,) = tmp_path.glob("course-y-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        sums = tar.extractfile("SHA256SUMS").read().decode()
        link = tar.getmember(f"y/exchange/{erin}/shadow")
        assert tar.extractfile(f"y/exchange/{erin}/hw.txt").read() == b"answer\n"
    assert link.issym() and link.linkname == "/etc/shadow"  # kept as a link: root never read the shadow file
    assert "y/materials/notes.txt" in names and f"y/exchange/{erin}/hw.txt" in sums
    report = json.loads(next(tmp_path.glob("course-y-*.report.json")).read_text())
    assert report["files"] == 2 and any("verified" in line for line in report["report"])
    wait_for(lambda: hub.server(erin, erin_token) is None, 60, "erin's server to stop")
    assert group(hub, "course-y-students", tokens["admin"]) is None
    assert group(hub, "course-y-staff", tokens["admin"]) is None
    assert "removed Slurm account course-y" in " ".join(report["report"]) or "remove Slurm account course-y" in r.stdout
    assert slurm_members(slurm, "course-y") == []
    assert "y" not in (Path(hub.site["hub"]["state_dir"]) / "course-roles.yaml").read_text().split()
    assert not y.exists()
    assert Path(f"/home/{erin}").is_dir() and hub.api("GET", f"/users/{erin}", tokens["admin"]).status_code == 200
    # the staff role went at once: y's staff holds no scope on y's students any more
    scopes = hub.api("GET", "/user", hub.token(Y_STAFF)).json()["scopes"]
    assert not [s for s in scopes if "course-y" in s], scopes
    # and a restart loads the roles file: x's role stays, y's stays gone
    hub.stop_hub()
    hub.start_hub()
    time.sleep(0.5)
    assert group(hub, "course-x-staff", tokens["admin"])["roles"] == ["course-x-staff"]
    assert not [s for s in hub.api("GET", "/user", hub.token(Y_STAFF)).json()["scopes"] if "course-y" in s]
    assert course(hub, "retire", path, tokens["retire"], "--archive-dir", str(tmp_path)).returncode == 0


def test_purge_homes_deletes_only_after_the_archive_and_only_homes_of_no_other_course(hub, tokens, shared, tmp_path):
    leaver = "chub-leaver"
    create_users([leaver])
    try:
        # chub-bob is also in course x: his home stays
        path = manifest(tmp_path / "p", "p", X_STAFF, [leaver, "chub-bob"], shared)
        assert course(hub, "apply", path, tokens["apply"]).returncode == 0
        assert as_user(leaver, "sh", "-c", f"echo work > {shared}/p/exchange/{leaver}/final.txt").returncode == 0
        r = course(
            hub, "retire", path, tokens["retire"], "--archive-dir", str(tmp_path / "a"), "--yes", "--purge-homes"
        )
        assert r.returncode == 0, r.stderr
        assert "deleted 1 home(s) (after the archive was verified)" in r.stdout, r.stdout
        assert not Path(f"/home/{leaver}").exists() and Path("/home/chub-bob").is_dir()
        (archive,) = (tmp_path / "a").glob("course-p-*.tar.gz")
        with tarfile.open(archive) as tar:
            assert tar.extractfile(f"p/exchange/{leaver}/final.txt").read() == b"work\n"
    finally:
        remove_user(leaver)
