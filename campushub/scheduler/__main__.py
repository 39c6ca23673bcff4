"""`python -m campushub.scheduler`: the nightly-notebooks service, as the hub starts it (a hub-managed
service: JUPYTERHUB_* from the hub, the site file from CAMPUSHUB_CONFIG)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import signal
import sys
from urllib.parse import urlparse

from tornado.web import Application

from ..hubconfig import public_url
from ..site import SiteError, load_site
from ..state import StateDir
from .api import app_handlers
from .demo import add_example
from .executors import executor_for
from .service import HubClient, Scheduler
from .store import db_url, open_store


async def serve() -> None:
    site = load_site(os.environ.get("CAMPUSHUB_CONFIG") or None)
    state = StateDir(site.hub.state_dir).ensure()
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/scheduler/")
    scheduler = Scheduler(
        site,
        open_store(*db_url(site, state)),
        executor_for(site),
        HubClient(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"]),
        state.path / "scheduler-html",
        run_url=lambda run_id: f"{public_url(site).rstrip('/')}{prefix}runs/{run_id}",
        service_id=state.secret("scheduler_id", make=lambda: secrets.token_hex(4))[0],
    )
    app = Application(
        app_handlers(prefix),
        scheduler=scheduler,
        prefix=prefix,
        cookie_secret=state.secret("scheduler_cookie_secret")[0],
    )
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL") or f"http://127.0.0.1:{site.scheduler.port}")
    server = app.listen(url.port, url.hostname)
    logging.getLogger("campushub.scheduler").info(
        "Nightly notebooks at %s (executor %s), listening on %s", prefix, scheduler.executor.kind, url.netloc
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if site.auth.kind == "shared-password":
        await add_example(scheduler)
    loop_task = asyncio.ensure_future(scheduler.run_forever())
    await stop.wait()
    server.stop()
    loop_task.cancel()
    await scheduler.stop_demo_runs()


def end_with_the_hub() -> None:
    """Ask Linux for SIGTERM when the hub that started this service ends, however it ends: a hub stopped
    while it still waited for its services would leave this one holding its port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the hub ended before the request was made
        sys.exit(0)


def main() -> int:
    end_with_the_hub()
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    try:
        asyncio.run(serve())
    except SiteError as e:
        print(f"campushub scheduler: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
