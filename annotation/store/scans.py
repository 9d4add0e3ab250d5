"""Scans (with their reports and labels) and the QA pairs asked about them: the content that
queues, ratings, chat turns and exports all point at.

Registration goes through the importers' bulk helpers (annotation/importers/bulk.py), so a scan
or pair added one at a time here is keyed exactly like one imported by the hundred thousand.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from annotation.importers.bulk import ensure_scans, insert_qa_rows, qa_row
from annotation.qa_templates import TASKS
from annotation.records import QAPairRecord, ReportRecord, ScanRecord
from annotation.schema import Label, Patient, QAPair, Report, Scan
from annotation.store.base import StoreArea
from annotation.store.rows import qa_query, qa_record, report_record, scan_query, scan_record

if TYPE_CHECKING:
    import pandas as pd

_SCAN_FIELDS = ("path", "timepoint", "reconstruction", "study_date", "spacing", "shape",
                "content_hash", "split")


class ScansArea(StoreArea):
    """Scans, reports, labels and QA pairs (part of `Store`)."""

    # ------------------------------------------------------------------ scans
    def add_scan(self, volume_name: str, path: str | Path | None = None, **fields: Any) -> ScanRecord:
        """Register a scan (patient/timepoint parsed from CT-RATE names), or update an existing
        one's given fields; returns it."""
        unknown = set(fields) - set(_SCAN_FIELDS)
        if unknown:
            raise ValueError(f"unknown scan field(s) {sorted(unknown)}; allowed: {list(_SCAN_FIELDS)}")
        values = {k: (list(v) if k in ("spacing", "shape") and v is not None else v)
                  for k, v in fields.items()}
        if path is not None:
            values["path"] = str(path)

        def work(session: Session) -> int:
            ids, _ = ensure_scans(session, [volume_name], {volume_name: values})
            return ids[volume_name]

        return self.scan(self.db.write(work))

    def scan(self, scan_id: int) -> ScanRecord:
        with self.db.reading() as s:
            row = s.execute(scan_query().where(Scan.id == scan_id)).one_or_none()
        if row is None:
            raise KeyError(f"no scan with id {scan_id}")
        return scan_record(*row)

    def scan_by_volume(self, volume_name: str) -> ScanRecord | None:
        with self.db.reading() as s:
            row = s.execute(scan_query().where(Scan.volume_name == volume_name)).one_or_none()
        return scan_record(*row) if row else None

    def scans(self) -> list[ScanRecord]:
        with self.db.reading() as s:
            return [scan_record(*r) for r in s.execute(scan_query().order_by(Scan.volume_name))]

    def patient_scans(self, scan_id: int) -> list[ScanRecord]:
        """All scans of this scan's patient, oldest first (timepoint letter, then reconstruction)."""
        scan = self.scan(scan_id)
        if scan.patient is None:
            return [scan]
        with self.db.reading() as s:
            rows = s.execute(scan_query().where(Patient.name == scan.patient)
                             .order_by(Scan.timepoint, Scan.study_date, Scan.reconstruction)).all()
        return [scan_record(*r) for r in rows]

    def labels(self, scan_id: int) -> dict[str, int]:
        with self.db.reading() as s:
            return dict(s.execute(select(Label.name, Label.value).where(Label.scan_id == scan_id)).tuples().all())

    def report(self, scan_id: int) -> ReportRecord | None:
        with self.db.reading() as s:
            r = s.scalars(select(Report).where(Report.scan_id == scan_id)).one_or_none()
            return report_record(r) if r else None

    def set_report(self, scan_id: int, *, findings: str | None = None, impressions: str | None = None,
                   clinical_information: str | None = None, technique: str | None = None) -> ReportRecord:
        """Store (or replace) a scan's report: the reference annotators judge consistency against."""
        sections = {"clinical_information": clinical_information, "technique": technique,
                    "findings": findings, "impressions": impressions}

        def work(session: Session) -> None:
            report = session.scalars(select(Report).where(Report.scan_id == scan_id)).one_or_none()
            if report is None:
                session.add(Report(scan_id=scan_id, **sections))
            else:
                for key, value in sections.items():
                    setattr(report, key, value)

        self.db.write(work)
        return self.report(scan_id)

    def set_scan_path(self, scan_id: int, path: str | Path | None) -> None:
        def work(session: Session) -> None:
            if session.execute(update(Scan).where(Scan.id == scan_id)
                               .values(path=None if path is None else str(path))).rowcount != 1:
                raise KeyError(f"no scan with id {scan_id}")

        self.db.write(work)

    # ------------------------------------------------------------------ QA pairs
    def add_qa_pair(self, scan_id: int, task: str, question: str, answer: str, *,
                    subtask: str | None = None, choices: Sequence[str] | None = None,
                    answer_choice: str | None = None, priors: Sequence[int] | None = None,
                    source: str = "chat", provenance: Mapping[str, Any] | None = None) -> int:
        """Add one pair and return its id; adding the same content again returns the existing id."""
        task_number = TASKS[task].number if task in TASKS else None
        row = qa_row(scan_id, task, question, answer, task_number=task_number, subtask=subtask,
                     choices=choices, answer_choice=answer_choice, priors=priors, source=source,
                     provenance=provenance)

        def work(session: Session) -> int:
            if session.get(Scan, scan_id) is None:
                raise KeyError(f"no scan with id {scan_id}")
            insert_qa_rows(session, [row])
            return session.scalars(select(QAPair.id).where(QAPair.content_key == row["content_key"])).one()

        return self._write_or_refuse(work, "QA pair")

    def qa_pair(self, qa_id: int) -> QAPairRecord:
        with self.db.reading() as s:
            row = s.execute(qa_query().where(QAPair.id == qa_id)).one_or_none()
        if row is None:
            raise KeyError(f"no QA pair with id {qa_id}")
        return qa_record(*row)

    def qa_pairs(self, task: str | None = None, source: str | None = None,
                 limit: int | None = None, scan_id: int | None = None) -> list[QAPairRecord]:
        query = _of_task_and_source(qa_query().order_by(QAPair.id), task, source)
        if scan_id is not None:
            query = query.where(QAPair.scan_id == scan_id)
        if limit is not None:
            query = query.limit(limit)
        with self.db.reading() as s:
            return [qa_record(*r) for r in s.execute(query)]

    def count_qa_pairs(self, task: str | None = None, source: str | None = None) -> dict[str, int]:
        """Pairs per task key."""
        query = _of_task_and_source(select(QAPair.task, func.count()).group_by(QAPair.task), task, source)
        with self.db.reading() as s:
            return dict(s.execute(query).tuples().all())

    def qa_frame(self) -> pd.DataFrame:
        """All pairs as a DataFrame (input of the curation filter and the exporters); `cohort_split`
        is the scan's (else its patient's) own split."""
        frame = self._read_frame(
            select(QAPair.id.label("qa_id"), QAPair.scan_id, Scan.volume_name, Scan.path,
                   Patient.name.label("patient"), QAPair.task, QAPair.task_number, QAPair.subtask,
                   QAPair.question, QAPair.answer, QAPair.question_type, QAPair.choice_a,
                   QAPair.choice_b, QAPair.choice_c, QAPair.choice_d, QAPair.answer_choice,
                   QAPair.priors, QAPair.source,
                   func.coalesce(Scan.split, Patient.split).label("cohort_split"))
            .join(Scan, Scan.id == QAPair.scan_id).outerjoin(Patient, Patient.id == Scan.patient_id)
            .order_by(QAPair.id))
        frame["task_number"] = frame["task_number"].astype("Int64")  # chat/M3D pairs have none
        return frame


def _of_task_and_source(query: Select, task: str | None, source: str | None) -> Select:
    """Listing and counting pairs take the same two optional filters; None means any."""
    if task is not None:
        query = query.where(QAPair.task == task)
    if source is not None:
        query = query.where(QAPair.source == source)
    return query
