"""Write a synthetic cohort in the real formats: CT-RATE volumes, reports, labels and metadata,
3D-RAD QA CSVs for all six tasks, box questions (qa/{split}/boxes.csv), a ground_truth.json with
every lesion's place and size, and each volume's organ label map (`rois/<VolumeName>`, values in
`rois/labels.json`) for checking `model.find_rois` and for `ctvqa ask --rois FILE --roi-names synth`.

Deterministic for a seed (byte-identical files): every patient draws from its own
`SeedSequence([seed, index])`, files carry no timestamps, and rows are written in a fixed order.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annotation.qa_templates import CT_RATE_LABELS, closed_qa_for_scan, write_3drad_csvs
from annotation.synth.anatomy import REGION_LABELS
from annotation.synth.box_qa import box_rows_for_scan
from annotation.synth.geometry import Grid
from annotation.synth.open_qa import open_qa_for_scan
from annotation.synth.patient import scan_regions, synthesize_patient
from annotation.synth.reports import write_report
from model.data.box_questions import BOX_COLUMNS, BOX_FILE

DEFAULT_SIZE = (64, 256, 256)
FIELD_OF_VIEW_MM = (320.0, 358.4, 358.4)  # z, y, x: a chest from the upper abdomen to the neck
REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
METADATA_COLUMNS = (
    "VolumeName", "Manufacturer", "ManufacturerModelName", "SeriesDescription", "PatientSex", "PatientAge",
    "StudyDate", "KVP", "XRayTubeCurrent", "ConvolutionKernel", "Rows", "Columns", "NumberofSlices",
    "XYSpacing", "ZSpacing", "RescaleIntercept", "RescaleSlope", "RescaleType",
)
SCANS_PER_PATIENT = (2, 3, 4)
SCANS_PROBABILITY = (0.3, 0.45, 0.25)


@dataclass
class CohortSummary:
    """What `write_cohort` produced (printed by `ctvqa synth --json`)."""

    out_dir: str
    patients: dict[str, int]
    volumes: int
    qa_rows: dict[str, int]
    temporal_answers: dict[str, int]
    label_counts: dict[str, int]
    seconds: float
    files: list[str] = field(default_factory=list)


def default_spacing(size: tuple[int, int, int]) -> tuple[float, float, float]:
    """Spacing that keeps a chest-sized field of view whatever the grid size."""
    return tuple(round(f / n, 4) for f, n in zip(FIELD_OF_VIEW_MM, size))  # type: ignore[return-value]


def patient_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def assign_splits(patients: int, valid_frac: float, seed: int) -> list[str]:
    """Patient-level split: no patient has scans in both train and valid."""
    if not 0 <= valid_frac < 1:
        raise ValueError(f"valid fraction must be in [0, 1), got {valid_frac}")
    n_valid = 0 if valid_frac == 0 or patients < 2 else min(max(1, round(patients * valid_frac)), patients - 1)
    order = np.random.default_rng(np.random.SeedSequence([seed, 10**6])).permutation(patients)
    valid = set(order[:n_valid].tolist())
    return ["valid" if i in valid else "train" for i in range(patients)]


def write_volume(hu: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    """Int16 HU (or integer labels) through `model.ct.io.write_ct` (its gzip carries no timestamp)."""
    # deferred: SimpleITK loads only when a cohort is written, not for every `annotation.synth` use
    from model.ct.io import write_ct
    from model.ct.volume import CTVolume, canonical_affine

    shape = np.asarray(hu.shape)
    sz, sy, sx = spacing
    origin = ((shape[2] - 1) / 2 * sx, (shape[1] - 1) / 2 * sy, -(shape[0] - 1) / 2 * sz)
    array = np.rint(hu).astype(np.int16)
    write_ct(CTVolume(array=array, spacing=spacing, affine=canonical_affine(spacing, origin)), path)


def write_cohort(out_dir: str | Path, patients: int, seed: int = 0,
                 size: tuple[int, int, int] = DEFAULT_SIZE, spacing: tuple[float, float, float] | None = None,
                 valid_frac: float = 0.2, progress: Callable[[int, int], None] | None = None,
                 workers: int | None = None) -> CohortSummary:
    """Generate `patients` synthetic patients (2-4 scans each) and write every file of the cohort.

    `workers` processes render patients in parallel (default: up to 2 for 4+ patients); the
    files do not depend on it, since each patient has its own seed and rows are kept in order."""
    if patients < 1:
        raise ValueError(f"need at least one patient, got {patients}")
    if len(size) != 3 or min(size) < 16:
        raise ValueError(f"size must be three numbers >= 16 (z, y, x), got {size}")
    start = time.perf_counter()
    out = Path(out_dir)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    (out / "rois").mkdir(exist_ok=True)
    (out / "rois" / "labels.json").write_text(json.dumps(
        {"labels": REGION_LABELS, "name_map": "ctvqa ask --rois FILE --roi-names synth"}, indent=1) + "\n")
    spacing = tuple(spacing) if spacing else default_spacing(size)
    splits = assign_splits(patients, valid_frac, seed)
    numbering: Counter[str] = Counter()
    jobs = []
    for index, split in enumerate(splits):
        numbering[split] += 1
        jobs.append((out, seed, index, split, numbering[split], tuple(size), spacing))
    if workers is None:
        workers = 1 if patients < 4 else min(2, os.cpu_count() or 1)
    results: list[dict] = []
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a process that may run Qt
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for result in pool.map(_patient_files, jobs):
                results.append(result)
                if progress:
                    progress(len(results), patients)
    else:
        for job in jobs:
            results.append(_patient_files(job))
            if progress:
                progress(len(results), patients)
    labels_rows = [r for res in results for r in res["labels"]]
    _write_csv(out / "labels.csv", ("VolumeName", *CT_RATE_LABELS), labels_rows)
    _write_csv(out / "reports.csv", REPORT_COLUMNS, [r for res in results for r in res["reports"]])
    _write_csv(out / "metadata.csv", METADATA_COLUMNS, [r for res in results for r in res["metadata"]])
    qa = {split: [row for res in results if res["split"] == split for row in res["qa"]] for split in ("train", "valid")}
    files = []
    for split, rows in qa.items():
        if rows:
            files += [str(p.relative_to(out)) for p in write_3drad_csvs(rows, out / "qa" / split)]
            box_rows = [row for res in results if res["split"] == split for row in res["boxes"]]
            _write_csv(out / "qa" / split / BOX_FILE, BOX_COLUMNS, box_rows)
            files.append(f"qa/{split}/{BOX_FILE}")
    truth = {name: entry for res in results for name, entry in res["truth"].items()}
    document = {
        "generator": "napari-ctvqa synthetic chest CT cohort", "seed": seed, "size": list(size),
        "spacing": list(spacing),
        "coordinates": "voxel indices (z, y, x) of the canonical array (z inferior->superior, y anterior->posterior, "
                       "x patient right->left); *_mm = index * spacing; bbox = [z1, y1, x1, z2, y2, x2], stop exclusive; "
                       "bbox_norm = bbox / shape; parts_bbox_voxel = the bbox of each painted part of a lesion drawn in "
                       "several (e.g. calcified spots, emphysema clusters, fibrotic bands, nodes, a device and its lead)",
        "volumes": truth,
    }
    (out / "ground_truth.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    all_rows = qa["train"] + qa["valid"]
    return CohortSummary(
        out_dir=str(out), patients=dict(sorted(Counter(splits).items())), volumes=len(truth),
        qa_rows={str(k): v for k, v in sorted(Counter(r.task for r in all_rows).items())},
        temporal_answers=dict(sorted(Counter(r.answer_choice for r in all_rows if r.task == 6).items())),
        label_counts={l: sum(int(r[l]) for r in labels_rows) for l in CT_RATE_LABELS},
        seconds=round(time.perf_counter() - start, 2),
        files=["labels.csv", "reports.csv", "metadata.csv", "ground_truth.json", "rois/labels.json", *files],
    )


def _patient_files(job: tuple) -> dict:
    """Render one patient, write its volumes, and return its table rows (runs in a worker)."""
    out, seed, index, split, number, size, spacing = job
    rng = patient_rng(seed, index)
    n_scans = int(rng.choice(SCANS_PER_PATIENT, p=SCANS_PROBABILITY))
    patient = synthesize_patient(Grid(size, spacing), rng, n_scans)
    anatomy = patient.anatomy.measurements()
    sex = str(rng.choice(["M", "F"]))
    age = int(rng.integers(35, 85))
    day0 = np.datetime64("2020-01-01") + int(rng.integers(0, 700))
    devices = {l.location: l.params["name"] for l in patient.lesions if l.kind == "medical_material"}
    result: dict = {"split": split, "labels": [], "reports": [], "metadata": [], "qa": [], "boxes": [], "truth": {}}
    previous = None
    for t, scan in enumerate(patient.scans):
        name = f"{split}_{number}_{scan.letter}_1.nii.gz"
        findings = [p.record for p in scan.painted]
        write_volume(scan.hu, spacing, out / "volumes" / name)
        write_volume(scan_regions(patient.anatomy, scan.painted), spacing, out / "rois" / name)
        result["labels"].append({"VolumeName": name, **{l: str(v) for l, v in scan.labels.items()}})
        result["reports"].append({"VolumeName": name, **write_report(name, findings, previous, devices)})
        date = day0 + t * 120 + int(rng.integers(0, 60))
        result["metadata"].append(_metadata(name, scan.hu.shape, spacing, sex, age + t // 3, date))
        priors = [s.labels for s in patient.scans[:t]]
        result["qa"] += open_qa_for_scan(name, findings, anatomy) + closed_qa_for_scan(name, scan.labels, priors)
        result["boxes"] += box_rows_for_scan(name, findings)
        result["truth"][name] = {"split": split, "patient": f"{split}_{number}", "letter": scan.letter,
                                 "labels": scan.labels, "anatomy": anatomy, "lesions": findings}
        previous = findings
    return result


def _metadata(name: str, shape, spacing, sex: str, age: int, date) -> dict[str, str]:
    return {
        "VolumeName": name, "Manufacturer": "napari-ctvqa", "ManufacturerModelName": "synthetic phantom",
        "SeriesDescription": "CHEST", "PatientSex": sex, "PatientAge": f"{age:03d}Y",
        "StudyDate": str(date).replace("-", ""), "KVP": "120", "XRayTubeCurrent": "200", "ConvolutionKernel": "B",
        "Rows": str(shape[1]), "Columns": str(shape[2]), "NumberofSlices": str(shape[0]),
        "XYSpacing": f"[{spacing[1]}, {spacing[2]}]", "ZSpacing": str(spacing[0]),
        "RescaleIntercept": "0", "RescaleSlope": "1", "RescaleType": "HU",
    }


def _write_csv(path: Path, columns, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
