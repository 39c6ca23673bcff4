"""Campus login's pure parts: the user name rule, one identity per name, the site file's checks."""

from __future__ import annotations

import asyncio

import pytest
from tornado import web

from campushub.auth import CampusOIDCAuthenticator, Identities, unix_name
from campushub.site import SiteError, parse_site


@pytest.mark.parametrize(
    "claim, name",
    [
        ("ada", "ada"),
        ("Ada.Lovelace", "ada.lovelace"),  # lowercasing is the one change made
        ("jo_smith-2", "jo_smith-2"),
        ("x" * 32, "x" * 32),
    ],
)
def test_a_name_is_the_claim_lowercased(claim, name):
    assert unix_name(claim) == name


@pytest.mark.parametrize(
    "claim",
    [
        "", "   ", None, 42, "42ada", "-", "x" * 33, "..", "@campus",
        "Ada@physics.campus.example",  # an address: its domain would be dropped
        "Grace Hopper", "  jo_smith ",  # would need changes besides lowercasing
        "\u212aelvin",  # the Kelvin sign lowercases to an ASCII k
        "\u0430da",  # a Cyrillic a: dropping it would give 'da'
        "\u00e9mile", "ada\u0131",
    ],
)  # fmt: skip
def test_a_claim_that_would_need_changing_is_refused(claim):
    with pytest.raises(web.HTTPError) as e:
        unix_name(claim)
    assert e.value.status_code == 403


def test_two_claims_never_map_to_one_name():
    assert unix_name("ada@cs.campus.example", email_domain="cs.campus.example") == "ada"
    assert unix_name("Ada@CS.campus.example", email_domain="cs.campus.example") == "ada"
    with pytest.raises(web.HTTPError, match="not an address at cs.campus.example"):
        unix_name("ada@physics.campus.example", email_domain="cs.campus.example")
    with pytest.raises(web.HTTPError):
        unix_name("ada@evil@cs.campus.example", email_domain="cs.campus.example")


def test_a_name_belongs_to_one_identity(tmp_path):
    ids = Identities(str(tmp_path / "identities.sqlite"))
    assert ids.claim("ada", "https://sso", "sub-1")
    assert ids.claim("ada", "https://sso", "sub-1")  # the same identity again
    assert not ids.claim("ada", "https://sso", "sub-2")  # another identity, same name
    assert not ids.claim("ada", "https://other-sso", "sub-1")
    assert Identities(str(tmp_path / "identities.sqlite")).claim("grace", "https://sso", "sub-2")
    assert ids.owner("ada") == ("https://sso", "sub-1") and ids.owner("nobody") is None


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


def test_the_demo_login_never_reaches_a_cluster():
    slurm = {"backend": "slurm", "slurm": {"partition": "gpu"}}
    assert problems({"spawner": slurm}) == [
        "auth.kind: shared-password cannot be used with spawner.backend: slurm (anyone with the password could "
        "log in as any unix account): use oidc or github"
    ]


def test_admins_by_group_only_refuses_admins_by_name():
    oidc = {
        "issuer": "https://sso.campus.example", "client_id": "hub", "client_secret_file": "/s",
        "allowed_groups": ["r"], "admin_groups_only": True,
    }  # fmt: skip
    assert parse_site({"auth": {"kind": "oidc", "oidc": oidc}}).auth.oidc.admin_groups_only
    assert problems({"auth": {"kind": "oidc", "oidc": oidc, "admin_users": ["ops"]}}) == [
        "auth.admin_users: auth.oidc.admin_groups_only is set: admins come from admin_groups"
    ]


def test_uid_bounds():
    assert parse_site({}).users.max_uid == 60000
    assert problems({"users": {"min_uid": 5000, "max_uid": 4000}}) == ["users: min_uid must not be larger than max_uid"]
    moved = problems({"spawner": {"backend": "slurm", "slurm": {"partition": "gpu", "min_uid": 500}}})
    assert moved == ["spawner.slurm: min_uid has been renamed: set users.min_uid"]


@pytest.mark.parametrize(
    "info, allowed",
    [
        ({"email": "ada@campus.example", "email_verified": True}, True),
        ({"email": "Ada@CAMPUS.example"}, True),  # no email_verified claim: the provider's word is the address
        ({"email": "ada@campus.example", "email_verified": False}, False),
        ({"email": "ada@evil.example", "email_verified": True}, False),
        ({"email": "ada@campus.example.evil.example", "email_verified": True}, False),
        ({}, False),
    ],
)
def test_the_email_domain_is_checked_even_when_everyone_may_log_in(tmp_path, info, allowed):
    authenticator = CampusOIDCAuthenticator(
        issuer="https://sso.campus.example", allowed_email_domains="campus.example", allow_all=True,
        identities_db=str(tmp_path / "identities.sqlite"),
    )  # fmt: skip
    model = {"name": "ada", "auth_state": {authenticator.user_auth_state_key: info}}
    check = authenticator.check_blocked_users("ada", model)
    if allowed:
        assert asyncio.run(check) is True
    else:
        with pytest.raises(web.HTTPError, match="open to verified addresses at campus.example"):
            asyncio.run(check)
