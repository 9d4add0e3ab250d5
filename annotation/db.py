"""Engine and session set-up shared by the Store, the importers and the migrations.

SQLite is the zero-setup default for one workstation and a few annotators: every connection
turns on WAL (readers never block the writer), foreign keys and a busy timeout; write
transactions start with `BEGIN IMMEDIATE` (SQLAlchemy's pysqlite recipe) so two read-then-write
units of work cannot deadlock on a lock upgrade; and `write_retrying` retries the rare
"database is locked" so callers never see it. WAL does not work on network file systems: teams
sharing one database over a network use PostgreSQL (`postgresql+psycopg://...`).

Failures reach callers as `StoreError` naming the database: a SQLite file that is not writable is
opened read-only (reads work; the first write says why it cannot be saved), a file that is not a
database or cannot be opened says so, and a database written by a newer version of the tool says
that this tool is the older one. Migrations take the write lock for their whole run (`BEGIN
IMMEDIATE` on SQLite, an advisory lock on PostgreSQL) and are retried, so two `ctvqa db init`s, or
several annotators opening a brand-new database at once, serialise instead of failing.
"""
from __future__ import annotations

import os
import random
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

ENV_VAR = "CTVQA_DB"
SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "ctvqa_write"
_RETRIABLE_PG_STATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock n/a
MIGRATION_LOCK_KEY = 0x63747671  # PostgreSQL advisory lock held while migrating ("ctvq")
MIGRATION_ATTEMPTS = 10


class StoreError(RuntimeError):
    """The database cannot do what was asked; the message names the database and what to do."""


