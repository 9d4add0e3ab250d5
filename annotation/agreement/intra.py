"""Intra-rater agreement: how well a rater agrees with their own earlier judgement of the same
pair, shown to them a second time later in the queue (`ctvqa assign --repeat`).

Inter-rater figures mix two things: raters disagreeing with each other, and each rater not being
stable. Medical annotation studies measure both; a rater whose repeats disagree is a rater whose
scores the curation filter should weigh less. Same statistics as between raters (quadratic
kappa from sklearn, ordinal alpha from `krippendorff`), with the first and the repeat rating as
the two "raters".
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from annotation.agreement.pairwise import common_warning
from annotation.agreement.stats import (
    DIMENSIONS_AND_MEAN,
    alpha_ordinal,
    interval,
    kappa_replicates,
    resample_counts,
    weighted_kappa,
)

INTRA_COLUMNS: tuple[str, ...] = ("rater", "dimension", "n_repeats", "wkappa", "wkappa_low", "wkappa_high",
                                  "alpha", "mae", "exact", "warning")


def intra_rater(first: pd.DataFrame, repeat: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95) -> pd.DataFrame:
    """Per rater and dimension ("mean" first), first rating vs repeat over the pairs that rater
    finished both times (`mean_scores` frames). Empty (with the columns) when nobody has repeats."""
    both = first.merge(repeat, on=["qa_id", "rater"], suffixes=("", "_repeat"))
    rows = []
    rng = np.random.default_rng(seed)
    for rater, group in both.groupby("rater", sort=True):
        counts = resample_counts(len(group), n_boot, rng)
        for dimension in DIMENSIONS_AND_MEAN:
            a = group[dimension].to_numpy(dtype=float)
            b = group[f"{dimension}_repeat"].to_numpy(dtype=float)
            low, high = interval(kappa_replicates(a, b, counts), level) if len(a) >= 2 else (np.nan, np.nan)
            rows.append({"rater": rater, "dimension": dimension, "n_repeats": len(a),
                         "wkappa": weighted_kappa(a, b, dimension), "wkappa_low": low, "wkappa_high": high,
                         "alpha": alpha_ordinal(np.vstack([a, b])), "mae": float(np.abs(a - b).mean()),
                         "exact": float(np.mean(np.isclose(a, b))), "warning": common_warning(len(a))})
    return pd.DataFrame(rows, columns=list(INTRA_COLUMNS))
