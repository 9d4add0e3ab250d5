"""The task table, the closed-question generator and the 3D-RAD CSV layout, checked against the
published benchmark files where they are available."""
from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

import pytest

from annotation.qa_templates import (
    CSV_COLUMNS, CT_RATE_LABELS, TASKS, TEMPORAL_CHOICES, TEMPORAL_LABELS, QARow, VolumeName,
    closed_qa_for_scan, question_templates, read_3drad_csvs, task_by_folder, task_by_number,
    temporal_answer, write_3drad_csvs,
)

NO_LABELS = dict.fromkeys(CT_RATE_LABELS, 0)


def _labels(*present: str) -> dict[str, int]:
    return {**NO_LABELS, **dict.fromkeys(present, 1)}


def _label_in(question: str) -> str:
    """The CT-RATE label a question is about (longest match: "lung opacity" vs "opacity")."""
    return next(l for l in sorted(CT_RATE_LABELS, key=len, reverse=True) if l.lower() in question.lower())


def _sequence_in(question: str) -> list[int]:
    return ast.literal_eval(re.search(r"\[[01, ]*\]", question).group())


def test_task_table_keeps_folder_and_paper_numbering_apart() -> None:
    assert len(TASKS) == 6
    assert task_by_number(1).key == "image_observation" and task_by_number(1).paper_number == 2
    assert task_by_folder("Task2_Anomaly_Detection").paper_number == 1
    assert [t.open for t in TASKS.values()] == [True, True, True, False, False, False]
    with pytest.raises(KeyError, match="Task9"):
        task_by_folder("Task9_Nothing")


def test_first_scan_gets_existence_questions_only() -> None:
    rows = closed_qa_for_scan("train_7_a_1.nii.gz", _labels("Lung nodule"), [])
    assert {r.task for r in rows} == {4} and len(rows) == 18
    nodule = next(r for r in rows if "lung nodule" in r.question)
    assert (nodule.answer, nodule.answer_choice, nodule.choices) == ("Yes", "A", ("Yes", "No", "-", "-"))
    assert all(r.answer == "No" for r in rows if r is not nodule)


def test_temporal_rows_follow_the_rule_and_twins_agree() -> None:
    priors = [_labels("Consolidation", "Emphysema"), _labels("Emphysema")]
    now = _labels("Consolidation", "Pleural effusion")
    rows = closed_qa_for_scan("valid_3_c_1.nii.gz", now, priors)
    t5 = {_label_in(r.question): r for r in rows if r.task == 5}
    t6 = {_label_in(r.question): r for r in rows if r.task == 6}
    assert len(t5) == len(t6) == len(TEMPORAL_LABELS) == 17
    assert {r.subtask for r in rows if r.task in (5, 6)} == {2}
    expected = {"consolidation": "A", "emphysema": "B", "pleural effusion": "C", "lung nodule": "D"}
    for label, row in t6.items():
        sequence = _sequence_in(row.question)
        assert sequence == [p[label] for p in priors]
        assert row.answer_choice == temporal_answer(sequence, now[label])
        assert row.answer == TEMPORAL_CHOICES["ABCD".index(row.answer_choice)]
        if label.lower() in expected:
            assert row.answer_choice == expected[label.lower()]
        assert t5[label].answer == row.answer


def test_same_scan_same_rows_and_templates_vary_across_scans() -> None:
    a = closed_qa_for_scan("train_1_b_1.nii.gz", NO_LABELS, [NO_LABELS])
    assert a == closed_qa_for_scan("train_1_b_1.nii.gz", NO_LABELS, [NO_LABELS])
    questions = {r.question for name in ("train_1_a_1.nii.gz", "train_2_a_1.nii.gz", "train_3_a_1.nii.gz")
                 for r in closed_qa_for_scan(name, NO_LABELS, []) if "lung nodule" in r.question}
    assert len(questions) > 1


def test_bad_labels_name_the_volume_and_label() -> None:
    with pytest.raises(ValueError, match=r"train_1_a_1.*Cardiomegaly"):
        closed_qa_for_scan("train_1_a_1.nii.gz", {k: v for k, v in NO_LABELS.items() if k != "Cardiomegaly"}, [])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        closed_qa_for_scan("train_1_a_1.nii.gz", {**NO_LABELS, "Emphysema": 2}, [])


