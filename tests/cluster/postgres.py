"""A throwaway PostgreSQL server for the tests, in a temporary folder of its own.

The programs are those of Debian's postgresql package (initdb, pg_ctl, psql), run as the postgres
system user; the packaged cluster is not used. The server listens on 127.0.0.1 on a free port, where
it asks for a password (scram-sha-256), and on a unix socket in its folder, where the postgres user
administers it. The role `campushub`, with a random password, owns the database `scheduler`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from .slurm import free_port, run

POSTGRESQL_LIB = Path("/usr/lib/postgresql")
ROLE = "campushub"
DATABASE = "scheduler"
START_TIMEOUT = 30


def postgres_bin() -> Path | None:
    """The programs of the newest PostgreSQL installed, or None."""
    found = sorted(POSTGRESQL_LIB.glob("[0-9]*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class PostgresServer:
    def __init__(self):
        self.bin = postgres_bin()
        if self.bin is None:
            raise FileNotFoundError(f"no PostgreSQL in {POSTGRESQL_LIB}: install Debian's postgresql package")
        self.root = Path(tempfile.mkdtemp(prefix="campushub-postgres-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the scheduler's database, without the password."""
        return self.url_for(DATABASE)

    @property
    def url_with_password(self) -> str:
        return self.url_for(DATABASE, with_password=True)

    def url_for(self, database: str, with_password: bool = False) -> str:
        user = f"{ROLE}:{self.password}" if with_password else ROLE  # token_urlsafe: nothing to escape
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}"

    # --- life cycle ---

    def start(self) -> PostgresServer:
        """Make the cluster and start the server; stop() cleans up after a failed start too."""
        shutil.chown(self.root, "postgres", "postgres")
        self.as_postgres(
            "initdb", "--pgdata", str(self.data), "--username=postgres", "--encoding=UTF8", "--no-locale",
            "--auth-local=peer", "--auth-host=scram-sha-256", "--no-sync",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n")
        started = self.as_postgres(
            "pg_ctl", "start", "--pgdata", str(self.data), "--log", str(self.log), "--wait",
            f"--timeout={START_TIMEOUT}", check=False,
        )  # fmt: skip
        if started.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL did not start, or not within {START_TIMEOUT} s: {started.stdout}{started.stderr}\n"
                f"server log:\n{self.log_tail()}"
            )
        self.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'; CREATE DATABASE {DATABASE} OWNER {ROLE};")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            stop = ("pg_ctl", "stop", "--pgdata", str(self.data), "--wait", "--timeout=30")
            if self.as_postgres(*stop, "--mode=fast", check=False).returncode != 0:
                self.as_postgres(*stop, "--mode=immediate", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- for the tests ---

    def fresh_database(self, name: str) -> str:
        """A new, empty database owned by campushub (one of that name before is dropped): its URL, without the password."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")
        self.sql(f"CREATE DATABASE {name} OWNER {ROLE};")
        return self.url_for(name)

    def password_file(self, folder: Path) -> Path:
        """The password in a file only its owner may read."""
        path = Path(folder) / "postgres-password"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            f.write(self.password + "\n")
        return path

    def sql(self, statements: str) -> str:
        """Run SQL as the postgres superuser, over the unix socket."""
        return self.as_postgres(
            "psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", f"--host={self.root}", f"--port={self.port}",
            "--dbname=postgres", input=statements,
        ).stdout  # fmt: skip

    def as_postgres(self, program: str, *args: str, check=True, **kw):
        result = run(
            "runuser", "-u", "postgres", "--", str(self.bin / program), *args, check=False, cwd=self.root, **kw
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(could not read {self.log}: {e})"
