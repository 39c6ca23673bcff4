"""Campus login through a real OpenID Connect provider (authorization code flow, its own login form)."""

from __future__ import annotations

import html
import http.server
import json
import pwd
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.cluster.github import GitHubStandIn
from tests.cluster.hub import running_hub, slurm_site
from tests.cluster.idp import IdentityProvider
from tests.cluster.users import remove_user

CREATED = ["chub.ada", "chub-grace", "chub-eve", "chub-later", "chub-boss", "chub-team"]
ADMIN_BY_NAME = "chub-boss"
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "everyone": True, "default": True},
    {"slug": "gpu-1", "display_name": "One GPU", "groups": ["researchers"], "resources": {"gpus": 1}},
]


@pytest.fixture(scope="module")
def idp():
    provider = IdentityProvider()
    yield provider
    provider.close()


def site_for(idp, secret: Path, singleuser_env, accounts: str) -> dict:
    return slurm_site(
        singleuser_env,
        **{
            "auth": {
                "kind": "oidc",
                "encrypt_auth_state": True,
                "oidc": {
                    "issuer": idp.url,
                    "client_id": "campushub",
                    "client_secret_file": str(secret),
                    "allowed_groups": ["researchers", "students"],
                    "admin_groups": ["hub-admins"],
                    "email_domain": "campus.example",
                },
                "admin_users": [ADMIN_BY_NAME],
            },
            "users": {"accounts": accounts},
            "profiles": PROFILES,
        },
    )


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    f = tmp_path_factory.mktemp("secret") / "oidc-client-secret"
    f.write_text("not-so-secret\n")
    f.chmod(0o600)
    return f


@pytest.fixture(scope="module")
def hub(idp, secret, slurm, singleuser_env, root_required, tmp_path_factory):
    for name in CREATED:
        remove_user(name)
    with running_hub(
        slurm, tmp_path_factory.mktemp("login-hub"), site_for(idp, secret, singleuser_env, "create")
    ) as hub:
        yield hub
    for name in CREATED:
        remove_user(name)


def me(session, hub) -> dict:
    r = session.get(f"{hub.url}/hub/api/user", timeout=10)
    r.raise_for_status()
    return r.json()


def test_an_allowed_user_lands_on_the_spawn_page_with_a_new_private_account(hub, idp):
    idp.set_user("sub-ada", preferred_username="Chub.Ada", groups=["researchers"], email="ada@campus.example")
    session, page = hub.oidc_login("sub-ada")
    assert page.status_code == 200 and page.url.startswith(f"{hub.url}/hub/spawn"), page.url
    assert 'value="gpu-1"' in page.text  # the researchers' profile
    user = me(session, hub)
    assert user["name"] == "chub.ada" and user["groups"] == ["researchers"] and not user["admin"]
    account = pwd.getpwnam("chub.ada")
    assert account.pw_uid >= 1000
    assert stat.S_IMODE(Path(account.pw_dir).stat().st_mode) == 0o700


def test_the_login_uses_state_and_pkce(hub, idp):
    r = requests.get(f"{hub.url}/hub/oauth_login", allow_redirects=False, timeout=10)
    assert r.status_code == 302
    query = parse_qs(urlparse(r.headers["location"]).query)
    assert r.headers["location"].startswith(f"{idp.url}/oauth2/authorize")
    assert query["state"][0] and query["code_challenge"][0] and query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [f"{hub.url}/hub/oauth_callback"]


def test_a_user_outside_the_allowed_groups_gets_a_clear_refusal(hub, idp):
    idp.set_user("sub-mallory", preferred_username="chub-mallory", groups=["visitors"])
    _, page = hub.oidc_login("sub-mallory")
    assert page.status_code == 403
    assert "chub-mallory may not use CampusHub" in page.text and "researchers, students" in page.text
    with pytest.raises(KeyError):
        pwd.getpwnam("chub-mallory")


def test_the_admin_group_gives_admin_and_group_changes_show_at_the_next_login(hub, idp):
    idp.set_user("sub-grace", preferred_username="chub-grace", groups=["students"])
    session, _ = hub.oidc_login("sub-grace")
    user = me(session, hub)
    assert (user["admin"], user["groups"]) == (False, ["students"])
    assert session.get(f"{hub.url}/hub/admin", timeout=10).status_code == 403

    idp.set_user("sub-grace", preferred_username="chub-grace", groups=["students", "hub-admins"])
    session, _ = hub.oidc_login("sub-grace")
    user = me(session, hub)
    assert (user["admin"], sorted(user["groups"])) == (True, ["hub-admins", "students"])
    assert session.get(f"{hub.url}/hub/admin", timeout=10).status_code == 200

    idp.set_user("sub-grace", preferred_username="chub-grace", groups=["researchers"])
    session, page = hub.oidc_login("sub-grace")
    user = me(session, hub)
    assert (user["admin"], user["groups"]) == (False, ["researchers"])


