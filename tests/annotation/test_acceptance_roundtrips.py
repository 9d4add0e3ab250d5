"""Issue 4 acceptance round trips that cross the database: what goes in through `ctvqa import`
comes back out unchanged (3D-RAD export of the real test split; CT-RATE import of a synthetic
cohort regenerating the cohort's own closed questions; exports of a database where only some
scans have a volume file or a patient)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from annotation.importers.bulk import insert_ignoring_conflicts
from annotation.qa_templates import QARow, read_3drad_csvs
from annotation.rubric import SCORE_KEYS
from annotation.schema import QAPair, Rating, utcnow
from annotation.store import Store
from annotation.synth import write_cohort
from napari_ctvqa.cli import app

runner = CliRunner()


def _cli(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    return json.loads("\n".join(lines[lines.index("{"):]))  # the indented JSON document ends the output


def _rate_all_passing(store: Store) -> int:
    """Set-up only: one curator gives every pair 4s, in one bulk insert (34k save_rating calls
    would take minutes and test nothing more)."""
    rater_id = store.ensure_rater("curator")
    with store.db.reading() as session:
        qa_ids = session.scalars(select(QAPair.id)).all()
    now = utcnow()
    rows = [{"qa_id": q, "rater_id": rater_id, **dict.fromkeys(SCORE_KEYS, 4), "consistent": True, "note": "",
             "status": "rated", "reason": None, "seconds_spent": 0.0, "created_at": now, "updated_at": now}
            for q in qa_ids]
    store.db.write(lambda s: insert_ignoring_conflicts(s, Rating.__table__, rows, ["qa_id", "rater_id", "is_repeat"]))
    return len(rows)


def test_export_where_only_some_scans_have_a_path_or_patient(store: Store, tmp_path: Path) -> None:
    """Missing paths/patients are NULL in SQL; they must not leave the tool as the text "nan" or
    lump every patient-less scan into one patient called nan."""
    with_path = store.add_scan("train_1_a_1.nii.gz", tmp_path / "train_1_a_1.nii.gz")
    store.add_scan("train_2_a_1.nii.gz")
    for name in ("own_scan_01.nii.gz", "own_scan_02.nii.gz"):  # not CT-RATE named: no patient
        store.add_scan(name)
    for scan in store.scans():
        store.add_qa_pair(scan.id, "image_observation", f"What is seen in {scan.volume_name}?", "A nodule.",
                          subtask="1", source="imported")
    _rate_all_passing(store)
    manifest = store.export("jsonl", tmp_path / "out", val_frac=0.5, seed=0)
    records = [json.loads(line) for split in ("train", "valid") if (tmp_path / "out" / f"{split}.jsonl").exists()
               for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]
    images = {r["volume_name"]: r["image"] for r in records}
    assert images == {s.volume_name: s.volume_name for s in store.scans()}  # relative: the file's name
    assert Path(manifest["image_root"]) / images["train_1_a_1.nii.gz"] == Path(with_path.path)
    assert manifest["splits"]["train"]["patients"] + manifest["splits"]["valid"]["patients"] == 4


def test_real_split_imported_then_exported_as_3drad_gives_the_same_rows(shared_data: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'rad.sqlite'}"
    split = shared_data / "3d-rad" / "test"
    assert _cli("import", "3drad", str(split), "--db", db)["added"] == 33_910
    with Store(db) as store:
        assert _rate_all_passing(store) == 33_910
    manifest = _cli("export", "--format", "3drad", "--out", str(tmp_path / "out"), "--cap-per-question", "0",
                    "--split", "patient", "--db", db)
    assert manifest["total"] == 33_910 and manifest["filter"]["cap_per_question"] is None
    exported = read_3drad_csvs(tmp_path / "out" / "train") + read_3drad_csvs(tmp_path / "out" / "valid")
    assert Counter(exported) == Counter(read_3drad_csvs(split))  # same rows, verbatim duplicates included


def test_real_split_exported_unrated_as_curated_gives_the_same_rows(shared_data: Path, tmp_path: Path) -> None:
    """Issue 21 acceptance: the 3D-RAD team curated its pairs; imported, they export unrated
    (with the default cap, which never hits 3D-RAD's own data, and in the cohort's own split)."""
    db = f"sqlite:///{tmp_path / 'rad.sqlite'}"
    split = shared_data / "3d-rad" / "test"
    assert _cli("import", "3drad", str(split), "--db", db)["added"] == 33_910
    refused = runner.invoke(app, ["export", "--format", "3drad", "--out", str(tmp_path / "none"), "--db", db])
    assert refused.exit_code != 0 and "--include-unrated" in refused.output and not (tmp_path / "none").exists()
    manifest = _cli("export", "--format", "3drad", "--out", str(tmp_path / "out"), "--include-unrated", "--db", db)
    assert manifest["total"] == manifest["unrated_included"] == 33_910 and manifest["filter"]["include_unrated"]
    assert manifest["split_by"] == "cohort" and set(manifest["splits"]) == {"train", "valid", "test"}
    assert manifest["splits"]["test"]["rows"] == 33_910 and manifest["warnings"] == []
    exported = read_3drad_csvs(tmp_path / "out" / "test")
    original = read_3drad_csvs(split)
    assert set(exported) == set(original) and Counter(exported) == Counter(original)


def test_ctrate_import_of_a_synthetic_cohort_regenerates_its_tasks_4_to_6(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    write_cohort(cohort, 3, seed=11, size=(24, 64, 64), valid_frac=0.34, workers=1)
    db = f"sqlite:///{tmp_path / 'ct.sqlite'}"
    summary = _cli("import", "ctrate", "--reports", str(cohort / "reports.csv"), "--labels", str(cohort / "labels.csv"),
                   "--metadata", str(cohort / "metadata.csv"), "--volumes", str(cohort / "volumes"), "--db", db)
    assert summary["scans_added"] == len(list((cohort / "volumes").iterdir()))

    own = [r for split in ("train", "valid") for r in read_3drad_csvs(cohort / "qa" / split) if r.task >= 4]
    with Store(db) as store:
        stored = [q for q in store.qa_pairs() if q.task_number is not None and q.task_number >= 4]
        assert all(q.path and Path(q.path).is_file() for q in stored)  # volumes linked to the scans
    generated = [QARow(q.task_number, int(q.subtask), q.volume_name, q.question, q.answer, "Close",
                       q.answer_choice, q.choices) for q in stored]
    assert {r.task for r in own} == {4, 5, 6}
    assert Counter(generated) == Counter(own)
