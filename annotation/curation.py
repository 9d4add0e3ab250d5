"""The 3D-RAD curation filter: which rated QA pairs are good enough to keep, and why the others fail.

3D-RAD dropped a pair whose mean score was below 3 or whose score in any dimension was below 3
(exactly 3 is kept), and capped high-frequency questions at 10 pairs per identical question text.
Curators also want to see *why* a pair fails, so every pair gets the first failing reason, and the
summary counts reasons per task and the factual accuracy rate (share of rated pairs judged
consistent with the report; 96.17% in 3D-RAD).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from annotation.rubric import MAX_SCORE, MIN_SCORE, SCORE_KEYS, rated_scores

QA_COLUMNS: tuple[str, ...] = ("qa_id", "task", "question")
UNRATED = "unrated"
INCONSISTENT = "inconsistent"
OVER_CAP = "over cap per question"
_EPS = 1e-9  # means of integer scores are compared with a tolerance so that exactly 3 passes


@dataclass(frozen=True)
class FilterRule:
    """Thresholds of the filter; the defaults are 3D-RAD's. `cap_per_question=None` means no cap."""

    min_mean: float = 3.0
    min_dim: float = 3.0
    require_consistent: bool = False
    cap_per_question: int | None = 10

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
            text += f", at most {self.cap_per_question} pairs per question text"
        return {**asdict(self), "text": text}


@dataclass
class FilterSummary:
    total: int
    passed: int
    per_task: dict[str, dict[str, object]] = field(default_factory=dict)
    factual_accuracy_rate: float | None = None

    @property
    def failed(self) -> int:
        return self.total - self.passed

    def to_dict(self) -> dict[str, object]:
        return {"total": self.total, "passed": self.passed, "failed": self.failed,
                "per_task": self.per_task, "factual_accuracy_rate": self.factual_accuracy_rate}


def apply_filter(ratings: pd.DataFrame, qa: pd.DataFrame, rule: FilterRule) -> pd.DataFrame:
    """One row per QA pair of `qa` (its columns kept, in its order) with n_raters, the per-dimension
    means over the raters who rated it, their `mean`, `consistent` (majority of raters' flags, a tie
    counts as inconsistent; NA when unrated), `passed` and `reason` (first failing reason, "" when
    passed). Ratings of pairs that are not in `qa` are an error: they would vanish unnoticed."""
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
    reason[~rated] = UNRATED
    if rule.cap_per_question is not None:
        ok = pd.Series(reason == "", index=out.index)
        ranked = out.loc[ok, ["qa_id", "question", "mean"]].sort_values(
            ["mean", "qa_id"], ascending=[False, True])
        position = ranked.groupby("question", sort=False).cumcount()
        over = position.index[position.to_numpy() >= rule.cap_per_question]
        reason[out.index.get_indexer(over)] = OVER_CAP
    return reason


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
                         per_task=per_task, factual_accuracy_rate=rate)
