"""The CampusHub Lab extension: its jupyter server extension (its JupyterLab front-end is in src/, built into labextension/)."""

import os

from .activity import watch_busy_kernels
from .handlers import setup_handlers
from .portreport import ENABLED, report_port

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "campushub_lab"}]


def _load_jupyter_server_extension(serverapp):
    watch_busy_kernels(serverapp)
    setup_handlers(serverapp.web_app)


async def _start_jupyter_server_extension(serverapp):
    # runs once the event loop runs, after the HTTP server has bound its port
    if os.environ.get(ENABLED):
        await report_port(serverapp)
