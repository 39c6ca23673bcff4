"""The hub's database and the hub's state, day two: where the database is (SQLite in the state folder, or
PostgreSQL), its schema upgrade (`campushub db upgrade`), and backup and restore of the whole state
(`campushub backup`, `campushub restore`).

A database password comes from a file and stays in memory: it is handed to the driver (SQLAlchemy's
connect_args, pg_dump's environment), never written into a URL, a log line or a command line.

Whether the hub runs: `campushub hub` holds an exclusive lock (flock) on <state_dir>/hub.lock for as long
as it lives. The kernel drops the lock when the process ends, however it ends, so no stale pid file can
block an upgrade; a database upgrade and a restore hold the same lock, so no hub starts meanwhile. The
hub's API answering at hub_ip:hub_port also counts as running (a hub started some other way).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .state import StateDir

LOCK_FILE = "hub.lock"
BACKUPS = "backups"
MANIFEST = "manifest.json"
# not part of the state: users' files (the demo's homes), earlier backups, the lock, SQLite's side files
NOT_STATE = {"homes", BACKUPS, LOCK_FILE}
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
POSTGRESQL_LIB = Path("/usr/lib/postgresql")


class DatabaseError(Exception):
    """A database or backup step that cannot be done; the message is meant for a person. Nothing was changed."""


def url_problem(url: str, password_key: str) -> str | None:
    """Why `url` cannot be a CampusHub database URL, or None."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return f"{url!r} is not a database URL: give sqlite:////path/to/file or postgresql://user@host/database"
    if parsed.drivername not in ("sqlite", "postgresql", "postgresql+psycopg"):
        return (
            f"{parsed.drivername} databases are not supported: give sqlite:////path/to/file or "
            "postgresql://user@host/database (the driver is psycopg 3)"
        )
    if parsed.password is not None:
        return f"holds a password: take it out of the URL and put it in a file named by {password_key}"
    if parsed.drivername != "sqlite" and not (parsed.host and parsed.database):
        return "a PostgreSQL URL names a host and a database: postgresql://user@host/database"
    if parsed.drivername == "sqlite" and not parsed.database:
        return "an SQLite URL names a file: sqlite:////path/to/file"
    return None


