"""Site file -> JupyterHub traitlets config.

One small function per concern; each sets traits and never appends to or mutates what another set.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import sys
from functools import cache
from pathlib import Path

from traitlets.config import Config

from .proxy import hub_proxy_config
from .site import Site, SiteError, load_site
from .state import StateDir


def apply_hub(c: Config, site: Site, state: StateDir) -> None:
    c.JupyterHub.bind_url = f"{listen_url(site.hub.ip, site.hub.port)}{site.hub.base_url}"
    c.JupyterHub.hub_ip = site.hub.hub_ip
    c.JupyterHub.hub_port = site.hub.hub_port
    if site.hub.hub_connect_url:
        c.JupyterHub.hub_connect_url = site.hub.hub_connect_url
    from .database import hub_database, supply_password

    db = hub_database(site, state)
    c.JupyterHub.db_url = db.url  # never with the password: that goes to the driver, from memory
    supply_password(db)
    if db.kind == "sqlite":
        sqlite_write_ahead_log()
    c.JupyterHub.cookie_secret_file = str(state.cookie_secret_file)
    # Servers outlive a hub restart; `campushub up` asks for the opposite on its command line.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = False


def sqlite_write_ahead_log() -> None:
    """The hub's SQLite database in write-ahead-log mode: a commit appends to the log instead of rewriting the
    journal, which made creating 1,000 users (a course's roster) 9.2 s -> 6.6 s here; readers no longer
    wait for writers. Commits stay durable (synchronous stays FULL). The mode is kept in the file, beside
    which SQLite keeps jupyterhub.sqlite-wal and -shm: copy the database with SQLite's backup (`sqlite3
    jupyterhub.sqlite ".backup FILE"`), not `cp` alone."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", on_connect_wal):
        event.listen(Engine, "connect", on_connect_wal)


def on_connect_wal(dbapi_connection, _record) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        dbapi_connection.execute("PRAGMA journal_mode=WAL")


HUB_TEMPLATES = Path(__file__).with_name("templates")


def apply_branding(c: Config, site: Site, state: StateDir) -> None:
    """The pages: JupyterHub's templates, extended by CampusHub's (campushub/templates), and a site's own
    before both; the name, description and support contact reach every page as `campushub`."""
    b = site.branding
    c.JupyterHub.template_paths = [str(p) for p in (b.templates, HUB_TEMPLATES) if p]
    c.JupyterHub.template_vars = {"campushub": page_vars(site)}
    if b.logo:
        c.JupyterHub.logo_file = str(b.logo)


def page_vars(site: Site) -> dict:
    """What CampusHub's page templates show of the site."""
    b = site.branding
    support = b.support or ""
    return {
        "name": b.name,
        "description": b.description,
        "support": support,
        "support_url": f"mailto:{support}" if support and "://" not in support else support,
        # where servers run, for the spawn page's words: slurm, docker or local
        "backend": site.spawner.backend,
    }


def read_secret_file(path: Path, key: str) -> str:
    """A secret from an admin's file, refused as `secret_file` says."""
    value, problem = secret_file(path, key)
    if problem:
        raise SiteError([problem])
    return value


def secret_file(path: Path, key: str) -> tuple[str, str | None]:
    """(the secret, why it cannot be used or None): the file must exist, be readable and hold a value,
    and not be readable by every user."""
    try:
        mode = path.stat().st_mode
        value = path.read_text().strip()
    except OSError as e:
        as_whom = f" (as user {getpass.getuser()})" if e.errno == errno.EACCES else ""
        return "", f"{key}: cannot read {path}: {e.strerror}{as_whom}"
    if mode & 0o004:
        return value, f"{key}: {path} is readable by every user: chmod 600 it"
    if not value:
        return value, f"{key}: {path} is empty"
    return value, None


def secret_files(site: Site) -> dict[str, Path]:
    """The admin's secret files that the site names, by key."""
    files = {}
    if site.auth.kind == "oidc":
        files["auth.oidc.client_secret_file"] = site.auth.oidc.client_secret_file
    elif site.auth.kind == "github":
        files["auth.github.client_secret_file"] = site.auth.github.client_secret_file
    if site.hub.db_password_file:
        files["hub.db_password_file"] = site.hub.db_password_file
    if site.scheduler.enabled and site.scheduler.db_password_file:
        files["scheduler.db_password_file"] = site.scheduler.db_password_file
    if site.metrics.token_file:
        files["metrics.token_file"] = site.metrics.token_file
    return files


def secret_problems(site: Site) -> list[str]:
    """One line per secret file the hub would refuse, or that others can read: the admin's (secret_file)
    and those an earlier start generated into the state folder. `check_site` and `campushub doctor` use it."""
    problems = [problem for key, path in secret_files(site).items() if (problem := secret_file(path, key)[1])]
    token = site.metrics.token_file
    if token and not problems and len(secret_file(token, "")[0]) < METRICS_TOKEN_MIN:
        problems.append(f"metrics.token_file: {token} holds fewer than {METRICS_TOKEN_MIN} characters")
    for name in StateDir.SECRETS:  # generated by an earlier start: still private?
        path = Path(site.hub.state_dir) / name
        if path.exists() and path.stat().st_mode & 0o077:
            problems.append(f"hub.state_dir: {path} is readable by others: chmod 600 it")
    return problems


def check_site(site: Site) -> None:
    """Raise SiteError for what only the files named in the site can tell, and the hub would refuse.
    `campushub config check` and the hub's start both run it, before anything is created."""
    problems = secret_problems(site)
    if site.spawner.backend == "local" and site.auth.kind != "shared-password" and os.geteuid() != 0:
        # each server runs as the user's unix account (JupyterHub's setuid spawning)
        problems.append(
            "spawner.backend: local with a campus login runs each server as the user's unix account, "
            "so the hub must run as root"
        )
    logo = site.branding.logo
    if logo and not os.access(logo, os.R_OK):
        problems.append(f"branding.logo: cannot read {logo}")
    if problems:
        raise SiteError(problems)


def public_url(site: Site) -> str:
    return site.hub.public_url or f"{listen_url(site.hub.ip, site.hub.port)}{site.hub.base_url}"


def listen_url(ip: str, port: int) -> str:
    """http://ip:port, with an IPv6 address in brackets."""
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


def apply_auth(c: Config, site: Site, state: StateDir) -> None:
    auth = site.auth
    c.Authenticator.admin_users = set(auth.admin_users)
    callback = public_url(site).rstrip("/") + "/hub/oauth_callback"
    if auth.kind == "shared-password":
        c.JupyterHub.authenticator_class = "shared-password"
        c.SharedPasswordAuthenticator.user_password = state.demo_password()[0]
        c.SharedPasswordAuthenticator.allow_all = True
        if auth.admin_users:
            c.SharedPasswordAuthenticator.admin_password = state.demo_admin_password()[0]
    elif auth.kind == "oidc":
        from .auth import CampusOIDCAuthenticator

        oidc = auth.oidc
        c.JupyterHub.authenticator_class = CampusOIDCAuthenticator
        a = c.CampusOIDCAuthenticator
        a.issuer = oidc.issuer
        a.client_id = oidc.client_id
        a.client_secret = read_secret_file(oidc.client_secret_file, "auth.oidc.client_secret_file")
        a.oauth_callback_url = callback
        a.username_claim = oidc.username_claim
        a.email_domain = oidc.email_domain or ""
        a.allowed_email_domains = " ".join(oidc.allowed_email_domains)
        a.scope = list(oidc.scopes)
        a.manage_groups = True
        a.auth_state_groups_key = f"oauth_user.{oidc.groups_claim}"
        a.allowed_groups = set(oidc.allowed_groups)
        a.admin_groups = set(oidc.admin_groups)
        a.allow_all = oidc.allow_all_users
        a.enable_pkce = True
        a.identities_db = str(state.path / "identities.sqlite")
        a.service_name = site.branding.name
    else:
        from .auth import CampusGitHubOAuthenticator

        github = auth.github
        c.JupyterHub.authenticator_class = CampusGitHubOAuthenticator
        a = c.CampusGitHubOAuthenticator
        a.github_url = github.url.rstrip("/")
        a.client_id = github.client_id
        a.client_secret = read_secret_file(github.client_secret_file, "auth.github.client_secret_file")
        a.oauth_callback_url = callback
        a.allowed_organizations = set(github.allowed_organizations)
        a.allowed_users = set(github.allowed_users)
        a.identities_db = str(state.path / "identities.sqlite")
        a.service_name = site.branding.name
    if auth.encrypt_auth_state:
        c.Authenticator.enable_auth_state = True
        if not os.environ.get("JUPYTERHUB_CRYPT_KEY"):
            c.CryptKeeper.keys = [state.secret("crypt_key")[0]]
    if auth.kind != "shared-password":
        from .auth import account_hook

        users = site.users
        c.Authenticator.post_auth_hook = account_hook(users.accounts, users.min_uid, users.max_uid)


def apply_spawner(c: Config, site: Site, state: StateDir) -> None:
    s = site.spawner
    c.Spawner.default_url = "/lab"
    c.Spawner.start_timeout = s.start_timeout
    c.Spawner.http_timeout = s.http_timeout
    c.Spawner.poll_interval = s.running_check_interval
    if s.backend == "local":
        apply_local(c, site, state)
    elif s.backend == "docker":
        apply_docker(c, site, state)
    else:
        apply_slurm(c, site, state)


def apply_local(c: Config, site: Site, state: StateDir) -> None:
    env = site.spawner.local.python_env
    c.Spawner.cmd = [str((env / "bin" if env else Path(sys.executable).parent) / "jupyterhub-singleuser")]
    if site.auth.kind != "shared-password":
        # each server runs as the user's own unix account (check_site: the hub is root)
        from .spawners.local import LocalSpawner

        c.JupyterHub.spawner_class = LocalSpawner
        c.LocalSpawner.users = site.users
        return
    # The demo: every server is a process of the hub's own account, on loopback.
    c.JupyterHub.spawner_class = "simple"
    c.SimpleLocalProcessSpawner.home_dir_template = str(state.path / "homes" / "{username}")
    if os.geteuid() == 0:
        c.Spawner.args = ["--ServerApp.allow_root=True"]


def apply_slurm(c: Config, site: Site, state: StateDir) -> None:
    # Imported here, not by name, so that the hardened port callback replaces batchspawner's
    # before the hub builds its URL handlers.
    from .spawners.slurm import SlurmSpawner

    c.JupyterHub.spawner_class = SlurmSpawner
    c.SlurmSpawner.slurm = site.spawner.slurm
    c.SlurmSpawner.users = site.users
    c.SlurmSpawner.profiles = list(site.profiles)
    c.SlurmSpawner.timezone = site.branding.timezone or ""


def apply_docker(c: Config, site: Site, state: StateDir) -> None:
    from .spawners.docker import DockerSpawner

    c.JupyterHub.spawner_class = DockerSpawner
    c.DockerSpawner.settings = site.spawner.docker
    c.DockerSpawner.users = site.users
    c.DockerSpawner.profiles = list(site.profiles)
    # the image's jupyterhub-singleuser, whatever its own command
    c.DockerSpawner.cmd = ["jupyterhub-singleuser"]


METRICS_TOKEN_MIN = 16
METRICS_SCOPES = ["read:metrics"]
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
# the scheduler reads an owner's hub groups (and their properties) to check the profiles granted to them
SCHEDULER_SCOPES = ["read:users:name", "read:users:groups", "read:groups"]


def apply_culling(c: Config, site: Site, state: StateDir) -> None:
    cull = site.culling
    c.JupyterHub.last_activity_interval = cull.activity_interval


def apply_server_environment(c: Config, site: Site, state: StateDir) -> None:
    """What every user's server finds in its environment, besides JupyterHub's own variables."""
    env = {"JUPYTERHUB_ACTIVITY_INTERVAL": str(site.culling.activity_interval)}
    if site.scheduler.enabled:
        # `campushub schedule` in a server's terminal, and the Lab extension, find the service here
        env["CAMPUSHUB_SCHEDULER_URL"] = f"{public_url(site).rstrip('/')}/services/scheduler/"
    c.Spawner.environment = env


def apply_services(c: Config, site: Site, state: StateDir) -> None:
    """Hub-managed services: the hub starts each with its token, and restarts it with itself. Each has a role
    of the least scopes it needs."""
    services, roles = [], []
    cull = site.culling
    if cull.enabled:
        command = [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={cull.idle_timeout}",
                   f"--cull-every={cull.check_every}"]  # fmt: skip
        services.append({"name": "idle-culler", "command": command})
        roles.append(
            {
                "name": "idle-culler",
                "description": "Stop idle servers: read activity, stop servers, nothing else",
                "scopes": CULLER_SCOPES,
                "services": ["idle-culler"],
            }
        )
    if site.scheduler.enabled:
        from .slurmenv import command_env

        # what Slurm's commands need (a service gets only a few of the hub's variables), and the site file
        environment = command_env()
        if site.source:
            environment["CAMPUSHUB_CONFIG"] = str(site.source)
        services.append(
            {
                "name": "scheduler",
                "info": {"description": "Nightly notebooks: scheduled runs of your notebooks"},
                "url": f"http://127.0.0.1:{site.scheduler.port}",
                "command": [sys.executable, "-m", "campushub.scheduler"],
                "environment": environment,
                "oauth_no_confirm": True,
            }
        )
        roles.append(
            {
                "name": "campushub-scheduler",
                "description": "Read users' names and groups, and groups, to check the profiles of their runs",
                "scopes": SCHEDULER_SCOPES,
                "services": ["scheduler"],
            }
        )
        # every user may use the scheduler (it shows each only their own), with a browser or a token,
        roles.append(
            {
                "name": "user",
                "description": "A user: their own servers and tokens, and the nightly-notebooks service",
                "scopes": ["self", "access:services!service=scheduler"],
            }
        )
        # and so may a server's own token, for its user (the Lab extension schedules through it)
        c.Spawner.server_token_scopes = [
            "users:activity!user",
            "access:servers!server",
            "access:services!service=scheduler",
        ]
    if site.metrics.token_file:
        # Prometheus's scrapes: an external service (no URL, no process) known by its token
        token = read_secret_file(site.metrics.token_file, "metrics.token_file")
        services.append({"name": "prometheus", "api_token": token})
        roles.append(
            {
                "name": "prometheus",
                "description": "Read the hub's metrics (/hub/metrics), nothing else",
                "scopes": METRICS_SCOPES,
                "services": ["prometheus"],
            }
        )
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles + course_roles(state)


def apply_metrics(c: Config, site: Site, state: StateDir) -> None:
    """CampusHub's metrics beside JupyterHub's at /hub/metrics (campushub.metrics), for a token with
    read:metrics: running servers and GPUs from the hub's spawners, runs from the scheduler's store."""
    from . import metrics

    c.JupyterHub.authenticate_prometheus = True
    metrics.register("servers", metrics.ServersCollector(metrics.hub_spawners))
    if site.scheduler.enabled:
        from .scheduler.store import db_url

        metrics.register("scheduler", metrics.SchedulerRunsCollector(*db_url(site, state)))
    else:
        metrics.unregister("scheduler")


def apply_courses(c: Config, site: Site, state: StateDir) -> None:
    """A course's staff may open its students' servers (campushub.courses.access)."""
    from .courses.access import course_access_scopes
    from .courses.rolesapi import handlers

    c.Spawner.pre_spawn_hook = course_access_scopes
    # `campushub course apply|retire` put a new or retired course's staff role in effect through this
    # endpoint, without a restart. JupyterHub marks extra_handlers deprecated in favour of services, but a
    # service cannot change the hub's roles: the one warning it logs at start is dropped.
    logging.getLogger("JupyterHub").addFilter(_ExtraHandlersWarning())
    c.JupyterHub.extra_handlers = handlers(state.path)


class _ExtraHandlersWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "extra_handlers is deprecated" not in record.getMessage()


def course_roles(state: StateDir) -> list[dict]:
    """The staff role of every course applied on this hub (campushub.courses.roles: made from ids only)."""
    from .courses.roles import course_roles as roles_of

    try:
        return roles_of(state.path)
    except ValueError as e:
        raise SiteError([str(e)]) from None


@cache  # JupyterHub's list loads its entry points; a hub start validates the site file twice
def configurable_classes() -> dict[str, type]:
    """The classes whose settings hub.extra_config may set: JupyterHub's own and CampusHub's."""
    from jupyterhub.app import JupyterHub
    from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
    from oauthenticator.generic import GenericOAuthenticator
    from oauthenticator.github import GitHubOAuthenticator

    from .auth import CampusGitHubOAuthenticator, CampusOIDCAuthenticator
    from .spawners.docker import DockerSpawner
    from .spawners.local import LocalSpawner
    from .spawners.slurm import SlurmSpawner

    found: dict[str, type] = {}
    for cls in [
        *JupyterHub().classes, LocalProcessSpawner, SimpleLocalProcessSpawner, LocalSpawner, SlurmSpawner, DockerSpawner,
        GenericOAuthenticator, GitHubOAuthenticator, CampusOIDCAuthenticator, CampusGitHubOAuthenticator,
    ]:  # fmt: skip
        for parent in cls.mro():
            if hasattr(parent, "class_trait_names"):
                found.setdefault(parent.__name__, parent)
    return found


def extra_config_problems(extra: dict[str, dict]) -> list[str]:
    """One line per unknown class or setting in hub.extra_config, with the nearest valid name."""
    from difflib import get_close_matches

    from .spawners.docker import SITE_SETTINGS as DOCKER_SITE_SETTINGS
    from .spawners.slurm import RETIRED_SETTINGS

    classes = configurable_classes()
    problems = []
    for name, settings in extra.items():
        cls = classes.get(name)
        if cls is None:
            near = get_close_matches(name, classes, n=1)
            problems.append(f"{name}: no such JupyterHub class" + (f" (did you mean {near[0]!r}?)" if near else ""))
            continue
        known = cls.class_trait_names(config=True)
        for key in settings:
            if key in RETIRED_SETTINGS and issubclass(cls, classes["BatchSpawnerBase"]):
                problems.append(f"{name}.{key}: does nothing in CampusHub: set {RETIRED_SETTINGS[key]}")
            elif key in DOCKER_SITE_SETTINGS and issubclass(cls, classes["DockerSpawner"]):
                problems.append(f"{name}.{key}: the site file sets it: {DOCKER_SITE_SETTINGS[key]}")
            elif key not in known:
                near = get_close_matches(key, known, n=1)
                problems.append(
                    f"{name}.{key}: {name} has no such setting" + (f" (did you mean {near[0]!r}?)" if near else "")
                )
    return problems


def apply_extra(c: Config, site: Site, state: StateDir) -> None:
    # last: the site's own choice of what CampusHub does not model
    for name, settings in site.hub.extra_config.items():
        for key, value in settings.items():
            c[name][key] = value


def hub_config(site: Site) -> Config:
    """The whole JupyterHub config for a site."""
    check_site(site)
    state = StateDir(site.hub.state_dir).ensure()
    c = Config()
    for apply in (
        apply_hub,
        hub_proxy_config,
        apply_branding,
        apply_auth,
        apply_spawner,
        apply_culling,
        apply_server_environment,
        apply_services,
        apply_metrics,
        apply_courses,
        apply_extra,
    ):
        apply(c, site, state)
    return c


def configure(c: Config) -> None:
    """Load the site file named by CAMPUSHUB_CONFIG (embedded defaults if unset) into `c`.

    Settings of batchspawner that CampusHub replaces, set in the JupyterHub config before this call,
    are refused with the site key to use (the spawner warns of any set after it)."""
    from .spawners.slurm import retired_settings

    retired = retired_settings(c)
    if retired:
        raise SiteError([f"{key}: does nothing in CampusHub: set {instead}" for key, instead in retired])
    c.merge(hub_config(load_site(os.environ.get("CAMPUSHUB_CONFIG") or None)))
