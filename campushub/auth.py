"""Campus login: OpenID Connect (or GitHub) with strict user names, one identity per name, and the
unix-account policy applied at login.

- `unix_name` takes a claim as it is, lowercased, or refuses it: a name is never made up from a claim
  by dropping or replacing characters, so two identities cannot be squeezed into one name.
- `IdentityBinding` records which identity (issuer and subject, or GitHub's numeric id) owns each
  name, and only after every check (blocked, allowed, the unix account) has passed.
- `CampusOIDCAuthenticator` is oauthenticator's GenericOAuthenticator with endpoints discovered from
  the issuer (without blocking the hub), admins by name held to the same allow checks as everyone,
  and an optional restriction of the email domain.
- `account_hook` checks (or creates) the user's unix account when they log in, so a missing or
  unusable account is a clear page at login rather than a failed spawn later.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import sqlite3
import subprocess
from functools import cached_property

from jupyterhub.utils import maybe_future
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.github import GitHubOAuthenticator
from oauthenticator.oauth2 import OAuthenticator, OAuthLoginHandler
from tornado import web
from traitlets import Unicode, default

from .metrics import count_refused_login

NAME_MAX = 32  # useradd's limit
NAME_RE = re.compile(rf"[a-z][a-z0-9._-]{{0,{NAME_MAX - 1}}}")
NO_LOGIN_SHELLS = {"nologin", "false"}


def refuse(message: str, reason: str = "other") -> web.HTTPError:
    """A refused login (403) with the message for the person; `reason` (one of campushub.metrics'
    REFUSAL_REASONS) is what campushub_refused_logins_total counts it as."""
    error = web.HTTPError(403, "%s", message)
    error.refusal = reason
    return error


def unix_name(claim: object, email_domain: str | None = None) -> str:
    """The hub and unix user name for a username claim: the claim itself, lowercased.

    With `email_domain`, a claim `name@<email_domain>` becomes `name`; an address at another domain
    is refused. Any other claim that is not already a valid name (ASCII letters, digits, '.', '_', '-',
    starting with a letter, at most 32 characters) is refused rather than changed.
    """
    if not isinstance(claim, str) or not claim.strip():
        raise refuse("Your identity provider sent no user name.", "invalid_name")
    text = claim
    if email_domain and "@" in text:
        local, _, domain = text.rpartition("@")
        if domain.lower() != email_domain.lower():
            raise refuse(
                f"The user name {claim!r} is not an address at {email_domain}: only {email_domain} "
                "accounts may use CampusHub.",
                "email_domain",
            )
        text = local
    name = text.lower()
    if not text.isascii() or not NAME_RE.fullmatch(name):
        raise refuse(
            f"The user name {claim!r} is not a valid campus account name (a letter, then letters, digits, "
            f"'.', '_' or '-', at most {NAME_MAX}, nothing else): CampusHub does not change names to fit. "
            "Ask your administrators.",
            "invalid_name",
        )
    return name


class Identities:
    """Which identity (issuer, subject) owns each user name: a small SQLite table in the state folder."""

    def __init__(self, path: str):
        self.path = path
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS identities (name TEXT PRIMARY KEY, issuer TEXT, subject TEXT)")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level="IMMEDIATE")

    def owner(self, name: str) -> tuple[str, str] | None:
        with self._db() as db:
            row = db.execute("SELECT issuer, subject FROM identities WHERE name = ?", (name,)).fetchone()
        return tuple(row) if row else None

    def claim(self, name: str, issuer: str, subject: str) -> bool:
        """Record that the identity owns `name`; False if another identity owns it already."""
        with self._db() as db:
            row = db.execute("SELECT issuer, subject FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO identities VALUES (?, ?, ?)", (name, issuer, subject))
                return True
            return tuple(row) == (issuer, subject)


class IdentityBinding(OAuthenticator):
    """Binds each user name to one identity, after every allow and block check has passed.

    The base of CampusHub's authenticators, before the provider's class; `identity()` says what
    identifies a user at the provider.
    """

    identities_db = Unicode(help="SQLite file recording which identity owns each user name.").tag(config=True)
    service_name = Unicode("CampusHub", help="The service's name in refusals (the site's branding.name).").tag(
        config=True
    )

    @cached_property
    def identities(self) -> Identities:
        return Identities(self.identities_db)

    def identity(self, auth_model: dict) -> tuple[str, str]:
        raise NotImplementedError

    async def get_authenticated_user(self, handler, data):
        """JupyterHub's login, with each refusal counted by reason (campushub_refused_logins_total)."""
        try:
            authenticated = await super().get_authenticated_user(handler, data)
        except web.HTTPError as e:
            if e.status_code == 403:
                count_refused_login(getattr(e, "refusal", "other"))
            raise
        if authenticated is None:  # blocked_users, or a name JupyterHub's own check refuses
            count_refused_login("blocked")
        return authenticated

    def user_info(self, auth_model: dict) -> dict:
        return (auth_model.get("auth_state") or {}).get(self.user_auth_state_key) or {}

    def _refuse_other_identity(self, name: str) -> web.HTTPError:
        return refuse(
            f"The user name {name!r} belongs to another identity: two identities never share an account. "
            "Ask your administrators.",
            "other_identity",
        )

    async def check_allowed(self, username, auth_model):
        # oauthenticator lets every name in admin_users in, whatever its groups: here an admin by name
        # must be allowed like any other user (admins by group are members of an allowed group anyway).
        admin_by_group = bool(set(auth_model.get("groups") or []) & set(self.admin_groups))
        if await super().check_allowed(username, dict(auth_model, admin=admin_by_group)):
            return True
        raise refuse(
            f"{username} may not use {self.service_name}: {self.who_may_log_in()}. Ask your administrators for access.",
            "not_allowed",
        )

    def who_may_log_in(self) -> str:
        raise NotImplementedError

    async def run_post_auth_hook(self, handler, authentication):
        name = authentication["name"]
        issuer, subject = self.identity(authentication)
        if not subject:
            raise refuse(
                "Your identity provider sent no subject (user id): the login cannot be bound to you.", "other_identity"
            )
        if self.identities.owner(name) not in (None, (issuer, subject)):
            raise self._refuse_other_identity(name)
        authentication = await super().run_post_auth_hook(handler, authentication)
        if not self.identities.claim(name, issuer, subject):
            raise self._refuse_other_identity(name)
        return authentication


