"""Engine and session set-up shared by the Store, the importers and the migrations.

SQLite is the zero-setup default for one workstation and a few annotators: every connection
turns on WAL (readers never block the writer), foreign keys and a busy timeout; write
transactions start with `BEGIN IMMEDIATE` (SQLAlchemy's pysqlite recipe) so two read-then-write
units of work cannot deadlock on a lock upgrade; and `write_retrying` retries the rare
"database is locked" so callers never see it. WAL does not work on network file systems: teams
sharing one database over a network use PostgreSQL (`postgresql+psycopg://...`).
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

ENV_VAR = "CTVQA_DB"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "ctvqa_write"
_RETRIABLE_PG_STATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock n/a


def default_db_url() -> str:
    """`$CTVQA_DB` if set, else a SQLite file in the per-user data directory."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    from platformdirs import user_data_dir

    return f"sqlite:///{Path(user_data_dir('napari-ctvqa')) / 'ctvqa.sqlite'}"


def resolve_url(url: str | None, create_dir: bool = False) -> str:
    """Accept a URL or a bare file path (what users type). A SQLite file's folder is created for
    the default database or when asked (`db init`), never for a mistyped path."""
    if not url:
        url, create_dir = default_db_url(), True
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    parsed = make_url(url)
    if create_dir and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return url


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001 (DBAPI types)
        # Let SQLAlchemy's `begin` event, not the driver, emit BEGIN (the pysqlite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str | None = None, create_dir: bool = False) -> Engine:
    """An engine for `url` with the per-connection settings of this module applied."""
    url = resolve_url(url, create_dir)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                                  "check_same_thread": False})
        _install_sqlite_pragmas(engine)
    else:
        engine = create_engine(url)
    return engine


class Database:
    """An engine plus two session factories: plain reads, and writes that take the write lock
    up front (SQLite) and are retried on transient lock/serialization errors."""

    def __init__(self, url: str | None = None, create_dir: bool = False) -> None:
        self.url = resolve_url(url, create_dir)
        self.engine = make_engine(self.url)
        self.backend = self.engine.dialect.name
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(**{_WRITE_OPTION: True}),
                                   expire_on_commit=False)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A short read-only unit of work (its own Session: safe from any thread)."""
        with self._read() as session:  # closing ends the transaction; loaded objects stay readable
            yield session

    def write(self, work: Callable[[Session], T], attempts: int = 30) -> T:
        """Run `work(session)` in one transaction and commit; retry it whole when the database
        reports a transient lock or serialization failure, so callers never see one."""
        for attempt in range(attempts):
            try:
                with self._write() as session, session.begin():
                    return work(session)
            except (OperationalError, DBAPIError) as exc:
                if attempt == attempts - 1 or not self._transient(exc):
                    raise
                time.sleep(min(2.0, 0.02 * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _transient(self, exc: DBAPIError) -> bool:
        if self.backend == "sqlite":
            text = str(exc.orig).lower()
            return "locked" in text or "busy" in text
        return getattr(exc.orig, "sqlstate", None) in _RETRIABLE_PG_STATES

    def dispose(self) -> None:
        self.engine.dispose()


def run_migrations(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` with alembic (what `ctvqa db init/upgrade` and
    `Store.create()` both call, so they can never disagree)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The alembic revision the database is at (None for an empty database)."""
    from alembic.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


@cache
def head_revision() -> str:
    """The newest migration shipped with this version of the package."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def alembic_config(url: str):  # noqa: ANN201 (alembic.config.Config, imported lazily)
    """An alembic Config pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", resolve_url(url).replace("%", "%%"))
    return cfg
