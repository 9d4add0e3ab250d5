"""How reliable the 0-5 scores are across all raters at once, per dimension and on the mean, with
bootstrap intervals: the figures a reviewer asks for before trusting a rated set.

- Krippendorff's ordinal alpha uses every rating of a pair that at least two raters scored, with
  any number of raters and gaps (the `krippendorff` package).
- Weighted kappa is Cohen's quadratic-weighted kappa (sklearn) per pair of raters on their
  common pairs, averaged over the rater pairs (Light's generalisation to several raters).
- ICC is ICC(A,1) (pingouin's ICC2: two-way random, absolute agreement, one rater) on the
  complete block: the pairs every chosen rater scored. When all raters together share too few
  pairs, the rater who costs the most common pairs is left out until enough remain; the rows
  say which raters and how many pairs the ICC stands on.

Intervals resample QA pairs (units) with replacement, `n_boot` times with a fixed seed, and take
the percentile interval; the same draw serves every statistic of a dimension.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from annotation.agreement.pairwise import MIN_COMMON, common_warning
from annotation.agreement.stats import (
    DIMENSIONS_AND_MEAN,
    alpha_ordinal,
    icc_a1,
    icc_pingouin,
    interval,
    kappa_replicates,
    resample_counts,
    weighted_kappa,
)

RELIABILITY_COLUMNS: tuple[str, ...] = (
    "dimension", "n_units", "n_raters", "alpha", "alpha_low", "alpha_high",
    "wkappa", "wkappa_low", "wkappa_high", "n_rater_pairs",
    "icc", "icc_low", "icc_high", "icc_n", "icc_raters", "warning",
)
_MIN_ICC_UNITS = 5


def reliability(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per dimension ("mean" first) of `scores` (annotation.agreement.stats.mean_scores):
    alpha, mean weighted kappa and ICC with their `level` bootstrap intervals (RELIABILITY_COLUMNS).
    Only pairs rated by at least two raters count; figures that cannot be computed are NaN."""
    if n_boot < 0:
        raise ValueError(f"the number of bootstrap resamples must not be negative, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"the confidence level must be between 0 and 1, got {level}")
    raters_per_unit = scores.groupby("qa_id")["rater"].nunique()
    units = raters_per_unit.index[raters_per_unit >= 2].sort_values()
    scores = scores[scores["qa_id"].isin(units)]
    raters = sorted(scores["rater"].unique())
    icc_raters, icc_units = complete_block(scores, raters)
    rng = np.random.default_rng(seed)
    counts = resample_counts(len(units), n_boot, rng)
    icc_draws = rng.integers(0, max(len(icc_units), 1), size=(n_boot, len(icc_units)))
    rows = []
    for dimension in DIMENSIONS_AND_MEAN:
        wide = scores.pivot(index="rater", columns="qa_id", values=dimension).reindex(index=raters, columns=units)
        rows.append(_dimension_row(dimension, wide.to_numpy(dtype=float), counts, icc_draws, level,
                                   icc_raters, icc_units, raters, units))
    return pd.DataFrame(rows, columns=list(RELIABILITY_COLUMNS))


def complete_block(scores: pd.DataFrame, raters: list[str]) -> tuple[list[str], list]:
    """The raters and the pairs they all scored that the ICC stands on: all raters if they share
    `_MIN_ICC_UNITS` pairs, else drop, one at a time, the rater whose absence adds most pairs."""
    rated = {r: set(g["qa_id"]) for r, g in scores.groupby("rater")}

    def common(group: list[str]) -> set:
        return set.intersection(*(rated[r] for r in group)) if group else set()

    chosen = list(raters)
    while len(chosen) > 2 and len(common(chosen)) < _MIN_ICC_UNITS:
        chosen.remove(max(chosen, key=lambda r: (len(common([x for x in chosen if x != r])), r)))
    if len(chosen) < 2:
        return [], []
    return chosen, sorted(common(chosen))


def _dimension_row(dimension: str, data: np.ndarray, counts: np.ndarray, icc_draws: np.ndarray, level: float,
                   icc_raters: list[str], icc_units: list, raters: list[str], units: pd.Index) -> dict:
    n_units = data.shape[1]
    row: dict[str, object] = {"dimension": dimension, "n_units": n_units, "n_raters": len(raters),
                              "icc_n": len(icc_units), "icc_raters": ", ".join(icc_raters),
                              "warning": common_warning(n_units)}
    row["alpha"] = alpha_ordinal(data) if n_units else float("nan")
    row["alpha_low"], row["alpha_high"] = interval(
        [alpha_ordinal(np.repeat(data, c, axis=1)) for c in counts], level) if n_units else (np.nan, np.nan)

    kappas, replicate_kappas = [], []
    for i, j in itertools.combinations(range(len(raters)), 2):
        both = ~np.isnan(data[i]) & ~np.isnan(data[j])
        if both.sum() < 2:
            continue
        a, b = data[i, both], data[j, both]
        kappas.append(weighted_kappa(a, b, dimension))
        replicate_kappas.append(kappa_replicates(a, b, counts[:, both]))
    row["n_rater_pairs"] = len(kappas)
    row["wkappa"] = float(np.nanmean(kappas)) if np.isfinite(kappas).any() else float("nan")
    if replicate_kappas:
        stacked = np.vstack(replicate_kappas)
        finite = np.isfinite(stacked).any(axis=0)
        means = np.full(stacked.shape[1], np.nan)
        means[finite] = np.nanmean(stacked[:, finite], axis=0)
        row["wkappa_low"], row["wkappa_high"] = interval(means, level)
    else:
        row["wkappa_low"] = row["wkappa_high"] = float("nan")

    row["icc"] = row["icc_low"] = row["icc_high"] = float("nan")
    if len(icc_units) >= 2:
        columns = units.get_indexer(icc_units)
        block = data[[raters.index(r) for r in icc_raters]][:, columns].T  # targets x raters
        row["icc"] = icc_pingouin(block)
        row["icc_low"], row["icc_high"] = interval(icc_a1(block[icc_draws]), level)
        if len(icc_units) < MIN_COMMON:
            row["warning"] = "; ".join(filter(None, [row["warning"], f"ICC on {len(icc_units)} complete pairs"]))
    return row
