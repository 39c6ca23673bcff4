"""Courses: the manifest, the roster and the diff against a hub's state (pure logic, no hub)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from campushub.courses import CourseError
from campushub.courses.manifest import Course, load_course, parse_manifest
from campushub.courses.plan import HubState, diff
from campushub.courses.roles import course_ids, course_roles, staff_scopes, write_course_ids
from campushub.courses.roster import Student, parse_roster

EXAMPLE = Path(__file__).parents[2] / "hub_config" / "course.example.yaml"

MANIFEST = """\
id: ml101
title: Machine Learning 101
term: {start: 2026-09-01, end: 2026-12-18}
staff: {instructors: [ada], tas: [grace]}
roster: roster.csv
profiles: [gpu-1]
"""


def write(tmp_path: Path, manifest: str = MANIFEST, roster: str = "username,email\nalan,alan@x.org\n") -> Path:
    (tmp_path / "roster.csv").write_text(roster)
    path = tmp_path / "course.yaml"
    path.write_text(manifest)
    return path


def problems(fn, *args, **kw) -> list[str]:
    with pytest.raises(CourseError) as e:
        fn(*args, **kw)
    return e.value.problems


def test_the_example_manifest_is_valid():
    course = load_course(EXAMPLE, ["gpu-1"])
    assert course.manifest.slurm_account == "course-ml101"
    assert course.manifest.gpu_quota.max_gpus_per_student == 1
    assert course.usernames == ["alan", "barbara", "claude"]


def test_a_roster_lists_every_problem_with_its_line():
    text = textwrap.dedent("""\
        username,email,name,section
        alan,alan@x.org,Alan,A
        Bob,bob@x.org,Bob,A
        alan,alan2@x.org,Alan again,B

        carol,not-an-email,Carol,B
        dave,dave@x.org
        ,e@x.org,Nobody,A
        "erin",erin@x.org,"Erin
        Two lines",C
        root;rm,x@x.org,X,A
        """)
    found = problems(parse_roster, text, "r.csv")
    assert found == [
        "r.csv:3: 'Bob' is not a valid user name (lowercase letters, digits, '.', '_', '-', starting with a letter, "
        "at most 32 characters)",
        "r.csv:4: alan is already on line 2",
        "r.csv:6: 'not-an-email' is not an email address",
        "r.csv:7: 2 field(s), but the header names 4",
        "r.csv:8: no username",
        "r.csv:11: 'root;rm' is not a valid user name (lowercase letters, digits, '.', '_', '-', starting with a "
        "letter, at most 32 characters)",
    ]


def test_a_roster_header_must_name_known_columns():
    assert problems(parse_roster, "user,mail\nalan,a@x\n", "r.csv") == [
        "r.csv:1: unknown column(s) 'user', 'mail': the columns are username, email, name, section",
        "r.csv:1: no username column",
    ]
    assert problems(parse_roster, "", "r.csv") == ["r.csv:1: the first line must name the columns: "
                                                   "username,email,name,section"]  # fmt: skip


def test_a_roster_in_any_column_order_with_a_bom():
    students = parse_roster("\ufeffsection,username\nB, alan \n", "r.csv")
    assert students == [Student("alan", "", "", "B", 2)]


def test_a_term_that_ends_before_it_starts_is_refused_with_its_line(tmp_path):
    bad = MANIFEST.replace("end: 2026-12-18", "end: 2026-08-01").replace("[ada]", "[Ada!]")
    found = problems(load_course, write(tmp_path, bad))
    assert any(":3: term: the term ends (2026-08-01) before it starts (2026-09-01)" in p for p in found), found
    assert any(":4: staff.instructors[0]: string should match pattern" in p for p in found), found


def test_unknown_profiles_and_staff_on_the_roster_are_refused(tmp_path):
    path = write(tmp_path, roster="username\nalan\nada\n")
    found = problems(load_course, path, ["cpu"])
    assert found[0].endswith(":6: profiles[0]: the site has no profile 'gpu-1' (it has: cpu)")
    assert found[1].endswith(":4: staff.instructors[0]: ada is also a student (roster line 3): staff and "
                             "students are apart")  # fmt: skip


def test_unknown_keys_and_bad_folders_are_refused(tmp_path):
    found = problems(load_course, write(tmp_path, MANIFEST + "folderz: {}\nfolders: {root: srv/x}\n"))
    assert any("folderz: extra inputs are not permitted" in p for p in found), found
    assert any("folders: value error" in p.lower() or "root must be an absolute path" in p for p in found), found


def course(students=("alan", "barbara"), profiles=("gpu-1",)) -> Course:
    m = parse_manifest(MANIFEST.replace("[gpu-1]", f"[{', '.join(profiles)}]"))
    return Course(m, [Student(s, line=i + 2) for i, s in enumerate(students)])


def test_a_new_course_plans_every_step(tmp_path):
    steps = diff(course(), HubState(users={"alan"}, groups={}, role_courses=[]), tmp_path)
    texts = [s.text for s in steps]
    assert texts[0] == "create 3 hub user(s): barbara, ada, grace"
    assert "create group course-ml101-students with 2 member(s): alan, barbara" in texts
    assert any(t.startswith("grant profiles ['gpu-1'] to course-ml101-students") for t in texts)
    (role,) = [s for s in steps if s.area == "roles"]
    assert role.text.startswith("add role course-ml101-staff") and role.text.endswith("in effect at once")


def test_a_course_that_matches_plans_nothing_and_a_dropped_student_leaves_its_groups(tmp_path):
    state = HubState(
        users={"alan", "barbara", "ada", "grace", "zoe"},
        groups={
            "course-ml101-students": {"users": ["alan", "barbara"], "properties": {"campushub_profiles": ["gpu-1"]}},
            "course-ml101-staff": {"users": ["ada", "grace"], "properties": {}},
        },
        role_courses=["ml101"],
    )
    assert diff(course(), state, tmp_path) == []
    steps = diff(course(students=("alan",)), state, tmp_path)
    assert [s.text for s in steps] == [
        "remove 1 member(s) from course-ml101-students (accounts and homes stay): barbara"
    ]


def test_grants_keep_the_groups_other_properties(tmp_path):
    state = HubState(
        users={"alan", "barbara", "ada", "grace"},
        groups={"course-ml101-students": {"users": ["alan", "barbara"], "properties": {"other": 1}},
                "course-ml101-staff": {"users": ["ada", "grace"]}},
        role_courses=["ml101"],
    )  # fmt: skip
    (step,) = diff(course(profiles=("cpu", "gpu-1")), state, tmp_path)
    calls = []

    class Hub:
        def set_properties(self, group, properties):
            calls.append((group, properties))

    step.run(Hub(), print)
    assert calls == [("course-ml101-students", {"other": 1, "campushub_profiles": ["cpu", "gpu-1"]})]


def test_the_gpu_quota_is_shown_as_not_configured_without_slurm_accounting(tmp_path):
    m = parse_manifest(MANIFEST + "gpu_quota: {max_gpus_per_student: 1, max_gpus: 8}\n")
    steps = diff(Course(m, []), HubState(set(), {}, []), tmp_path)
    (note,) = [s for s in steps if s.note]
    assert note.text == ("Slurm account course-ml101 (max_gpus=8, max_gpus_per_student=1): Slurm accounting: not "
                         "configured on this site")  # fmt: skip


def test_staff_roles_are_made_from_ids_only(tmp_path):
    assert staff_scopes("ml101") == [
        "access:servers!group=course-ml101-students",
        "admin:servers!group=course-ml101-students",
        "list:users!group=course-ml101-students",
        "read:users!group=course-ml101-students",
        "read:groups!group=course-ml101-students",
    ]
    write_course_ids(tmp_path, ["ml101", "cv2", "ml101"])
    assert course_ids(tmp_path) == ["cv2", "ml101"]
    assert (tmp_path / "course-roles.yaml").stat().st_mode & 0o777 == 0o600
    assert [r["groups"] for r in course_roles(tmp_path)] == [["course-cv2-staff"], ["course-ml101-staff"]]
    (tmp_path / "course-roles.yaml").write_text("courses: [{name: admin, scopes: [admin:users]}]\n")
    with pytest.raises(ValueError, match="expected 'courses:' and a list of course ids"):
        course_ids(tmp_path)


def test_the_hub_loads_the_course_roles(tmp_path):
    from campushub.hubconfig import hub_config
    from campushub.site import parse_site

    site = parse_site({"hub": {"state_dir": str(tmp_path)}})
    write_course_ids(tmp_path, ["ml101"])
    roles = {r["name"]: r for r in hub_config(site).JupyterHub.load_roles}
    assert roles["course-ml101-staff"]["groups"] == ["course-ml101-staff"]


def test_a_students_server_also_opens_to_its_course_groups_scope():
    from types import SimpleNamespace

    from campushub.courses.access import course_access_scopes

    groups = [SimpleNamespace(name=n) for n in ("course-ml101-students", "course-ml101-staff", "gpu-users")]
    spawner = SimpleNamespace(
        user=SimpleNamespace(groups=groups),
        oauth_access_scopes=["access:servers!server=bob/", "access:servers!group=course-old-students"],
    )
    assert course_access_scopes(spawner) == ["access:servers!group=course-ml101-students"]
    assert spawner.oauth_access_scopes == ["access:servers!server=bob/", "access:servers!group=course-ml101-students"]


def test_an_archive_keeps_links_as_links_and_a_changed_file_fails_its_check(tmp_path):
    import tarfile

    from campushub.courses.retire import CHECKSUMS, verify_archive, write_archive

    root = tmp_path / "courses" / "ml101"
    (root / "exchange" / "alan").mkdir(parents=True)
    (root / "exchange" / "alan" / "hw.txt").write_text("answer\n")
    (root / "exchange" / "alan" / "secret").symlink_to("/etc/hostname")
    m = parse_manifest(MANIFEST + f"folders: {{root: {root}}}\n")
    archive = tmp_path / "a.tar.gz"
    sums = write_archive(Course(m, []), archive, print)
    assert list(sums) == ["ml101/exchange/alan/hw.txt"]
    assert verify_archive(archive) == 1
    with tarfile.open(archive) as tar:
        link = tar.getmember("ml101/exchange/alan/secret")
        assert link.issym() and link.linkname == "/etc/hostname"
        members = [(info, tar.extractfile(info).read() if info.isfile() else None) for info in tar]
    with tarfile.open(archive, "w:gz") as tar:  # the same archive, one file changed
        import io

        for info, data in members:
            if info.name.endswith("hw.txt"):
                data = b"changed\n"
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    with pytest.raises(CourseError, match="does not match its checksums"):
        verify_archive(archive)
    assert CHECKSUMS == "SHA256SUMS"


def test_the_students_group_property_grants_the_profiles_at_the_next_spawn(tmp_path):
    """What apply writes is what the spawner reads at each spawn (campushub.profiles.granted_profiles);
    tests/integration/test_profiles.py spawns with such a grant, with no restart."""
    from campushub.profiles import Profile, granted_profiles

    state = HubState({"alan", "barbara", "ada", "grace"}, {}, ["ml101"])
    (step,) = [s for s in diff(course(), state, tmp_path) if s.area == "grants"]
    written = {}

    class Hub:
        def set_properties(self, group, properties):
            written[group] = properties

    step.run(Hub(), print)
    profiles = [Profile(slug="cpu", display_name="CPU", everyone=True), Profile(slug="gpu-1", display_name="GPU")]
    assert [p.slug for p in granted_profiles(profiles, admin=False, groups={})] == ["cpu"]
    assert [p.slug for p in granted_profiles(profiles, admin=False, groups=written)] == ["cpu", "gpu-1"]


def test_a_role_written_but_not_in_the_hub_yet_is_put_in_effect(tmp_path):
    # an apply stopped between writing the roles file and the hub's loading it
    groups = {
        "course-ml101-students": {"users": ["alan", "barbara"], "properties": {"campushub_profiles": ["gpu-1"]}},
        "course-ml101-staff": {"users": ["ada", "grace"], "roles": []},
    }
    steps = diff(course(), HubState({"alan", "barbara", "ada", "grace"}, groups, ["ml101"]), tmp_path)
    assert [(s.note, s.text) for s in steps] == [
        (
            False,
            f"put the role course-ml101-staff of {tmp_path}/course-roles.yaml in effect for group course-ml101-staff",
        )
    ]
    synced = []

    class Hub:
        def sync_roles(self):
            synced.append(True)

    steps[0].run(Hub(), print)
    assert synced == [True]
    groups["course-ml101-staff"]["roles"] = ["course-ml101-staff"]
    assert diff(course(), HubState({"alan", "barbara", "ada", "grace"}, groups, ["ml101"]), tmp_path) == []


def test_the_cli_lists_every_problem_and_exits_2(tmp_path, capsys):
    from campushub.cli import main

    path = write(tmp_path, roster="username,email\nalan,a@x.org\nBad,b@x.org\nalan,c@x.org\n")
    assert main(["course", "plan", str(path), "--url", "http://127.0.0.1:9/hub/api"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("campushub: 2 problems; nothing was changed:\n")
    assert f"{tmp_path}/roster.csv:3: 'Bad' is not a valid user name" in err
    assert f"{tmp_path}/roster.csv:4: alan is already on line 2" in err


def test_the_cli_needs_a_token(tmp_path, capsys, monkeypatch):
    from campushub.cli import main

    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    assert main(["course", "plan", str(write(tmp_path))]) == 2
    assert "no hub token: give --token-file FILE or set JUPYTERHUB_API_TOKEN" in capsys.readouterr().err


def test_the_hub_database_follows_the_roles_file_without_a_restart(tmp_path):
    """The hub's side of `apply`: sync_roles on a real JupyterHub database (its own schema, SQLite)."""
    from jupyterhub import orm
    from jupyterhub import roles as hub_roles

    from campushub.courses.rolesapi import sync_roles

    db = orm.new_session_factory("sqlite://")()
    for role in hub_roles.get_default_roles():
        hub_roles.create_role(db, role)
    hub_roles.create_role(db, {"name": "course-notes", "scopes": ["read:users:name"]})  # a site's own role
    db.add(orm.Group(name="course-ml101-staff"))
    db.commit()

    write_course_ids(tmp_path, ["ml101", "cv2"])
    assert sync_roles(db, tmp_path) == {
        "courses": ["course-cv2-staff", "course-ml101-staff"],
        "added": ["course-cv2-staff", "course-ml101-staff"],
        "removed": [],
    }
    ml101 = orm.Group.find(db, "course-ml101-staff")
    assert [r.name for r in ml101.roles] == ["course-ml101-staff"]
    assert ml101.roles[0].scopes == staff_scopes("ml101")
    assert [r.name for r in orm.Group.find(db, "course-cv2-staff").roles] == ["course-cv2-staff"]  # group made
    assert sync_roles(db, tmp_path)["added"] == []  # again: nothing new

    write_course_ids(tmp_path, ["ml101"])  # cv2 retired
    assert sync_roles(db, tmp_path)["removed"] == ["course-cv2-staff"]
    assert orm.Role.find(db, "course-cv2-staff") is None
    assert orm.Role.find(db, "course-notes") is not None and orm.Role.find(db, "user") is not None

    (tmp_path / "course-roles.yaml").write_text("courses: [{name: admin}]\n")  # malformed: nothing changes
    with pytest.raises(ValueError, match="a list of course ids"):
        sync_roles(db, tmp_path)
    assert orm.Role.find(db, "course-ml101-staff") is not None
