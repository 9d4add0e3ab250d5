"""Import a 3D-RAD split (a folder of `TaskN_Name/*.csv`) into `qa_pairs`.

Task identity comes from the folder name, because the folder numbers differ from the paper's
(see docs/architecture.md); a row whose `Task` disagrees with its folder is refused. Task 6's
prior label sequence is parsed out of the question text into `priors`.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from annotation.db import Database
from annotation.importers import BadInputError, RowProblems
from annotation.importers.csv_input import csv_records
from annotation.importers.bulk import ensure_scans, existing_path, insert_qa_rows, qa_row
from annotation.qa_templates import CSV_COLUMNS, QARow, Task, VolumeName, task_by_folder
from model.inference.prompts import priors_in_question
from annotation.records import ImportSummary

ProgressFn = Callable[[int, int | None], None]


@dataclass(frozen=True)
class ParsedFile:
    """A validated CSV: its task, and its rows with their line numbers."""

    path: Path
    relative: str
    task: Task
    rows: list[tuple[int, QARow, list[int] | None]]


def parse_file(path: Path, root: Path, problems: RowProblems | None = None) -> ParsedFile:
    """Read and check one CSV completely. Bad rows go to `problems` (all of them, with file and
    line) and are left out; without `problems`, the file's bad rows raise one BadInputError."""
    own = problems is None
    problems = RowProblems(path) if problems is None else problems
    try:
        task = task_by_folder(path.parent.name)
    except KeyError as exc:
        raise BadInputError(path, None, exc.args[0]) from None
    rows = []
    checked_names: set[str] = set()
    for line, record in csv_records(path, CSV_COLUMNS, problems, exact=True):
        problem, row, priors = _check_row(record, task, checked_names)
        if problem:
            problems.add(path, line, problem)
        else:
            rows.append((line, row, priors))
    if own:
        problems.raise_if_any()
    return ParsedFile(path, path.relative_to(root).as_posix(), task, rows)


def _check_row(record: dict[str, str], task: Task,
               checked_names: set[str]) -> tuple[str | None, QARow | None, list[int] | None]:
    """(problem, row, priors) of one CSV record: the problem is None for a good row."""
    try:
        row = QARow.from_csv_dict(record)
        if row.volume_name not in checked_names:
            VolumeName.parse(row.volume_name)
            checked_names.add(row.volume_name)
    except ValueError as exc:
        return str(exc), None, None
    if row.task != task.number:
        return f"Task is {row.task} but folder {task.folder} holds task {task.number} ({task.key})", None, None
    if row.question_type != task.question_type:
        return f"QuestionType {row.question_type!r} in {task.folder} (expected {task.question_type!r})", None, None
    if not task.open and row.answer_choice == "-":
        return "closed question without an AnswerChoice (A-D)", None, None
    priors = None
    if task.key == "longitudinal_temporal_diagnosis":
        priors = priors_in_question(row.question)
        if priors is None:
            return "task 6 question has no prior sequence like [0, 1]", None, None
    if not row.question.strip() or not row.answer.strip():
        return "empty Question or Answer", None, None
    return None, row, priors


def write_file(db: Database, parsed: ParsedFile, volumes: Path | None,
               source: str = "imported", known: dict[str, int] | None = None) -> tuple[int, int]:
    """One file in one transaction; returns (pairs added, scans added). `known` maps the volume
    names earlier files of the same import registered to their scan ids (committed already), so
    the 18 task-4 files do not look up the same scans 18 times; it gains this file's scans."""
    known = {} if known is None else known
    names = {row.volume_name for _, row, _ in parsed.rows} - known.keys()
    extra = {n: {"path": p} for n in names if (p := existing_path(n, volumes))}
    registered: dict[str, int] = {}

    def work(session) -> tuple[int, int]:  # noqa: ANN001
        new_ids, scans_added = ensure_scans(session, names, extra)
        registered.clear()
        registered.update(new_ids)
        scan_ids = {**known, **new_ids}
        seen: Counter = Counter()
        rows = []
        for line, row, priors in parsed.rows:
            closed = not parsed.task.open
            identity = (row.volume_name, row.subtask, row.question, row.answer, row.choices,
                        row.answer_choice)
            rows.append(qa_row(
                scan_ids[row.volume_name], parsed.task.key, row.question, row.answer,
                task_number=parsed.task.number, subtask=str(row.subtask),
                choices=row.choices if closed else None,
                answer_choice=row.answer_choice if closed else None, priors=priors, source=source,
                provenance={"file": parsed.relative, "line": line}, occurrence=seen[identity]))
            seen[identity] += 1
        return len(insert_qa_rows(session, rows)), scans_added

    result = db.write(work)
    known.update(registered)
    return result


def import_3drad(db: Database, directory: str | Path, volumes: str | Path | None = None,
                 progress: ProgressFn | None = None) -> ImportSummary:
    """Import every CSV of a 3D-RAD split. All files are checked before the first is written, so
    a bad row anywhere leaves the database unchanged; then each file is one transaction."""
    start = time.perf_counter()
    root = Path(directory)
    files = sorted(root.glob("*/*.csv"))
    if not files:
        raise BadInputError(root, None, "no 3D-RAD CSVs found (expected TaskN_Name/*.csv inside)")
    steps = 2 * len(files)  # progress counts checking, then writing, each file
    parsed = []
    problems = RowProblems(root)
    for i, path in enumerate(files):
        try:
            parsed.append(parse_file(path, root, problems))
        except BadInputError as exc:  # an unusable header: the file's other rows cannot be checked
            problems.items += exc.problems
        if progress:
            progress(i + 1, steps)
    problems.raise_if_any()
    volumes_dir = Path(volumes) if volumes is not None else None
    added = scans = 0
    per_task: Counter = Counter()
    known: dict[str, int] = {}
    for i, pf in enumerate(parsed):
        n, s = write_file(db, pf, volumes_dir, known=known)
        added, scans = added + n, scans + s
        per_task[pf.task.key] += n
        if progress:
            progress(len(files) + i + 1, steps)
    return ImportSummary("3drad", len(parsed), sum(len(p.rows) for p in parsed), added, scans,
                         time.perf_counter() - start, dict(per_task))
