"""CT-RATE import (labels, reports, metadata, generated QA for all six tasks) and M3D-VQA import."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotation.importers import BadInputError
from annotation.importers.ctrate import import_ctrate
from annotation.importers.m3d_vqa import COLUMNS as M3D_COLUMNS
from annotation.importers.m3d_vqa import import_m3d_vqa
from annotation.importers.open_qa_from_report import open_qa_from_findings
from annotation.qa_templates import CT_RATE_LABELS, TEMPORAL_LABELS
from annotation.store import Store

SCANS = ("train_1_a_1.nii.gz", "train_1_b_1.nii.gz", "train_1_b_2.nii.gz", "train_2_a_1.nii.gz")
FINDINGS = ("A solid nodule measuring 14 x 11 mm is seen in the posterior segment of the right upper lobe. "
            "No pleural effusion. Consolidation is observed in the right lower lobe, with air bronchograms.")


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def ctrate(tmp_path: Path) -> dict[str, Path]:
    def labels(name: str) -> list[int]:
        present = {"Lung nodule"} | ({"Consolidation"} if "_a_" in name and name.startswith("train_1") else set())
        return [int(label in present) for label in CT_RATE_LABELS]

    return {
        "labels": _csv(tmp_path / "labels.csv", ["VolumeName", *CT_RATE_LABELS], [[n, *labels(n)] for n in SCANS]),
        "reports": _csv(tmp_path / "reports.csv",
                        ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
                        [[n, "Cough.", "Non-contrast chest CT.", FINDINGS if n == SCANS[1] else "Not given.",
                          "Nodule."] for n in SCANS]),
        "metadata": _csv(tmp_path / "metadata.csv",
                         ["VolumeName", "XYSpacing", "ZSpacing", "PatientSex", "PatientAge", "StudyDate"],
                         [[n, "[0.7, 0.8]", 1.5, "M", "036Y", "20210427"] for n in SCANS]),
    }


def test_ctrate_import_registers_everything_and_generates_six_tasks(store: Store, ctrate: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    nested = tmp_path / "volumes" / "train" / "train_1" / "train_1_a" / "train_1_a_1.nii.gz"  # CT-RATE layout
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"")
    summary = import_ctrate(store.db, ctrate["reports"], ctrate["labels"], ctrate["metadata"], tmp_path / "volumes")
    assert store.scan_by_volume("train_1_a_1.nii.gz").path == str(nested.resolve())
    assert store.scan_by_volume("train_1_b_1.nii.gz").path is None
    counts = store.count_qa_pairs()
    # Task 4 for every scan; tasks 5/6 only for the two b scans (they have a prior); open ones from findings.
    assert counts["existence_detection"] == 18 * 4
    assert counts["static_temporal_diagnosis"] == counts["longitudinal_temporal_diagnosis"] == 2 * len(TEMPORAL_LABELS)
    assert counts["medical_computation"] == 1 and counts["anomaly_detection"] == 1
    assert summary.added == sum(counts.values()) and summary.scans_added == 4
    b2 = store.scan_by_volume("train_1_b_2.nii.gz")
    assert (b2.spacing, b2.study_date, b2.patient) == ((1.5, 0.7, 0.8), "2021-04-27", "train_1")
    assert store.labels(b2.id)["Lung nodule"] == 1 and len(store.labels(b2.id)) == 18
    report = store.report(store.scan_by_volume(SCANS[1]).id)
    assert report.findings == FINDINGS and report.technique == "Non-contrast chest CT."
    assert store.report(store.scan_by_volume(SCANS[0]).id).findings is None  # "Not given."
    consolidation = [q for q in store.qa_pairs(task="longitudinal_temporal_diagnosis")
                     if "consolidation" in q.question.lower()]
    assert {(q.volume_name, q.priors, q.answer_choice) for q in consolidation} == {
        ("train_1_b_1.nii.gz", (1,), "B"), ("train_1_b_2.nii.gz", (1,), "B")}  # present before, gone now
    size = store.qa_pairs(task="medical_computation")[0]
    assert (size.answer, size.source) == ("14 x 11 mm", "generated")
    assert store.count_qa_pairs(source="template")["existence_detection"] == 72
    assert import_ctrate(store.db, ctrate["reports"], ctrate["labels"], ctrate["metadata"]).added == 0


def test_ctrate_bad_label_is_refused_with_line(store: Store, ctrate: dict[str, Path]) -> None:
    lines = ctrate["labels"].read_text().splitlines()
    lines[3] = lines[3][:-1] + "2"
    ctrate["labels"].write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=r"labels.csv, line 4: label 'Interlobular septal thickening' must be 0 or 1"):
        import_ctrate(store.db, ctrate["reports"], ctrate["labels"])
    assert store.scans() == []


def test_ctrate_cli(tmp_path: Path, ctrate: dict[str, Path]) -> None:
    from napari_ctvqa.cli import app

    result = CliRunner().invoke(app, ["import", "ctrate", "--reports", str(ctrate["reports"]), "--labels",
                                      str(ctrate["labels"]), "--db", str(tmp_path / "c.sqlite"), "--json"])
    assert result.exit_code == 0, result.output
    assert '"scans_added": 4' in result.stdout


def test_open_qa_extraction_is_short_and_verbatim() -> None:
    qa = open_qa_from_findings(FINDINGS)
    assert [(q.task, q.question, q.answer) for q in qa] == [
        ("medical_computation", "What is the size of the solid nodule in the posterior segment of the right upper lobe?",
         "14 x 11 mm"),
        ("anomaly_detection", "Where is the consolidation observed?", "Right lower lobe."),
        ("image_observation", "What abnormality is observed in the right lower lobe?", "Consolidation."),
    ]
    assert open_qa_from_findings("Not given.") == []
    assert open_qa_from_findings("No nodule is seen in the right lung.") == []


@pytest.mark.parametrize("sentence, expected", [
    ("A ground glass density area of 22x22 mm is seen in the right lung middle lobe.",
     ("What is the size of the ground glass density area in the right lung middle lobe?", "22x22 mm")),
    ("Ground glass opacity is observed in the right lung middle lobe, measuring 28x22 mm.",
     ("What is the size of the ground glass opacity in the right lung middle lobe?", "28x22 mm")),
    ("Cardiomegaly is present; the transverse cardiac diameter is 134 mm.",
     ("What is the transverse cardiac diameter?", "134 mm")),
    ("In the left lung upper lobe, a nodule measuring 17x17 mm was observed.",
     ("What is the size of the nodule in the left lung upper lobe?", "17x17 mm")),
    ("Left pleural effusion measuring 18 mm in thickness.", ("What is the thickness of the left pleural effusion?", "18 mm")),
    ("Calcified atheroma plaques are seen in the wall of the thoracic aorta.",
     ("Where are the calcified atheroma plaques observed?", "Wall of the thoracic aorta.")),
])
def test_open_qa_patterns(sentence: str, expected: tuple[str, str]) -> None:
    assert expected in [(q.question, q.answer) for q in open_qa_from_findings(sentence)]


def _m3d(path: Path, rows: list[list[str]]) -> Path:
    return _csv(path, list(M3D_COLUMNS), rows)


M3D_ROW = ["ct_case/000001/Axial_non_contrast.npy", "A mass in the liver.", "1", "Which plane is this image in?",
           "Axial", "Sagittal", "Coronal", "Oblique", "Axial", "A"]


def test_m3d_vqa_import_and_refusal(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "m3d"
    (root / "ct_case" / "000001").mkdir(parents=True)
    (root / M3D_ROW[0]).write_bytes(b"")
    good = _m3d(tmp_path / "m3d.csv", [M3D_ROW, [*M3D_ROW[:2], "organ", "Which organ has the mass?", "Liver",
                                                  "Spleen", "Kidney", "Lung", "Liver", "a"]])
    summary = import_m3d_vqa(store.db, good, data_root=root)
    assert summary.added == 2 and import_m3d_vqa(store.db, good).added == 0
    pairs = store.qa_pairs(task="m3d_vqa")
    assert [(q.subtask, q.answer_choice, q.question_type) for q in pairs] == [("1", "A", "closed"), ("3", "A", "closed")]
    assert pairs[0].path == str((root / M3D_ROW[0]).resolve())
    assert store.report(pairs[0].scan_id).findings == "A mass in the liver."
    bad = _m3d(tmp_path / "bad.csv", [[*M3D_ROW[:2], "7", *M3D_ROW[3:]]])
    with pytest.raises(BadInputError, match=r"bad.csv, line 2: Question Type"):
        import_m3d_vqa(store.db, bad)
    bad = _m3d(tmp_path / "bad2.csv", [[*M3D_ROW[:3], "New question?", *M3D_ROW[4:9], "F"]])
    with pytest.raises(BadInputError, match=r"bad2.csv, line 2: Answer Choice"):
        import_m3d_vqa(store.db, bad)
    assert len(store.qa_pairs()) == 2
