"""The pairs raters disagree on most: the curator's adjudication list.

Agreement statistics say how much raters disagree, not on what. A curator adjudicates the pairs
with the widest spread of mean scores first (the ones the 3D-RAD filter keeps for one rater and
drops for another), then those where one dimension splits most, then split consistency verdicts.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from annotation.rubric import DIMENSIONS, SCORE_KEYS

DISAGREEMENT_COLUMNS: tuple[str, ...] = ("qa_id", "n_raters", "mean_spread", "worst_dimension",
                                         "dimension_spread", "consistent_split", "scores")
_SHORT = {key: short for key, _, short in DIMENSIONS}


def most_disagreed(scores: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """The `n` pairs (rated by at least two raters) with the largest spread (max - min) of the
    mean score, ties broken by the widest single dimension, then split consistency, then qa_id.
    `scores` is a `mean_scores` frame; `scores` in the result lists each rater's mean."""
    if n < 1:
        raise ValueError(f"the number of disagreements to list must be at least 1, got {n}")
    rows = []
    for qa_id, group in scores.groupby("qa_id", sort=True):
        if group["rater"].nunique() < 2:
            continue
        spreads = {key: int(group[key].max() - group[key].min()) for key in SCORE_KEYS}
        worst = max(SCORE_KEYS, key=lambda key: (spreads[key], -SCORE_KEYS.index(key)))
        yes = int(group["consistent"].sum())
        ordered = group.sort_values("rater")
        rows.append({"qa_id": int(qa_id), "n_raters": len(group),
                     "mean_spread": float(group["mean"].max() - group["mean"].min()),
                     "worst_dimension": _SHORT[worst], "dimension_spread": spreads[worst],
                     "consistent_split": f"{yes} yes / {len(group) - yes} no",
                     "scores": " · ".join(f"{r} {m:.1f}" for r, m in zip(ordered["rater"], ordered["mean"])),
                     "_split": min(yes, len(group) - yes)})
    frame = pd.DataFrame(rows, columns=[*DISAGREEMENT_COLUMNS, "_split"])
    if frame.empty:
        return frame.drop(columns="_split")
    frame = frame.sort_values(["mean_spread", "dimension_spread", "_split", "qa_id"],
                              ascending=[False, False, False, True], kind="stable")
    return frame.head(n).drop(columns="_split").reset_index(drop=True).astype({"mean_spread": np.float64})