def describe(url: str) -> str:
    """The database as users name it: a SQLite file's path, else the URL without its password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return str(parsed.database)
    return parsed.render_as_string(hide_password=True)


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other backends and in-memory databases)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def read_only_reason(url: str) -> str | None:
    """Why an existing SQLite file cannot be written (None: it can, or it is not a file yet).

    The file's permission bits count even for root, who could write anyway: a curator who made
    the file read-only meant it, and a database shared read-only must not be changed."""
    path = sqlite_file(url)
    if path is None or not path.exists():
        return None
    mode = path.stat().st_mode
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
        return "the file is not writable"
    if not os.access(path.parent, os.W_OK):
        return f"its folder {path.parent} is not writable (SQLite keeps its journal there)"
    return None


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


def _install_sqlite_pragmas(engine: Engine, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001 (DBAPI types)
        # Let SQLAlchemy's `begin` event, not the driver, emit BEGIN (the pysqlite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not read_only:  # switching the journal mode is a write
            _retry_locked(lambda: cursor.execute("PRAGMA journal_mode = WAL"))
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str | None = None, create_dir: bool = False) -> Engine:
    """An engine for `url` with the per-connection settings of this module applied; a SQLite
    file that cannot be written is opened read-only (SQLite's `mode=ro`)."""
    url = resolve_url(url, create_dir)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        path = sqlite_file(url)
        read_only = read_only_reason(url) is not None
        if read_only and path is not None:
            url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
        engine = create_engine(url, connect_args=connect_args)
        _install_sqlite_pragmas(engine, read_only)
    else:
        engine = create_engine(url)
    return engine


def _retry_locked(action: Callable[[], T], attempts: int = MIGRATION_ATTEMPTS) -> T:
    """`action()`, again after a short wait while SQLite says the database is locked or busy (the
    busy timeout does not cover every case, e.g. the first switch of a new file to WAL)."""
    import sqlite3

    for attempt in range(attempts):
        try:
            return action()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if attempt == attempts - 1 or not ("locked" in text or "busy" in text):
                raise
            time.sleep(min(1.0, 0.02 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _is_transient(exc: DBAPIError, backend: str) -> bool:
    if backend == "sqlite":
        text = str(exc.orig).lower()
        return "locked" in text or "busy" in text
    return getattr(exc.orig, "sqlstate", None) in _RETRIABLE_PG_STATES


def as_store_error(exc: DBAPIError, url: str) -> StoreError | None:
    """The StoreError for a driver failure that is about the database itself (cannot open it, not
    a database, read-only, disk full); None for the ones callers handle (constraints) or bugs."""
    if not (isinstance(exc, OperationalError) or type(exc) is DatabaseError):
        return None
    text = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered:
        return StoreError(f"database {describe(url)} is read-only ({text}): nothing was saved")
    if "not a database" in lowered:
        return StoreError(f"{describe(url)} is not a database ({text})")
    path = sqlite_file(url)
    if "unable to open" in lowered and path is not None:
        if path.is_dir():
            return StoreError(f"cannot open database {path}: it is a folder, not a SQLite file")
        if not path.parent.is_dir():
            return StoreError(f"cannot open database {path}: folder {path.parent} does not exist "
                              "(`ctvqa db init --db PATH` creates it)")
    return StoreError(f"database {describe(url)}: {text}")


class Database:
    """An engine plus two session factories: plain reads, and writes that take the write lock
    up front (SQLite) and are retried on transient lock/serialization errors."""

    def __init__(self, url: str | None = None, create_dir: bool = False) -> None:
        self.url = resolve_url(url, create_dir)
        self.read_only = read_only_reason(self.url)
        self.engine = make_engine(self.url)
        self.backend = self.engine.dialect.name
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(**{WRITE_OPTION: True}),
                                   expire_on_commit=False)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A short read-only unit of work (its own Session: safe from any thread)."""
        try:
            with self._read() as session:  # closing ends the transaction; loaded objects stay readable
                yield session
        except DBAPIError as exc:
            wrapped = as_store_error(exc, self.url)
            if wrapped is None:
                raise
            raise wrapped from None

    def write(self, work: Callable[[Session], T], attempts: int = 30) -> T:
        """Run `work(session)` in one transaction and commit; retry it whole when the database
        reports a transient lock or serialization failure, so callers never see one. A database
        opened read-only refuses before anything runs, saying why."""
        if self.read_only:
            raise StoreError(f"database {describe(self.url)} was opened read-only because "
                             f"{self.read_only}: nothing can be saved (make it writable, or copy "
                             "it somewhere writable and use --db)")
        for attempt in range(attempts):
            try:
                with self._write() as session, session.begin():
                    return work(session)
            except DBAPIError as exc:
                if attempt < attempts - 1 and _is_transient(exc, self.backend):
                    time.sleep(min(2.0, 0.02 * 2 ** attempt) * (0.5 + random.random()))
                    continue
                wrapped = as_store_error(exc, self.url)
                if wrapped is None:
                    raise
                raise wrapped from None
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def run_migrations(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` with alembic (what `ctvqa db init/upgrade` and
    `Store.create()` both call, so they can never disagree). The whole run holds the write lock
    (see migrations/env.py) and is retried while another process holds it."""
    from alembic import command

    url = resolve_url(url)
    reason = read_only_reason(url)
    if reason:
        raise StoreError(f"cannot create or upgrade the schema of {describe(url)}: {reason}")
    check_not_newer(url, current_revision(url))
    backend = make_url(url).get_backend_name()
    for attempt in range(MIGRATION_ATTEMPTS):
        try:
            command.upgrade(alembic_config(url), revision)
            return
        except DBAPIError as exc:
            if attempt < MIGRATION_ATTEMPTS - 1 and _is_transient(exc, backend):
                time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
                continue
            wrapped = as_store_error(exc, url)
            if wrapped is None:
                raise
            raise wrapped from None


def current_revision(url: str) -> str | None:
    """The alembic revision the database is at (None for an empty database)."""
    from alembic.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as exc:
        wrapped = as_store_error(exc, url)
        if wrapped is None:
            raise
        raise wrapped from None
    finally:
        engine.dispose()


@cache
def known_revisions() -> frozenset[str]:
    """Every migration shipped with this version of the package."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(rev.revision for rev in script.walk_revisions())


@cache
def head_revision() -> str:
    """The newest migration shipped with this version of the package."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def check_not_newer(url: str, current: str | None) -> None:
    """Refuse a database whose schema this version does not know and that sorts after its newest
    one: a newer napari-ctvqa wrote it, and no `db upgrade` of this version can help."""
    if current is None or current in known_revisions() or current < head_revision():
        return
    raise StoreError(
        f"database {describe(url)} is at schema {current}, newer than this napari-ctvqa knows (its "
        f"newest is {head_revision()}): this tool is older than the database. Install the newer "
        "napari-ctvqa that wrote it, or point --db/CTVQA_DB at another database")


def alembic_config(url: str):  # noqa: ANN201 (alembic.config.Config, imported lazily)
    """An alembic Config pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", resolve_url(url).replace("%", "%%"))
    return cfg
