"""The environment Slurm's commands run in, from the hub, the scheduler and `campushub course`: only what
they need of the caller's (never a hub secret). A module of its own so that a command-line tool that runs
sacctmgr does not load the spawner and the login code."""

from __future__ import annotations

import os

# The hub's environment variables that Slurm's commands need, and nothing else.
COMMAND_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "SLURM_CONF", "TZ")


def command_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in COMMAND_ENV_KEYS if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env
