"""The five-dimension QA quality rubric of 3D-RAD (appendix D), with anchors and reference examples.

Annotators, the model-based auto-scorer and the curation filter must all mean the same thing by
"a 3 in Visual Verifiability", so the wording lives here once: the rating widget renders it
inline (`RUBRIC.to_markdown()`), and every score that enters the store passes `validate_scores`.
The anchors and both scored examples are written for this project from the paper's protocol
(five dimensions scored 0-5, plus a binary consistency flag against the clinical report).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

MIN_SCORE = 0
MAX_SCORE = 5

# (key, label, short): key is the column/field name everywhere, label is what people read,
# short is for narrow table headers.
DIMENSIONS: tuple[tuple[str, str, str], ...] = (
    ("visual_verifiability", "Visual Verifiability", "VV"),
    ("specificity_clarity", "Specificity & Clarity", "SC"),
    ("answer_appropriateness", "Answer Appropriateness", "AA"),
    ("qa_alignment", "Q-A Alignment", "QA"),
    ("linguistic_quality", "Linguistic Quality", "LQ"),
)
SCORE_KEYS: tuple[str, ...] = tuple(key for key, _, _ in DIMENSIONS)
LABELS: dict[str, str] = {key: label for key, label, _ in DIMENSIONS}


@dataclass(frozen=True)
class DimensionRubric:
    """What one dimension asks, and what the scores 0, 3 and 5 look like."""

    key: str
    label: str
    asks: str
    anchors: dict[int, str]


@dataclass(frozen=True)
class ReferenceExample:
    """A QA pair scored by the project as calibration for annotators (3D-RAD gave them two)."""

    title: str
    report_excerpt: str
    question: str
    answer: str
    scores: dict[str, int]
    justifications: dict[str, str]
    consistent: bool
    consistency_note: str

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


@dataclass(frozen=True)
class Rubric:
    dimensions: tuple[DimensionRubric, ...]
    consistency: str
    filter_rule: str
    examples: tuple[ReferenceExample, ...]

    def to_markdown(self) -> str:
        """The whole guideline as Markdown, for a Qt text browser or the README."""
        lines = ["## Scoring rubric (each dimension 0-5)", ""]
        for dim in self.dimensions:
            lines.append(f"**{dim.label}**: {dim.asks}")
            lines += [f"- **{score}**: {text}" for score, text in sorted(dim.anchors.items())]
            lines.append("")
        lines += [f"**Consistency flag**: {self.consistency}", "", f"*Filter*: {self.filter_rule}", ""]
        for ex in self.examples:
            lines += [f"### Example: {ex.title}", f"> Report: {ex.report_excerpt}", "",
                      f"Q: {ex.question}  ", f"A: {ex.answer}", ""]
            lines += [f"- {LABELS[key]} **{ex.scores[key]}**: {ex.justifications[key]}" for key in SCORE_KEYS]
            lines += [f"- Consistent **{int(ex.consistent)}**: {ex.consistency_note}",
                      f"- Mean {ex.mean:.1f}", ""]
        return "\n".join(lines)


RUBRIC = Rubric(
    dimensions=(
        DimensionRubric(
            "visual_verifiability", "Visual Verifiability",
            "Can the answer be checked by looking at this CT volume alone?",
            {0: "Not visible on CT at all: relies on history, symptoms, lab values or report wording.",
             3: "The finding is visible, but part of the answer (cause, exact count, outside comparison) is not.",
             5: "Everything the answer states can be seen and checked on this scan."}),
        DimensionRubric(
            "specificity_clarity", "Specificity & Clarity",
            "Is the question precise enough that it has one clear correct answer?",
            {0: "Vague or open-ended ('What is seen?'): many different answers would be right.",
             3: "Understandable, but leaves room: structure, side or region is not named.",
             5: "Names the structure, region or finding precisely; exactly one answer fits."}),
        DimensionRubric(
            "answer_appropriateness", "Answer Appropriateness",
            "Is the answer correct, complete and at the right level of detail?",
            {0: "Wrong, contradicted by the report, or empty.",
             3: "Correct core, but incomplete, padded with unrelated findings, or hedged.",
             5: "Correct and complete, concise, with the report's values, units and locations."}),
        DimensionRubric(
            "qa_alignment", "Q-A Alignment",
            "Does the answer respond to exactly what the question asks, in the expected form?",
            {0: "Answers a different question.",
             3: "Addresses the question only partly or in the wrong form (asked 'where', told 'what').",
             5: "Answers precisely what was asked in the expected form (a location for 'where', "
                "a measurement with unit for 'how large')."}),
        DimensionRubric(
            "linguistic_quality", "Linguistic Quality",
            "Are question and answer fluent, grammatical and in correct radiological terms?",
            {0: "Garbled, truncated or not English.",
             3: "Understandable, with grammar errors or loose, non-standard terminology.",
             5: "Fluent, grammatical, standard radiological terminology."}),
    ),
    consistency=("1 when everything the question and answer state agrees with the clinical report "
                 "(and the scan's labels); 0 when it adds or contradicts a fact: a finding the report "
                 "does not mention, the wrong side, size, count or temporal status (a hallucination)."),
    filter_rule=("A pair is kept when its mean score is at least 3 and no dimension is below 3 "
                 "(exactly 3 passes); at most 10 pairs share one question text."),
    examples=(
        ReferenceExample(
            title="a good pair",
            report_excerpt=("A solid nodule measuring 14 x 11 mm is seen in the posterior segment of "
                            "the right upper lobe. No pleural effusion."),
            question="What is the size of the solid nodule in the right upper lobe?",
            answer="14 x 11 mm.",
            scores={"visual_verifiability": 5, "specificity_clarity": 5, "answer_appropriateness": 5,
                    "qa_alignment": 5, "linguistic_quality": 5},
            justifications={
                "visual_verifiability": "The nodule can be found and measured on the scan.",
                "specificity_clarity": "Lesion type and lobe are named; only one nodule fits.",
                "answer_appropriateness": "Gives the report's measurement with its unit, nothing more.",
                "qa_alignment": "A size question answered with a size.",
                "linguistic_quality": "Correct, fluent terminology."},
            consistent=True,
            consistency_note="Size and location match the report exactly."),
        ReferenceExample(
            title="a flawed pair",
            report_excerpt=("Mild cardiomegaly. Minimal pericardial effusion. Left pleural effusion "
                            "measuring 18 mm in thickness."),
            question="What is seen?",
            answer="There is bilateral pleural effusion, patient had chest pain.",
            scores={"visual_verifiability": 2, "specificity_clarity": 0, "answer_appropriateness": 1,
                    "qa_alignment": 2, "linguistic_quality": 3},
            justifications={
                "visual_verifiability": "The effusion is visible; chest pain is history, not image.",
                "specificity_clarity": "No structure or finding named: any finding would answer it.",
                "answer_appropriateness": "Wrong side, omits cardiomegaly and pericardial effusion.",
                "qa_alignment": "Answers loosely, then adds unrelated clinical history.",
                "linguistic_quality": "Understandable, but a run-on sentence missing an article."},
            consistent=False,
            consistency_note="The report says left, not bilateral; chest pain is not in the report."),
    ),
)


def validate_scores(scores: Mapping[str, object]) -> dict[str, int]:
    """The five scores as plain ints; raises ValueError naming the first dimension that is missing,
    not a whole number, or outside 0-5 (extra keys, e.g. a `consistent` field, are ignored)."""
    clean: dict[str, int] = {}
    for key in SCORE_KEYS:
        if key not in scores or scores[key] is None:
            raise ValueError(f"missing score for {key} ({LABELS[key]})")
        clean[key] = _as_score(key, scores[key])
    return clean


NAME_MAX_CHARS = 128  # raters.name is String(128)


def annotator_name(name: object) -> str:
    """The name a rating is stored under, trimmed: " alice " and "alice" are one rater, and a
    blank, overlong or multi-line name (a stray paste) is refused rather than becoming a rater."""
    if not isinstance(name, str):
        raise ValueError(f"annotator name must be text, got {name!r}")
    clean = name.strip()
    if not clean:
        raise ValueError(f"annotator name must not be empty or blank, got {name!r}")
    if len(clean) > NAME_MAX_CHARS:
        raise ValueError(f"annotator name is {len(clean)} characters long (at most {NAME_MAX_CHARS})")
    if any(not ch.isprintable() for ch in clean):
        raise ValueError(f"annotator name must not contain line breaks or control characters, got {clean!r}")
    return clean


def seconds_spent(value: object) -> float:
    """Time spent on a pair as a finite, non-negative float: a NaN or infinite time (a broken
    clock, a spreadsheet's #NUM!) would poison every per-annotator total."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"seconds must be a number, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"seconds must be a finite number, got {seconds!r}")
    if seconds < 0:
        raise ValueError(f"seconds must not be negative, got {seconds!r}")
    return seconds


def _as_score(key: str, value: object) -> int:
    where = f"score for {key} ({LABELS[key]})"
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a whole number 0-5, got the boolean {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("+-").isdigit():
            raise ValueError(f"{where} must be a whole number 0-5, got {value!r}")
        number = int(text)
    elif isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real) and float(value).is_integer():
        number = int(value)
    else:
        raise ValueError(f"{where} must be a whole number 0-5, got {value!r}")
    if not MIN_SCORE <= number <= MAX_SCORE:
        raise ValueError(f"{where} must be between {MIN_SCORE} and {MAX_SCORE}, got {number}")
    return number


RATING_COLUMNS: tuple[str, ...] = ("qa_id", "rater", *SCORE_KEYS, "consistent")


def rated_scores(ratings: pd.DataFrame) -> pd.DataFrame:
    """The finished ratings of a ratings table, checked: one row per (qa_id, rater) with five int
    scores in 0-5 and a bool `consistent`. Rows whose `status` (when present) is not "rated"
    (skipped, flagged, in progress) are dropped first; any other bad row raises ValueError naming
    the row's qa_id and rater, because a silently dropped rating would skew agreement and filter."""
    import numpy as np
    import pandas as pd

    missing = [c for c in RATING_COLUMNS if c not in ratings.columns]
    if missing:
        raise ValueError(f"ratings table lacks column(s) {missing}; it needs {list(RATING_COLUMNS)}")
    frame = ratings
    if "status" in frame.columns:
        frame = frame[frame["status"] == "rated"]
    frame = frame.loc[:, list(RATING_COLUMNS)].reset_index(drop=True)

    def value(column: str, i: int) -> object:
        return frame[column].iloc[[i]].tolist()[0]  # a plain Python value, for readable messages

    def where(i: int) -> str:
        return f"rating of qa_id {value('qa_id', i)!r} by {value('rater', i)!r}"

    for key in SCORE_KEYS:
        values = pd.to_numeric(frame[key], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = ~(np.isfinite(values) & (values == np.round(values)) & (values >= MIN_SCORE) & (values <= MAX_SCORE))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where(i)}: {key} ({LABELS[key]}) must be a whole number "
                             f"{MIN_SCORE}-{MAX_SCORE}, got {value(key, i)!r}")
        frame[key] = values.astype(np.int64)
    flags = frame["consistent"].map(as_flag)
    if flags.isna().any():
        i = int(np.flatnonzero(flags.isna().to_numpy())[0])
        raise ValueError(f"{where(i)}: consistent must be 0/1 or true/false, got {value('consistent', i)!r}")
    frame["consistent"] = flags.astype(bool)
    dup = frame.duplicated(["qa_id", "rater"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(f"{where(i)} appears more than once; keep one rating per rater and pair")
    return frame


def as_flag(value: object) -> bool | None:
    """Read a consistency flag the way spreadsheets write it (1/0, true/false); None if neither."""
    if isinstance(value, str):
        return {"1": True, "0": False, "true": True, "false": False}.get(value.strip().lower())
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return {1.0: True, 0.0: False}.get(number)
