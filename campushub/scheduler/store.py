"""Opening the store: an SQLAlchemy engine for the site's database, brought to the newest schema by Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def open_engine(url: str, password: str | None = None) -> Engine:
    url = make_url(url)
    if password is not None:
        url = url.set(password=password)
    engine = create_engine(url, pool_pre_ping=True)
    if url.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

    return engine


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Create or migrate the schema to the newest revision (a no-op when it is there)."""
    command.upgrade(alembic_config(engine), "head")


def revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def db_url(site, state) -> tuple[str, str | None]:
    """The site's scheduler database: (SQLAlchemy URL, password or None). `state`: the site's StateDir."""
    from ..hubconfig import read_secret_file

    settings = site.scheduler
    password = None
    if settings.db_password_file:
        password = read_secret_file(settings.db_password_file, "scheduler.db_password_file")
    return settings.db_url or f"sqlite:///{state.path / 'scheduler.sqlite'}", password


def open_store(url: str, password: str | None = None) -> sessionmaker:
    engine = open_engine(url, password)
    upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)
