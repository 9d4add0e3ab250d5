"""ORM rows -> frozen records, and the look-ups several store areas need inside a transaction.

`annotation/records.py` says what callers get; this module is the one place that knows how a row
becomes that record, so a new column changes one function rather than every area that reads it.
"""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from annotation.importers.bulk import insert_ignoring_conflicts
from annotation.records import (
    ChatTurnRecord,
    FinetuneRunRecord,
    ModelVersionRecord,
    QAPairRecord,
    RatingRecord,
    RatingVersion,
    ReportRecord,
    ScanRecord,
    metadata_row,
)
from annotation.rubric import SCORE_KEYS
from annotation.schema import (
    ChatTurn,
    FinetuneRun,
    ModelVersion,
    Patient,
    QAPair,
    Rater,
    Rating,
    RatingHistory,
    Report,
    Scan,
    utcnow,
)


# ---------------------------------------------------------------------- look-ups
def get_or_create_rater_id(session: Session, name: str, kind: str) -> int:
    """The id of rater `name`; inserted if missing in a way that is safe when two processes race
    to create the same rater (the loser reads the winner's row)."""
    rater_id = session.scalar(select(Rater.id).where(Rater.name == name))
    if rater_id is not None:
        return rater_id
    insert_ignoring_conflicts(session, Rater.__table__, [{"name": name, "kind": kind, "created_at": utcnow()}],
                              ["name"])
    return session.scalars(select(Rater.id).where(Rater.name == name)).one()


def model_version_id(session: Session, name: str) -> int:
    """Chat turns and finetune runs name their model; an unknown name is a KeyError that says to
    register it, rather than a silently NULL link."""
    mv_id = session.scalar(select(ModelVersion.id).where(ModelVersion.name == name))
    if mv_id is None:
        raise KeyError(f"no model version named {name!r} (register it first)")
    return mv_id


def jsonable(value: Any) -> Any:  # noqa: ANN401
    """JSON columns take plain data: paths and numpy scalars become str/float."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# ---------------------------------------------------------------------- scans and QA pairs
def scan_query() -> Select:
    """Scans with their patient's name, which a ScanRecord carries but the scans table does not."""
    return select(Scan, Patient.name).outerjoin(Patient, Patient.id == Scan.patient_id)


def scan_record(scan: Scan, patient: str | None) -> ScanRecord:
    return ScanRecord(scan.id, scan.volume_name, scan.path, patient, scan.timepoint, scan.reconstruction,
                      scan.study_date, tuple(scan.spacing) if scan.spacing else None,
                      tuple(scan.shape) if scan.shape else None, scan.split, scan.rescale_slope,
                      scan.rescale_intercept, tuple(scan.orientation) if scan.orientation else None)


def report_record(r: Report) -> ReportRecord:
    return ReportRecord(r.scan_id, r.clinical_information, r.technique, r.findings, r.impressions)


def qa_query() -> Select:
    """QA pairs with the scan fields a QAPairRecord carries (volume, path, patient)."""
    return (select(QAPair, Scan.volume_name, Scan.path, Patient.name, *CALIBRATION)
            .join(Scan, Scan.id == QAPair.scan_id).outerjoin(Patient, Patient.id == Scan.patient_id))


#: The scan columns a QAPairRecord's `ct_metadata` is made of (selected after the patient's name).
CALIBRATION = (Scan.spacing, Scan.rescale_slope, Scan.rescale_intercept, Scan.orientation)


def qa_record(qa: QAPair, volume_name: str, path: str | None, patient: str | None, *calibration: Any) -> QAPairRecord:
    choices = (qa.choice_a, qa.choice_b, qa.choice_c, qa.choice_d)
    return QAPairRecord(
        qa.id, qa.scan_id, volume_name, path, patient, qa.task, qa.task_number, qa.subtask, qa.question,
        qa.answer, qa.question_type, choices if qa.question_type == "closed" else None, qa.answer_choice,
        tuple(qa.priors) if qa.priors is not None else None, qa.source, qa.provenance,
        metadata_row(*calibration) if calibration else None)


# ---------------------------------------------------------------------- ratings
def rating_record(r: Rating, rater: str) -> RatingRecord:
    return RatingRecord(r.id, r.qa_id, rater, {k: getattr(r, k) for k in SCORE_KEYS}, r.consistent,
                        r.note or "", r.status, r.reason, float(r.seconds_spent or 0.0),
                        r.created_at, r.updated_at)


def rating_version(h: RatingHistory, rater: str) -> RatingVersion:
    return RatingVersion(h.qa_id, rater, {k: getattr(h, k) for k in SCORE_KEYS}, h.consistent,
                         h.note, h.status, h.reason, h.seconds_spent, h.valid_from, h.replaced_at)


# ---------------------------------------------------------------------- chat and models
def chat_record(t: ChatTurn, volume_name: str, model: str | None) -> ChatTurnRecord:
    return ChatTurnRecord(t.id, t.scan_id, volume_name, t.conversation_id, t.turn_index, t.question,
                          t.answer, tuple(t.choices) if t.choices else None, t.choice, t.choice_scores,
                          tuple(t.box) if t.box is not None else None, model, t.latency_first_token_s,
                          t.total_s, t.n_tokens, t.created_at, t.task, t.encoding_s)


def model_record(mv: ModelVersion, session: Session) -> ModelVersionRecord:
    """Needs the session: the record names its base version, which is another row."""
    base = session.get(ModelVersion, mv.base_version_id) if mv.base_version_id else None
    return ModelVersionRecord(mv.id, mv.name, mv.path, mv.kind, base.name if base else None,
                              mv.provenance, mv.metrics, mv.created_at)


def finetune_run_record(run: FinetuneRun, session: Session) -> FinetuneRunRecord:
    """Needs the session: the record names the resulting model version, which is another row."""
    mv = session.get(ModelVersion, run.model_version_id) if run.model_version_id else None
    return FinetuneRunRecord(run.id, run.status, run.config,
                             tuple(run.qa_ids) if run.qa_ids is not None else None, run.filter,
                             run.base, run.output_path, run.metrics, mv.name if mv else None,
                             run.error, run.created_at, run.started_at, run.finished_at)
