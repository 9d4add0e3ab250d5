"""The 3D-RAD curation filter: which rated QA pairs are good enough to keep, and why the others fail.

3D-RAD dropped a pair whose mean score was below 3 or whose score in any dimension was below 3
(exactly 3 is kept), and "capped high-frequency QA pairs at 10 per question". Its released test
split shows what that meant: in every open subtask file (tasks 1-3) no question text occurs more
than 10 times (8 of the 9 files reach exactly 10), while the template questions of tasks 4-6 are
asked of every scan (one task-4 text up to 99 times per file) and were never capped. So the cap
here applies only to open pairs, and to identical (question, answer) pairs within one task and
subtask (case, spacing and a final full stop ignored): it removes answers learnt by rote, not the
same question answered differently for different scans, which is what teaches looking at the image.

Pairs imported as already curated (source "imported": 3D-RAD, M3D-VQA) may pass unrated when the
rule says `include_unrated`; pairs of any other source still need ratings. Curators also want to
see *why* a pair fails, so every pair gets the first failing reason, and the summary counts reasons
per task and the factual accuracy rate (share of rated pairs judged consistent with the report;
96.17% in 3D-RAD).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from annotation.qa_templates import TASKS
from annotation.rubric import MAX_SCORE, MIN_SCORE, SCORE_KEYS, rated_scores

QA_COLUMNS: tuple[str, ...] = ("qa_id", "task", "question")
UNRATED = "unrated"
CURATED_SOURCE = "imported"  # pairs that come already curated by their publisher
INCONSISTENT = "inconsistent"
OVER_CAP = "over cap per question"
_EPS = 1e-9  # means of integer scores are compared with a tolerance so that exactly 3 passes


@dataclass(frozen=True)
class FilterRule:
    """Thresholds of the filter; the defaults are 3D-RAD's. `cap_per_question=None` means no cap
    (it counts identical open question-answer pairs). `include_unrated` lets pairs imported as
    curated pass without ratings (rated ones must still pass the thresholds)."""

    min_mean: float = 3.0
    min_dim: float = 3.0
    require_consistent: bool = False
    cap_per_question: int | None = 10
    include_unrated: bool = False

    def __post_init__(self) -> None:
        for name in ("min_mean", "min_dim"):
            value = getattr(self, name)
            if not MIN_SCORE <= value <= MAX_SCORE:
                raise ValueError(f"{name} must be between {MIN_SCORE} and {MAX_SCORE}, got {value}")
        if self.cap_per_question is not None and self.cap_per_question < 1:
            raise ValueError(f"cap_per_question must be at least 1 or None, got {self.cap_per_question}")

    def describe(self) -> dict[str, object]:
        """The rule as JSON-ready data plus one readable line, for manifests and provenance."""
        text = f"mean >= {self.min_mean:g} and every dimension >= {self.min_dim:g}"
        if self.require_consistent:
            text += ", consistent with the report"
        if self.cap_per_question is not None:
            text += f", at most {self.cap_per_question} identical open question-answer pairs per subtask"
        if self.include_unrated:
            text += "; unrated pairs imported as curated are kept"
        return {**asdict(self), "text": text}


@dataclass
class FilterSummary:
    total: int
    passed: int
    per_task: dict[str, dict[str, object]] = field(default_factory=dict)
    factual_accuracy_rate: float | None = None
    unrated_passed: int = 0  # imported pairs kept without ratings (include_unrated)

    @property
    def failed(self) -> int:
        return self.total - self.passed

    def to_dict(self) -> dict[str, object]:
        return {"total": self.total, "passed": self.passed, "failed": self.failed,
                "per_task": self.per_task, "factual_accuracy_rate": self.factual_accuracy_rate,
                "unrated_passed": self.unrated_passed}


def apply_filter(ratings: pd.DataFrame, qa: pd.DataFrame, rule: FilterRule) -> pd.DataFrame:
    """One row per QA pair of `qa` (its columns kept, in its order) with n_raters, the per-dimension
    means over the raters who rated it, their `mean`, `consistent` (majority of raters' flags, a tie
    counts as inconsistent; NA when unrated), `passed` and `reason` (first failing reason, "" when
    passed). Ratings of pairs that are not in `qa` are an error: they would vanish unnoticed.
    Optional columns of `qa`: `answer`, `subtask` and `question_type` (else the task's) for the
    cap, `source` for `include_unrated`."""
    missing = [c for c in QA_COLUMNS if c not in qa.columns]
    if missing:
        raise ValueError(f"QA table lacks column(s) {missing}; it needs {list(QA_COLUMNS)}")
    dup = qa["qa_id"].duplicated()
    if dup.any():
        raise ValueError(f"QA table lists qa_id {qa['qa_id'][dup].tolist()[0]!r} more than once")
    scores = rated_scores(ratings)
    unknown = ~scores["qa_id"].isin(qa["qa_id"])
    if unknown.any():
        raise ValueError(f"ratings refer to qa_id {scores['qa_id'][unknown].tolist()[0]!r}, which is not in the QA table")

    grouped = scores.groupby("qa_id")
    agg = grouped[list(SCORE_KEYS)].mean()
    agg.insert(0, "n_raters", grouped.size())
    agg["mean"] = agg[list(SCORE_KEYS)].mean(axis=1)
    agg["consistent"] = grouped["consistent"].sum() * 2 > agg["n_raters"]
    # Replace stale columns of the same name a caller may have left in `qa`.
    out = qa.drop(columns=[c for c in agg.columns if c in qa.columns]).merge(
        agg, left_on="qa_id", right_index=True, how="left", validate="one_to_one").reset_index(drop=True)
    out["n_raters"] = out["n_raters"].fillna(0).astype(np.int64)
    out["consistent"] = out["consistent"].astype("boolean")
    out["reason"] = _reasons(out, rule)
    out["passed"] = out["reason"] == ""
    return out


def _reasons(out: pd.DataFrame, rule: FilterRule) -> np.ndarray:
    """First failing reason per row; checks are applied last-to-first so earlier ones win."""
    reason = np.full(len(out), "", dtype=object)
    rated = out["n_raters"].to_numpy() > 0
    if rule.require_consistent:
        reason[rated & ~out["consistent"].fillna(False).to_numpy(dtype=bool)] = INCONSISTENT
    for key in reversed(SCORE_KEYS):
        reason[rated & (out[key].to_numpy() < rule.min_dim - _EPS)] = f"dimension < {rule.min_dim:g}: {key}"
    reason[rated & (out["mean"].to_numpy() < rule.min_mean - _EPS)] = f"mean < {rule.min_mean:g}"
    curated = _column(out, "source", "").to_numpy() == CURATED_SOURCE
    reason[~rated & ~(curated & rule.include_unrated)] = UNRATED
    if rule.cap_per_question is not None:
        ok = pd.Series((reason == "") & _is_open(out), index=out.index)
        keys = pd.DataFrame({"task": out["task"].astype(str), "subtask": _column(out, "subtask", "").astype(str),
                             "question": _normalised(out["question"]),
                             "answer": _normalised(_column(out, "answer", ""))})
        ranked = pd.concat([keys, out[["qa_id", "mean"]]], axis=1).loc[ok].sort_values(
            ["mean", "qa_id"], ascending=[False, True], na_position="last")
        position = ranked.groupby(list(keys.columns), sort=False).cumcount()
        over = position.index[position.to_numpy() >= rule.cap_per_question]
        reason[out.index.get_indexer(over)] = OVER_CAP
    return reason


def _column(frame: pd.DataFrame, name: str, default: object) -> pd.Series:
    """An optional column, with a NULL (or the whole missing column) read as `default`."""
    if name not in frame.columns:
        return pd.Series(default, index=frame.index, dtype=object)
    return frame[name].astype(object).where(frame[name].notna(), default)


def _normalised(text: pd.Series) -> pd.Series:
    """Question or answer text as the cap compares it: case, runs of spaces and a final '.' ignored."""
    return (text.astype(str).str.casefold().str.replace(r"\s+", " ", regex=True).str.strip()
            .str.rstrip(".").str.strip())


def _is_open(frame: pd.DataFrame) -> np.ndarray:
    """Open pairs by their question type, else by their task (unknown tasks count as open)."""
    by_task = frame["task"].map(lambda t: TASKS[t].open if t in TASKS else True).astype(bool)
    if "question_type" not in frame.columns:
        return by_task.to_numpy()
    kind = frame["question_type"].astype(object).where(frame["question_type"].notna(), "")
    kind = kind.astype(str).str.lower()
    return np.where(kind.isin(("open", "close", "closed")), kind == "open", by_task)


def summarize(filtered: pd.DataFrame) -> FilterSummary:
    """Counts of an `apply_filter` result: passed/failed and failing reasons per task, and the
    factual accuracy rate over the rated pairs (None when nothing is rated)."""
    per_task: dict[str, dict[str, object]] = {}
    for task, group in filtered.groupby("task", sort=True):
        failing = group.loc[~group["passed"], "reason"].value_counts()
        per_task[str(task)] = {"passed": int(group["passed"].sum()), "failed": int((~group["passed"]).sum()),
                               "reasons": {str(r): int(n) for r, n in failing.sort_index().items()}}
    rated = filtered.loc[filtered["n_raters"] > 0, "consistent"]
    rate = float(rated.astype(bool).mean()) if len(rated) else None
    return FilterSummary(total=len(filtered), passed=int(filtered["passed"].sum()),
                         per_task=per_task, factual_accuracy_rate=rate,
                         unrated_passed=int((filtered["passed"] & (filtered["n_raters"] == 0)).sum()))
