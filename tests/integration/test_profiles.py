"""Resource profiles and GPUs on the real fake-GPU cluster, through a real hub.

Grants come from profile groups, from hub group properties (set through the REST API while the
hub runs) and from admin rights; bad user_options never reach Slurm; GPU jobs get disjoint GPUs;
the spawn page tells why a job waits; a job's time limit shows as the reason it stopped.
"""

from __future__ import annotations

import html
import re
import time
from datetime import datetime, timedelta

import pytest

from tests.cluster.hub import environ_of, running_hub, slurm_site
from tests.cluster.slurm import wait_for

ALICE, BOB, CAROL, DAVE, ADMIN = "chub-alice", "chub-bob", "chub-carol", "chub-dave", "chub-ops"
POLL_INTERVAL = 3
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "everyone": True, "default": True},
    {
        "slug": "gpu-2",
        "display_name": "Two GPUs",
        "description": "For the GPU users group.",
        "groups": ["gpu-users"],
        "resources": {"gpus": 2},
        "choices": {"gpus": {"min": 1, "max": 8}, "hours": {"min": 1, "max": 4}},
    },
    {"slug": "gpu-course", "display_name": "Course GPU", "resources": {"gpus": 1}},
    {"slug": "one-minute", "display_name": "One minute", "everyone": True, "resources": {"walltime": "00:01:00"}},
]


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, tmp_path_factory):
    site = slurm_site(
        singleuser_env,
        auth={"admin_users": [ADMIN]},
        spawner={"running_check_interval": POLL_INTERVAL},
        profiles=PROFILES,
    )
    with running_hub(slurm, tmp_path_factory.mktemp("profiles-hub"), site) as running:
        yield running


@pytest.fixture(scope="module")
def tokens(hub):
    found = {name: hub.token(name) for name in (ALICE, BOB, CAROL, DAVE)}
    found[ADMIN] = hub.token(ADMIN, hub.admin_password)
    r = hub.api("POST", "/groups/gpu-users", found[ADMIN], json={"users": [ALICE, BOB]})
    assert r.status_code == 201, r.text
    return found


@pytest.fixture(scope="module")
def short_job(hub, slurm, tokens):
    """Dave's one-minute server, started first: the last test sees its time limit end it."""
    server = hub.spawn_and_wait(DAVE, tokens[DAVE], profile="one-minute")
    job = slurm.jobs_of(DAVE)[0]["id"]
    return {"job": job, "started": time.monotonic(), "server": server}


def server_env(slurm, user) -> dict:
    return environ_of(slurm.server_pid(slurm.job_of(user)["id"]))


def test_the_server_knows_when_its_time_ends(short_job, slurm):
    env = server_env(slurm, DAVE)
    end = datetime.fromisoformat(env["CAMPUSHUB_JOB_END"])
    now = datetime.now(end.tzinfo)
    assert timedelta(0) < end - now <= timedelta(minutes=1)
    assert env["CAMPUSHUB_PROFILE"] == "one-minute"


def test_the_spawn_page_shows_only_granted_profiles(hub, tokens):
    def offered(user, password=None):
        page = hub.login(user, password).get(f"{hub.url}/hub/spawn/{user}")
        assert page.status_code == 200
        return re.findall(r'name="profile" value="([a-z0-9-]+)"', page.text)

    assert offered(CAROL) == ["cpu", "one-minute"]
    assert offered(ALICE) == ["cpu", "gpu-2", "one-minute"]
    assert offered(ADMIN, hub.admin_password) == ["cpu", "gpu-2", "gpu-course", "one-minute"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"profile": "gpu-2"}, "profile: 'gpu-2' is not granted to you"),
        ({"profile": "cpu", "gpus": 1}, "gpus: the profile 'cpu' does not let you choose gpus"),
        ({"cpus": 64}, "unknown option 'cpus'"),
        ({"profile": "cpu\n#SBATCH --uid=0"}, "profile: there is no profile"),
        ({"profile": "cpu; touch /tmp/x"}, "profile: there is no profile"),
        ({"profile": "one-minute", "hours": "1$(id)"}, "hours: must be a whole number, not '1$(id)'"),
    ],
)
def test_bad_user_options_are_refused_and_reach_no_job(hub, slurm, tokens, options, message):
    r = hub.spawn(CAROL, tokens[CAROL], **options)
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith(message), r.json()
    assert not slurm.jobs_of(CAROL)
    assert hub.server(CAROL, tokens[CAROL]) is None


