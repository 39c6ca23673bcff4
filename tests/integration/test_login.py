"""Campus login through a real OpenID Connect provider (authorization code flow, its own login form)."""

from __future__ import annotations

import html
import pwd
import sqlite3
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.cluster.hub import running_hub, slurm_site
from tests.cluster.idp import IdentityProvider
from tests.cluster.users import remove_user

CREATED = ["chub.ada", "chub-grace"]
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
    oidc = {
        "issuer": idp.url,
        "client_id": "campushub",
        "client_secret_file": str(secret),
        "allowed_groups": ["researchers", "students"],
        "admin_groups": ["hub-admins"],
    }
    return slurm_site(
        singleuser_env,
        auth={"kind": "oidc", "encrypt_auth_state": True, "oidc": oidc},
        users={"accounts": accounts},
        profiles=PROFILES,
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
    idp.set_user("sub-ada-elsewhere", preferred_username="chub.ada@another.example", groups=["researchers"])
    _, page = hub.oidc_login("sub-ada-elsewhere")
    assert page.status_code == 403
    assert "belongs to another campus identity" in page.text
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
