"""Local backend: each user's server is a process on the hub host, run as the user's own unix account
(JupyterHub's setuid spawning; the hub runs as root). Accounts outside the uid range or without a login
shell get no server, whoever asks for it (an admin's REST call included)."""

from __future__ import annotations

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Instance

from ..site import UsersSettings
from .slurm import unix_account


class LocalSpawner(LocalProcessSpawner):
    users = Instance(UsersSettings, (), help="The site file's users: which accounts may get a server.").tag(config=True)

    async def start(self):
        unix_account(self.user.name, self.users.min_uid, self.users.max_uid)
        return await super().start()
