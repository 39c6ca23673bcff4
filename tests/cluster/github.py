"""A stand-in for GitHub's OAuth endpoints, served on a free local port.

No GitHub can be reached from a test machine, so this plays GitHub (Enterprise Server layout: the
OAuth pages at /login/oauth/, the REST API at /api/v3/) for CampusHub's GitHub login, which runs
oauthenticator's real GitHubOAuthenticator against it. `next_user` is the account that the next
authorization signs in as: GitHub's numeric id and its login, which can change (a rename).
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
from urllib.parse import parse_qs, urlencode, urlparse

from .slurm import free_port


class GitHubStandIn:
    def __init__(self):
        self.next_user: dict = {}
        self.codes: dict[str, dict] = {}
        self.tokens: dict[str, dict] = {}
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def reply(self, status: int, body: dict | None = None, location: str = "") -> None:
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                data = json.dumps(body or {}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlparse(self.path)
                if url.path == "/login/oauth/authorize":  # the user approves at once
                    query = {k: v[0] for k, v in parse_qs(url.query).items()}
                    code = secrets.token_hex(8)
                    stand_in.codes[code] = dict(stand_in.next_user)
                    back = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query.get('state', '')})}"
                    return self.reply(302, location=back)
                if url.path == "/api/v3/user":
                    token = self.headers.get("Authorization", "").split()[-1]
                    user = stand_in.tokens.get(token)
                    return self.reply(200, user) if user else self.reply(401, {"message": "Bad credentials"})
                return self.reply(404, {"message": "Not Found"})

            def do_POST(self):
                if urlparse(self.path).path != "/login/oauth/access_token":
                    return self.reply(404, {"message": "Not Found"})
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                user = stand_in.codes.pop(form.get("code", [""])[0], None)
                if user is None:
                    return self.reply(200, {"error": "bad_verification_code"})
                token = secrets.token_hex(16)
                stand_in.tokens[token] = user
                return self.reply(200, {"access_token": token, "token_type": "bearer", "scope": "read:user"})

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sign_in_as(self, github_id: int, login: str) -> None:
        self.next_user = {"id": github_id, "login": login, "email": f"{login}@users.example", "name": login}

    def close(self) -> None:
        self.server.shutdown()
