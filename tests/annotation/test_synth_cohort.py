"""The written cohort: deterministic files, tables consistent with the ground truth and the
volumes, and QA that follows 3D-RAD's format, templates and answer rules."""
from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from annotation.qa_templates import (
    CSV_COLUMNS, CT_RATE_LABELS, TEMPORAL_CHOICES, TEMPORAL_LABELS, VolumeName, question_templates,
    read_3drad_csvs, temporal_answer,
)
from annotation.synth import write_cohort
from model.ct.io import read_ct
from napari_ctvqa.cli import app

SIZE = (32, 96, 96)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, 3, seed=5, size=SIZE, valid_frac=0.34)
    return out


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _label_of(question: str) -> str:
    return next(l for l in sorted(CT_RATE_LABELS, key=len, reverse=True) if l.lower() in question)


def test_same_seed_writes_byte_identical_files(cohort: Path, tmp_path: Path) -> None:
    """Also with two worker processes instead of one: parallelism must not change a byte."""
    write_cohort(tmp_path / "again", 3, seed=5, size=SIZE, valid_frac=0.34, workers=2)
    first, again = _files(cohort), _files(tmp_path / "again")
    assert first.keys() == again.keys()
    assert [k for k in first if first[k] != again[k]] == []
    write_cohort(tmp_path / "other", 1, seed=6, size=SIZE)
    assert (tmp_path / "other" / "volumes" / "train_1_a_1.nii.gz").read_bytes() != first["volumes/train_1_a_1.nii.gz"]


def test_tables_follow_ct_rate_and_agree_with_ground_truth(cohort: Path) -> None:
    labels = _read(cohort / "labels.csv")
    truth = json.loads((cohort / "ground_truth.json").read_text())["volumes"]
    volumes = sorted(p.name for p in (cohort / "volumes").iterdir())
    assert sorted(r["VolumeName"] for r in labels) == volumes == sorted(truth)
    assert list(labels[0]) == ["VolumeName", *CT_RATE_LABELS]
    for row in labels:
        found = {lesion["label"] for lesion in truth[row["VolumeName"]]["lesions"]}
        assert {l for l in CT_RATE_LABELS if row[l] == "1"} == found
    splits = {VolumeName.parse(v).split for v in volumes}
    assert splits == {"train", "valid"}
    patients = {(truth[v]["patient"], truth[v]["split"]) for v in volumes}
    assert len({p for p, _ in patients}) == len(patients)  # a patient lives in one split only
    reports = _read(cohort / "reports.csv")
    assert list(reports[0]) == ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
    assert all(all(r[c].strip() for c in r) for r in reports)
    metadata = _read(cohort / "metadata.csv")
    assert {"XYSpacing", "ZSpacing", "RescaleIntercept", "RescaleSlope", "PatientSex", "PatientAge", "StudyDate"} <= set(metadata[0])


def test_volumes_read_back_in_canonical_orientation_with_lesions_where_stated(cohort: Path) -> None:
    truth = json.loads((cohort / "ground_truth.json").read_text())
    for name, entry in truth["volumes"].items():
        volume = read_ct(cohort / "volumes" / name)
        assert volume.array.shape == SIZE
        assert np.allclose(volume.spacing, truth["spacing"], atol=1e-3)
        assert volume.array[:, :2].mean() < -900  # anterior rows are air, as in the canonical layout
        for lesion in entry["lesions"]:
            z1, y1, x1, z2, y2, x2 = lesion["bbox_voxel"]
            assert 0 <= z1 < z2 <= SIZE[0] and 0 <= y1 < y2 <= SIZE[1] and 0 <= x1 < x2 <= SIZE[2]
            region = volume.array[z1:z2, y1:y2, x1:x2]
            if lesion["type"] in ("arterial_calcification", "coronary_calcification", "medical_material"):
                assert region.max() > 300, (name, lesion["type"])
            if lesion["type"] == "nodule":
                k, j, i = (int(round(v)) for v in lesion["centre_voxel"])
                assert volume.array[k, j, i] > -300, name


def test_generated_csvs_have_exactly_the_real_columns(cohort: Path, shared_data: Path) -> None:
    real = shared_data / "3d-rad" / "test" / "Task4_Existence_Detection" / "Emphysema.csv"
    with real.open(newline="") as fh:
        real_header = next(csv.reader(fh))
    generated = sorted((cohort / "qa").glob("*/*/*.csv"))
    assert {p.parent.name for p in generated} >= {"Task1_Image_Observation", "Task3_Medical_Computation",
                                                  "Task4_Existence_Detection", "Task6_Longitudinal_Temporal_Diagnosis"}
    for path in generated:
        with path.open(newline="") as fh:
            assert next(csv.reader(fh)) == real_header == list(CSV_COLUMNS), path


