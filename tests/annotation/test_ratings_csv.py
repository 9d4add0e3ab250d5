"""Ratings CSV in and out: round trip, updates keep history, a bad row refuses the whole file."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotation.importers import BadInputError
from annotation.importers.ratings_csv import CSV_COLUMNS, export_ratings_csv, import_ratings_csv
from annotation.store import Store
from tests.annotation.conftest import seed


def _write(path: Path, rows: list[list[object]], header: tuple[str, ...] = CSV_COLUMNS) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _row(k: int = 0, annotator: str = "ann", scores=(5, 4, 4, 3, 5), consistent: object = 1) -> list[object]:
    return ["test_0_a_1.nii.gz", f"image_observation question {k}?", annotator, *scores, consistent, "note"]


def test_import_then_export_round_trips_and_updates_keep_history(store: Store, tmp_path: Path) -> None:
    seed(store, n_scans=1, per_task=3)
    first = _write(tmp_path / "r1.csv", [_row(0), _row(1, "bob", consistent="false"), _row(2)])
    assert import_ratings_csv(store, first) == {"rows": 3, "inserted": 3, "updated": 0, "unchanged": 0}
    second = _write(tmp_path / "r2.csv", [_row(0, scores=(1, 1, 1, 1, 1)), _row(2)])
    assert import_ratings_csv(store, second) == {"rows": 2, "inserted": 0, "updated": 1, "unchanged": 1}
    qa_id = store.qa_pairs(task="image_observation")[0].id
    assert store.rating("ann", qa_id).scores["visual_verifiability"] == 1
    assert [h.scores["visual_verifiability"] for h in store.rating_history("ann", qa_id)] == [5]
    assert store.rating("bob", store.qa_pairs(task="image_observation")[1].id).consistent is False
    out = tmp_path / "out.csv"
    assert export_ratings_csv(store, out) == 3
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert {(r["Annotator"], r["VisualVerifiability"], r["Consistent"]) for r in rows} == {
        ("ann", "1", "1"), ("bob", "5", "0"), ("ann", "5", "1")}


@pytest.mark.parametrize("bad, problem", [
    (_row(1, scores=(5, 4, 9, 3, 5)), "answer_appropriateness"),
    (_row(1, scores=(5, 4, "", 3, 5)), "answer_appropriateness"),
    (_row(1, consistent="maybe"), "Consistent"),
    (_row(1, annotator=""), "must not be empty"),
    (_row(0), "repeats the rating of line 2"),
    (["test_0_a_1.nii.gz", "A question nobody asked?", "ann", 5, 5, 5, 5, 5, 1, ""], "no QA pair"),
])
def test_a_bad_row_refuses_the_whole_file(store: Store, tmp_path: Path, bad, problem) -> None:
    seed(store, n_scans=1, per_task=3)
    path = _write(tmp_path / "bad.csv", [_row(0), _row(2), bad])
    with pytest.raises(BadInputError, match=problem) as info:
        import_ratings_csv(store, path)
    assert info.value.line == 4
    assert store.ratings_frame().empty


def test_cli_ratings_import_error_and_export(store: Store, tmp_path: Path) -> None:
    from napari_ctvqa.cli import app

    seed(store, n_scans=1, per_task=3)
    runner = CliRunner()
    bad = _write(tmp_path / "bad.csv", [_row(0), _row(1, scores=(5, 4, 4, 3, 6))])
    result = runner.invoke(app, ["ratings", "import", str(bad), "--db", store.url])
    assert result.exit_code != 0
    assert f"{bad}, line 3" in result.output and "linguistic_quality" in result.output
    assert store.ratings_frame().empty
    good = _write(tmp_path / "good.csv", [_row(0), _row(1)])
    assert runner.invoke(app, ["ratings", "import", str(good), "--db", store.url]).exit_code == 0
    result = runner.invoke(app, ["ratings", "export", str(tmp_path / "o.csv"), "--db", store.url, "--json"])
    assert result.exit_code == 0 and '"rows": 2' in result.stdout
    missing_column = _write(tmp_path / "cols.csv", [["v", "q", "ann"]], header=("VolumeName", "Question", "Annotator"))
    result = runner.invoke(app, ["ratings", "import", str(missing_column), "--db", store.url])
    assert result.exit_code != 0 and "missing column" in result.output


def test_skips_and_flags_leave_with_their_reasons_and_come_back(store: Store, tmp_path: Path) -> None:
    seed(store, n_scans=1, per_task=3)
    pairs = store.qa_pairs(task="image_observation")
    store.save_rating("ann", pairs[0].id, [5, 4, 4, 3, 5], True, note="fine")
    store.skip("ann", pairs[1].id, "cannot judge: scan missing")
    store.save_rating("bob", pairs[2].id, [3] * 5, False)
    store.flag("bob", pairs[2].id, "answer contradicts the report")  # scores of before are not exported
    out = tmp_path / "out.csv"
    assert export_ratings_csv(store, out) == 3
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_status = {r["Status"]: r for r in rows}
    assert by_status["rated"]["Answer"] == pairs[0].answer and by_status["rated"]["Consistent"] == "1"
    assert by_status["skipped"]["Reason"] == "cannot judge: scan missing"
    flagged = by_status["flagged"]
    assert flagged["Reason"] == "answer contradicts the report" and flagged["Annotator"] == "bob"
    assert all(flagged[c] == "" for c in ("VisualVerifiability", "LinguisticQuality", "Consistent"))

    other = Store(f"sqlite:///{tmp_path / 'other.sqlite'}")
    seed(other, n_scans=1, per_task=3)
    assert import_ratings_csv(other, out)["inserted"] == 3
    again = tmp_path / "again.csv"
    export_ratings_csv(other, again)
    assert again.read_text() == out.read_text()  # the same file comes back


@pytest.mark.parametrize("status, scores, reason, message", [
    ("skipped", ("", "", "", "", ""), "", "needs a Reason"),
    ("flagged", (3, "", "", "", ""), "wrong", "leaves the scores empty, but VisualVerifiability is set"),
    ("maybe", (3, 3, 3, 3, 3), "", "Status must be rated, skipped or flagged"),
])
def test_bad_skip_or_flag_rows_are_refused(store: Store, tmp_path: Path, status, scores, reason, message) -> None:
    seed(store, n_scans=1, per_task=3)
    row = ["test_0_a_1.nii.gz", "image_observation question 0?", "ann", *scores, "" if status != "maybe" else 1,
           "", status, reason, ""]
    with pytest.raises(BadInputError, match=f"line 2: .*{message}"):
        import_ratings_csv(store, _write(tmp_path / "bad.csv", [row]))
    assert store.rating("ann", store.qa_pairs(task="image_observation")[0].id) is None
