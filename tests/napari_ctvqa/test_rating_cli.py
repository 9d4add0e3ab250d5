"""`ctvqa rate`: progress as text/JSON, clear failures, and the napari window (screenshot mode)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from napari_ctvqa.cli import app
from tests.napari_ctvqa.test_rating import copy_store, rating_template  # noqa: F401 (fixture)

runner = CliRunner()


def test_status_json_reports_the_queue(rating_template, tmp_path):
    store = copy_store(rating_template, tmp_path)
    first = store.queue("alice")[0].qa_id
    store.skip("alice", first, "no scan", seconds=12.0)
    result = runner.invoke(app, ["rate", "--annotator", "alice", "--db", store.url, "--status", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert (figures["done"], figures["total"], figures["skipped"]) == (1, 4, 1)
    assert figures["seconds"] == 12.0
    assert sum(t["total"] for t in figures["per_task"].values()) == 4
    store.close()


def test_unknown_annotator_and_bad_database_fail_in_one_line(rating_template, tmp_path):
    store = copy_store(rating_template, tmp_path)
    result = runner.invoke(app, ["rate", "--annotator", "nobody", "--db", store.url])
    assert result.exit_code != 0
    assert "no annotator named 'nobody'" in result.output and "known: alice, bob" in result.output
    typo = runner.invoke(app, ["rate", "--annotator", "alcie", "--db", store.url])
    assert typo.exit_code != 0 and "did you mean 'alice'?" in typo.output
    assert "alcie" not in {n for n, _ in store.raters()}  # a typo creates nobody
    missing = runner.invoke(app, ["rate", "--annotator", "alice", "--db", f"sqlite:///{tmp_path / 'none' / 'x.db'}"])
    assert missing.exit_code != 0
    assert "ctvqa db init" in missing.output
    assert "Traceback" not in missing.output
    store.close()


def test_opens_napari_on_the_queue(rating_template, tmp_path, qtbot):
    store = copy_store(rating_template, tmp_path)
    shot = tmp_path / "rate.png"
    result = runner.invoke(app, ["rate", "--annotator", "bob", "--db", store.url, "--screenshot", str(shot)])
    assert result.exit_code == 0, result.output
    assert shot.stat().st_size > 10_000
    store.close()
