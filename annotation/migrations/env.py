"""Alembic environment: migrates the database named by the Config's `sqlalchemy.url` (set by
`annotation.db.alembic_config`) using the project's own engine settings.

The whole run is one transaction that holds the write lock from its first statement (`BEGIN
IMMEDIATE` on SQLite, an advisory lock on PostgreSQL), and alembic reads the current revision
inside it: of two processes migrating a brand-new database at once, the second waits, then finds
the schema already at head and does nothing (alembic's own per-migration transactions on SQLite
would let both create the tables).
"""
from __future__ import annotations

from alembic import context

from annotation.db import MIGRATION_LOCK_KEY, WRITE_OPTION, make_engine
from annotation.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade --sql`) without a database connection."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})  # BEGIN IMMEDIATE on SQLite
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
                # SQLite cannot ALTER most things: batch mode rebuilds tables instead.
                context.configure(connection=connection, target_metadata=target_metadata,
                                  render_as_batch=connection.dialect.name == "sqlite",
                                  transactional_ddl=True)
                with context.begin_transaction():
                    context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
