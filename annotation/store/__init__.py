"""`Store`: the only door to the annotation database for the UI, the CLI and scripts.

Every method is one short unit of work in its own Session, so a Store can be shared by the GUI
thread and worker threads; it returns frozen records (annotation/records.py), never ORM objects.
Writes go through `Database.write`, which takes SQLite's write lock up front and retries
transient lock errors, so callers never see "database is locked".

The methods live in one module per area (scans.py: scans and QA pairs; queues.py: raters and
assignments; ratings.py; chat.py; models.py: model versions and finetune runs; exports.py:
agreement, curation and exports), mixed into `Store` over one shared `Database`, so callers keep a
single object while no area module has to know the others' tables. Row -> record conversion is
shared in rows.py, write-error handling in base.py.
"""
from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError

from annotation.db import (
    Database,
    StoreError,
    as_store_error,
    check_not_newer,
    default_db_url,
    describe,
    head_revision,
    run_migrations,
)
from annotation.store.chat import ChatArea
from annotation.store.exports import ExportsArea
from annotation.store.findings import FindingsArea
from annotation.store.models import ModelsArea
from annotation.store.queues import QueuesArea
from annotation.store.ratings import RatingsArea
from annotation.store.scans import ScansArea

__all__ = ["Store", "StoreError", "default_db_url"]


class Store(ChatArea, ExportsArea, ScansArea, QueuesArea, RatingsArea, ModelsArea, FindingsArea):
    """The annotation database at `url` (None: `$CTVQA_DB`, else the per-user SQLite file).

    An empty database gets the schema on first use; an outdated one is refused with a message
    (upgrades are explicit: `ctvqa db upgrade`). `Store.create(url)` (or `init_schema()`) always
    runs the alembic migrations, exactly like `ctvqa db init`/`upgrade`.
    """

    def __init__(self, url: str | None = None, *, check_schema: bool = True, create_dir: bool = False) -> None:
        self.db = Database(url, create_dir)
        self.url = self.db.url
        if check_schema:
            self._check_schema()

    def _check_schema(self) -> None:
        """A brand-new (empty) database gets the schema, so a first run just works; one at an older
        schema, or holding someone else's tables, fails here with what to do, not at a query."""
        from alembic.migration import MigrationContext  # deferred: alembic is only needed here

        try:
            with self.db.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
                empty = current is None and not inspect(conn).get_table_names()
        except DBAPIError as exc:
            wrapped = as_store_error(exc, self.url)
            if wrapped is None:
                raise
            raise wrapped from None
        head = head_revision()
        if current == head:
            return
        check_not_newer(self.url, current)
        if empty:
            if self.db.read_only:
                raise StoreError(f"database {describe(self.url)} is empty and was opened read-only "
                                 f"because {self.db.read_only}: it cannot get its schema")
            self.init_schema()
            return
        state = (f"is at schema {current}, this version needs {head}" if current is not None
                 else "holds tables that are not a napari-ctvqa schema")
        raise StoreError(f"database {describe(self.url)} {state}: run `ctvqa db upgrade --db URL` "
                         "(back it up first) or point --db/CTVQA_DB elsewhere")

    @classmethod
    def create(cls, url: str | None = None) -> Store:
        """Open the database at `url`, creating or upgrading its schema first."""
        store = cls(url, check_schema=False, create_dir=True)
        store.init_schema()
        return store

    def init_schema(self) -> None:
        """Create or upgrade the schema to the newest migration (idempotent)."""
        run_migrations(self.url)

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.db.engine.url.render_as_string(hide_password=True)!r})"
