"""Local backend: each user's server is a process on the hub host, run as the user's own unix account
(JupyterHub's setuid spawning; the hub runs as root). Accounts outside the uid range or without a login
shell get no server, whoever asks for it (an admin's REST call included)."""

from __future__ import annotations

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Integer

from .slurm import unix_account


class LocalSpawner(LocalProcessSpawner):
    min_uid = Integer(1000, help="Lowest uid that may get a server.").tag(config=True)
    max_uid = Integer(60000, help="Highest uid that may get a server.").tag(config=True)

    async def start(self):
        unix_account(self.user.name, self.min_uid, self.max_uid)
        return await super().start()