def test_two_identities_never_share_a_name(hub, idp):
    idp.set_user("sub-ada-elsewhere", preferred_username="CHUB.ADA", groups=["researchers"])
    _, page = hub.oidc_login("sub-ada-elsewhere")
    assert page.status_code == 403
    assert "belongs to another identity" in page.text
    # the first identity still logs in
    session, page = hub.oidc_login("sub-ada")
    assert me(session, hub)["name"] == "chub.ada"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "https:evil.example"])
def test_next_cannot_lead_off_the_hub(hub, idp, target):
    session, page = hub.oidc_login("sub-ada", next_url=target)
    assert urlparse(page.url).netloc == urlparse(hub.url).netloc, page.url
    assert page.history and all(
        urlparse(r.headers.get("location", "")).netloc in ("", urlparse(hub.url).netloc)
        for r in page.history
        if r.url.startswith(hub.url)
    )


def test_logout_clears_the_session(hub, idp):
    session, _ = hub.oidc_login("sub-ada")
    assert me(session, hub)["name"] == "chub.ada"
    session.get(f"{hub.url}/hub/logout", timeout=10)
    assert not [c for c in session.cookies if c.name.startswith("jupyterhub-")]
    assert session.get(f"{hub.url}/hub/api/user", timeout=10).status_code == 403


