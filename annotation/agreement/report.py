"""Everything `ctvqa agreement` and the curator panel show, computed once from the store's
frames: between-rater tables, reliability per dimension, intra-rater repeats, the adjudication
list, and what the reader must be warned about."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from annotation.agreement.disagreements import most_disagreed
from annotation.agreement.intra import intra_rater
from annotation.agreement.pairwise import MIN_COMMON, pairwise_agreement, per_rater_agreement
from annotation.agreement.reliability import reliability
from annotation.agreement.stats import mean_scores


@dataclass(frozen=True)
class AgreementReport:
    """The agreement figures of one database at one moment, with the settings behind them."""

    pairwise: pd.DataFrame
    per_rater: pd.DataFrame
    reliability: pd.DataFrame
    intra: pd.DataFrame
    disagreements: pd.DataFrame
    top_k: int
    n_boot: int
    level: float
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN becomes null) for `ctvqa agreement --json`."""
        def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(frame.to_json(orient="records"))

        return {"top_k": self.top_k, "bootstrap": self.n_boot, "level": self.level,
                "warnings": list(self.warnings), "pairwise": records(self.pairwise),
                "per_rater": records(self.per_rater), "reliability": records(self.reliability),
                "intra_rater": records(self.intra), "disagreements": records(self.disagreements)}


def agreement_report(ratings: pd.DataFrame, repeats: pd.DataFrame | None = None,
                     qa: pd.DataFrame | None = None, top_k: int = 100, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95, n_disagreements: int = 20) -> AgreementReport:
    """All agreement tables from a ratings frame (first ratings), the repeat ratings and the QA
    frame (for the adjudication list's task and question)."""
    scores = mean_scores(ratings)
    pairwise = pairwise_agreement(ratings, top_k=top_k)
    disagreements = most_disagreed(scores, n_disagreements)
    if qa is not None and not disagreements.empty:
        info = qa[["qa_id", "task", "volume_name", "question", "answer"]]
        disagreements = disagreements.merge(info, on="qa_id", how="left")
    repeat_scores = mean_scores(repeats) if repeats is not None else scores.iloc[:0]
    report_warnings = []
    thin = pairwise[pairwise["n_common"] < MIN_COMMON]
    if len(thin):
        report_warnings.append(f"{len(thin)} of {len(pairwise)} rater pairs share fewer than {MIN_COMMON} "
                               "pairs: their figures are unreliable")
    capped = pairwise[(pairwise["k_used"] < top_k) & (pairwise["n_common"] > 0)]
    if len(capped):
        report_warnings.append(f"Top-k: k = {top_k} is more than {len(capped)} rater pair(s) share; "
                               "k is capped at n (column k)")
    return AgreementReport(pairwise, per_rater_agreement(pairwise), reliability(scores, n_boot, seed, level),
                           intra_rater(scores, repeat_scores, n_boot, seed, level), disagreements,
                           top_k, n_boot, level, tuple(report_warnings))
