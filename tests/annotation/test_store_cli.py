"""`ctvqa progress`, `ctvqa agreement` and `ctvqa export` on a rated database, and the same Store
contract on a real PostgreSQL server."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from annotation.store import Store
from tests.annotation.conftest import seed


def _rate_twice(store: Store, ids: list[int]) -> None:
    for rater, base in (("ann", 4), ("bob", 3)):
        for k, qa_id in enumerate(ids[:30]):
            store.save_rating(rater, qa_id, [base + k % 2, 4, 4, 4, 3 + k % 3], k % 4 != 0, seconds=2)


def test_cli_progress_agreement_and_export(seeded, tmp_path: Path) -> None:
    from napari_ctvqa.cli import app

    store, ids = seeded
    _rate_twice(store, ids)
    runner = CliRunner()
    progress = runner.invoke(app, ["progress", "--db", store.url, "--json"])
    assert progress.exit_code == 0, progress.output
    assert {(r["name"], r["rated"]) for r in json.loads(progress.stdout)} == {("ann", 30), ("bob", 30)}
    agreement = runner.invoke(app, ["agreement", "--db", store.url, "--top-k", "10", "--json"])
    assert agreement.exit_code == 0, agreement.output
    data = json.loads(agreement.stdout)
    assert len(data["pairwise"]) == 1 and {r["rater"] for r in data["per_rater"]} == {"ann", "bob"}
    table = runner.invoke(app, ["agreement", "--db", store.url])
    assert table.exit_code == 0 and "ann" in table.stdout
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", "--format", "3drad", "--out", str(out), "--min-mean", "3.5",
                                 "--require-consistent", "--split", "patient", "--val-frac", "0", "--db", store.url,
                                 "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout[result.stdout.index("{"):])
    assert manifest["filter"]["min_mean"] == 3.5 and manifest["filter"]["require_consistent"] is True
    written = sum(len(f.read_text().splitlines()) - 1 for f in out.glob("train/*/*.csv"))
    assert 0 < written == manifest["total"] == manifest["splits"]["train"]["rows"] < 30
    assert (out / "manifest.json").is_file()
    again = runner.invoke(app, ["export", "--format", "jsonl", "--out", str(out), "--db", store.url])
    assert again.exit_code != 0 and "must be new or empty" in again.output
    assert len(store.exports()) == 1


@pytest.mark.postgres
def test_store_contract_on_postgresql(postgres_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from annotation.schema import Base

    store = Store.create(postgres_url)
    try:
        with store.db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        ids = seed(store, n_scans=2, per_task=2)
        assert seed(store, n_scans=2, per_task=2) == ids  # idempotent on PostgreSQL too
        store.save_rating("ann", ids[0], [5, 5, 5, 5, 5], True)
        store.save_rating("ann", ids[0], [1, 5, 5, 5, 5], False)
        assert [h.scores["visual_verifiability"] for h in store.rating_history("ann", ids[0])] == [5]
        with pytest.raises(IntegrityError), store.db.engine.begin() as conn:
            conn.execute(text("UPDATE ratings SET qa_alignment = 6"))
        store.assign(["ann", "bob"], 4, 2, seed=0)
        assert len(store.queue("bob")) == 4
        assert store.rating("ann", ids[0]).created_at.tzinfo is not None
    finally:
        store.close()
