"""Campus login's pure parts: the user name rule, one identity per name, the site file's checks."""

from __future__ import annotations

import pytest
from tornado import web

from campushub.auth import Identities, unix_name
from campushub.site import SiteError, parse_site


@pytest.mark.parametrize(
    "claim, name",
    [
        ("ada", "ada"),
        ("Ada.Lovelace", "ada.lovelace"),
        ("ada.lovelace@campus.example", "ada.lovelace"),
        ("Grace Hopper", "grace-hopper"),
        ("  jo_smith ", "jo_smith"),
        ("émile", "mile"),
        ("x" * 32, "x" * 32),
    ],
)
def test_names_follow_the_rule(claim, name):
    assert unix_name(claim) == name


@pytest.mark.parametrize("claim", ["", "   ", None, 42, "42ada", "-", "x" * 33, "..", "@campus"])
def test_unusable_names_are_refused(claim):
    with pytest.raises(web.HTTPError) as e:
        unix_name(claim)
    assert e.value.status_code == 403


def test_a_name_belongs_to_one_identity(tmp_path):
    ids = Identities(str(tmp_path / "identities.sqlite"))
    assert ids.claim("ada", "https://sso", "sub-1")
    assert ids.claim("ada", "https://sso", "sub-1")  # the same identity again
    assert not ids.claim("ada", "https://sso", "sub-2")  # another identity, same name
    assert not ids.claim("ada", "https://other-sso", "sub-1")
    assert Identities(str(tmp_path / "identities.sqlite")).claim("grace", "https://sso", "sub-2")


def problems(data) -> list[str]:
    with pytest.raises(SiteError) as e:
        parse_site(data)
    return e.value.problems


def test_the_demo_login_stays_on_loopback():
    assert parse_site({"hub": {"ip": "127.0.0.1"}}).auth.kind == "shared-password"
    assert parse_site({"hub": {"ip": "localhost"}}).auth.kind == "shared-password"
    found = problems({"hub": {"ip": "0.0.0.0"}})
    assert found == [
        "auth.kind: shared-password is for demos on 127.0.0.1 only, but hub.ip is 0.0.0.0: use oidc or github"
    ]


def test_oidc_needs_its_settings_and_someone_allowed():
    assert problems({"auth": {"kind": "oidc"}}) == ["auth: auth.oidc is required when auth.kind is oidc"]
    oidc = {"issuer": "https://sso.campus.example/realms/c", "client_id": "hub", "client_secret_file": "/s"}
    assert problems({"auth": {"kind": "oidc", "oidc": oidc}}) == [
        "auth.oidc: set allowed_groups, or allow_all_users: true"
    ]
    oidc["issuer"] = "sso.campus.example"
    assert problems({"auth": {"kind": "oidc", "oidc": {**oidc, "allowed_groups": ["r"]}}})[0].startswith(
        "auth.oidc.issuer:"
    )
