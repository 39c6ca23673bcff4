"""A real OpenID Connect provider for the tests: oidc-provider-mock, served on a free local port.

It runs the authorization-code flow with its own login form (a `sub` field); `set_user` sets the
claims it then issues for a subject, as an IdP admin would change a user's groups.
"""

from __future__ import annotations

import requests
from oidc_provider_mock import run_server_in_thread

from .slurm import free_port


class IdentityProvider:
    def __init__(self):
        self.port = free_port()
        self._server = run_server_in_thread(port=self.port)
        self._server.__enter__()
        self.url = f"http://localhost:{self.port}"

    def set_user(self, sub: str, **claims) -> None:
        r = requests.put(f"{self.url}/users/{sub}", json=claims, timeout=10)
        assert r.status_code == 204, r.text

    def close(self) -> None:
        self._server.__exit__(None, None, None)
