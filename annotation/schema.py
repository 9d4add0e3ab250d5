"""The database schema: SQLAlchemy 2.0 typed ORM classes whose table and column names are a public
contract (curators query them with SQL). Every rule that protects the data (score ranges,
uniqueness, allowed enum values, foreign keys and what happens on delete) lives in the database as
a constraint, so a raw SQL session or another tool cannot bypass it. Changes go through a new
alembic migration in `annotation/migrations/versions/`.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from annotation.rubric import SCORE_KEYS

QA_SOURCES: tuple[str, ...] = ("imported", "template", "generated", "chat")
RATING_STATUSES: tuple[str, ...] = ("rated", "skipped", "flagged")
RATER_KINDS: tuple[str, ...] = ("human", "model")
MODEL_KINDS: tuple[str, ...] = ("default", "finetuned", "external")
FINETUNE_STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed", "cancelled")
ANSWER_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")


def utcnow() -> datetime:
    """Timestamps are stored in UTC so annotators in different time zones sort correctly."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite itself stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store timezone-aware UTC times")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Named constraints (the naming convention) let alembic alter them later, also on SQLite."""

    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    split: Mapped[str | None] = mapped_column(String(32))


class Scan(Base):
    __tablename__ = "scans"
    __table_args__ = (
        CheckConstraint("reconstruction IS NULL OR reconstruction >= 0", name="reconstruction"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    volume_name: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str | None] = mapped_column(Text)
    patient_id: Mapped[int | None] = mapped_column(
        ForeignKey("patients.id", ondelete="SET NULL"), index=True)
    timepoint: Mapped[str | None] = mapped_column(String(8))
    reconstruction: Mapped[int | None] = mapped_column(Integer)
    study_date: Mapped[str | None] = mapped_column(String(10))
    spacing: Mapped[list[Any] | None] = mapped_column(JSON)  # (z, y, x) mm, from the metadata table
    # Calibration from the metadata table (CT-RATE metadata.csv), applied where the file lacks it.
    rescale_slope: Mapped[float | None] = mapped_column(Float)
    rescale_intercept: Mapped[float | None] = mapped_column(Float)
    orientation: Mapped[list[Any] | None] = mapped_column(JSON)  # DICOM ImageOrientationPatient
    shape: Mapped[list[Any] | None] = mapped_column(JSON)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    split: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("scan_id", "name", name="uq_labels_scan_name"),
        CheckConstraint("value IN (0, 1)", name="value_binary"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[int] = mapped_column(Integer)


class Report(Base):
    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), unique=True)
    clinical_information: Mapped[str | None] = mapped_column(Text)
    technique: Mapped[str | None] = mapped_column(Text)
    findings: Mapped[str | None] = mapped_column(Text)
    impressions: Mapped[str | None] = mapped_column(Text)


class QAPair(Base):
    """`content_key` (a hash of the pair's content and its occurrence number within the source)
    makes re-imports idempotent while keeping the few verbatim duplicate rows of 3D-RAD."""

    __tablename__ = "qa_pairs"
    __table_args__ = (
        CheckConstraint(_in("source", QA_SOURCES), name="source"),
        CheckConstraint(_in("question_type", ("open", "closed")), name="question_type"),
        CheckConstraint(f"answer_choice IS NULL OR {_in('answer_choice', ANSWER_LETTERS)}",
                        name="answer_choice"),
        Index("ix_qa_pairs_task_source", "task", "source"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    task: Mapped[str] = mapped_column(String(64))
    task_number: Mapped[int | None] = mapped_column(Integer)
    subtask: Mapped[str | None] = mapped_column(String(64))
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    question_type: Mapped[str] = mapped_column(String(8))
    choice_a: Mapped[str | None] = mapped_column(Text)
    choice_b: Mapped[str | None] = mapped_column(Text)
    choice_c: Mapped[str | None] = mapped_column(Text)
    choice_d: Mapped[str | None] = mapped_column(Text)
    answer_choice: Mapped[str | None] = mapped_column(String(1))
    priors: Mapped[list[Any] | None] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(16))
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    content_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Rater(Base):
    __tablename__ = "raters"
    __table_args__ = (CheckConstraint(_in("kind", RATER_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="human")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def _score_checks() -> list[CheckConstraint]:
    return [CheckConstraint(f"{d} IS NULL OR ({d} >= 0 AND {d} <= 5)", name=f"{d}_range")
            for d in SCORE_KEYS]


class _RatingColumns:
    """Columns shared by a rating and each of its earlier versions in `rating_history`."""

    visual_verifiability: Mapped[int | None] = mapped_column(Integer)
    specificity_clarity: Mapped[int | None] = mapped_column(Integer)
    answer_appropriateness: Mapped[int | None] = mapped_column(Integer)
    qa_alignment: Mapped[int | None] = mapped_column(Integer)
    linguistic_quality: Mapped[int | None] = mapped_column(Integer)
    consistent: Mapped[bool | None] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    seconds_spent: Mapped[float] = mapped_column(Float, default=0.0)


class Rating(_RatingColumns, Base):
    """One row per (pair, rater): edits update it in place and copy the old version to history.
    A rated row must have all five scores and the consistency flag; only skipped/flagged rows
    may leave them empty."""

    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("qa_id", "rater_id", "is_repeat", name="uq_ratings_qa_rater"),
        CheckConstraint(_in("status", RATING_STATUSES), name="status"),
        CheckConstraint("seconds_spent >= 0", name="seconds_nonneg"),
        CheckConstraint(
            "status <> 'rated' OR (" + " AND ".join(f"{d} IS NOT NULL" for d in SCORE_KEYS)
            + " AND consistent IS NOT NULL)", name="rated_complete"),
        *_score_checks(),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    qa_id: Mapped[int] = mapped_column(ForeignKey("qa_pairs.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    # the second, blind judgement of a pair shown to the same rater again (intra-rater agreement)
    is_repeat: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RatingHistory(_RatingColumns, Base):
    __tablename__ = "rating_history"
    __table_args__ = tuple(_score_checks())

    id: Mapped[int] = mapped_column(primary_key=True)
    rating_id: Mapped[int] = mapped_column(ForeignKey("ratings.id", ondelete="CASCADE"), index=True)
    qa_id: Mapped[int] = mapped_column(ForeignKey("qa_pairs.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    replaced_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("rater_id", "qa_id", "is_repeat", name="uq_assignments_rater_qa"),
        CheckConstraint("position >= 0", name="position_nonneg"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    qa_id: Mapped[int] = mapped_column(ForeignKey("qa_pairs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    batch: Mapped[str] = mapped_column(String(64))
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    # the pair shown a second time to the same rater, later in the queue (`assign --repeat`)
    is_repeat: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FindingBox(Base):
    """Where a finding is in a scan (a ground-truth or annotated box), so the rating view can open
    a pair at the finding its words name. `box` is [z1, y1, x1, z2, y2, x2] as fractions 0-1 of
    the canonical array (z inferior->superior), stop exclusive."""

    __tablename__ = "finding_boxes"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(128))
    side: Mapped[str | None] = mapped_column(String(16))
    location: Mapped[str | None] = mapped_column(Text)
    box: Mapped[list[Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(32), default="ground_truth")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (CheckConstraint(_in("kind", MODEL_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16), default="finetuned")
    base_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ChatTurn(Base):
    __tablename__ = "chat_turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "turn_index", name="uq_chat_turns_conversation_turn"),
        CheckConstraint("turn_index >= 0", name="turn_index_nonneg"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str] = mapped_column(String(64))
    turn_index: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    choices: Mapped[list[Any] | None] = mapped_column(JSON)
    choice: Mapped[str | None] = mapped_column(String(1))
    choice_scores: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    box: Mapped[list[Any] | None] = mapped_column(JSON)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    latency_first_token_s: Mapped[float | None] = mapped_column(Float)
    total_s: Mapped[float | None] = mapped_column(Float)
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    task: Mapped[str | None] = mapped_column(String(64))  # the template's task key; None = free chat
    encoding_s: Mapped[float | None] = mapped_column(Float)  # scan encoding before this answer


class FinetuneRun(Base):
    __tablename__ = "finetune_runs"
    __table_args__ = (CheckConstraint(_in("status", FINETUNE_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    qa_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    base: Mapped[str | None] = mapped_column(Text)
    output_path: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Export(Base):
    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    format: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
