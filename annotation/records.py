"""The plain, frozen values the Store hands out. Callers (widgets, CLI, worker threads) get
snapshots they can keep and pass across threads, never live ORM objects bound to a session."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ScanRecord:
    id: int
    volume_name: str
    path: str | None
    patient: str | None
    timepoint: str | None
    reconstruction: int | None
    study_date: str | None
    spacing: tuple[float, ...] | None
    shape: tuple[int, ...] | None
    split: str | None


@dataclass(frozen=True)
class ReportRecord:
    scan_id: int
    clinical_information: str | None
    technique: str | None
    findings: str | None
    impressions: str | None


@dataclass(frozen=True)
class QAPairRecord:
    id: int
    scan_id: int
    volume_name: str
    path: str | None
    patient: str | None
    task: str
    task_number: int | None
    subtask: str | None
    question: str
    answer: str
    question_type: str
    choices: tuple[str, str, str, str] | None
    answer_choice: str | None
    priors: tuple[int, ...] | None
    source: str
    provenance: dict[str, Any] | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class QueueItem:
    """One entry of an annotator's queue; `status` is that annotator's own state only."""

    qa_id: int
    position: int
    task: str
    status: str  # todo | rated | skipped | flagged
    batch: str
    shared: bool


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    per_task: dict[str, tuple[int, int]] = field(compare=False, hash=False)  # task -> (done, total)
    seconds: float
    skipped: int = 0
    flagged: int = 0


@dataclass(frozen=True)
class RatingRecord:
    id: int
    qa_id: int
    rater: str
    scores: dict[str, int | None] = field(compare=False, hash=False)
    consistent: bool | None
    note: str
    status: str
    reason: str | None
    seconds_spent: float
    created_at: datetime
    updated_at: datetime

    @property
    def mean(self) -> float | None:
        values = [v for v in self.scores.values() if v is not None]
        return sum(values) / len(values) if len(values) == len(self.scores) else None


@dataclass(frozen=True)
class RatingVersion:
    """An earlier version of a rating, as it was between `valid_from` and `replaced_at`."""

    qa_id: int
    rater: str
    scores: dict[str, int | None] = field(compare=False, hash=False)
    consistent: bool | None
    note: str
    status: str
    reason: str | None
    seconds_spent: float
    valid_from: datetime
    replaced_at: datetime


@dataclass(frozen=True)
class AnnotatorStats:
    name: str
    kind: str
    assigned: int
    rated: int
    skipped: int
    flagged: int
    seconds: float


@dataclass(frozen=True)
class ChatTurnRecord:
    id: int
    scan_id: int
    volume_name: str
    conversation_id: str
    turn_index: int
    question: str
    answer: str
    choices: tuple[str, ...] | None
    choice: str | None
    choice_scores: dict[str, float] | None = field(compare=False, hash=False)
    box: tuple[float, ...] | None = None
    model_version: str | None = None
    latency_first_token_s: float | None = None
    total_s: float | None = None
    n_tokens: int | None = None
    created_at: datetime | None = None
    task: str | None = None
    encoding_s: float | None = None


@dataclass(frozen=True)
class ModelVersionRecord:
    id: int
    name: str
    path: str | None
    kind: str
    base: str | None
    provenance: dict[str, Any] | None = field(compare=False, hash=False)
    metrics: dict[str, Any] | None = field(compare=False, hash=False)
    created_at: datetime | None = None


@dataclass(frozen=True)
class FinetuneRunRecord:
    id: int
    status: str
    config: dict[str, Any] | None = field(compare=False, hash=False)
    qa_ids: tuple[int, ...] | None = None
    filter: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    base: str | None = None
    output_path: str | None = None
    metrics: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    model_version: str | None = None
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class ImportSummary:
    """What one import did: rows read, pairs added (0 on a re-import), scans registered."""

    source: str
    files: int
    rows: int
    added: int
    scans_added: int
    seconds: float
    per_task: dict[str, int] = field(default_factory=dict, compare=False, hash=False)
