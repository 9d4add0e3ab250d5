"""The schema's rules hold in the database itself (raw SQL cannot break them), and the alembic
migration creates exactly what the ORM describes."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from annotation.db import current_revision, head_revision, run_migrations
from annotation.schema import Base
from annotation.store import Store

PUBLIC_TABLES = {"patients", "scans", "labels", "reports", "qa_pairs", "raters", "ratings", "rating_history",
                 "assignments", "chat_turns", "model_versions", "finetune_runs", "exports"}


def test_migration_creates_the_public_tables_and_matches_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    assert PUBLIC_TABLES <= set(inspect(store.db.engine).get_table_names())
    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(store.url) == head_revision()
    run_migrations(store.url)  # upgrading at head is a no-op, not an error
    assert current_revision(store.url) == head_revision()


def _rate_sql(score: int = 3, rater: int = 1, qa: int = 1) -> str:
    return (f"INSERT INTO ratings (qa_id, rater_id, visual_verifiability, specificity_clarity, "
            f"answer_appropriateness, qa_alignment, linguistic_quality, consistent, note, status, "
            f"seconds_spent, created_at, updated_at) VALUES ({qa}, {rater}, {score}, 3, 3, 3, 3, 1, '', "
            f"'rated', 0, '2026-01-01', '2026-01-01')")


@pytest.mark.parametrize("statement", [
    _rate_sql(score=6),                      # score out of range
    _rate_sql(score=-1),
    _rate_sql(qa=999_999),                   # foreign key to a missing pair
    _rate_sql().replace("'rated'", "'done'"),  # unknown status
    _rate_sql().replace(", 3, 3, 3, 3, 1,", ", NULL, 3, 3, 3, 1,"),  # rated without all scores
    "INSERT INTO labels (scan_id, name, value) VALUES (1, 'Emphysema', 2)",
    "UPDATE qa_pairs SET source = 'scraped'",
    "UPDATE qa_pairs SET answer_choice = 'E'",
    "INSERT INTO raters (name, kind, created_at) VALUES ('x', 'robot', '2026-01-01')",
])
def test_database_refuses_rows_that_break_the_rules(seeded, statement: str) -> None:
    store, _ = seeded
    store.ensure_rater("ann")
    with pytest.raises(IntegrityError), store.db.engine.begin() as conn:
        conn.execute(text(statement))


def test_duplicate_rating_is_refused_by_the_unique_constraint(seeded) -> None:
    store, ids = seeded
    store.save_rating("ann", ids[0], [3, 3, 3, 3, 3], True)
    rater = store.ensure_rater("ann")
    with pytest.raises(IntegrityError), store.db.engine.begin() as conn:
        conn.execute(text(_rate_sql(rater=rater, qa=ids[0])))
    assert len(store.ratings_frame()) == 1


def test_deleting_a_pair_cascades_to_its_ratings_and_assignments(seeded) -> None:
    store, ids = seeded
    store.assign(["ann"], 3, 0)
    qa_id = store.queue("ann")[0].qa_id
    store.save_rating("ann", qa_id, [4, 4, 4, 4, 4], True)
    store.save_rating("ann", qa_id, [2, 4, 4, 4, 4], True)
    with store.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM qa_pairs WHERE id = :i"), {"i": qa_id})
        left = [conn.execute(text(f"SELECT count(*) FROM {t} WHERE qa_id = :i"), {"i": qa_id}).scalar()
                for t in ("ratings", "rating_history", "assignments")]
    assert left == [0, 0, 0]
    assert len(store.queue("ann")) == 2


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(store: Store) -> None:
    with store.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def test_store_creates_an_empty_database_but_refuses_a_foreign_or_outdated_one(tmp_path) -> None:
    fresh = Store(str(tmp_path / "fresh.sqlite"))
    assert fresh.count_qa_pairs() == {} and current_revision(fresh.url) == head_revision()
    foreign = tmp_path / "foreign.sqlite"
    with Store(str(tmp_path / "x.sqlite")).db.engine.begin() as conn:  # any engine: attach and write
        conn.exec_driver_sql(f"ATTACH DATABASE '{foreign}' AS other")
        conn.exec_driver_sql("CREATE TABLE other.invoices (id INTEGER)")
    with pytest.raises(RuntimeError, match="not a napari-ctvqa schema: run `ctvqa db upgrade"):
        Store(str(foreign))
    with Store.create(str(tmp_path / "old.sqlite")).db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    with pytest.raises(RuntimeError, match=f"is at schema 0000, this version needs {head_revision()}"):
        Store(str(tmp_path / "old.sqlite"))