class DiscoveringLoginHandler(OAuthLoginHandler):
    async def get(self):
        await self.authenticator.discover()
        return super().get()


class CampusOIDCAuthenticator(IdentityBinding, GenericOAuthenticator):
    """Log in with the campus OpenID Connect provider (Keycloak, Entra ID, Google ...)."""

    issuer = Unicode(help="The provider's issuer URL; its endpoints are discovered from it.").tag(config=True)
    email_domain = Unicode(
        "",
        help="When set, a username claim 'name@<email_domain>' becomes 'name'; other domains are refused.",
    ).tag(config=True)
    allowed_email_domains = Unicode(
        "",
        help="Space-separated domains: the 'email' claim must be a verified address at one of them.",
    ).tag(config=True)
    login_handler = DiscoveringLoginHandler

    @default("login_service")
    def _login_service(self):
        return "your campus account"

    async def discover(self) -> None:
        """Read the provider's endpoints from its discovery document, once, through the authenticator's
        HTTP client (its CA bundle, proxies and timeouts apply)."""
        if self.authorize_url and self.token_url and self.userdata_url:
            return
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            config = await self.httpfetch(url, label="discovering the identity provider", method="GET")
        except Exception as e:
            self.log.error("Cannot read the identity provider's configuration at %s: %s", url, e)
            raise web.HTTPError(
                503, "%s", "The campus identity provider cannot be reached right now; try again in a minute."
            ) from None
        if str(config.get("issuer", "")).rstrip("/") != self.issuer.rstrip("/"):
            self.log.error("%s names another issuer: %r", url, config.get("issuer"))
            raise web.HTTPError(503, "%s", "The campus identity provider's configuration does not match this hub.")
        self.authorize_url = self.authorize_url or config["authorization_endpoint"]
        self.token_url = self.token_url or config["token_endpoint"]
        self.userdata_url = self.userdata_url or config["userinfo_endpoint"]

    async def authenticate(self, handler, data=None, **kwargs):
        await self.discover()
        return await super().authenticate(handler, data, **kwargs)

    async def refresh_user(self, user, handler=None, **kwargs):
        await self.discover()
        return await super().refresh_user(user, handler, **kwargs)

    def user_info_to_username(self, user_info):
        return unix_name(super().user_info_to_username(user_info), self.email_domain or None)

    def identity(self, auth_model):
        return self.issuer, str(self.user_info(auth_model).get("sub") or "")

    def who_may_log_in(self) -> str:
        groups = ", ".join(sorted(self.allowed_groups)) or "none"
        return f"it is open to members of these groups: {groups}"

    async def check_blocked_users(self, username, auth_model):
        # here, not in check_allowed: allow_all_users skips that one
        if not await maybe_future(super().check_blocked_users(username, auth_model)):
            return False
        domains = self.allowed_email_domains.split()
        if domains:
            info = self.user_info(auth_model)
            email = str(info.get("email") or "")
            domain = email.rpartition("@")[2].lower()
            if "@" not in email or domain not in {d.lower() for d in domains} or info.get("email_verified") is False:
                raise refuse(
                    f"{username} may not use {self.service_name}: it is open to verified addresses at "
                    f"{', '.join(domains)}, and your identity provider sent {email or 'no address'!r}.",
                    "email_domain",
                )
        return True


