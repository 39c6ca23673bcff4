"""Campus login: OpenID Connect with issuer discovery, user names made safe, one identity per name,
and the unix-account policy applied at login.

- `CampusOIDCAuthenticator` is oauthenticator's GenericOAuthenticator plus what a campus needs:
  endpoints discovered from the issuer, the username claim turned into a valid hub and unix name
  (`unix_name`), and a refusal when a second identity maps to a name already taken.
- `account_hook` checks (or creates) the user's unix account when they log in, so a missing account
  is a clear page at login rather than a failed spawn later.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import sqlite3
import subprocess
import urllib.request
from functools import cached_property

from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from traitlets import Unicode, default

NAME_MAX = 32  # useradd's limit


def unix_name(claim: object) -> str:
    """The hub and unix user name for a username claim, by CampusHub's documented rule.

    An email address keeps its part before '@'; letters are lowercased; every run of characters
    other than a-z, 0-9, '.', '_' and '-' becomes one '-'; leading and trailing separators go.
    The result must start with a letter and have at most 32 characters, or the login is refused.
    """
    if not isinstance(claim, str) or not claim.strip():
        raise web.HTTPError(403, "Your identity provider sent no user name.")
    text = claim.strip().split("@", 1)[0].lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", text).strip("-._")
    if not re.fullmatch(r"[a-z][a-z0-9._-]*", name) or len(name) > NAME_MAX:
        raise web.HTTPError(
            403, "%s", f"The user name {claim!r} cannot be made into a campus account name "
            f"(a letter, then letters, digits, '.', '_' or '-', at most {NAME_MAX}); ask your administrators."
        )  # fmt: skip
    return name


class Identities:
    """Which identity (issuer, subject) owns each user name: a small SQLite table in the state folder."""

    def __init__(self, path: str):
        self.path = path
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS identities (name TEXT PRIMARY KEY, issuer TEXT, subject TEXT)")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level="IMMEDIATE")

    def claim(self, name: str, issuer: str, subject: str) -> bool:
        """Record that the identity owns `name`; False if another identity owns it already."""
        with self._db() as db:
            row = db.execute("SELECT issuer, subject FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO identities VALUES (?, ?, ?)", (name, issuer, subject))
                return True
            return tuple(row) == (issuer, subject)


class CampusOIDCAuthenticator(GenericOAuthenticator):
    """Log in with the campus OpenID Connect provider (Keycloak, Entra ID, Google ...)."""

    issuer = Unicode(help="The provider's issuer URL; its endpoints are discovered from it.").tag(config=True)
    identities_db = Unicode(help="SQLite file recording which identity owns each user name.").tag(config=True)

    @default("login_service")
    def _login_service(self):
        return "your campus account"

    @cached_property
    def discovery(self) -> dict:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                config = json.load(r)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"Cannot read the identity provider's configuration at {url}: {e}") from None
        if config.get("issuer", "").rstrip("/") != self.issuer.rstrip("/"):
            raise RuntimeError(f"{url} names another issuer: {config.get('issuer')!r}")
        return config

    @cached_property
    def identities(self) -> Identities:
        return Identities(self.identities_db)

    @default("authorize_url")
    def _authorize_url(self):
        return self.discovery["authorization_endpoint"]

    @default("token_url")
    def _token_url(self):
        return self.discovery["token_endpoint"]

    @default("userdata_url")
    def _userdata_url(self):
        return self.discovery["userinfo_endpoint"]

    def user_info_to_username(self, user_info):
        return unix_name(super().user_info_to_username(user_info))

    async def update_auth_model(self, auth_model):
        user_info = auth_model["auth_state"][self.user_auth_state_key]
        subject = str(user_info.get("sub", ""))
        if not subject or not self.identities.claim(auth_model["name"], self.issuer, subject):
            raise web.HTTPError(
                403, "%s", f"The user name {auth_model['name']!r} belongs to another campus identity: "
                "two identities never share an account. Ask your administrators."
            )  # fmt: skip
        return auth_model

    async def check_allowed(self, username, auth_model):
        if await super().check_allowed(username, auth_model):
            return True
        groups = ", ".join(sorted(self.allowed_groups)) or "none"
        raise web.HTTPError(
            403, "%s", f"{username} may not use CampusHub: it is open to members of these groups: {groups}. "
            "Ask your administrators for access."
        )  # fmt: skip


def account_hook(mode: str, min_uid: int):
    """A post_auth_hook that checks ('directory') or creates ('create') the user's unix account."""

    def hook(authenticator, handler, authentication):
        name = authentication["name"]
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            if mode != "create":
                raise web.HTTPError(
                    403, "%s", f"You are logged in as {name}, but this cluster has no unix account {name!r}. "
                    "Accounts come from the campus directory: ask your administrators to enable yours."
                ) from None  # fmt: skip
            account = create_account(name)
            authenticator.log.info("Created the unix account %s (uid %s)", name, account.pw_uid)
        if account.pw_uid < min_uid:
            raise web.HTTPError(403, "%s", f"{name} is a system account: it cannot log in to CampusHub.")
        return authentication

    return hook


def create_account(name: str) -> pwd.struct_passwd:
    """A new unix account with a private (0700) home folder."""
    done = subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", "--", name], capture_output=True, text=True
    )
    if done.returncode != 0 and "already exists" not in done.stderr:
        raise web.HTTPError(500, "%s", f"Could not create the unix account {name!r}: {done.stderr.strip()}")
    account = pwd.getpwnam(name)
    os.chmod(account.pw_dir, 0o700)
    return account
