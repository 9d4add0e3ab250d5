"""Import an M3D-VQA CSV (`Image Path, Text, Question Type, Question, Choice A-D, Answer,
Answer Choice`) into `qa_pairs` as closed questions of task `m3d_vqa`.

M3D numbers its question topics 1 plane, 2 phase, 3 organ, 4 abnormality, 5 location (M3D
paper, appendix B); the number is kept as the pair's subtask (names are accepted too). The image
path is the scan's volume name; `Text` (the source report) goes to the scan's report findings.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from annotation.db import Database
from annotation.importers import RowProblems
from annotation.importers.csv_input import csv_records
from annotation.importers.bulk import ensure_scans, insert_ignoring_conflicts, insert_qa_rows, qa_row
from annotation.records import ImportSummary
from annotation.schema import Report

TASK = "m3d_vqa"
COLUMNS: tuple[str, ...] = ("Image Path", "Text", "Question Type", "Question", "Choice A", "Choice B",
                            "Choice C", "Choice D", "Answer", "Answer Choice")
QUESTION_TYPES: dict[str, str] = {"plane": "1", "phase": "2", "organ": "3", "abnormality": "4", "location": "5"}


def _question_type(value: str) -> str | None:
    value = value.strip().lower()
    if value in QUESTION_TYPES.values():
        return value
    return QUESTION_TYPES.get(value)


def _row_problem(record: dict[str, str]) -> str | None:
    if _question_type(record["Question Type"]) is None:
        return f"Question Type must be 1-5 or one of {list(QUESTION_TYPES)}, got {record['Question Type']!r}"
    if record["Answer Choice"].strip().upper() not in ("A", "B", "C", "D"):
        return f"Answer Choice must be one of A-D, got {record['Answer Choice']!r}"
    if not record["Image Path"].strip() or not record["Question"].strip() or not record["Answer"].strip():
        return "Image Path, Question and Answer must not be empty"
    return None


def import_m3d_vqa(db: Database, csv_file: str | Path, data_root: str | Path | None = None,
                   progress: Callable[[int, int | None], None] | None = None) -> ImportSummary:
    """Import the whole CSV in one transaction, or nothing: every bad row is reported at once."""
    start = time.perf_counter()
    path = Path(csv_file)
    root = Path(data_root) if data_root is not None else None
    parsed = []
    problems = RowProblems(path)
    for line, record in csv_records(path, COLUMNS, problems):
        problem = _row_problem(record)
        if problem:
            problems.add(path, line, problem)
        else:
            parsed.append((line, record, _question_type(record["Question Type"]),
                           record["Answer Choice"].strip().upper()))
    problems.raise_if_any()

    def work(session) -> tuple[int, int]:  # noqa: ANN001
        names = {r["Image Path"].strip() for _, r, _, _ in parsed}
        extra = {n: {"path": str((root / n).resolve())} for n in names if root and (root / n).is_file()}
        scan_ids, scans_added = ensure_scans(session, names, extra)
        reports = {r["Image Path"].strip(): r["Text"].strip() for _, r, _, _ in parsed if r["Text"].strip()}
        insert_ignoring_conflicts(session, Report.__table__,
                                  [{"scan_id": scan_ids[n], "findings": t} for n, t in reports.items()],
                                  ["scan_id"])
        seen: Counter = Counter()
        rows = []
        for line, r, qtype, letter in parsed:
            name = r["Image Path"].strip()
            choices = tuple(r[f"Choice {c}"].strip() for c in "ABCD")
            identity = (name, qtype, r["Question"], r["Answer"], choices, letter)
            rows.append(qa_row(scan_ids[name], TASK, r["Question"].strip(), r["Answer"].strip(),
                               subtask=qtype, choices=choices, answer_choice=letter, source="imported",
                               provenance={"file": path.name, "line": line}, occurrence=seen[identity]))
            seen[identity] += 1
        return len(insert_qa_rows(session, rows)), scans_added

    added, scans_added = db.write(work)
    if progress:
        progress(1, 1)
    return ImportSummary("m3d-vqa", 1, len(parsed), added, scans_added, time.perf_counter() - start,
                         {TASK: added})
