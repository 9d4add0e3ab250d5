"""Ratings in and out as CSV, for annotators who work in a spreadsheet or another tool.

Columns: `VolumeName,Question,Annotator,VisualVerifiability,SpecificityClarity,
AnswerAppropriateness,QAAlignment,LinguisticQuality,Consistent[,Note,Status,Reason,Answer]`.
`Status` is `rated` (the default when the column is absent or empty), `skipped` or `flagged`; a
skip or flag leaves the five scores and Consistent empty and needs a `Reason`. A pair is found by
its scan and question text, and by its answer too when `Answer` is given (one scan can be asked
the same question twice). The whole file is checked first and written in one transaction, so a
bad row (reported with its line number) leaves every rating as it was. The export writes every
column, skips and flags included, so an export imports back unchanged.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from annotation.importers import RowProblems
from annotation.importers.csv_input import csv_records
from annotation.rubric import SCORE_KEYS, annotator_name, as_flag, validate_scores
from annotation.schema import QAPair, Rater, Rating, Scan
from annotation.store.ratings import write_rating

if TYPE_CHECKING:
    from annotation.store import Store

SCORE_COLUMNS: dict[str, str] = dict(zip(
    ("VisualVerifiability", "SpecificityClarity", "AnswerAppropriateness", "QAAlignment",
     "LinguisticQuality"), SCORE_KEYS))
REQUIRED_COLUMNS: tuple[str, ...] = ("VolumeName", "Question", "Annotator", *SCORE_COLUMNS, "Consistent")
CSV_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, "Note", "Status", "Reason", "Answer")
MARKS: tuple[str, ...] = ("skipped", "flagged")


def read_ratings_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, parsed row) for every row; raises one BadInputError listing every bad row."""
    problems = RowProblems(path)
    rows, seen = [], {}
    for line, record in csv_records(path, REQUIRED_COLUMNS, problems):
        problem, row = _parse_row(record)
        if problem is None:
            key = (row["volume_name"], row["question"], row["answer"], row["annotator"])
            if key in seen:
                problem = f"repeats the rating of line {seen[key]} (same volume, question, answer and annotator)"
            else:
                seen[key] = line
        if problem is not None:
            problems.add(path, line, problem)
        else:
            rows.append((line, row))
    problems.raise_if_any()
    return rows


def _parse_row(record: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    """(problem, parsed row) of one CSV record; the problem is None for a good row."""
    if not record["VolumeName"].strip() or not record["Question"].strip():
        return "VolumeName, Question and Annotator must not be empty", {}
    try:
        annotator = annotator_name(record["Annotator"])
    except ValueError as exc:
        return f"{exc}", {}
    status = (record.get("Status") or "").strip().lower() or "rated"
    if status not in ("rated", *MARKS):
        return f"Status must be rated, skipped or flagged, got {record['Status']!r}", {}
    reason = (record.get("Reason") or "").strip()
    if status in MARKS:
        filled = [c for c in (*SCORE_COLUMNS, "Consistent") if record[c].strip()]
        if filled:
            return f"a {status} row leaves the scores empty, but {filled[0]} is set", {}
        if not reason:
            return f"a {status} row needs a Reason", {}
        scores, consistent = dict.fromkeys(SCORE_KEYS), None
    else:
        try:
            scores = validate_scores({key: record[col] for col, key in SCORE_COLUMNS.items()})
        except ValueError as exc:
            return f"{exc}", {}
        consistent = as_flag(record["Consistent"])
        if consistent is None:
            return f"Consistent must be 0/1 or true/false, got {record['Consistent']!r}", {}
    return None, {"volume_name": record["VolumeName"].strip(), "question": record["Question"],
                  "annotator": annotator, "scores": scores, "consistent": consistent, "status": status,
                  "reason": reason if status in MARKS else None, "note": (record.get("Note") or "").strip(),
                  "answer": (record.get("Answer") or "").strip() or None}


def import_ratings_csv(store: Store, path: str | Path) -> dict[str, int]:
    """Import a ratings CSV into `store`; returns counts of inserted/updated/unchanged ratings.
    Rows naming a QA pair the database does not have are all reported, and nothing is written."""
    path = Path(path)
    rows = read_ratings_csv(path)

    def work(session) -> dict[str, int]:  # noqa: ANN001
        counts = {"rows": len(rows), "inserted": 0, "updated": 0, "unchanged": 0}
        problems = RowProblems(path)
        for line, row in rows:
            query = (select(QAPair.id).join(Scan, Scan.id == QAPair.scan_id)
                     .where(Scan.volume_name == row["volume_name"], QAPair.question == row["question"]))
            if row["answer"] is not None:
                query = query.where(QAPair.answer == row["answer"])
            qa_id = session.scalar(query.order_by(QAPair.id).limit(1))
            if qa_id is None:
                answer = "" if row["answer"] is None else f" and the answer {row['answer']!r}"
                problems.add(path, line, f"no QA pair of scan {row['volume_name']!r} has the "
                                         f"question {row['question']!r}{answer}")
                continue
            if problems:
                continue  # the file will be refused: only look for further unknown pairs
            values = {**row["scores"], "consistent": row["consistent"], "note": row["note"],
                      "status": row["status"], "reason": row["reason"]}
            before = session.scalars(select(Rating).join(Rater, Rater.id == Rating.rater_id)
                                     .where(Rater.name == row["annotator"], Rating.qa_id == qa_id,
                                            Rating.is_repeat.is_(False))).one_or_none()
            old = None if before is None else {k: getattr(before, k) for k in values}
            write_rating(session, row["annotator"], qa_id, values)
            counts["inserted" if old is None else "unchanged" if old == values else "updated"] += 1
        problems.raise_if_any()  # inside the transaction: rolls back whatever was written
        return counts

    return store.db.write(work)


def export_ratings_csv(store: Store, path: str | Path) -> int:
    """Write every rating, skip and flag (with its reason and the pair's answer); returns the
    number of rows written."""
    query = (select(Scan.volume_name, QAPair.question, Rater.name, *[getattr(Rating, k) for k in SCORE_KEYS],
                    Rating.consistent, Rating.note, Rating.status, Rating.reason, QAPair.answer)
             .join(QAPair, QAPair.id == Rating.qa_id).join(Scan, Scan.id == QAPair.scan_id)
             .join(Rater, Rater.id == Rating.rater_id)
             .where(Rating.is_repeat.is_(False))  # a blind repeat is for intra-rater agreement, not a rating
             .order_by(Scan.volume_name, QAPair.id, Rater.name))
    with store.db.reading() as session:
        rows = session.execute(query).tuples().all()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for volume, question, rater, *rest in rows:
            *scores, consistent, note, status, reason, answer = rest
            rated = status == "rated"
            writer.writerow([volume, question, rater, *(scores if rated else [""] * len(scores)),
                             int(bool(consistent)) if rated else "", note or "", status,
                             reason or "", answer])
    return len(rows)
