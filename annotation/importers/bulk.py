"""Bulk writes shared by the importers and the Store: scans/patients registration and idempotent
QA-pair insertion with Core `insert()` executemany (one ORM object per row is ~10x slower).

All functions take the caller's Session so one file (or one Store call) is one transaction.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from annotation.qa_templates import VolumeName
from annotation.schema import Patient, QAPair, Scan, utcnow

_CHUNK = 900  # keys per IN (...) query: under SQLite's historic 999-variable limit


def insert_ignoring_conflicts(session: Session, table: Table, rows: Sequence[Mapping[str, Any]],
                              conflict: Sequence[str]) -> None:
    """INSERT rows, silently keeping existing ones whose `conflict` columns already exist: how
    concurrent writers register the same patient/scan/rater without racing."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        raise NotImplementedError(f"database backend {dialect!r} is not supported (use SQLite or PostgreSQL)")
    session.execute(dialect_insert(table).on_conflict_do_nothing(index_elements=list(conflict)), list(rows))


def scan_fields(volume_name: str) -> dict[str, Any]:
    """Patient, timepoint, reconstruction and split from a CT-RATE style name; other names
    (M3D, the user's own files) get none of them."""
    try:
        parsed = VolumeName.parse(volume_name)
    except ValueError:
        return {}
    return {"patient": f"{parsed.split}_{parsed.patient}", "timepoint": parsed.letter,
            "reconstruction": parsed.reconstruction, "split": parsed.split}


def ensure_scans(session: Session, volume_names: Iterable[str],
                 extra: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[dict[str, int], int]:
    """Register the scans (and their patients) that do not exist yet; returns ({volume_name: id},
    number of scans added). `extra[name]` sets columns (path, spacing, study_date...) on new and
    existing scans alike."""
    names = sorted(set(volume_names))
    extra = extra or {}
    fields = {name: scan_fields(name) for name in names}
    patients = {f["patient"]: f["split"] for f in fields.values() if "patient" in f}
    insert_ignoring_conflicts(session, Patient.__table__,
                              [{"name": p, "split": s} for p, s in sorted(patients.items())], ["name"])
    patient_ids = _ids_by(session, Patient.name, Patient.id, list(patients))
    existing = _ids_by(session, Scan.volume_name, Scan.id, names)
    now = utcnow()
    new_rows = []
    for name in names:
        if name in existing:
            continue
        f = fields[name]
        new_rows.append({"volume_name": name, "patient_id": patient_ids.get(f.get("patient")),
                         "timepoint": f.get("timepoint"), "reconstruction": f.get("reconstruction"),
                         "split": f.get("split"), "path": None, "created_at": now,
                         **extra.get(name, {})})
    insert_ignoring_conflicts(session, Scan.__table__, _uniform(new_rows), ["volume_name"])
    ids = _ids_by(session, Scan.volume_name, Scan.id, names)
    for name, values in extra.items():
        if name in existing and values:
            session.execute(update(Scan).where(Scan.id == existing[name]).values(**values))
    return ids, len(ids) - len(existing)


def _uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """executemany needs every row to have the same keys."""
    keys = {k for row in rows for k in row}
    return [{k: row.get(k) for k in keys} for row in rows]


def _ids_by(session: Session, key_col, id_col, keys: Sequence[Any]) -> dict[Any, int]:  # noqa: ANN001
    """{key: id} for the keys that exist; one expanding IN query per chunk (building 900 separate
    bind parameters per query cost more CPU than the lookups themselves)."""
    query = select(key_col, id_col).where(key_col.in_(bindparam("keys", expanding=True)))
    found: dict[Any, int] = {}
    for start in range(0, len(keys), _CHUNK):
        found.update(session.execute(query, {"keys": list(keys[start:start + _CHUNK])}).tuples().all())
    return found


def content_key(scan_id: int, task: str, subtask: str | None, question: str, answer: str,
                choices: Sequence[str] | None, answer_choice: str | None, occurrence: int = 0) -> str:
    """Identity of a QA pair's content. `occurrence` numbers verbatim repeats within one source
    file (3D-RAD has a few), so they are kept once each yet a re-import adds nothing."""
    parts = (scan_id, task, subtask, question, answer, *(choices or ()), answer_choice, occurrence)
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()


def qa_row(scan_id: int, task: str, question: str, answer: str, *, task_number: int | None = None,
           subtask: str | None = None, choices: Sequence[str] | None = None,
           answer_choice: str | None = None, priors: Sequence[int] | None = None,
           source: str, provenance: Mapping[str, Any] | None = None, occurrence: int = 0,
           question_type: str | None = None) -> dict[str, Any]:
    """One `qa_pairs` row as a dict for `insert_qa_rows` (closed when it has choices)."""
    choices = tuple(choices) if choices else None
    if choices is not None and len(choices) != 4:
        raise ValueError(f"choices must be 4 (A-D), got {len(choices)}")
    if answer_choice is not None and answer_choice not in ("A", "B", "C", "D"):
        raise ValueError(f"answer choice must be one of A-D, got {answer_choice!r}")
    return {
        "scan_id": scan_id, "task": task, "task_number": task_number, "subtask": subtask,
        "question": question, "answer": answer,
        "question_type": question_type or ("closed" if choices else "open"),
        "choice_a": choices[0] if choices else None, "choice_b": choices[1] if choices else None,
        "choice_c": choices[2] if choices else None, "choice_d": choices[3] if choices else None,
        "answer_choice": answer_choice, "priors": list(priors) if priors is not None else None,
        "source": source, "provenance": dict(provenance) if provenance else None,
        "content_key": content_key(scan_id, task, subtask, question, answer, choices, answer_choice,
                                   occurrence),
    }


def insert_qa_rows(session: Session, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert the rows whose content is not stored yet; returns the rows actually added."""
    keys = [r["content_key"] for r in rows]
    existing = set(_ids_by(session, QAPair.content_key, QAPair.id, keys))
    seen: set[str] = set()
    new = []
    for row in rows:
        if row["content_key"] not in existing and row["content_key"] not in seen:
            seen.add(row["content_key"])
            new.append(row)
    if new:
        now = utcnow()
        for row in new:
            row.setdefault("created_at", now)
        if session.get_bind().dialect.name == "postgresql":
            insert_ignoring_conflicts(session, QAPair.__table__, new, ["content_key"])
        else:  # SQLite: BEGIN IMMEDIATE already excludes concurrent writers
            session.execute(insert(QAPair.__table__), new)  # Core executemany, no ORM bookkeeping
    return new


def existing_path(volume_name: str, volumes: Path | None) -> str | None:
    """The file for `volume_name` under `volumes` (flat, or CT-RATE's nested
    split/split_patient/split_patient_letter/ layout) when it exists, else None."""
    if volumes is None:
        return None
    flat = volumes / volume_name
    if flat.is_file():
        return str(flat.resolve())
    fields = scan_fields(volume_name)
    if fields:
        stem = f"{fields['patient']}_{fields['timepoint']}"
        nested = volumes / fields["split"] / fields["patient"] / stem / volume_name
        if nested.is_file():
            return str(nested.resolve())
    return None
