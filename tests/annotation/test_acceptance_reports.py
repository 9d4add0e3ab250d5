"""Issue 3: the synthetic reports are written from the ground truth (each finding with where it
is and how big) and do not all read alike, so report-derived QA and training text are right."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from annotation.synth import write_cohort
from annotation.synth.reports import write_report

# Findings whose size a radiologist states (slot names of ground_truth size_mm) and those placed by lobe.
MEASURED = {"nodule": ("axial", "diameter"), "lung_opacity": ("axial",), "consolidation": ("axial",),
            "pleural_effusion": ("thickness",), "pericardial_effusion": ("thickness",),
            "cardiomegaly": ("transverse",), "lymphadenopathy": ("axial",), "hiatal_hernia": ("axial",)}
BY_LOBE = {"nodule", "lung_opacity", "consolidation", "atelectasis", "bronchiectasis"}


def _mm(value: object) -> str:
    return "{}x{} mm".format(*value) if isinstance(value, list) else f"{value} mm"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reports") / "cohort"
    write_cohort(out, 4, seed=11, size=(24, 64, 64), valid_frac=0.25, workers=1)
    return out


def test_every_finding_is_reported_with_its_place_and_size(cohort: Path) -> None:
    truth = json.loads((cohort / "ground_truth.json").read_text())["volumes"]
    with (cohort / "reports.csv").open(newline="") as fh:
        reports = {row["VolumeName"]: row for row in csv.DictReader(fh)}
    checked = 0
    for name, entry in truth.items():
        findings = reports[name]["Findings_EN"]
        for lesion in entry["lesions"]:
            if lesion["type"] in MEASURED:
                stated = {_mm(lesion["size_mm"][k]) for k in MEASURED[lesion["type"]] if k in lesion["size_mm"]}
                assert any(s in findings for s in stated), (name, lesion["type"], stated, findings)
                checked += 1
            if lesion["type"] in BY_LOBE:
                assert lesion["lobe"] in findings, (name, lesion["type"], lesion["lobe"])
        if not entry["lesions"]:
            assert "nodule" not in reports[name]["Impressions_EN"].lower()
    assert checked >= 5


def test_the_same_finding_is_phrased_differently_across_scans() -> None:
    nodule = {"type": "nodule", "lobe": "left lung upper lobe", "location": "left lung upper lobe", "side": "left",
              "size_mm": {"axial": [12, 10], "craniocaudal": 11, "diameter": 12}}
    texts = {write_report(f"train_{k}_a_1.nii.gz", [nodule], None, {})["Findings_EN"] for k in range(20)}
    assert len(texts) >= 3
    assert all("left lung upper lobe" in t and ("12x10 mm" in t or "12 mm" in t) for t in texts)
