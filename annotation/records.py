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
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    orientation: tuple[float, ...] | None = None

    @property
    def ct_metadata(self) -> dict[str, Any] | None:
        """The scan's calibration as a CT-RATE metadata row, for `model.read_ct(path, metadata=...)`."""
        return metadata_row(self.spacing, self.rescale_slope, self.rescale_intercept, self.orientation)


def metadata_row(spacing: Any, slope: float | None, intercept: float | None, orientation: Any) -> dict[str, Any] | None:
    """What the store keeps of a scan's metadata table row, under CT-RATE's column names (None if nothing)."""
    row: dict[str, Any] = {}
    if spacing:
        row["ZSpacing"], row["XYSpacing"] = float(spacing[0]), [float(spacing[1]), float(spacing[2])]
    if slope is not None:
        row["RescaleSlope"] = float(slope)
    if intercept is not None:
        row["RescaleIntercept"] = float(intercept)
    if orientation:
        row["ImageOrientationPatient"] = [float(v) for v in orientation]
    return row or None


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
    #: The scan's calibration (`ScanRecord.ct_metadata`), passed to `read_ct` wherever the pair's scan is opened.
    ct_metadata: dict[str, Any] | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class QueueItem:
    """One entry of an annotator's queue; `status` is that annotator's own state only."""

    qa_id: int
    position: int
    task: str
    status: str  # todo | rated | skipped | flagged
    batch: str
    shared: bool
    repeat: bool = False  # the second showing of a pair this annotator sees twice (blind to the first)
    volume_name: str = ""  # the pair's scan (the rating panel can keep to the scan selected in the viewer)


@dataclass(frozen=True)
class BatchRecord:
    """One `ctvqa assign` batch: who got it, how many pairs, how much of it is done."""

    name: str
    created_at: datetime
    annotators: tuple[str, ...]
    pairs: int  # distinct QA pairs
    assignments: int  # queue entries, all annotators together
    shared: int  # distinct pairs every annotator of the batch rates
    done: int  # queue entries their annotator rated, skipped or flagged


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


@dataclass(frozen=True)
class FindingBoxRecord:
    """Where one finding is in a scan: `box` = (z1, y1, x1, z2, y2, x2) as fractions 0-1 of the
    canonical array (z inferior->superior), stop exclusive; `side` right/left/both/midline."""

    label: str
    box: tuple[float, float, float, float, float, float]
    side: str | None = None
    location: str | None = None
    source: str = "ground_truth"
