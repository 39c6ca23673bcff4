"""A course's GPU quota, held by Slurm itself: the test cluster's accounting (slurmdbd on MariaDB)
enforces the limits that campushub.courses.quota sets through sacctmgr.

The account course-test lets each user hold 1 GPU at a time. A student's second GPU job waits, with
Slurm's reason, whether it is a server started through the hub (the spawn page says why) or a job
submitted with sbatch from a terminal; another student is not held by the first one's jobs.
"""

from __future__ import annotations

import subprocess

import pytest

from campushub.courses import quota
from tests.cluster.hub import running_hub, slurm_site
from tests.cluster.slurm import DEFAULT_ACCOUNT, wait_for
from tests.cluster.users import create_users, remove_user

ACCOUNT = "course-test"
STUDENTS_GROUP = "course-test-students"
ADA, BEN = "chub-quota-ada", "chub-quota-ben"
ADMIN = "chub-ops"
HELD = "QOSMaxGRESPerUser"  # Slurm 22.05's reason for a QOS's MaxTRESPerUser on gres/gpu
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "everyone": True, "default": True},
    {"slug": "course-gpu", "display_name": "Course GPU", "resources": {"gpus": 1}},
]


@pytest.fixture(scope="module")
def students(root_required, slurm):
    accounts = create_users([ADA, BEN])  # with their associations in the cluster's default account
    try:
        yield [a.pw_name for a in accounts]
    finally:
        for name in (ADA, BEN):
            remove_user(name)


@pytest.fixture(scope="module")
def course(slurm, students):
    """The course's Slurm account, as a course's apply makes it: 1 GPU per user, no total limit."""
    found = quota.accounting_available()
    assert found, found.reason
    changes = [
        *quota.ensure_account(ACCOUNT, "CampusHub quota test"),
        *quota.set_gpu_limit(ACCOUNT, per_user=1, total=None),
        *quota.set_members(ACCOUNT, students),
    ]
    assert changes, "a new account: something to do"
    try:
        yield ACCOUNT
    finally:
        cancel_jobs(slurm, students)
        quota.remove_account(ACCOUNT)


@pytest.fixture(scope="module")
def hub(slurm, course, unix_users, singleuser_env, tmp_path_factory):
    site = slurm_site(singleuser_env, auth={"admin_users": [ADMIN]}, profiles=PROFILES)
    with running_hub(slurm, tmp_path_factory.mktemp("quota-hub"), site) as running:
        yield running


@pytest.fixture(scope="module")
def tokens(hub, students):
    found = {name: hub.token(name) for name in students}
    found[ADMIN] = hub.token(ADMIN, hub.admin_password)
    # what a course's apply sets on its students group: the profile grant and the Slurm account
    r = hub.api("POST", f"/groups/{STUDENTS_GROUP}", found[ADMIN], json={"users": students})
    assert r.status_code == 201, r.text
    properties = {"campushub_profiles": ["course-gpu"], "campushub_slurm_account": ACCOUNT}
    r = hub.api("PUT", f"/groups/{STUDENTS_GROUP}/properties", found[ADMIN], json=properties)
    assert r.status_code == 200, r.text
    return found


def cancel_jobs(slurm, users) -> None:
    for user in users:
        slurm.cmd("scancel", "-u", user, check=False)
    wait_for(lambda: not any(slurm.jobs_of(u) for u in users), 60, f"the jobs of {', '.join(users)} to end")


def sbatch_from_a_terminal(slurm, user: str, *options: str) -> subprocess.CompletedProcess:
    """sbatch as the user, the way they would run it in a terminal: a one-GPU job that sleeps."""
    home = f"/home/{user}"
    return subprocess.run(
        ["runuser", "-u", user, "--", "sbatch", "--parsable", "--gres=gpu:1", "--mem=100M", "--time=00:10:00",
         f"--chdir={home}", "--output=/dev/null", *options, "--wrap", "sleep 600"],
        capture_output=True, text=True, env=slurm.env, cwd=home, check=False,
    )  # fmt: skip


def submit(slurm, user: str, *options: str) -> str:
    r = sbatch_from_a_terminal(slurm, user, *options)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job_line(slurm, job_id: str) -> tuple[str, str, str]:
    """(state, reason, account) of a job."""
    out = slurm.cmd("squeue", "-h", "-j", job_id, "-o", "%T|%r|%a", check=False).stdout.strip()
    return tuple((out.split("|") + ["", "", ""])[:3])


def wait_state(slurm, job_id: str, state: str, reason: str | None = None, timeout: float = 60):
    def reached():
        line = job_line(slurm, job_id)
        return line if line[0] == state and (reason is None or reason in line[1]) else None

    return wait_for(reached, timeout, f"job {job_id} to be {state} {reason or ''}: {job_line(slurm, job_id)}")


