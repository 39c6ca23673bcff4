"""The hub's pages as a campus user sees them, in Chromium, on the test cluster (4 fake GPUs, one node).

One walk through them: the named login page, a refused login, the spawn form, a spawn Slurm refuses,
a wait for GPUs, the home page of a running server. A screenshot of each goes to test-artifacts/pages-*.png.
"""

from __future__ import annotations

import re
import socket

import pytest
from playwright.sync_api import expect

from tests.cluster.hub import running_hub, slurm_site
from tests.cluster.idp import IdentityProvider
from tests.cluster.slurm import wait_for
from tests.cluster.users import remove_user

NAME = "Campus AI Hub"
DESCRIPTION = "For researchers of the Campus AI Institute"
SUPPORT = "hpc-help@campus.example"
LOGO = b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><circle cx="20" cy="20" r="18"/></svg>'
SUB, USER = "hopper-pages-2b1c", "chub-hopper"
REFUSED_SUB, REFUSED = "mallory-pages-9d0e", "chub-mallory"
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "everyone": True, "default": True},
    {"slug": "gpu-1", "display_name": "One GPU", "everyone": True, "resources": {"gpus": 1}},
    {
        "slug": "gpu-some",
        "display_name": "Some GPUs",
        "everyone": True,
        "resources": {"gpus": 2},
        "choices": {"gpus": {"min": 1, "max": 8}, "hours": {"min": 1, "max": 4}},
    },
    {"slug": "gpu-8", "display_name": "Eight GPUs", "everyone": True, "resources": {"gpus": 8}},
    {"slug": "big-memory", "display_name": "Big memory", "everyone": True, "resources": {"memory": "64G"}},
]
SPAWN_TIMEOUT_MS = 150_000


@pytest.fixture(scope="module")
def idp():
    provider = IdentityProvider()
    provider.set_user(SUB, preferred_username=USER, email=f"{USER}@campus.example", groups=["researchers"])
    provider.set_user(REFUSED_SUB, preferred_username=REFUSED, email=f"{REFUSED}@campus.example", groups=["visitors"])
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="module")
def hub(slurm, singleuser_env, idp, tmp_path_factory):
    remove_user(USER)
    workdir = tmp_path_factory.mktemp("pages-hub")
    secret = workdir / "client_secret"
    secret.write_text("pages-client-secret\n")
    secret.chmod(0o600)
    logo = workdir / "logo.svg"
    logo.write_bytes(LOGO)
    site = slurm_site(
        singleuser_env,
        auth={
            "kind": "oidc",
            "oidc": {
                "issuer": idp.url,
                "client_id": "campushub-pages",
                "client_secret_file": str(secret),
                "allowed_groups": ["researchers"],
            },
        },
        users={"accounts": "create"},
        branding={"name": NAME, "logo": str(logo), "description": DESCRIPTION, "support": SUPPORT},
        profiles=PROFILES,
    )
    try:
        with running_hub(slurm, workdir, site) as running:
            yield running
    finally:
        remove_user(USER)


def sign_in(page, idp, sub):
    page.get_by_text("Sign in with your campus account").click()
    page.wait_for_url(f"{idp.url}/**")
    page.locator('input[name="sub"]').fill(sub)
    page.get_by_role("button", name="Authorize").click()


def card(page, slug):
    return page.locator(f'.campushub-profile[data-profile="{slug}"]')


