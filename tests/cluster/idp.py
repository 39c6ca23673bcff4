"""A real OpenID Connect provider for the tests: oidc-provider-mock, served on a free local port.

It runs the authorization-code flow with its own login form (a `sub` field); `set_user` sets the
claims it then issues for a subject, as an IdP admin would change a user's groups. `campus_login`
is the login section of a site on the test cluster: one provider per test process, started when
first asked for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import warnings
from functools import cache
from pathlib import Path

import requests
import werkzeug.serving

from .slurm import free_port

# Every test user logging in through campus_login is a member of this group; admins also of ADMIN_GROUP.
CAMPUS_GROUP = "campus"
ADMIN_GROUP = "hub-admins"


class IdentityProvider:
    """The provider on a free port of `host` (default: this machine's loopback)."""

    def __init__(self, host: str = "localhost"):
        with warnings.catch_warnings():  # authlib warns of its own deprecated modules, which the provider uses
            import authlib.deprecate  # (it turns its warnings on when imported: first, so that this filter wins)

            warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
            from oidc_provider_mock import app

        if host not in ("localhost", "127.0.0.1"):
            # the provider asks https of every other address; the tests' hosts talk plain http to it
            os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
        self.port = free_port()
        self._server = werkzeug.serving.make_server(host, self.port, app(), threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()
        self.url = f"http://{host}:{self.port}"

    def set_user(self, sub: str, **claims) -> None:
        set_user(self.url, sub, **claims)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def set_user(issuer: str, sub: str, **claims) -> None:
    r = requests.put(f"{issuer}/users/{sub}", json=claims, timeout=10)
    assert r.status_code == 204, r.text


@cache
def shared_provider() -> IdentityProvider:
    return IdentityProvider()


@cache
def _client_secret_file() -> Path:
    path = Path(tempfile.mkdtemp(prefix="campushub-oidc-")) / "client_secret"
    path.write_text("test-client-secret\n")
    path.chmod(0o600)
    return path


def campus_login() -> dict:
    """The `auth` section of a test site: campus login through the shared provider."""
    return {
        "kind": "oidc",
        "oidc": {
            "issuer": shared_provider().url,
            "client_id": "campushub-tests",
            "client_secret_file": str(_client_secret_file()),
            "allowed_groups": [CAMPUS_GROUP],
            "admin_groups": [ADMIN_GROUP],
        },
    }


def close_shared() -> None:
    """Stop the shared provider (its thread would keep the process alive) and remove the secret's folder."""
    if shared_provider.cache_info().currsize:
        shared_provider().close()
        shared_provider.cache_clear()
    if _client_secret_file.cache_info().currsize:
        shutil.rmtree(_client_secret_file().parent, ignore_errors=True)
        _client_secret_file.cache_clear()
