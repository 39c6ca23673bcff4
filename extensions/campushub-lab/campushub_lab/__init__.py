"""The CampusHub Lab extension: its jupyter server extension (its JupyterLab front-end is in src/, built into labextension/)."""

import os

# The server parts are imported when the server loads the extension: importing this package stays cheap
# for campushub-singleuser, which must defer a slow import before jupyter_server's (see startup.py).

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "campushub_lab"}]


def _load_jupyter_server_extension(serverapp):
    from .activity import watch_busy_kernels
    from .handlers import setup_handlers

    watch_busy_kernels(serverapp)
    setup_handlers(serverapp.web_app)


async def _start_jupyter_server_extension(serverapp):
    # runs once the event loop runs, after the HTTP server has bound its port
    from .portreport import ENABLED, report_port

    if os.environ.get(ENABLED):
        await report_port(serverapp)