def test_volume_name_parts() -> None:
    name = VolumeName.parse("valid_12_c_2.nii.gz")
    assert (name.split, name.patient, name.letter, name.reconstruction, name.timepoint) == ("valid", "12", "c", 2, 2)
    assert str(name) == "valid_12_c_2.nii.gz"
    with pytest.raises(ValueError, match="CT-RATE naming"):
        VolumeName.parse("scan.nii.gz")


def test_write_then_read_round_trips_with_real_file_names(tmp_path: Path) -> None:
    rows = closed_qa_for_scan("train_1_a_1.nii.gz", NO_LABELS, []) + closed_qa_for_scan(
        "train_1_b_1.nii.gz", _labels("Atelectasis"), [NO_LABELS])
    rows.append(QARow(3, 2, "train_1_b_1.nii.gz", "What is the size of the nodule?", "23x18 mm", "Open", "-"))
    written = write_3drad_csvs(rows, tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {"Task4_Existence_Detection/Lung nodule.csv", "Task5_Static_Temporal_Diagnosis/b.csv",
            "Task6_Longitudinal_Temporal_Diagnosis/b.csv", "Task3_Medical_Computation/Size.csv"} <= names
    assert sorted(read_3drad_csvs(tmp_path), key=repr) == sorted(rows, key=repr)


def test_bad_row_is_reported_with_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "Task4_Existence_Detection"
    folder.mkdir()
    (folder / "Emphysema.csv").write_text(",".join(CSV_COLUMNS) + "\n4,7,x.nii.gz,Q?,No,Close,B,Yes,No,-,-\n"
                                          "4,seven,x.nii.gz,Q?,No,Close,B,Yes,No,-,-\n")
    with pytest.raises(ValueError, match=r"Emphysema.csv, line 3: Task/Subtask must be integers"):
        read_3drad_csvs(tmp_path)


def test_real_benchmark_round_trips_byte_for_byte(shared_data: Path, tmp_path: Path) -> None:
    real = shared_data / "3d-rad" / "test"
    rows = read_3drad_csvs(real)
    assert len(rows) == 33910
    write_3drad_csvs(rows, tmp_path)
    for path in real.glob("*/*.csv"):
        assert (tmp_path / path.relative_to(real)).read_bytes() == path.read_bytes(), path


def test_real_temporal_answers_follow_our_rule(shared_data: Path) -> None:
    """The benchmark's volumes of task 4 and 6 do not overlap, so "now" is unknown there; the part of
    the rule the sequence decides (A/B iff any prior 1) and the subtask = scan letter must hold."""
    rows = [r for r in read_3drad_csvs(shared_data / "3d-rad" / "test") if r.task == 6]
    for row in rows:
        sequence = _sequence_in(row.question)
        assert len(sequence) == row.subtask == VolumeName.parse(row.volume_name).timepoint
        assert row.answer_choice in {temporal_answer(sequence, 0), temporal_answer(sequence, 1)}, row
    assert len(rows) == 2873


def test_shipped_templates_are_exactly_the_real_ones(shared_data: Path) -> None:
    """Re-extract every template from the benchmark: ours must be the same set, so generated
    questions can never drift from 3D-RAD's wording (labels lower-cased, as in the files)."""
    real: dict[int, set[str]] = {4: set(), 5: set(), 6: set()}
    for task in real:
        for path in (shared_data / "3d-rad" / "test").glob(f"Task{task}_*/*.csv"):
            with path.open(newline="") as fh:
                assert tuple(next(csv.reader(fh))) == CSV_COLUMNS
                fh.seek(0)
                for record in csv.DictReader(fh):
                    q = record["Question"]
                    label = _label_in(q)
                    assert label not in q or label == label.lower()
                    real[task].add(re.sub(r"\[[01, ]*\]", "{sequence}", q.replace(label.lower(), "{label}")))
    ours = question_templates()
    assert set(ours["existence_detection"]) == real[4]
    assert set(ours["static_temporal_diagnosis"]) == real[5]
    assert set(ours["longitudinal_temporal_diagnosis"]) == real[6]