def test_closed_questions_use_only_real_3drad_templates(cohort: Path, shared_data: Path) -> None:
    real_questions = {row.question for row in read_3drad_csvs(shared_data / "3d-rad" / "test") if row.task >= 4}

    def template(question: str) -> str:
        return re.sub(r"\[[01, ]*\]", "{sequence}", question.replace(_label_of(question).lower(), "{label}"))

    real = {template(q) for q in real_questions}
    rows = read_3drad_csvs(cohort / "qa" / "train") + read_3drad_csvs(cohort / "qa" / "valid")
    used = {template(r.question) for r in rows if r.task >= 4}
    assert used and used <= real
    assert used <= {t for ts in question_templates().values() for t in ts}


def test_temporal_answers_follow_the_rule_and_twins_agree(cohort: Path) -> None:
    labels = {r["VolumeName"]: r for r in _read(cohort / "labels.csv")}
    rows = read_3drad_csvs(cohort / "qa" / "train") + read_3drad_csvs(cohort / "qa" / "valid")
    static = {(r.volume_name, _label_of(r.question.lower())): r for r in rows if r.task == 5}
    longitudinal = [r for r in rows if r.task == 6]
    assert longitudinal and len(static) == len(longitudinal)
    for row in longitudinal:
        label = _label_of(row.question.lower())
        assert label in TEMPORAL_LABELS
        name = VolumeName.parse(row.volume_name)
        earlier = [labels[f"{name.split}_{name.patient}_{letter}_1.nii.gz"][label] for letter in "abcdefgh"[: name.timepoint]]
        sequence = ast.literal_eval(re.search(r"\[[01, ]*\]", row.question).group())
        assert sequence == [int(v) for v in earlier]
        assert row.answer_choice == temporal_answer(sequence, int(labels[row.volume_name][label]))
        assert row.answer == TEMPORAL_CHOICES["ABCD".index(row.answer_choice)]
        assert static[row.volume_name, label].answer == row.answer


def test_open_measurements_come_from_the_ground_truth(cohort: Path) -> None:
    truth = json.loads((cohort / "ground_truth.json").read_text())["volumes"]
    rows = read_3drad_csvs(cohort / "qa" / "train") + read_3drad_csvs(cohort / "qa" / "valid")
    checked = 0
    for row in rows:
        if row.task != 3:
            continue
        assert re.fullmatch(r"\d+(x\d+)? mm", row.answer), row.answer
        stated = truth[row.volume_name]
        sizes = {f"{s['axial'][0]}x{s['axial'][1]} mm" for s in (l["size_mm"] for l in stated["lesions"])}
        sizes |= {f"{v} mm" for l in stated["lesions"] for k, v in l["size_mm"].items() if k != "axial"}
        sizes |= {f"{v} mm" for v in stated["anatomy"].values()}
        assert row.answer in sizes, (row.question, row.answer)
        checked += 1
    assert checked >= 3
    assert all(len(r.answer.split()) <= 6 for r in rows if r.task in (1, 2))


def test_cli_writes_a_cohort_and_refuses_bad_sizes(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "c"), "--patients", "1", "--size", "24,64,64", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["volumes"] == len(list((tmp_path / "c" / "volumes").iterdir())) >= 2
    assert summary["qa_rows"]["4"] == 18 * summary["volumes"]
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "d"), "--patients", "1", "--size", "24,64"])
    assert bad.exit_code != 0 and "three positive numbers" in bad.output
    assert not (tmp_path / "d").exists()


def test_box_questions_are_the_painted_lesions_boxes(cohort: Path) -> None:
    from model.data.box_questions import read_box_questions

    truth = json.loads((cohort / "ground_truth.json").read_text())["volumes"]
    asked = [item for split in ("train", "valid") for item in read_box_questions(cohort / "qa" / split / "boxes.csv")]
    kinds = {"nodule", "pleural_effusion", "cardiomegaly", "consolidation"}
    expected = sorted((name, l["label"], tuple(float(v) for v in l["bbox_voxel"]))
                      for name, entry in truth.items() for l in entry["lesions"] if l["type"] in kinds)
    assert expected and sorted((i.volume_name, i.finding, i.box) for i in asked) == expected
    for item in asked:
        assert item.question.startswith("Where is ") and item.question.endswith("Give the box.")
        assert truth[item.volume_name]["split"] in item.source  # each split's questions in its own file
        z1, y1, x1, z2, y2, x2 = (int(v) for v in item.box)
        assert 0 <= z1 < z2 <= SIZE[0] and 0 <= y1 < y2 <= SIZE[1] and 0 <= x1 < x2 <= SIZE[2]