def test_secrets_are_private_and_auth_state_encrypted(hub):
    state = Path(hub.site["hub"]["state_dir"])
    for name in ("jupyterhub_cookie_secret", "proxy_auth_token", "crypt_key"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    with sqlite3.connect(state / "jupyterhub.sqlite") as db:
        (blob,) = db.execute("SELECT encrypted_auth_state FROM users WHERE name = 'chub.ada'").fetchone()
    assert blob and b"access_token" not in blob and b"oauth_user" not in blob


def test_directory_accounts_refuse_a_login_without_one(idp, secret, singleuser_env, slurm, unix_users, tmp_path):
    site = site_for(idp, secret, singleuser_env, "directory")
    with running_hub(slurm, tmp_path / "directory-hub", site) as running:
        idp.set_user("sub-nobody", preferred_username="chub-noaccount", groups=["researchers"])
        _, page = running.oidc_login("sub-nobody")
        assert page.status_code == 403
        assert "this cluster has no unix account 'chub-noaccount'" in html.unescape(page.text)
        with pytest.raises(KeyError):
            pwd.getpwnam("chub-noaccount")
        # an existing account logs in
        idp.set_user("sub-alice", preferred_username="chub-alice", groups=["researchers"])
        _, page = running.oidc_login("sub-alice")
        assert page.status_code == 200 and "/hub/spawn" in page.url


def refused(hub, idp, sub: str, **claims):
    idp.set_user(sub, **claims)
    _, page = hub.oidc_login(sub)
    assert page.status_code == 403, page.text[:500]
    return html.unescape(page.content.decode())  # (the error page names no charset)


@pytest.mark.parametrize(
    "claim, lossy",
    [
        ("Chub-Ada@physics.campus.example", "chub-ada"),  # another domain than the site's
        ("\u212achub-kelvin", "kchub-kelvin"),  # the Kelvin sign lowercases to k
        ("\u0430chub-da", "chub-da"),  # a leading Cyrillic a
        ("chub ada", "chub-ada"),
    ],
)
def test_a_claim_that_would_need_changing_is_refused(hub, idp, claim, lossy):
    page = refused(hub, idp, f"sub-{lossy}", preferred_username=claim, groups=["researchers"])
    assert repr(claim) in page or "not an address at campus.example" in page
    with pytest.raises(KeyError):
        pwd.getpwnam(lossy)


def test_an_address_at_the_sites_domain_becomes_its_name(hub, idp):
    idp.set_user("sub-eve", preferred_username="Chub-Eve@Campus.Example", groups=["students"])
    # up to the hub's callback: a student's one profile would start a server, whose account Slurm has no
    # association for yet (a site's account sync makes it)
    session, back = hub.oidc_login("sub-eve", follow=False)
    assert back.status_code == 302 and me(session, hub)["name"] == "chub-eve"


def test_an_identity_that_is_not_allowed_takes_no_name(hub, idp):
    refused(hub, idp, "sub-squatter", preferred_username="chub-later", groups=["visitors"])
    with pytest.raises(KeyError):
        pwd.getpwnam("chub-later")
    # the name is still free for the identity allowed in
    idp.set_user("sub-later", preferred_username="chub-later", groups=["students"])
    session, back = hub.oidc_login("sub-later", follow=False)
    assert back.status_code == 302 and me(session, hub)["name"] == "chub-later"


def test_an_admin_name_is_held_to_the_allowed_groups_and_bound_to_one_identity(hub, idp):
    page = refused(hub, idp, "sub-fake-boss", preferred_username=ADMIN_BY_NAME, groups=["visitors"])
    assert "may not use CampusHub" in page
    with pytest.raises(KeyError):
        pwd.getpwnam(ADMIN_BY_NAME)
    idp.set_user("sub-boss", preferred_username=ADMIN_BY_NAME, groups=["researchers"])
    session, page = hub.oidc_login("sub-boss")
    assert page.status_code == 200 and me(session, hub)["admin"]
    page = refused(hub, idp, "sub-boss-2", preferred_username=ADMIN_BY_NAME, groups=["researchers", "hub-admins"])
    assert "belongs to another identity" in page
    assert hub.oidc_login("sub-boss")[1].status_code == 200


def test_a_name_that_is_a_unix_group_gets_a_clear_refusal(hub, idp):
    subprocess.run(["groupadd", "chub-team"], check=True)
    try:
        page = refused(hub, idp, "sub-team", preferred_username="chub-team", groups=["researchers"])
        assert "A unix group named 'chub-team' exists already" in page
        with pytest.raises(KeyError):
            pwd.getpwnam("chub-team")
    finally:
        subprocess.run(["groupdel", "chub-team"], check=False)


def test_system_accounts_and_accounts_without_login_are_refused(hub, idp):
    page = refused(hub, idp, "sub-nobody", preferred_username="nobody", groups=["researchers"])
    assert "nobody is a system account (uid 65534" in page
    page = refused(hub, idp, "sub-root", preferred_username="root", groups=["researchers", "hub-admins"])
    assert "root is a system account (uid 0" in page
    subprocess.run(["useradd", "--shell", "/usr/sbin/nologin", "chub-daemon"], check=True)
    try:
        page = refused(hub, idp, "sub-daemon", preferred_username="chub-daemon", groups=["researchers"])
        assert "chub-daemon is an account without login (shell /usr/sbin/nologin)" in page
    finally:
        remove_user("chub-daemon")


class SlowDiscovery(http.server.BaseHTTPRequestHandler):
    """An issuer whose discovery document comes after a long pause, naming the real provider's endpoints."""

    provider = ""
    answered = threading.Event()

    def do_GET(self):
        time.sleep(8)
        issuer = f"http://127.0.0.1:{self.server.server_port}"
        body = json.dumps({
            "issuer": issuer,
            "authorization_endpoint": f"{self.provider}/oauth2/authorize",
            "token_endpoint": f"{self.provider}/oauth2/token",
            "userinfo_endpoint": f"{self.provider}/userinfo",
        }).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
        type(self).answered.set()

    def log_message(self, *args):
        pass


def test_discovery_does_not_hold_up_the_hub(idp, secret, singleuser_env, slurm, tmp_path):
    SlowDiscovery.provider = idp.url
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowDiscovery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site = site_for(idp, secret, singleuser_env, "directory")
    site["auth"]["oidc"]["issuer"] = f"http://127.0.0.1:{server.server_port}"
    try:
        with running_hub(slurm, tmp_path / "slow-hub", site) as running:
            login = {}
            first = threading.Thread(
                target=lambda: login.update(
                    r=requests.get(f"{running.url}/hub/oauth_login", allow_redirects=False, timeout=60)
                )
            )
            first.start()
            time.sleep(1)  # the login is waiting on the discovery document now
            assert requests.get(f"{running.url}/hub/api/", timeout=30).status_code == 200
            assert not SlowDiscovery.answered.is_set(), "the hub answered only after the discovery"
            first.join(60)
            assert login["r"].status_code == 302 and login["r"].headers["location"].startswith(
                f"{idp.url}/oauth2/authorize"
            )
    finally:
        server.shutdown()


def test_github_names_are_bound_to_the_numeric_id(singleuser_env, slurm, unix_users, tmp_path):
    github = GitHubStandIn()
    secret = tmp_path / "github-secret"
    secret.write_text("github-secret\n")
    secret.chmod(0o600)
    site = slurm_site(singleuser_env, auth={
        "kind": "github",
        "github": {"url": github.url, "client_id": "campushub", "client_secret_file": str(secret),
                   "allowed_users": ["chub-alice"]},
    })  # fmt: skip
    site["auth"].pop("oidc")
    try:
        with running_hub(slurm, tmp_path / "github-hub", site) as running:

            def login(github_id: int, name: str) -> requests.Response:
                """Through GitHub's authorization to the hub's callback, not further (the spawn page would
                start a server)."""
                github.sign_in_as(github_id, name)
                s = requests.Session()
                to_github = s.get(f"{running.url}/hub/oauth_login", allow_redirects=False, timeout=30)
                back = s.get(to_github.headers["location"], allow_redirects=False, timeout=30)
                return s.get(back.headers["location"], allow_redirects=False, timeout=60)

            assert login(101, "Chub-Alice").status_code == 302
            # the account renames itself, and another GitHub account takes the login
            page = login(202, "chub-alice")
            assert page.status_code == 403
            assert "belongs to another identity" in html.unescape(page.content.decode())
            assert login(101, "Chub-Alice").status_code == 302
    finally:
        github.close()
