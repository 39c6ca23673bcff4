"""A kernel busy running code counts as activity, so that the hub's idle culler spares its server.

The server reports `web_app.last_activity()` to the hub, and the culler stops servers whose last
activity is older than its timeout. jupyter_server counts API requests and kernel messages, but a
kernel busy in silent computation (a long training step, `time.sleep(600)`) sends no message for as
long as it runs: its server would look idle and be stopped mid-run. jupyter_server also counts every
`web_app.settings` key that ends in `_last_activity`; while any kernel is busy, this one is kept at
now. The job's Slurm walltime still bounds a kernel that never finishes.
"""

from __future__ import annotations

from datetime import datetime, timezone

from tornado.ioloop import PeriodicCallback

SETTING = "campushub_busy_kernels_last_activity"
CHECK_SECONDS = 5


def any_kernel_busy(kernel_manager) -> bool:
    """Whether a kernel is running code (jupyter_server tracks execution_state from its status messages)."""
    for kernel_id in kernel_manager.list_kernel_ids():
        try:
            kernel = kernel_manager.get_kernel(kernel_id)
        except KeyError:  # shut down meanwhile
            continue
        if getattr(kernel, "execution_state", None) == "busy":
            return True
    return False


def record_busy_kernels(settings: dict, kernel_manager, now: datetime | None = None) -> bool:
    """Set the activity setting to now (UTC, timezone-aware) if a kernel is busy; True if it was."""
    if not any_kernel_busy(kernel_manager):
        return False
    settings[SETTING] = now or datetime.now(timezone.utc)
    return True


def watch_busy_kernels(serverapp, seconds: float = CHECK_SECONDS) -> PeriodicCallback:
    """Check the kernels every `seconds` for as long as the server runs."""
    settings = serverapp.web_app.settings

    def check():
        record_busy_kernels(settings, serverapp.kernel_manager)

    callback = PeriodicCallback(check, seconds * 1000)
    callback.start()
    serverapp.log.info("campushub_lab: busy kernels count as activity (checked every %s s)", seconds)
    return callback
