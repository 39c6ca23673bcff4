"""proxy.kind: the site key, the files `campushub proxy` writes for traefik and the hub's side of each proxy
(the proxies themselves run in tests/integration/test_proxy.py)."""

from __future__ import annotations

import subprocess
import sys

import bcrypt
import pytest
import requests
import toml

from campushub.chp import ServerActivityCHP
from campushub.hubconfig import check_site, hub_config
from campushub.proxy import ProxyNotFound, TraefikFiles, find_proxy, proxy_command
from campushub.site import SiteError, parse_site
from campushub.state import StateDir
from tests.cluster.slurm import end_process, free_port, wait_for


def site_of(tmp_path, **proxy):
    return parse_site({"hub": {"state_dir": str(tmp_path / "state")}, "proxy": proxy})


def test_the_proxy_is_chp_unless_the_site_says_traefik(tmp_path):
    assert site_of(tmp_path).proxy.kind == "chp"
    assert site_of(tmp_path, kind="traefik").proxy.kind == "traefik"


def test_config_check_refuses_an_unknown_proxy_naming_the_key(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text("proxy:\n  kind: nginx\n")
    r = subprocess.run([sys.executable, "-m", "campushub", "config", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "proxy.kind: input should be 'chp' or 'traefik'" in r.stderr


@pytest.mark.parametrize("kind, command", [("chp", "configurable-http-proxy"), ("traefik", "traefik")])
def test_a_missing_proxy_is_named_with_how_to_install_it(tmp_path, monkeypatch, kind, command):
    # a Python whose folder holds no proxy, and a PATH without one
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProxyNotFound, match=rf"^{command} not found \(proxy.kind: {kind}\): .*install"):
        find_proxy(kind)


def test_the_virtualenvs_traefik_is_found():
    assert find_proxy("traefik").endswith("/traefik")
    out = subprocess.run([find_proxy("traefik"), "version"], capture_output=True, text=True, check=True).stdout
    assert "Version:" in out


def test_traefik_watches_the_file_where_the_hub_keeps_the_routes(tmp_path):
    site = site_of(tmp_path, kind="traefik", api_port=18001)
    state = StateDir(site.hub.state_dir).ensure()
    argv, env = proxy_command(site, state)
    files = TraefikFiles(state)
    assert argv[1:] == [f"--configfile={files.static}"] and env == {}
    static = toml.load(files.static)

    c = hub_config(site)
    assert c.JupyterHub.proxy_class == "traefik_file"
    p = c.TraefikFileProviderProxy
    assert p.should_start is False, "the hub would start (and on its stop, stop) its own traefik"
    # the hub writes its routes into the folder traefik watches, and asks traefik's API with its login
    assert static["providers"]["file"] == {"directory": str(files.dynamic), "watch": True}
    assert files.dynamic / "routes.toml" == files.routes and p.dynamic_config_file == str(files.routes)
    assert p.traefik_api_url == "http://127.0.0.1:18001"
    assert static["entryPoints"][p.traefik_api_entrypoint]["address"] == "127.0.0.1:18001"
    assert static["entryPoints"][p.traefik_entrypoint]["address"] == "127.0.0.1:8000"
    assert p.enable_setup_dynamic_config is False  # the API's router is campushub.toml's, not the hub's
    own = toml.load(files.own)
    (user_hash,) = own["http"]["middlewares"]["campushub-api-auth"]["basicAuth"]["users"]
    user, hashed = user_hash.split(":", 1)
    assert user == p.traefik_api_username
    assert bcrypt.checkpw(p.traefik_api_password.encode(), hashed.encode())
    assert static["api"] == {"dashboard": True}, "the API only through campushub.toml's router"
    api_router = own["http"]["routers"]["campushub-api"]
    assert api_router["entryPoints"] == [p.traefik_api_entrypoint] and api_router["middlewares"] == [
        "campushub-api-auth"
    ]
    # what no route matches goes to the hub, and so do the error pages
    assert own["http"]["services"]["campushub-hub"]["loadBalancer"]["servers"] == [{"url": "http://127.0.0.1:8081"}]
    assert own["http"]["middlewares"]["campushub-errors"]["errors"]["query"] == "/hub/error/{status}"
    # no calls home
    assert static["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}


def test_traefiks_secrets_are_private(tmp_path):
    site = site_of(tmp_path, kind="traefik")
    state = StateDir(site.hub.state_dir).ensure()
    proxy_command(site, state)
    files = TraefikFiles(state)
    for folder in (files.folder, files.dynamic):
        assert folder.stat().st_mode & 0o777 == 0o700
    for f in (files.static, files.own, state.path / "traefik_api_password"):
        assert f.stat().st_mode & 0o777 == 0o600, f
    (state.path / "traefik_api_password").chmod(0o644)
    with pytest.raises(SiteError, match=r"traefik_api_password is readable by others: chmod 600 it"):
        check_site(site)


def test_traefik_listens_on_an_ipv6_address_in_brackets(tmp_path):
    site = parse_site({"hub": {"ip": "::1", "hub_ip": "::1", "state_dir": str(tmp_path)}, "proxy": {"kind": "traefik"}})
    state = StateDir(site.hub.state_dir).ensure()
    proxy_command(site, state)
    files = TraefikFiles(state)
    assert toml.load(files.static)["entryPoints"]["http"]["address"] == "[::1]:8000"
    hub = toml.load(files.own)["http"]["services"]["campushub-hub"]["loadBalancer"]["servers"]
    assert hub == [{"url": "http://[::1]:8081"}]


def test_chp_has_the_hub_as_default_and_error_target(tmp_path):
    site = site_of(tmp_path, api_port=18001)
    state = StateDir(site.hub.state_dir).ensure()
    argv, env = proxy_command(site, state)
    assert argv[0].endswith("configurable-http-proxy")
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--api-ip"] == "127.0.0.1" and options["--api-port"] == "18001"
    assert options["--default-target"] == "http://127.0.0.1:8081"
    assert options["--error-target"] == "http://127.0.0.1:8081/hub/error"
    c = hub_config(site)
    assert c.ConfigurableHTTPProxy.should_start is False
    assert env == {"CONFIGPROXY_AUTH_TOKEN": c.ConfigurableHTTPProxy.auth_token}


def test_extra_config_may_set_the_traefik_proxy_class(tmp_path):
    extra = {"TraefikFileProviderProxy": {"check_route_timeout": 60}}
    site = parse_site({"hub": {"state_dir": str(tmp_path), "extra_config": extra}, "proxy": {"kind": "traefik"}})
    assert hub_config(site).TraefikFileProviderProxy.check_route_timeout == 60
    with pytest.raises(SiteError, match="did you mean 'check_route_timeout'"):
        parse_site({"hub": {"extra_config": {"TraefikFileProviderProxy": {"check_route_timout": 60}}}})


async def test_the_hub_reads_chps_routes_without_their_request_times():
    # a real configurable-http-proxy (make install puts it beside this Python)
    port, api_port = free_port(), free_port()
    token = "a-test-token-of-the-proxy"
    chp = subprocess.Popen(
        [find_proxy("chp"), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
         "--api-port", str(api_port)],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "CONFIGPROXY_AUTH_TOKEN": token},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        api = f"http://127.0.0.1:{api_port}/api/routes"
        headers = {"Authorization": f"token {token}"}

        def answers() -> bool:
            try:
                return requests.get(api, headers=headers, timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answers, 10, "configurable-http-proxy's API")
        route = {"target": "http://127.0.0.1:9", "jupyterhub": True, "user": "ada", "server_name": ""}
        assert requests.post(f"{api}/user/ada", json=route, headers=headers, timeout=5).status_code == 201
        assert "last_activity" in requests.get(api, headers=headers, timeout=5).json()["/user/ada"]

        proxy = ServerActivityCHP(api_url=f"http://127.0.0.1:{api_port}", auth_token=token, should_start=False)
        routes = await proxy.get_all_routes()
        assert routes["/user/ada/"]["data"] == {"user": "ada", "server_name": ""}
        assert routes["/user/ada/"]["target"] == "http://127.0.0.1:9"
    finally:
        end_process(chp, 10)


def test_the_hub_uses_that_chp_class(tmp_path):
    c = hub_config(site_of(tmp_path))
    assert c.JupyterHub.proxy_class == "campushub.chp.ServerActivityCHP"
