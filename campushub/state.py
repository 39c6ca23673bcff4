"""The state folder: hub database and generated secrets (files of mode 0600); with the local backend
(the demo), users' homes in homes/. The running hub holds hub.lock; `campushub db upgrade` keeps its copies
of the database in backups/ (campushub.database)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class StateDir:
    # the secrets generated into the folder
    SECRETS = (
        "jupyterhub_cookie_secret",
        "proxy_auth_token",
        "traefik_api_password",
        "crypt_key",
        "demo_password",
        "demo_admin_password",
        "scheduler_cookie_secret",
        "scheduler_id",
    )

    def __init__(self, path: Path):
        self.path = Path(path)

    def ensure(self) -> StateDir:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)
        return self

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.path / 'jupyterhub.sqlite'}"

    @property
    def cookie_secret_file(self) -> Path:
        return self.path / "jupyterhub_cookie_secret"

    def secret(self, name: str, make=lambda: secrets.token_hex(32)) -> tuple[str, bool]:
        """Return (value, created): the secret stored in file `name`, made and written 0600 if absent."""
        path = self.path / name
        value = make()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if path.stat().st_mode & 0o077:
                raise PermissionError(f"{path} is readable by others: chmod 600 it") from None
            return path.read_text().strip(), False
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value, True

    def proxy_auth_token(self) -> str:
        return self.secret("proxy_auth_token")[0]

    def traefik_api_password(self) -> str:
        return self.secret("traefik_api_password")[0]

    def demo_password(self) -> tuple[str, bool]:
        return self.secret("demo_password", make=lambda: secrets.token_urlsafe(12))

    def demo_admin_password(self) -> tuple[str, bool]:
        # JupyterHub asks at least 32 characters of an admin password
        return self.secret("demo_admin_password", make=lambda: secrets.token_urlsafe(32))


def write_private(path: Path, text: str) -> None:
    """Write `path` whole, mode 0600: into a new file beside it, then renamed over it, so that a reader (or a
    writer killed halfway) never leaves a part of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
