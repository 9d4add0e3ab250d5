"""3D-RAD import: the real test split lands complete and idempotently; a bad row anywhere is
refused with its file and line and writes nothing (library and CLI)."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotation.importers import BadInputError
from annotation.importers.threedrad import import_3drad
from annotation.qa_templates import CSV_COLUMNS, TEMPORAL_CHOICES
from annotation.store import Store

FOLDER_COUNTS = {"image_observation": 1024, "anomaly_detection": 2666, "medical_computation": 1002,
                 "existence_detection": 23472, "static_temporal_diagnosis": 2873,
                 "longitudinal_temporal_diagnosis": 2873}


def test_real_test_split_imports_exactly_and_reimport_adds_nothing(store: Store, shared_data: Path) -> None:
    split = shared_data / "3d-rad" / "test"
    summary = import_3drad(store.db, split)
    assert (summary.files, summary.rows, summary.added) == (41, 33_910, 33_910)
    assert store.count_qa_pairs() == FOLDER_COUNTS
    assert store.count_qa_pairs(source="imported") == FOLDER_COUNTS
    again = import_3drad(store.db, split)
    assert (again.added, again.scans_added) == (0, 0)
    assert sum(store.count_qa_pairs().values()) == 33_910
    # Folder Task1 holds CSV Task=1, which is the paper's task 2: identity by folder name.
    first = store.qa_pairs(task="image_observation", limit=1)[0]
    assert first.task_number == 1 and first.provenance["file"].startswith("Task1_Image_Observation/")
    longitudinal = store.qa_pairs(task="longitudinal_temporal_diagnosis", limit=50)
    assert all(q.priors is not None and str(list(q.priors)) in q.question for q in longitudinal)
    assert all(q.choices == TEMPORAL_CHOICES for q in longitudinal)
    scan = store.scan_by_volume("test_1006_c_1.nii.gz")
    assert (scan.patient, scan.timepoint, scan.reconstruction) == ("test_1006", "c", 1)


def _write(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    return path


OPEN_ROW = ["1", "1", "test_1_a_1.nii.gz", "Where is the node?", "Right hilar region.", "Open", "-", "-", "-", "-", "-"]
T6_ROW = ["6", "1", "test_1_b_1.nii.gz", "Earlier emphysema sequences: [1]. How has emphysema evolved?",
          TEMPORAL_CHOICES[0], "Close", "A", *TEMPORAL_CHOICES]


@pytest.fixture
def small_split(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    _write(root / "Task1_Image_Observation" / "Anatomical_observation.csv", [OPEN_ROW, OPEN_ROW])
    _write(root / "Task6_Longitudinal_Temporal_Diagnosis" / "b.csv", [T6_ROW])
    return root


def test_small_split_keeps_verbatim_duplicates_and_parses_priors(store: Store, small_split: Path,
                                                                  tmp_path: Path) -> None:
    volumes = tmp_path / "vols"
    volumes.mkdir()
    (volumes / "test_1_b_1.nii.gz").write_bytes(b"")
    summary = import_3drad(store.db, small_split, volumes=volumes)
    assert (summary.added, summary.scans_added) == (3, 2)
    t6 = store.qa_pairs(task="longitudinal_temporal_diagnosis")[0]
    assert (t6.priors, t6.answer_choice, t6.path) == ((1,), "A", str((volumes / "test_1_b_1.nii.gz").resolve()))
    assert store.scan_by_volume("test_1_a_1.nii.gz").path is None
    assert import_3drad(store.db, small_split).added == 0


@pytest.mark.parametrize("bad_row, problem", [
    (["2", *OPEN_ROW[1:]], "folder Task1_Image_Observation holds task 1"),
    (["x", *OPEN_ROW[1:]], "Task/Subtask must be integers"),
    ([*T6_ROW[:6], "E", *T6_ROW[7:]], "AnswerChoice must be A-D"),
    (OPEN_ROW[:5], "missing column"),
    (["1", "1", "scan.nii.gz", *OPEN_ROW[3:]], "CT-RATE naming"),
])
def test_a_bad_row_is_refused_with_file_and_line_and_nothing_is_written(
        store: Store, small_split: Path, bad_row: list[str], problem: str) -> None:
    target = (small_split / "Task6_Longitudinal_Temporal_Diagnosis" / "b.csv" if bad_row[0] == "6"
              else small_split / "Task1_Image_Observation" / "Anatomical_observation.csv")
    with target.open("a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow(bad_row)
    line = len(target.read_text().splitlines())
    with pytest.raises(BadInputError) as info:
        import_3drad(store.db, small_split)
    assert info.value.line == line and Path(info.value.path) == target
    assert problem in str(info.value) and str(target) in str(info.value)
    assert store.count_qa_pairs() == {} and store.scans() == []


def test_cli_import_reports_bad_row_and_leaves_database_unchanged(tmp_path: Path, small_split: Path) -> None:
    from napari_ctvqa.cli import app

    db = str(tmp_path / "cli.sqlite")
    runner = CliRunner()
    ok = runner.invoke(app, ["import", "3drad", str(small_split), "--db", db, "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"added": 3' in ok.stdout
    bad_file = small_split / "Task1_Image_Observation" / "Pathological_observation.csv"
    _write(bad_file, [["1", "2", "test_9_a_1.nii.gz", "Q?", "A.", "Open", "-", "-", "-", "-", "-"],
                      ["1", "2", "test_9_a_1.nii.gz", "Q?", "A.", "Sometimes", "-", "-", "-", "-", "-"]])
    bad = runner.invoke(app, ["import", "3drad", str(small_split), "--db", db])
    assert bad.exit_code != 0
    assert f"{bad_file}, line 3" in bad.output and "QuestionType" in bad.output
    assert Store(db).scan_by_volume("test_9_a_1.nii.gz") is None
    assert sum(Store(db).count_qa_pairs().values()) == 3


def test_cli_db_init_and_upgrade(tmp_path: Path) -> None:
    from annotation.db import head_revision
    from napari_ctvqa.cli import app

    db = str(tmp_path / "fresh.sqlite")
    runner = CliRunner()
    assert runner.invoke(app, ["db", "init", "--db", db]).exit_code == 0
    result = runner.invoke(app, ["db", "upgrade", "--db", db, "--json"])
    assert result.exit_code == 0 and f'"to": "{head_revision()}"' in result.stdout
    env = runner.invoke(app, ["db", "init"], env={"CTVQA_DB": str(tmp_path / "env.sqlite")})
    assert env.exit_code == 0 and (tmp_path / "env.sqlite").is_file()


def test_copy_of_real_file_with_one_bad_line_names_that_line(store: Store, shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "3d-rad" / "test" / "Task3_Medical_Computation" / "Thickness.csv"
    target = tmp_path / "split" / "Task3_Medical_Computation" / "Thickness.csv"
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)
    lines = target.read_text().splitlines()
    lines[50] = lines[50].replace(",Open,", ",Closed,")
    target.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=r"Thickness.csv, line 51"):
        import_3drad(store.db, target.parents[1])
    assert store.count_qa_pairs() == {}