def test_the_hubs_pages_as_a_campus_user_sees_them(hub, idp, slurm, page, artifacts):
    # 1. The login page names the service, says who it is for and where to get help; the logo is the site's.
    page.goto(f"{hub.url}/hub/login")
    expect(page).to_have_title(NAME)
    expect(page.locator("#campushub-welcome h1")).to_have_text(NAME)
    expect(page.locator("#campushub-description")).to_have_text(DESCRIPTION)
    expect(page.locator("#campushub-support a")).to_have_attribute("href", f"mailto:{SUPPORT}")
    expect(page.locator("#jupyterhub-logo")).to_contain_text(NAME)
    assert page.request.get(f"{hub.url}/hub/logo").body() == LOGO
    page.screenshot(path=artifacts / "pages-login.png")

    # 5. A refused login: the message once, in words, the support contact, and a way to another account.
    sign_in(page, idp, REFUSED_SUB)
    expect(page.locator("h1")).to_have_text(f"You cannot use {NAME} with this account")
    message = f"{REFUSED} may not use {NAME}: it is open to members of these groups: researchers."
    expect(page.locator("#campushub-error-message")).to_contain_text(message)
    assert page.content().count("may not use") == 1, "the message is shown once"
    assert "403 :" not in page.inner_text("body")
    expect(page.locator("#campushub-support a")).to_have_attribute("href", f"mailto:{SUPPORT}")
    page.screenshot(path=artifacts / "pages-refused-login.png")
    page.get_by_role("link", name="Sign in with another account").click()

    # 2. The spawn form: what it is for, time in hours, only what a node can run, the GPUs free now.
    page.wait_for_url(f"{hub.url}/hub/login**")
    sign_in(page, idp, SUB)
    page.wait_for_url(f"{hub.url}/hub/spawn**")
    slurm.add_users([USER])  # the account the login made gets its Slurm association, as a site's sync would
    expect(page.get_by_role("heading", name="Choose resources for your server")).to_be_visible()
    offered = page.locator('input[name="profile"]')
    assert [offered.nth(i).get_attribute("value") for i in range(offered.count())] == [
        "cpu", "gpu-1", "gpu-some", "big-memory",
    ]  # fmt: skip
    expect(page.get_by_text("Eight GPUs is not offered: the largest node has 4 GPUs.")).to_be_visible()
    expect(page.locator('input[name="gpus-gpu-some"]')).to_have_attribute("max", "4")
    expect(card(page, "cpu")).to_contain_text("up to 1 h")
    assert "01:00:00" not in page.inner_text("#spawn_form")
    expect(card(page, "gpu-1").locator(".free")).to_have_text("4 of 4 GPUs free now")
    page.screenshot(path=artifacts / "pages-spawn-form.png", full_page=True)

    # 4. A spawn Slurm refuses: the reason in words next to the choice, which stays picked; Slurm's own text folded.
    page.locator('input[name="profile"][value="big-memory"]').check()
    page.get_by_role("button", name="Start").click()
    problem = card(page, "big-memory").locator(".problem")
    expect(problem).to_contain_text("No node has 64G of memory for one server", timeout=60_000)
    expect(page.locator('input[name="profile"][value="big-memory"]')).to_be_checked()
    expect(problem.locator("details summary")).to_have_text("What Slurm said")
    expect(problem.locator("details pre")).to_be_hidden()
    expect(problem.locator("details pre")).to_contain_text("sbatch: error")
    page.screenshot(path=artifacts / "pages-spawn-refused.png", full_page=True)

    # 3. A wait for GPUs: all four are taken by another job.
    blocker = slurm.cmd("sbatch", "--parsable", "--partition=gpu", "--gres=gpu:4", "--mem=100M", "--time=10",
                        "--output=/dev/null", "--wrap", "sleep 600").stdout.strip()  # fmt: skip
    try:
        wait_for(lambda: slurm.job_state(blocker) == "RUNNING", 60, "the job holding all GPUs to run")

        # the form reads the cluster's GPUs at most every 30 s: a reload within a minute shows them taken
        def all_taken():
            page.goto(f"{hub.url}/hub/spawn")
            return card(page, "gpu-1").locator(".free").inner_text() == "all 4 GPUs in use now"

        wait_for(all_taken, 60, "the spawn form to show every GPU in use", interval=5)
        page.locator('input[name="profile"][value="gpu-1"]').check()
        page.get_by_role("button", name="Start").click()
        page.wait_for_url(f"{hub.url}/hub/spawn-pending/**", timeout=60_000)
        expect(page.locator("#campushub-queued")).to_be_visible(timeout=30_000)
        expect(page.locator("#campushub-starting")).to_be_hidden()
        expect(page.locator("#stop-server-btn")).to_have_text("Cancel request")
        expect(page.locator("#progress-message")).to_contain_text(
            "is queued: all 4 GPUs are in use by other jobs; yours starts when 1 is free", timeout=30_000
        )
        page.screenshot(path=artifacts / "pages-queued.png")
    finally:
        slurm.cmd("scancel", blocker, check=False)
    page.wait_for_url(f"{hub.url}/user/{USER}/lab**", timeout=SPAWN_TIMEOUT_MS)

    # 6. The home page: the running server's profile, GPUs, node, job and time left; stopping frees the GPUs.
    (job,) = slurm.jobs_of(USER)
    page.goto(f"{hub.url}/hub/home", wait_until="networkidle")
    expect(page.locator("#campushub-profile")).to_have_text("One GPU")
    expect(page.locator("#campushub-gpus")).to_have_text("1 GPU")
    expect(page.locator("#campushub-node")).to_have_text(socket.gethostname().split(".")[0])
    expect(page.locator("#campushub-job")).to_have_text(job["id"])
    expect(page.locator("#campushub-time-left")).to_have_text(re.compile(r"^(1 h|[1-5]?[0-9] min)$"))
    expect(page.locator("#campushub-stop-hint")).to_contain_text("frees its GPUs for others")
    expect(page.locator("#jupyterhub-logo")).to_contain_text(NAME)
    expect(page.locator("#campushub-footer a")).to_have_text(SUPPORT)
    page.screenshot(path=artifacts / "pages-home.png", full_page=True)
    page.locator("#stop").click()
    expect(page.locator("#start")).to_have_text("Start My Server", timeout=60_000)
    wait_for(lambda: not slurm.jobs_of(USER), 60, f"{USER}'s job to end")

    # 2. The next spawn form pre-selects the last choice.
    page.goto(f"{hub.url}/hub/spawn")
    expect(page.locator('input[name="profile"][value="gpu-1"]')).to_be_checked()