def test_out_of_range_choices_are_refused_from_the_form_too(hub, slurm, tokens):
    s = hub.login(ALICE)
    r = s.post(
        f"{hub.url}/hub/spawn/{ALICE}",
        data={"profile": "gpu-2", "gpus-gpu-2": "2", "hours-gpu-2": "9", "_xsrf": s.cookies.get("_xsrf")},
    )
    assert r.status_code == 400
    assert "hours: must be from 1 to 4 in the profile &#39;gpu-2&#39;" in r.text
    assert 'name="profile" value="gpu-2"' in r.text  # the form again, to correct
    assert not slurm.jobs_of(ALICE)


def test_a_group_property_grants_a_profile_without_a_restart(hub, slurm, tokens):
    assert hub.spawn(CAROL, tokens[CAROL], profile="gpu-course").status_code == 400
    admin = tokens[ADMIN]
    assert hub.api("POST", "/groups/course-ml101", admin, json={"users": [CAROL]}).status_code == 201
    r = hub.api("PUT", "/groups/course-ml101/properties", admin, json={"campushub_profiles": ["gpu-course"]})
    assert r.status_code == 200, r.text
    r = hub.spawn(CAROL, tokens[CAROL], profile="gpu-course")
    assert r.status_code in (201, 202), r.text
    assert hub.progress(CAROL, tokens[CAROL])[-1].get("ready")
    assert len(server_env(slurm, CAROL)["CUDA_VISIBLE_DEVICES"].split(",")) == 1
    assert hub.hub_starts == 1
    hub.stop_server(CAROL, tokens[CAROL])


def gpus_of(slurm, user) -> int:
    visible = server_env(slurm, user).get("CUDA_VISIBLE_DEVICES", "")
    return len(visible.split(",")) if visible else 0


def test_a_refused_request_changes_no_saved_option(hub, slurm, tokens):
    hub.spawn_and_wait(ALICE, tokens[ALICE], profile="gpu-2", gpus=1)
    hub.stop_server(ALICE, tokens[ALICE])
    r = hub.spawn(ALICE, tokens[ALICE], profile="gpu-2", gpus=99)
    assert r.status_code == 400 and "gpus: must be from 1 to 8" in r.json()["message"], r.text
    # a start without options replays the last accepted ones, not the refused
    hub.spawn_and_wait(ALICE, tokens[ALICE])
    assert server_env(slurm, ALICE)["CAMPUSHUB_PROFILE"] == "gpu-2" and gpus_of(slurm, ALICE) == 1
    hub.stop_server(ALICE, tokens[ALICE])


def test_a_withdrawn_grant_falls_back_to_the_default_profile(hub, slurm, tokens):
    erin, admin = "chub-erin", tokens[ADMIN]
    token = hub.token(erin)
    assert hub.api("POST", "/groups/course-old", admin, json={"users": [erin]}).status_code == 201
    grant = {"campushub_profiles": ["gpu-course"]}
    assert hub.api("PUT", "/groups/course-old/properties", admin, json=grant).status_code == 200
    hub.spawn_and_wait(erin, token, profile="gpu-course")
    assert gpus_of(slurm, erin) == 1
    hub.stop_server(erin, token)

    assert hub.api("PUT", "/groups/course-old/properties", admin, json={}).status_code == 200
    page = hub.login(erin).get(f"{hub.url}/hub/spawn/{erin}")
    assert "The profile you used last, 'gpu-course', is no longer granted to you" in html.unescape(page.text)
    assert hub.spawn(erin, token, profile="gpu-course").status_code == 400  # asked for: refused
    r = hub.spawn(erin, token)  # the saved choice, replayed: the default profile instead
    assert r.status_code in (201, 202), r.text
    events = hub.progress(erin, token)
    assert events[-1].get("ready"), events
    if r.status_code == 202:  # still starting: the progress tells why (a 201 came back with the server up)
        assert any("Your saved choice cannot be used any more" in e.get("message", "") for e in events), events
    assert "Saved options of chub-erin" in hub.log_tail(200) and "using the default profile" in hub.log_tail(200)
    assert server_env(slurm, erin)["CAMPUSHUB_PROFILE"] == "cpu" and gpus_of(slurm, erin) == 0
    hub.stop_server(erin, token)