@dataclass
class Database:
    """A database as SQLAlchemy reaches it: the URL (no password in it) and the password apart."""

    url: str
    password: str | None = None

    def __post_init__(self):
        if self.url.startswith("postgresql://"):  # SQLAlchemy's default driver would be psycopg2
            self.url = "postgresql+psycopg://" + self.url.removeprefix("postgresql://")

    @property
    def kind(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"

    @property
    def sqlite_file(self) -> Path:
        return Path(make_url(self.url).database)

    @property
    def where(self) -> str:
        """For messages: the file, or the URL (which holds no password)."""
        return str(self.sqlite_file) if self.kind == "sqlite" else self.url

    @property
    def engine_kwargs(self) -> dict:
        """SQLAlchemy's create_engine arguments (JupyterHub's db_kwargs): the password goes to the driver."""
        return {"connect_args": {"password": self.password}} if self.password is not None else {}

    def engine(self):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        return create_engine(self.url, poolclass=NullPool, **self.engine_kwargs)

    def libpq_url(self) -> str:
        """The URL for PostgreSQL's own programs (pg_dump, pg_restore)."""
        return "postgresql://" + self.url.split("://", 1)[1]

    def exists(self) -> bool:
        if self.kind == "sqlite":
            return self.sqlite_file.exists()
        return True  # an administrator makes PostgreSQL's database

    def table_names(self) -> list[str]:
        from sqlalchemy import inspect

        engine = self.engine()
        try:
            return inspect(engine).get_table_names()
        finally:
            engine.dispose()


# the passwords of the databases this process connects to, by where they are (supply_password)
_passwords: dict[tuple, str] = {}


def connection_key(host, port, database, user) -> tuple:
    return (host, int(port or 5432), database, user)


def supply_password(db: Database) -> None:
    """Give `db`'s password to every connection this process makes to it, whatever engine makes it.
    JupyterHub makes engines of its own from the bare URL (Alembic's, when it checks the schema at its start),
    which no db_kwargs reach; SQLAlchemy's do_connect event reaches them all, and the password stays in memory."""
    if db.password is None or db.kind != "postgresql":
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    url = make_url(db.url)
    _passwords[connection_key(url.host, url.port, url.database, url.username)] = db.password
    if not event.contains(Engine, "do_connect", _add_password):
        event.listen(Engine, "do_connect", _add_password)


def _add_password(dialect, _record, _cargs, cparams) -> None:
    if dialect.name == "postgresql" and "password" not in cparams:
        key = connection_key(cparams.get("host"), cparams.get("port"), cparams.get("dbname"), cparams.get("user"))
        if key in _passwords:
            cparams["password"] = _passwords[key]


def hub_database(site, state: StateDir) -> Database:
    from .hubconfig import read_secret_file

    password = None
    if site.hub.db_password_file:
        password = read_secret_file(site.hub.db_password_file, "hub.db_password_file")
    return Database(site.hub.db_url or state.db_url, password)


def scheduler_database(site, state: StateDir) -> Database:
    from .scheduler.store import db_url

    return Database(*db_url(site, state))


# --- is the hub running? ------------------------------------------------------------------------


def take_hub_lock(state: StateDir) -> int | None:
    """The open lock file, locked for this process (and dropped when it ends); None if another holds it.
    The descriptor is not inherited by the hub's children: servers that outlive the hub do not hold it."""
    fd = os.open(state.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_holder(state: StateDir) -> str:
    try:
        return (state.path / LOCK_FILE).read_text().strip() or "?"
    except OSError:
        return "?"


def hub_api_answers(site) -> str | None:
    """The hub's API address when something answers there as a JupyterHub does, else None."""
    from .cli import http_address, hub_api_answer

    address = http_address(site.hub.hub_ip, site.hub.hub_port)
    answer = hub_api_answer(address, site)
    if answer and answer[0] == 200:
        try:
            if "version" in json.loads(answer[2] or "{}"):
                return f"{address}{site.hub.base_url}hub/api/"
        except ValueError:
            pass
    return None


@contextlib.contextmanager
def hub_stopped(site, state: StateDir, doing: str) -> Iterator[None]:
    """Hold the hub's lock while `doing` runs; refuse if the hub runs."""
    if not state.path.exists():
        state.ensure()
    fd = take_hub_lock(state)
    if fd is None:
        raise DatabaseError(
            f"the hub is running (process {lock_holder(state)} holds {state.path / LOCK_FILE}): stop it "
            f"(systemctl stop campushub-hub), then {doing} again; nothing was changed"
        )
    try:
        answering = hub_api_answers(site)
        if answering:
            raise DatabaseError(f"a hub answers at {answering}: stop it, then {doing} again; nothing was changed")
        yield
    finally:
        os.close(fd)


# --- copies of databases --------------------------------------------------------------------------


def sqlite_copy(source: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite database (SQLite's online backup: its write-ahead log included),
    as a single file of mode 0600."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
    finally:
        dst.close()
        src.close()


def postgresql_program(name: str) -> str:
    """pg_dump or pg_restore: the newest installed (a dump needs one at least as new as the server)."""
    found = sorted(POSTGRESQL_LIB.glob(f"[0-9]*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    program = str(found[-1]) if found else shutil.which(name)
    if not program:
        raise DatabaseError(
            f"{name} is not installed: install PostgreSQL's client programs (apt install postgresql-client)"
        )
    return program


def postgresql_run(db: Database, argv: list[str], what: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "10"}
    if db.password is not None:
        env["PGPASSWORD"] = db.password  # the environment: not on the command line, which every user sees
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise DatabaseError(f"{what} of {db.where} failed: {result.stderr.strip()}")


def pg_dump(db: Database, dest: Path) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    argv = [
        postgresql_program("pg_dump"),
        "--format=custom",
        "--no-owner",
        f"--file={dest}",
        f"--dbname={db.libpq_url()}",
    ]
    postgresql_run(db, argv, "pg_dump")


def pg_restore(db: Database, dump: Path) -> None:
    argv = [postgresql_program("pg_restore"), "--no-owner", "--exit-on-error", "--single-transaction",
            f"--dbname={db.libpq_url()}", str(dump)]  # fmt: skip
    postgresql_run(db, argv, "pg_restore")


def copy_database(db: Database, dest_stem: Path) -> Path:
    """A consistent copy of `db` at dest_stem + .sqlite (SQLite) or .pgdump (pg_dump's custom format)."""
    if db.kind == "sqlite":
        dest = dest_stem.with_name(dest_stem.name + ".sqlite")
        sqlite_copy(db.sqlite_file, dest)
    else:
        dest = dest_stem.with_name(dest_stem.name + ".pgdump")
        pg_dump(db, dest)
    return dest


# --- the schema: JupyterHub's migrations -------------------------------------------------------------


def jupyterhub_scripts():
    """JupyterHub's Alembic migrations, as Alembic's ScriptDirectory."""
    from alembic.script import ScriptDirectory
    from jupyterhub import dbutil

    return ScriptDirectory(str(Path(dbutil.__file__).with_name("alembic")))


def jupyterhub_revisions(db: Database) -> tuple[str | None, str]:
    """(the database's Alembic revision or None, the newest this JupyterHub knows)."""
    from alembic.runtime.migration import MigrationContext

    head = jupyterhub_scripts().get_current_head()
    engine = db.engine()
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision(), head
    finally:
        engine.dispose()


def migrate(db: Database, revision: str = "head", downgrade: bool = False) -> None:
    """Run JupyterHub's Alembic migrations (what `jupyterhub upgrade-db` runs) on `db`, through a connection
    made here: the URL in the temporary alembic.ini holds no password (nor is it used)."""
    from alembic import command
    from alembic.config import Config
    from jupyterhub import dbutil

    engine = db.engine()
    try:
        with tempfile.TemporaryDirectory() as folder:
            ini = Path(folder) / "alembic.ini"
            dbutil.write_alembic_ini(str(ini), db_url="")
            config = Config(str(ini))
            config.attributes["connection"] = engine  # JupyterHub's env.py connects with it
            (command.downgrade if downgrade else command.upgrade)(config, revision)
    finally:
        engine.dispose()


def schema_problem(site, state: StateDir) -> str | None:
    """Why this JupyterHub cannot start on the hub database's schema, or None. JupyterHub's own refusal
    names `jupyterhub upgrade-db`, which without CampusHub's configuration migrates a new, empty
    jupyterhub.sqlite in the current folder instead of the hub's database."""
    import jupyterhub
    from sqlalchemy.exc import SQLAlchemyError

    db = hub_database(site, state)
    try:
        if not db.exists() or not db.table_names():
            return None  # the hub makes it
        current, head = jupyterhub_revisions(db)
    except SQLAlchemyError:
        return None  # unreachable: JupyterHub says so, as it does at any start
    if current is None or current == head:
        return None
    config = f" --config {site.source}" if site.source else ""
    if current in {script.revision for script in jupyterhub_scripts().walk_revisions()}:
        return (
            f"the hub database ({db.where}) has an older JupyterHub's schema (revision {current}); JupyterHub "
            f"{jupyterhub.__version__} needs revision {head}: run `campushub db upgrade{config}` (it backs the "
            "database up first), then start the hub again"
        )
    return (
        f"the hub database ({db.where}) has schema revision {current}, which JupyterHub {jupyterhub.__version__} "
        f"does not know: a newer JupyterHub made it. Install the CampusHub release that did, or restore the copy "
        f"that `campushub db upgrade` made before it upgraded ({state.path / BACKUPS})"
    )


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def upgrade(site, state: StateDir, say: Callable[[str], None] = print) -> None:
    """`campushub db upgrade`: refuse while the hub runs; back up the hub database; migrate it to this
    JupyterHub's schema."""
    import jupyterhub

    db = hub_database(site, state)
    with hub_stopped(site, state, "run `campushub db upgrade`"):
        if not db.exists() or not db.table_names():
            say(f"No hub database at {db.where} yet: nothing to upgrade (the hub makes it when it first starts).")
            return
        current, head = jupyterhub_revisions(db)
        backups = state.path / BACKUPS
        backups.mkdir(mode=0o700, exist_ok=True)
        copy = copy_database(db, backups / f"jupyterhub-{stamp()}-{current or 'unversioned'}")
        say(f"Backed up the hub database ({db.where}) to {copy}")
        if current == head:
            say(f"The hub database is at JupyterHub {jupyterhub.__version__}'s schema (revision {head}): "
                "nothing to upgrade.")  # fmt: skip
            return
        say(f"Upgrading the hub database from revision {current} to {head} (JupyterHub {jupyterhub.__version__}) ...")
        try:
            migrate(db)
        except Exception as e:
            raise DatabaseError(
                f"the upgrade failed: {e}\n  the database as it was before is in {copy}; restore it from there"
            ) from None
        say(f"Upgraded. Start the hub: servers that kept running are found again. The backup stays in {copy}.")


# --- backup and restore of the state -------------------------------------------------------------


def state_files(state: StateDir, databases: list[Database]) -> Iterator[Path]:
    """The state folder's files to keep: secrets, course roles, run pages, identities ... (not its databases
    named in `databases`, copied apart; not users' homes, earlier backups, the lock or SQLite's side files)."""
    skip = {d.sqlite_file.resolve() for d in databases if d.kind == "sqlite"}
    for root, dirs, files in os.walk(state.path):
        here = Path(root)
        if here == state.path:
            dirs[:] = [d for d in dirs if d not in NOT_STATE]
        for name in files:
            path = here / name
            if here == state.path and name in NOT_STATE:
                continue
            if name.endswith(SQLITE_SIDE_FILES) or path.resolve() in skip or not path.is_file() or path.is_symlink():
                continue
            yield path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backup(site, state: StateDir, dest: Path, say: Callable[[str], None] = print) -> Path:
    """`campushub backup DEST`: one tar archive (mode 0600) of the hub database, the scheduler's store and
    the state folder's files, consistent while the hub runs, with a manifest of sizes and checksums."""
    import jupyterhub

    from . import __version__

    dest = Path(dest)
    if dest.is_dir():
        dest = dest / f"campushub-backup-{stamp()}.tar"
    if dest.exists():
        raise DatabaseError(f"{dest} exists: give a new file name, or a folder")
    if not state.path.is_dir():
        raise DatabaseError(f"there is no state folder at {state.path} (hub.state_dir): nothing to back up")
    databases = {"hub": hub_database(site, state), "scheduler": scheduler_database(site, state)}
    entries = []
    with tempfile.TemporaryDirectory(prefix=".campushub-backup-", dir=dest.parent) as folder:
        staging = Path(folder)
        (staging / "databases").mkdir()
        for role, db in databases.items():
            if not db.exists() or (db.kind == "sqlite" and not db.sqlite_file.stat().st_size):
                continue
            copy = copy_database(db, staging / "databases" / role)
            entries.append((f"databases/{copy.name}", copy, 0o600, f"the {role} database ({db.where})"))
        for path in state_files(state, list(databases.values())):
            mode = path.stat().st_mode & 0o777
            if path.suffix == ".sqlite":  # another live database (the login's identities): SQLite's copy
                copy = staging / "state-db" / path.relative_to(state.path)
                copy.parent.mkdir(parents=True, exist_ok=True)
                sqlite_copy(path, copy)
                path = copy
                name = f"state/{copy.relative_to(staging / 'state-db')}"
            else:
                name = f"state/{path.relative_to(state.path)}"
            entries.append((name, path, mode, "state folder"))
        files = []
        for name, path, mode, _what in entries:
            files.append({"name": name, "size": path.stat().st_size, "sha256": sha256(path), "mode": oct(mode)})
        manifest = {
            "campushub": __version__,
            "jupyterhub": jupyterhub.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hub_database": databases["hub"].kind,
            "scheduler_database": databases["scheduler"].kind,
            "files": files,
        }
        if databases["hub"].exists() and databases["hub"].table_names():
            manifest["hub_schema"] = jupyterhub_revisions(databases["hub"])[0]
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
                data = json.dumps(manifest, indent=2).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                tar.addfile(info, io.BytesIO(data))
                for name, path, mode, _what in entries:
                    info = tar.gettarinfo(str(path), arcname=name)
                    info.mode, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, "", ""
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
    total = sum(f["size"] for f in files)
    say(f"Backed up CampusHub {__version__}'s state to {dest} (mode 0600, {len(files)} files, {total} bytes):")
    for (name, _path, _mode, what), f in zip(entries, files, strict=True):
        if what != "state folder":
            say(f"  {name}: {what}, {f['size']} bytes")
    say(f"  state/: {sum(1 for e in entries if e[3] == 'state folder')} files of {state.path} "
        "(secrets, course roles, ...; users' homes are not in it)")  # fmt: skip
    return dest


def read_archive(src: Path) -> tuple[dict, tarfile.TarFile]:
    """The manifest and the open archive, once every file in it matches the manifest's size and checksum."""
    try:
        tar = tarfile.open(src, mode="r:")
    except (OSError, tarfile.TarError) as e:
        raise DatabaseError(
            f"{src} is not a CampusHub backup (not a readable tar archive: {e}); nothing was changed"
        ) from None
    try:
        member = tar.getmember(MANIFEST)
        manifest = json.loads(tar.extractfile(member).read())
        files = {f["name"]: f for f in manifest["files"]}
        seen = set()
        for member in tar.getmembers():
            if member.name == MANIFEST:
                continue
            if member.name not in files or not member.isfile():
                raise DatabaseError(f"{src} holds {member.name}, which its manifest does not list")
            digest = hashlib.sha256()
            with tar.extractfile(member) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            expected = files[member.name]
            if member.size != expected["size"] or digest.hexdigest() != expected["sha256"]:
                raise DatabaseError(f"{src} is damaged: {member.name} does not match its checksum; nothing was changed")
            seen.add(member.name)
        missing = set(files) - seen
        if missing:
            raise DatabaseError(f"{src} is damaged: {', '.join(sorted(missing))} missing; nothing was changed")
    except DatabaseError:
        tar.close()
        raise
    except (KeyError, ValueError, TypeError, OSError, tarfile.TarError, EOFError) as e:
        tar.close()
        raise DatabaseError(f"{src} is damaged or not a CampusHub backup ({e}); nothing was changed") from None
    return manifest, tar


def restore(site, state: StateDir, src: Path, say: Callable[[str], None] = print) -> None:
    """`campushub restore SRC`: the state of a backup into an empty state folder (and an empty PostgreSQL
    database, where the site names one). Refuses a folder in use, a damaged archive, a non-empty target."""
    src = Path(src)
    if state.path.exists() and any(p.name != LOCK_FILE for p in state.path.iterdir()):
        raise DatabaseError(
            f"the state folder {state.path} is not empty: restore goes into an empty one (move this one aside, "
            "or set hub.state_dir to a new folder); nothing was changed"
        )
    manifest, tar = read_archive(src)
    with tar:
        targets = {"hub": hub_database(site, state), "scheduler": scheduler_database(site, state)}
        names = {f["name"] for f in manifest["files"]}
        plan = []
        for role, db in targets.items():
            dumps = [n for n in names if n.startswith(f"databases/{role}.")]
            if not dumps:
                continue
            kind = "sqlite" if dumps[0].endswith(".sqlite") else "postgresql"
            if kind != db.kind:
                raise DatabaseError(
                    f"the backup's {role} database is {kind}, the site's is {db.kind} ({db.where}): restore with "
                    f"the site file it was made with; nothing was changed"
                )
            if db.kind == "sqlite" and db.sqlite_file.exists():
                raise DatabaseError(f"{db.sqlite_file} exists: restore goes into no database; nothing was changed")
            if db.kind == "postgresql" and db.table_names():
                raise DatabaseError(
                    f"the {role} database {db.where} is not empty: restore goes into an empty database; "
                    "nothing was changed"
                )
            plan.append((dumps[0], db))
        with hub_stopped(site, state, "run `campushub restore`"):
            written: list[Path] = []
            try:
                restore_files(tar, src, manifest, state, plan, written, say)
            except BaseException:
                for path in reversed(written):  # nothing half-done: the folder as empty as it was
                    path.unlink(missing_ok=True)
                raise
    say(f"Restored the state of {src} (CampusHub {manifest['campushub']}, made {manifest['created']}) into "
        f"{state.path}: {len(manifest['files'])} files. Start the hub.")  # fmt: skip


def restore_files(tar, src: Path, manifest: dict, state: StateDir, plan: list, written: list[Path], say) -> None:
    """Write the archive's state folder files and databases; each file written is added to `written`."""
    modes = {f["name"]: int(f["mode"], 8) for f in manifest["files"]}
    for member in tar.getmembers():
        if not member.name.startswith("state/"):
            continue
        relative = Path(member.name.removeprefix("state/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise DatabaseError(f"{src} holds a path outside the state folder: {member.name}")
        written.append(write_member(tar, member, state.path / relative, modes[member.name]))
    for name, db in plan:
        if db.kind == "sqlite":
            db.sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            written.append(write_member(tar, tar.getmember(name), db.sqlite_file, 0o600))
        else:
            with tempfile.TemporaryDirectory() as folder:
                dump = write_member(tar, tar.getmember(name), Path(folder) / "dump", 0o600)
                pg_restore(db, dump)  # one transaction: all or nothing
        say(f"  restored {name} into {db.where}")


def write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, mode: int) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o777)
    with os.fdopen(fd, "wb") as out, tar.extractfile(member) as f:
        shutil.copyfileobj(f, out)
    os.chmod(dest, mode & 0o777)
    return dest