def test_the_quota_is_set_once_and_a_second_apply_changes_nothing(course, students):
    assert quota.ensure_account(ACCOUNT, "CampusHub quota test") == []
    assert quota.set_gpu_limit(ACCOUNT, per_user=1, total=None) == []
    assert quota.set_members(ACCOUNT, students) == []
    state = quota.account_state(ACCOUNT)
    assert (state.members, state.per_user_gpus, state.total_gpus) == (set(students), 1, None)


def test_a_second_gpu_job_from_a_terminal_is_held_by_slurm(slurm, course):
    first = submit(slurm, ADA, f"--account={ACCOUNT}")
    assert wait_state(slurm, first, "RUNNING")[2] == ACCOUNT
    second = submit(slurm, ADA, f"--account={ACCOUNT}")
    wait_state(slurm, second, "PENDING", HELD)
    # the other student is not held by ada's job
    other = submit(slurm, BEN, f"--account={ACCOUNT}")
    wait_state(slurm, other, "RUNNING")
    # nor can ada leave the course's QOS for one without the limit
    r = sbatch_from_a_terminal(slurm, ADA, f"--account={ACCOUNT}", "--qos=normal")
    assert r.returncode != 0 and "Invalid qos specification" in r.stderr, r.stderr
    # once her first job ends, the second runs
    slurm.cmd("scancel", first)
    wait_state(slurm, second, "RUNNING")
    cancel_jobs(slurm, [ADA, BEN])


def test_a_spawn_over_the_limit_waits_and_the_spawn_page_says_why(hub, slurm, tokens):
    terminal_job = submit(slurm, ADA, f"--account={ACCOUNT}")
    wait_state(slurm, terminal_job, "RUNNING")

    r = hub.spawn(ADA, tokens[ADA], profile="course-gpu")
    assert r.status_code == 202, r.text  # still waiting after the hub's 10 s
    events = hub.progress(ADA, tokens[ADA], timeout=60, until=lambda e: HELD in e.get("message", ""))
    assert "is queued: the GPU limit of your account or group is reached (QOSMaxGRESPerUser)" in events[-1]["message"]
    server_job = next(j for j in slurm.jobs_of(ADA) if j["id"] != terminal_job)
    assert job_line(slurm, server_job["id"])[::2] == ("PENDING", ACCOUNT)

    # ben's server starts beside ada's jobs, under the course's account
    hub.spawn_and_wait(BEN, tokens[BEN], profile="course-gpu")
    assert job_line(slurm, slurm.job_of(BEN)["id"]) == ("RUNNING", "None", ACCOUNT)

    # ada's terminal job ends: her server starts
    slurm.cmd("scancel", terminal_job)
    assert hub.progress(ADA, tokens[ADA], timeout=90)[-1].get("ready")


def test_a_terminal_job_beside_a_running_server_is_held(hub, slurm, tokens):
    (server,) = slurm.jobs_of(ADA)  # the server of the test before
    assert job_line(slurm, server["id"])[0] == "RUNNING"
    job = submit(slurm, ADA, f"--account={ACCOUNT}")
    wait_state(slurm, job, "PENDING", HELD)
    slurm.cmd("scancel", job)
    for user in (ADA, BEN):
        hub.stop_server(user, tokens[user])


def test_a_student_whose_unix_account_came_after_the_apply_is_renewed_by_the_next_apply(slurm, course, students):
    late = "chub-quota-cy"
    remove_user(late)
    try:
        changes = quota.set_members(ACCOUNT, [*students, late])
        assert any("without a unix account yet" in c for c in changes), changes
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", late], check=True)  # its first login
        r = sbatch_from_a_terminal(slurm, late, f"--account={ACCOUNT}")
        assert r.returncode != 0 and "Invalid account" in r.stderr, r.stderr  # Slurm knew no uid for the name
        assert quota.set_members(ACCOUNT, [*students, late]) == [
            f"renew the association of 1 user with Slurm account {ACCOUNT}, made before their unix account: {late}"
        ]
        wait_state(slurm, submit(slurm, late, f"--account={ACCOUNT}"), "RUNNING")
        cancel_jobs(slurm, [late])
        # the course is its default account; given another (a site's account sync), it can leave the course
        slurm.add_users([late])
        assert quota.set_members(ACCOUNT, students) == [
            f"make {DEFAULT_ACCOUNT} the default Slurm account of {late} instead of {ACCOUNT}",
            f"remove 1 user from Slurm account {ACCOUNT}: {late}",
        ]
    finally:
        remove_user(late)


def test_a_retired_account_takes_no_jobs_and_its_removal_is_done_once(slurm, course, hub, tokens, students):
    cancel_jobs(slurm, students)
    assert quota.remove_account(ACCOUNT) == [
        f"remove Slurm account {ACCOUNT} and its users' associations with it",
        f"remove Slurm QOS {ACCOUNT}",
    ]
    assert quota.remove_account(ACCOUNT) == []
    assert quota.account_state(ACCOUNT) is None
    r = sbatch_from_a_terminal(slurm, ADA, f"--account={ACCOUNT}")
    assert r.returncode != 0 and "Invalid account" in r.stderr, r.stderr
