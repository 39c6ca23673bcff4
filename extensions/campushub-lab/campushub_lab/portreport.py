"""The server's port, reported to the hub once the server listens (CampusHub's Slurm backend).

A server started as a batch job runs on a node the hub did not choose a port on. The job runs
`campushub-singleuser jupyterhub-singleuser ARGS...`: it picks a free port on the node and starts
the server there (this environment's in its own process, see startup.py; another command is executed); once the server accepts connections, this extension posts the port to the hub
(`POST /hub/api/batchspawner`, the path batchspawner uses). The hub's first readiness check then
finds the server up. (batchspawner-singleuser reports the port before the server has even loaded,
and the hub then probes it on a growing back-off.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
from urllib.parse import urlsplit, urlunsplit

ENABLED = "CAMPUSHUB_REPORT_PORT"
ATTEMPTS = 5
RETRY_SECONDS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def runs_this_environments_server(command: str) -> bool:
    """Whether COMMAND is this environment's jupyterhub-singleuser: then it runs in this process (startup.py)."""
    found = shutil.which(command)
    ours = os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")
    return found is not None and os.path.exists(ours) and os.path.samefile(found, ours)


def main(argv: list[str] | None = None) -> None:
    """campushub-singleuser COMMAND [ARGS...]"""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: campushub-singleuser COMMAND [ARGS...]\n\n"
            "Runs COMMAND (jupyterhub-singleuser) on a free port of this node; the campushub_lab server\n"
            "extension reports the port to the hub once the server listens. Run by CampusHub's Slurm jobs."
        )
        sys.exit(0 if argv else 2)
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if not url:
        sys.exit("campushub-singleuser: JUPYTERHUB_SERVICE_URL is not set (it is started by the hub's job)")
    os.environ["JUPYTERHUB_SERVICE_URL"] = with_port(url, free_port())
    os.environ[ENABLED] = "1"
    if runs_this_environments_server(argv[0]):
        from .startup import run_server

        run_server(argv[1:])
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        sys.exit(f"campushub-singleuser: cannot run {argv[0]}: {e}")


async def report_port(serverapp) -> None:
    """POST {"port": N} to the hub; a server the hub will not know stops."""
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

    api_url = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
    ssl = {
        "client_key": os.environ.get("JUPYTERHUB_SSL_KEYFILE") or None,
        "client_cert": os.environ.get("JUPYTERHUB_SSL_CERTFILE") or None,
        "ca_certs": os.environ.get("JUPYTERHUB_SSL_CLIENT_CA") or None,
    }
    request = HTTPRequest(
        f"{api_url}/batchspawner",
        method="POST",
        headers={
            "Authorization": f"token {os.environ.get('JUPYTERHUB_API_TOKEN', '')}",
            "Content-Type": "application/json",
        },
        body=json.dumps({"port": serverapp.port}),
        request_timeout=30,
        **ssl,
    )
    problem = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            body = e.response.body.decode(errors="replace") if e.response is not None else ""
            problem = f"{e.code} {body}".strip()
            if 400 <= e.code < 500:
                break  # refused: asking again changes nothing
        except OSError as e:
            problem = str(e)
        else:
            serverapp.log.info("CampusHub: reported port %s to the hub", serverapp.port)
            return
        serverapp.log.warning("CampusHub: port report failed (attempt %d of %d): %s", attempt, ATTEMPTS, problem)
        await asyncio.sleep(RETRY_SECONDS)
    serverapp.log.critical("CampusHub: the hub did not take this server's port (%s); stopping", problem)
    serverapp.stop()