def test_two_gpu_users_get_disjoint_gpus(hub, slurm, tokens):
    for user in (ALICE, BOB):
        r = hub.spawn(user, tokens[user], profile="gpu-2", gpus=2)
        assert r.status_code in (201, 202), r.text
    for user in (ALICE, BOB):
        assert hub.progress(user, tokens[user])[-1].get("ready")
    gpus = {user: set(server_env(slurm, user)["CUDA_VISIBLE_DEVICES"].split(",")) for user in (ALICE, BOB)}
    assert all(len(g) == 2 for g in gpus.values()), gpus
    assert not gpus[ALICE] & gpus[BOB]
    assert gpus[ALICE] | gpus[BOB] == {"0", "1", "2", "3"}


def test_a_waiting_job_says_why_and_when(hub, slurm, tokens):
    # all 4 GPUs are held by alice and bob (previous test)
    assert len(slurm.jobs_of(ALICE)) == 1 and len(slurm.jobs_of(BOB)) == 1
    r = hub.spawn(CAROL, tokens[CAROL], profile="gpu-course")
    assert r.status_code == 202, r.text  # still waiting after the hub's 10 s
    events = hub.progress(CAROL, tokens[CAROL], timeout=60, until=lambda e: "estimated start" in e["message"])
    messages = [e["message"] for e in events]
    # the whole truth: all four GPUs are taken, not "1 GPU is busy"
    assert any("is queued: all 4 GPUs are in use by other jobs; yours starts when 1 is free" in m for m in messages), (
        messages
    )
    assert all(e.get("queued") for e in events if e["message"].startswith("Job ")), events
    assert "estimated start" in messages[-1], messages
    (job,) = slurm.jobs_of(CAROL)
    assert job["state"] == "PENDING"
    hub.stop_server(ALICE, tokens[ALICE])  # frees two GPUs: carol's job starts
    assert hub.progress(CAROL, tokens[CAROL], timeout=90)[-1].get("ready")
    for user in (BOB, CAROL):
        hub.stop_server(user, tokens[user])


def test_a_request_no_node_can_satisfy_fails_at_once(hub, slurm, tokens):
    started = time.monotonic()
    r = hub.spawn(ALICE, tokens[ALICE], profile="gpu-2", gpus=6)
    assert r.status_code == 500, r.text
    message = r.json()["message"]
    assert (
        "Slurm refused the server job. No node has 6 GPUs: the largest node has 4 GPUs. Ask for at most 4." in message
    )
    assert "What Slurm said:\n" in message and "Requested node configuration is not available" in message
    # the spawn form shows it next to the choice, which it keeps
    page = hub.login(ALICE).get(f"{hub.url}/hub/spawn/{ALICE}")
    assert 'value="gpu-2" checked' in page.text and 'name="gpus-gpu-2" min="1" max="4" value="2"' in page.text, (
        page.text
    )
    assert "Ask for at most 4." in page.text and "<summary>What Slurm said</summary>" in page.text
    assert time.monotonic() - started < 10
    assert not slurm.jobs_of(ALICE)


def test_the_time_limit_shows_as_the_reason_the_server_stopped(hub, slurm, tokens, short_job):
    # Slurm ends a job within about a minute past its limit; the hub sees it at its next poll.
    wait_for(lambda: hub.server(DAVE, tokens[DAVE]) is None, max(5, 180 - (time.monotonic() - short_job["started"])),
             "dave's one-minute server to stop")  # fmt: skip
    assert slurm.job_state(short_job["job"]) in ("TIMEOUT", "GONE")
    page = hub.login(DAVE).get(f"{hub.url}/hub/spawn/{DAVE}")
    assert f"Your last server (Slurm job {short_job['job']}) stopped: time limit reached." in page.text