class CampusGitHubOAuthenticator(IdentityBinding, GitHubOAuthenticator):
    """GitHub login for a small lab: names bound to GitHub's numeric user id, so that a renamed
    account never inherits another's name."""

    def user_info_to_username(self, user_info):
        return unix_name(super().user_info_to_username(user_info))

    def identity(self, auth_model):
        return self.github_url, str(self.user_info(auth_model).get("id") or "")

    def who_may_log_in(self) -> str:
        return "it is open to the GitHub users and organizations its administrators allowed"


def account_hook(mode: str, min_uid: int, max_uid: int):
    """A post_auth_hook that checks ('directory') or creates ('create') the user's unix account."""

    def hook(authenticator, handler, authentication):
        name = authentication["name"]
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            if mode != "create":
                raise refuse(
                    f"You are logged in as {name}, but this cluster has no unix account {name!r}. "
                    "Accounts come from the campus directory: ask your administrators to enable yours.",
                    "no_account",
                ) from None
            account = create_account(name)
            authenticator.log.info("Created the unix account %s (uid %s)", name, account.pw_uid)
        problem = account_problem(account, min_uid, max_uid)
        if problem:
            raise refuse(f"{problem}: it cannot log in to CampusHub.", "system_account")
        return authentication

    return hook


def account_problem(account: pwd.struct_passwd, min_uid: int, max_uid: int) -> str:
    """Why an account may not log in or get a server ('' if it may)."""
    if not min_uid <= account.pw_uid <= max_uid:
        return f"{account.pw_name} is a system account (uid {account.pw_uid}, outside {min_uid}-{max_uid})"
    if os.path.basename(account.pw_shell or "") in NO_LOGIN_SHELLS:
        return f"{account.pw_name} is an account without login (shell {account.pw_shell})"
    return ""


def create_account(name: str) -> pwd.struct_passwd:
    """A new unix account with a private (0700) home folder."""
    try:
        grp.getgrnam(name)
    except KeyError:
        pass
    else:
        raise refuse(
            f"A unix group named {name!r} exists already, so no account of that name can be created. "
            "Ask your administrators.",
            "no_account",
        )
    done = subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", "--", name], capture_output=True, text=True
    )
    if done.returncode != 0 and "already exists" not in done.stderr:
        raise web.HTTPError(500, "%s", f"Could not create the unix account {name!r}: {done.stderr.strip()}")
    account = pwd.getpwnam(name)
    os.chmod(account.pw_dir, 0o700)
    return account
