"""The CampusHub Lab extension: its jupyter server extension (the Lab front-end comes later)."""

from .activity import watch_busy_kernels

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "campushub_lab"}]


def _load_jupyter_server_extension(serverapp):
    watch_busy_kernels(serverapp)
