"""Site file -> JupyterHub traitlets config.

One small function per concern; each sets traits and never appends to or mutates what another set.
"""

from __future__ import annotations

import errno
import getpass
import os
import sys
from pathlib import Path

from traitlets.config import Config

from .site import Site, SiteError, load_site
from .state import StateDir


def apply_hub(c: Config, site: Site, state: StateDir) -> None:
    c.JupyterHub.bind_url = f"http://{site.hub.ip}:{site.hub.port}{site.hub.base_url}"
    c.JupyterHub.hub_ip = site.hub.hub_ip
    c.JupyterHub.hub_port = site.hub.hub_port
    if site.hub.hub_connect_url:
        c.JupyterHub.hub_connect_url = site.hub.hub_connect_url
    c.JupyterHub.db_url = state.db_url
    c.JupyterHub.cookie_secret_file = str(state.cookie_secret_file)
    # Servers outlive a hub restart; `campushub up` asks for the opposite on its command line.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = False


def apply_proxy(c: Config, site: Site, state: StateDir) -> None:
    # The proxy is its own process (`campushub proxy`), so a hub restart cuts no user's connection.
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{site.proxy.api_port}"
    c.ConfigurableHTTPProxy.auth_token = state.proxy_auth_token()


def read_secret_file(path: Path, key: str) -> str:
    """A secret from an admin's file, refused as `secret_file_problem` says."""
    problem = secret_file_problem(path, key)
    if problem:
        raise SiteError([problem])
    return path.read_text().strip()


def secret_file_problem(path: Path, key: str) -> str | None:
    """Why an admin's secret file cannot be used, or None: it must exist, be readable and hold a value,
    and not be readable by every user."""
    try:
        mode = path.stat().st_mode
        value = path.read_text().strip()
    except OSError as e:
        as_whom = f" (as user {getpass.getuser()})" if e.errno == errno.EACCES else ""
        return f"{key}: cannot read {path}: {e.strerror}{as_whom}"
    if mode & 0o004:
        return f"{key}: {path} is readable by every user: chmod 600 it"
    if not value:
        return f"{key}: {path} is empty"
    return None


def check_site(site: Site) -> None:
    """Raise SiteError for what only the files named in the site can tell, and the hub would refuse.
    `campushub config check` and the hub's start both run it, before anything is created."""
    secrets = {}
    if site.auth.kind == "oidc":
        secrets["auth.oidc.client_secret_file"] = site.auth.oidc.client_secret_file
    elif site.auth.kind == "github":
        secrets["auth.github.client_secret_file"] = site.auth.github.client_secret_file
    problems = [problem for key, path in secrets.items() if (problem := secret_file_problem(path, key))]
    if site.spawner.backend == "local" and site.auth.kind != "shared-password" and os.geteuid() != 0:
        # each server runs as the user's unix account (JupyterHub's setuid spawning)
        problems.append(
            "spawner.backend: local with a campus login runs each server as the user's unix account, "
            "so the hub must run as root"
        )
    if problems:
        raise SiteError(problems)


def public_url(site: Site) -> str:
    return site.hub.public_url or f"http://{site.hub.ip}:{site.hub.port}{site.hub.base_url}"


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


CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


def apply_culling(c: Config, site: Site, state: StateDir) -> None:
    cull = site.culling
    c.JupyterHub.last_activity_interval = cull.activity_interval
    c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": str(cull.activity_interval)}
    if not cull.enabled:
        return
    # A hub-managed service: the hub starts it, gives it its token, and restarts it with itself.
    c.JupyterHub.services = [
        {
            "name": "idle-culler",
            "command": [
                sys.executable,
                "-m",
                "jupyterhub_idle_culler",
                f"--timeout={cull.idle_timeout}",
                f"--cull-every={cull.check_every}",
            ],  # fmt: skip
        }
    ]
    c.JupyterHub.load_roles = [
        {
            "name": "idle-culler",
            "description": "Stop idle servers: read activity, stop servers, nothing else",
            "scopes": CULLER_SCOPES,
            "services": ["idle-culler"],
        }
    ]


def configurable_classes() -> dict[str, type]:
    """The classes whose settings hub.extra_config may set: JupyterHub's own and CampusHub's."""
    from jupyterhub.app import JupyterHub
    from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
    from oauthenticator.generic import GenericOAuthenticator
    from oauthenticator.github import GitHubOAuthenticator

    from .auth import CampusGitHubOAuthenticator, CampusOIDCAuthenticator
    from .spawners.local import LocalSpawner
    from .spawners.slurm import SlurmSpawner

    found: dict[str, type] = {}
    for cls in [
        *JupyterHub().classes, LocalProcessSpawner, SimpleLocalProcessSpawner, LocalSpawner, SlurmSpawner,
        GenericOAuthenticator, GitHubOAuthenticator, CampusOIDCAuthenticator, CampusGitHubOAuthenticator,
    ]:  # fmt: skip
        for parent in cls.mro():
            if hasattr(parent, "class_trait_names"):
                found.setdefault(parent.__name__, parent)
    return found


def extra_config_problems(extra: dict[str, dict]) -> list[str]:
    """One line per unknown class or setting in hub.extra_config, with the nearest valid name."""
    from difflib import get_close_matches

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
    for apply in (apply_hub, apply_proxy, apply_auth, apply_spawner, apply_culling, apply_extra):
        apply(c, site, state)
    return c


def configure(c: Config) -> None:
    """Load the site file named by CAMPUSHUB_CONFIG (embedded defaults if unset) into `c`."""
    c.merge(hub_config(load_site(os.environ.get("CAMPUSHUB_CONFIG") or None)))
