"""Exporters: patient-level split, and each format re-read, on rows of the real 3D-RAD test split."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from annotation.exports import (
    JSONL_FIELDS, M3D_VQA_COLUMNS, ExportRow, export_rows, m3d_question_type, patient_key, patient_split,
)
from annotation.qa_templates import read_3drad_csvs
from model.inference.prompts import format_prompt, format_target


@pytest.fixture(scope="module")
def real_qa(shared_data: Path):
    return read_3drad_csvs(shared_data / "3d-rad" / "test")


@pytest.fixture(scope="module")
def real_rows(real_qa) -> list[ExportRow]:
    return [ExportRow.from_qarow(row, qa_id) for qa_id, row in enumerate(real_qa)]


@pytest.fixture(scope="module")
def sample_rows(real_rows) -> list[ExportRow]:
    """Every 17th real row: all six tasks, about 2,000 rows, fast to write in every format."""
    return real_rows[::17]


def make_row(qa_id: int, patient: str) -> ExportRow:
    return ExportRow(qa_id, patient, f"train_{patient}_a_1.nii.gz", "", "existence_detection", 4, 1, "Is there X?",
                     "Yes", "Close", "A", ("Yes", "No", "-", "-"), None)


def test_patient_key_follows_ct_rate_naming():
    assert patient_key("test_1016_d_2.nii.gz") == "test_1016"
    assert patient_key("valid_7_a_1.nii.gz") != patient_key("train_7_a_1.nii.gz")
    assert patient_key("/data/scan_04.nii.gz") == "scan_04"


def test_patient_split_keeps_each_patient_on_one_side():
    rows = [make_row(i, f"p{i % 40}") for i in range(400)]
    train, valid = patient_split(rows, 0.25, seed=3)
    assert not {r.patient for r in train} & {r.patient for r in valid}
    assert sorted(r.qa_id for r in train + valid) == list(range(400))
    assert 100 <= len(valid) < 120  # at least the fraction, overshooting by less than one patient
    assert patient_split(rows[::-1], 0.25, seed=3)[1] == valid[::-1]  # row order does not matter
    assert patient_split(rows, 0.25, seed=4)[1] != valid
    assert patient_split(rows, 0.0, seed=3) == (rows, [])
    assert patient_split(rows[:1], 0.5, seed=3) == (rows[:1], [])  # one patient stays in training
    with pytest.raises(ValueError, match="val_frac"):
        patient_split(rows, 1.0, seed=0)


def test_3drad_round_trip_on_the_real_test_split(real_qa, real_rows, shared_data, tmp_path):
    manifest = export_rows(real_rows, "3drad", tmp_path / "split", split="patient", val_frac=0.1, seed=0)
    train, valid = read_3drad_csvs(tmp_path / "split" / "train"), read_3drad_csvs(tmp_path / "split" / "valid")
    assert Counter(train + valid) == Counter(real_qa)
    assert not {patient_key(r.volume_name) for r in train} & {patient_key(r.volume_name) for r in valid}
    assert (manifest["splits"]["train"]["rows"], manifest["splits"]["valid"]["rows"]) == (len(train), len(valid))
    assert 0.1 <= len(valid) / len(real_qa) < 0.11 and manifest["warnings"] == []

    export_rows(real_rows, "3drad", tmp_path / "all", split="patient", val_frac=0)
    source = shared_data / "3d-rad" / "test"
    written = sorted(p.relative_to(tmp_path / "all" / "train") for p in (tmp_path / "all" / "train").rglob("*.csv"))
    assert written == sorted(p.relative_to(source) for p in source.rglob("*.csv"))
    assert all((tmp_path / "all" / "train" / p).read_bytes() == (source / p).read_bytes() for p in written)
    assert not (tmp_path / "all" / "valid").exists()


def test_m3d_vqa_csv(sample_rows, tmp_path):
    export_rows(sample_rows, "m3d-vqa", tmp_path, split="patient", val_frac=0.2, seed=1)
    parts = [pd.read_csv(tmp_path / f"{s}.csv", keep_default_na=False, dtype=str) for s in ("train", "valid")]
    assert all(list(p.columns) == list(M3D_VQA_COLUMNS) for p in parts)
    table = pd.concat(parts, ignore_index=True)
    assert len(table) == len(sample_rows)
    by_question = {(r.volume_name, r.question): r for r in sample_rows}
    for record in table.itertuples(index=False):
        row = by_question[(record[0], record[3])]
        closed = row.question_type == "Close"
        assert record[8] == row.answer and record[2] == str(m3d_question_type(row.task, row.subtask))
        assert list(record[4:8]) == (list(row.choices) if closed else ["", "", "", ""])
        assert record[9] == (row.answer_choice if closed else "")
        if closed:
            assert record["ABCD".index(record[9]) + 4] == row.answer


def test_jsonl_records_carry_the_model_prompt(sample_rows, tmp_path):
    export_rows(sample_rows, "jsonl", tmp_path, split="patient", val_frac=0.2, seed=1)
    records = [json.loads(line) for s in ("train", "valid") for line in (tmp_path / f"{s}.jsonl").open()]
    assert len(records) == len(sample_rows) and all(tuple(r) == JSONL_FIELDS for r in records)
    source = {r.qa_id: r for r in sample_rows}
    for record in records:
        row = source[record["qa_id"]]
        closed = row.question_type == "Close"
        assert record["choices"] == (list(row.choices) if closed else None)
        assert record["prompt"] == format_prompt(row.question, record["choices"], style="m3d")
        assert record["target"] == format_target(row.answer, row.answer_choice if closed else None)
        assert record["priors"] == (list(row.priors) if row.priors is not None else None)
    task6 = [r for r in records if r["task"] == "longitudinal_temporal_diagnosis"]
    assert task6 and all(r["priors"] and str(r["priors"]) in r["question"] for r in task6)
    closed = next(r for r in records if r["choices"])
    assert " Choices: A. " in closed["prompt"] and closed["target"].startswith(f"{closed['answer_choice']}. ")


def test_hf_dataset_and_manifest(sample_rows, tmp_path):
    import datasets

    calls = []
    manifest = export_rows(sample_rows, "hf", tmp_path / "hf", split="patient", val_frac=0.2, seed=1,
                           manifest_extra={"filter": {"min_mean": 3.0}}, progress=lambda d, t: calls.append((d, t)))
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(loaded) == {"train", "valid"}  # one split name in every format
    assert loaded["valid"].num_rows == manifest["splits"]["valid"]["rows"] > 0
    assert loaded["train"].num_rows + loaded["valid"].num_rows == len(sample_rows)
    assert loaded["train"].column_names == list(JSONL_FIELDS)
    on_disk = json.loads((tmp_path / "hf" / "manifest.json").read_text())
    assert on_disk == manifest and manifest["format"] == "hf" and manifest["filter"] == {"min_mean": 3.0}
    assert manifest["tool"]["version"] and manifest["created"]
    for split in manifest["splits"].values():
        assert sum(split["per_task"].values()) == split["rows"] and split["patients"] > 0
    assert calls[0] == (0, len(sample_rows)) and calls[-1] == (len(sample_rows),) * 2
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    export_rows(sample_rows, "hf", tmp_path / "one", split="patient", val_frac=0)
    assert set(datasets.load_from_disk(str(tmp_path / "one"))) == {"train"}


def test_export_refuses_bad_requests(sample_rows, tmp_path):
    (tmp_path / "old.txt").write_text("earlier export")
    with pytest.raises(ValueError, match="new or empty"):
        export_rows(sample_rows, "jsonl", tmp_path)
    with pytest.raises(ValueError, match="unknown export format"):
        export_rows(sample_rows, "xlsx", tmp_path / "new")
    with pytest.raises(ValueError, match="nothing to export"):
        export_rows([], "jsonl", tmp_path / "new")
    with pytest.raises(ValueError, match="own keys"):
        export_rows(sample_rows, "jsonl", tmp_path / "new", manifest_extra={"total": 1})
    bad = dataclasses.replace(sample_rows[0], subtask=99)
    with pytest.raises(ValueError, match="has no subtask 99"):
        export_rows([bad], "3drad", tmp_path / "bad")


def test_m3d_question_types_follow_m3ds_topics():
    assert [m3d_question_type("m3d_vqa", n) for n in range(1, 6)] == [1, 2, 3, 4, 5]  # kept as imported
    assert m3d_question_type("image_observation", 1) == 3  # anatomical observation: organ
    assert m3d_question_type("anomaly_detection", 2) == 5  # abnormality position: location
    assert {m3d_question_type(t, 1) for t in ("anomaly_detection", "medical_computation", "existence_detection",
                                              "longitudinal_temporal_diagnosis", "chat")} == {4}


def test_keep_uses_the_cohorts_own_split_and_warns_when_a_share_is_far(tmp_path):
    rows = [dataclasses.replace(make_row(i, f"train_{i % 3}"), cohort_split="train") for i in range(6)]
    rows += [dataclasses.replace(make_row(10 + i, f"valid_{i}"), cohort_split="validation") for i in range(2)]
    rows += [dataclasses.replace(make_row(20 + i, f"own{i % 4}"), volume_name=f"own{i % 4}.nii.gz") for i in range(8)]
    manifest = export_rows(rows, "jsonl", tmp_path / "keep", val_frac=0.1, seed=0)
    assert manifest["split"] == "keep" and manifest["split_by"] == "cohort, else patient"
    by_split = {s: [json.loads(line)["qa_id"] for line in (tmp_path / "keep" / f"{s}.jsonl").open()]
                for s in ("train", "valid")}
    assert set(range(6)) <= set(by_split["train"]) and {10, 11} <= set(by_split["valid"])
    assert len(manifest["warnings"]) == 1 and "among the pairs without a split" in manifest["warnings"][0]
    # four patients asked for 10%: one whole patient is 25%, said in a warning
    patient = export_rows(rows[-8:], "jsonl", tmp_path / "patient", split="patient", val_frac=0.1, seed=0)
    assert patient["split_by"] == "patient" and patient["splits"]["valid"]["rows"] == 2
    assert "validation holds 25% of the pairs (2 of 8), not the 10% asked for" in patient["warnings"][0]
    mixed = [dataclasses.replace(rows[0], cohort_split="valid"), rows[3]]  # patient train_0 on both sides
    with pytest.raises(ValueError, match="patient 'train_0' has scans in the splits"):
        export_rows(mixed, "jsonl", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_image_paths_are_relative_to_the_image_root(tmp_path):
    scans = tmp_path / "data" / "ct"
    rows = [dataclasses.replace(make_row(i, f"p{i}"), image_path=str(scans / f"p{i}" / f"train_p{i}_a_1.nii.gz"))
            for i in range(3)]
    rows.append(make_row(9, "nofile"))
    manifest = export_rows(rows, "m3d-vqa", tmp_path / "auto", split="patient", val_frac=0)
    table = pd.read_csv(tmp_path / "auto" / "train.csv", keep_default_na=False)
    assert table["Image Path"].tolist() == [f"p{i}/train_p{i}_a_1.nii.gz" for i in range(3)] + ["train_nofile_a_1.nii.gz"]
    assert manifest["image_root"] == str(scans)
    export_rows(rows, "jsonl", tmp_path / "root", split="patient", val_frac=0, image_root=tmp_path / "data")
    images = [json.loads(line)["image"] for line in (tmp_path / "root" / "train.jsonl").open()]
    assert images[0] == "ct/p0/train_p0_a_1.nii.gz"
    with pytest.raises(ValueError, match="is not under the image root"):
        export_rows(rows, "jsonl", tmp_path / "outside", image_root=tmp_path / "elsewhere")
