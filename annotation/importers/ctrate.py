"""Import CT-RATE tables: scans/patients/timepoints from volume names, the 18 abnormality labels,
reports, non-personal metadata (spacing, rescale slope/intercept, orientation, study date), and QA pairs for all six tasks:
tasks 4-6 from the labels with the exact 3D-RAD templates (`closed_qa_for_scan`, source
"template"), tasks 1-3 from the report findings (`open_qa_from_findings`, source "generated").

All files are checked before anything is written, and everything is written in one transaction.
Sex, age and the other DICOM-derived columns of the metadata are deliberately not read.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from annotation.db import Database
from annotation.importers import BadInputError, RowProblems
from annotation.importers.csv_input import csv_records
from annotation.importers.bulk import (
    ensure_scans,
    existing_path,
    insert_ignoring_conflicts,
    insert_qa_rows,
    qa_row,
)
from annotation.importers.open_qa_from_report import open_qa_from_findings
from model.ct.metadata import parse_metadata_row
from model.inference.prompts import priors_in_question
from annotation.qa_templates import CT_RATE_LABELS, TASKS, VolumeName, closed_qa_for_scan, task_by_number
from annotation.records import ImportSummary
from annotation.schema import Label, Report

REPORT_COLUMNS: dict[str, str] = {
    "ClinicalInformation_EN": "clinical_information", "Technique_EN": "technique",
    "Findings_EN": "findings", "Impressions_EN": "impressions",
}
_BATCH = 2_000  # scans per QA generation batch (bounded memory, progress updates)


def _records(path: Path, required: tuple[str, ...],
             problems: RowProblems) -> Iterator[tuple[int, dict[str, str]]]:
    seen: dict[str, int] = {}
    for line, record in csv_records(path, required, problems):
        name = record["VolumeName"].strip()
        try:
            VolumeName.parse(name)
        except ValueError as exc:
            problems.add(path, line, str(exc))
            continue
        if name in seen:
            problems.add(path, line, f"{name} already listed on line {seen[name]}")
            continue
        seen[name] = line
        yield line, record


def read_labels(path: Path, problems: RowProblems) -> dict[str, dict[str, int]]:
    labels = {}
    for line, record in _records(path, ("VolumeName", *CT_RATE_LABELS), problems):
        values = {}
        for label in CT_RATE_LABELS:
            raw = record[label].strip()
            if raw not in ("0", "1", "0.0", "1.0"):
                problems.add(path, line, f"label {label!r} must be 0 or 1, got {raw!r}")
                break
            values[label] = int(float(raw))
        else:
            labels[record["VolumeName"].strip()] = values
    return labels


def read_reports(path: Path, problems: RowProblems) -> dict[str, dict[str, str | None]]:
    def section(text: str) -> str | None:
        text = text.strip()
        return None if text in ("", "Not given.") else text

    return {r["VolumeName"].strip(): {col: section(r[src]) for src, col in REPORT_COLUMNS.items()}
            for _, r in _records(path, ("VolumeName", *REPORT_COLUMNS), problems)}


def read_metadata(path: Path, problems: RowProblems) -> dict[str, dict[str, Any]]:
    """Per scan: spacing as (z, y, x) mm, rescale slope/intercept and orientation (what the
    readers apply where a volume file lacks them, `model.ct.metadata`) and the study date as
    YYYY-MM-DD; nothing personal."""
    out = {}
    for line, r in _records(path, ("VolumeName", "XYSpacing", "ZSpacing"), problems):
        try:
            row = parse_metadata_row(r, f"{path}, line {line}")
        except ValueError as exc:
            problems.add(path, line, str(exc).split(": ", 1)[-1])
            continue
        fields: dict[str, Any] = {}
        if row.spacing is not None:
            fields["spacing"] = list(row.spacing)
        if row.slope is not None:
            fields["rescale_slope"] = row.slope
        if row.intercept is not None:
            fields["rescale_intercept"] = row.intercept
        if row.orientation is not None:
            fields["orientation"] = list(row.orientation)
        date = (r.get("StudyDate") or "").strip()
        if date:
            if not (len(date) == 8 and date.isdigit()):
                problems.add(path, line, f"StudyDate must be YYYYMMDD, got {date!r}")
                continue
            fields["study_date"] = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        out[r["VolumeName"].strip()] = fields
    return out


def _read_all(reports: Path, labels: Path, metadata: Path | None) -> tuple[dict, dict, dict]:
    """The three tables, every bad row of all of them reported together."""
    problems = RowProblems(reports.parent)
    tables: list[dict] = []
    for reader, path in ((read_labels, labels), (read_reports, reports), (read_metadata, metadata)):
        if path is None:
            tables.append({})
            continue
        try:
            tables.append(reader(path, problems))
        except BadInputError as exc:  # an unusable header: that file's rows cannot be checked
            problems.items += exc.problems
            tables.append({})
    problems.raise_if_any()
    return tables[0], tables[1], tables[2]


def earlier_labels(labels: dict[str, dict[str, int]]) -> dict[str, list[dict[str, int]]]:
    """For each scan, the labels of its patient's earlier timepoints (scan a first), taking the
    same reconstruction number where the earlier timepoint has it, else its first one."""
    by_patient: dict[tuple[str, str], dict[str, dict[int, str]]] = defaultdict(lambda: defaultdict(dict))
    for name in labels:
        v = VolumeName.parse(name)
        by_patient[(v.split, v.patient)][v.letter][v.reconstruction] = name
    priors = {}
    for name in labels:
        v = VolumeName.parse(name)
        timepoints = by_patient[(v.split, v.patient)]
        seq = []
        for letter in sorted(t for t in timepoints if t < v.letter):
            recons = timepoints[letter]
            seq.append(labels[recons.get(v.reconstruction, recons[min(recons)])])
        priors[name] = seq
    return priors


def import_ctrate(db: Database, reports: str | Path, labels: str | Path, metadata: str | Path | None = None,
                  volumes: str | Path | None = None,
                  progress: Callable[[int, int | None], None] | None = None) -> ImportSummary:
    start = time.perf_counter()
    label_map, report_map, meta_map = _read_all(Path(reports), Path(labels),
                                                Path(metadata) if metadata is not None else None)
    names = sorted(set(label_map) | set(report_map))
    vol_dir = Path(volumes) if volumes is not None else None
    extra = {n: {**meta_map.get(n, {}), **({"path": p} if (p := existing_path(n, vol_dir)) else {})}
             for n in names}
    priors = earlier_labels(label_map)

    def work(session) -> tuple[int, int, Counter, int]:  # noqa: ANN001
        scan_ids, scans_added = ensure_scans(session, names, extra)
        insert_ignoring_conflicts(session, Label.__table__, [
            {"scan_id": scan_ids[n], "name": label, "value": value}
            for n, values in label_map.items() for label, value in values.items()], ["scan_id", "name"])
        insert_ignoring_conflicts(session, Report.__table__, [
            {"scan_id": scan_ids[n], **sections} for n, sections in report_map.items()], ["scan_id"])
        added, per_task, n_rows = 0, Counter(), 0
        for first in range(0, len(names), _BATCH):
            rows = []
            for name in names[first:first + _BATCH]:
                rows += _qa_rows(name, scan_ids[name], label_map.get(name), priors.get(name, []),
                                 (report_map.get(name) or {}).get("findings"))
            n_rows += len(rows)
            new = insert_qa_rows(session, rows)
            added += len(new)
            per_task.update(r["task"] for r in new)
            if progress:
                progress(min(first + _BATCH, len(names)), len(names))
        return added, scans_added, per_task, n_rows

    added, scans_added, per_task, n_rows = db.write(work)
    return ImportSummary("ctrate", 3 if metadata is not None else 2, n_rows, added, scans_added,
                         time.perf_counter() - start, dict(per_task))


def _qa_rows(name: str, scan_id: int, labels: dict[str, int] | None, priors: list[dict[str, int]],
             findings: str | None) -> list[dict[str, Any]]:
    rows = []
    if labels is not None:
        for row in closed_qa_for_scan(name, labels, priors):
            task = task_by_number(row.task)
            rows.append(qa_row(scan_id, task.key, row.question, row.answer, task_number=row.task,
                               subtask=str(row.subtask), choices=row.choices, answer_choice=row.answer_choice,
                               priors=priors_in_question(row.question) if task.number == 6 else None,
                               source="template", provenance={"generator": "closed_qa_for_scan"}))
    for qa in open_qa_from_findings(findings):
        rows.append(qa_row(scan_id, qa.task, qa.question, qa.answer, task_number=TASKS[qa.task].number,
                           subtask=str(qa.subtask), source="generated",
                           provenance={"generator": "open_qa_from_findings", "sentence": qa.sentence}))
    return rows
