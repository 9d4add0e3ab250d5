"""Rater-vs-rater agreement, as 3D-RAD measured its LLM scorers (appendix B-C, figure 7).

Every metric compares two raters on the QA pairs both rated, using the mean of the five rubric
scores: Top-k overlap and NDCG@k look at agreement on the best pairs (what survives curation),
Spearman and Kendall at the whole ranking, MAE at the score scale; Cohen's kappa covers the
consistency flag; quadratic-weighted kappa (sklearn) per dimension and on the mean. The
statistics come from scipy/sklearn so the figures match what a reviewer computes by hand.

Small overlaps are where such tables mislead (3D-RAD's top-100 of 600 pairs; two raters sharing 28
pairs all land in each other's "top 100"), so k is capped at n and shown, Top-k overlap is left
empty when k reaches n (it would be 1 by construction), and every row with fewer than
`MIN_COMMON` common pairs carries a warning.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import cohen_kappa_score, mean_absolute_error, ndcg_score

from annotation.agreement.stats import mean_scores, weighted_kappa
from annotation.rubric import SCORE_KEYS

MIN_COMMON = 30  # fewer common pairs than this: figures shown with a warning

# One row per unordered rater pair (rater_a < rater_b). NDCG is asymmetric: `ndcg_at_k` ranks by
# rater A and takes rater B's mean scores as relevance, `ndcg_at_k_ba` the other way round.
METRIC_COLUMNS: tuple[str, ...] = (
    "top_k_overlap", "ndcg_at_k", "ndcg_at_k_ba", "spearman_rho", "kendall_tau", "mae",
    *(f"mae_{key}" for key in SCORE_KEYS), "kappa_consistent", "consistent_agreement",
    "wkappa_mean", *(f"wkappa_{key}" for key in SCORE_KEYS),
)
PAIRWISE_COLUMNS: tuple[str, ...] = ("rater_a", "rater_b", "n_common", "k_used", *METRIC_COLUMNS, "warning")


def pairwise_agreement(ratings: pd.DataFrame, top_k: int = 100) -> pd.DataFrame:
    """Agreement of every pair of raters over the QA pairs both rated (columns PAIRWISE_COLUMNS).

    `k_used` is min(top_k, n_common); when it reaches n_common, Top-k overlap is NaN (every pair
    is in both top-k sets) while NDCG@k still ranks them. Metrics that need at least two common
    pairs (or variation) are NaN rather than an error, so one sparse rater does not hide the
    others' figures; `warning` says why a row's figures should not be trusted."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    scores = mean_scores(ratings)
    by_rater = {rater: group.set_index("qa_id") for rater, group in scores.groupby("rater", sort=True)}
    rows = [_pair_row(a, b, by_rater[a], by_rater[b], top_k)
            for a, b in itertools.combinations(sorted(by_rater), 2)]
    return pd.DataFrame(rows, columns=list(PAIRWISE_COLUMNS))


def per_rater_agreement(pairwise: pd.DataFrame) -> pd.DataFrame:
    """Per rater, the mean of each metric against all other raters (3D-RAD figure 7), best first by
    Spearman. NDCG counts the direction in which this rater's order ranks the other's scores."""
    out_columns = ["rater", "n_others", "n_common", "k_used", *[c for c in METRIC_COLUMNS if c != "ndcg_at_k_ba"]]
    if pairwise.empty:
        return pd.DataFrame(columns=out_columns)
    as_a = pairwise.assign(rater=pairwise["rater_a"])
    as_b = pairwise.assign(rater=pairwise["rater_b"], ndcg_at_k=pairwise["ndcg_at_k_ba"])
    both = pd.concat([as_a, as_b], ignore_index=True)
    means = both.groupby("rater", sort=True)[["n_common", *out_columns[3:]]].mean()
    means["k_used"] = both.groupby("rater", sort=True)["k_used"].min()  # the smallest k behind the mean
    means.insert(0, "n_others", both.groupby("rater", sort=True).size())
    return (means.reset_index()
            .sort_values(["spearman_rho", "rater"], ascending=[False, True], na_position="last")
            .reset_index(drop=True)[out_columns])


def _pair_row(a: str, b: str, ra: pd.DataFrame, rb: pd.DataFrame, top_k: int) -> dict[str, object]:
    common = ra.index.intersection(rb.index).sort_values()
    ra, rb = ra.loc[common], rb.loc[common]
    n = len(common)
    k = min(top_k, n)
    row: dict[str, object] = {"rater_a": a, "rater_b": b, "n_common": n, "k_used": k,
                              "warning": common_warning(n, k, top_k)}
    row.update(dict.fromkeys(METRIC_COLUMNS, np.nan))
    if n == 0:
        return row
    mean_a, mean_b = ra["mean"].to_numpy(), rb["mean"].to_numpy()
    if k < n:
        row["top_k_overlap"] = len(_top_ids(ra["mean"], k) & _top_ids(rb["mean"], k)) / k
    row["wkappa_mean"] = weighted_kappa(mean_a, mean_b, "mean")
    for key in SCORE_KEYS:
        row[f"wkappa_{key}"] = weighted_kappa(ra[key].to_numpy(), rb[key].to_numpy(), key)
    row["mae"] = mean_absolute_error(mean_a, mean_b)
    for key in SCORE_KEYS:
        row[f"mae_{key}"] = mean_absolute_error(ra[key], rb[key])
    flags_a, flags_b = ra["consistent"].to_numpy(), rb["consistent"].to_numpy()
    row["consistent_agreement"] = float(np.mean(flags_a == flags_b))
    with warnings.catch_warnings():
        # Constant inputs make rho/tau/kappa undefined; scipy and sklearn warn and return NaN,
        # which is the honest figure to show.
        warnings.simplefilter("ignore")
        row["kappa_consistent"] = cohen_kappa_score(flags_a, flags_b, labels=[False, True])
        if n >= 2:
            row["ndcg_at_k"] = ndcg_score(mean_b[None, :], mean_a[None, :], k=k)
            row["ndcg_at_k_ba"] = ndcg_score(mean_a[None, :], mean_b[None, :], k=k)
            row["spearman_rho"] = spearmanr(mean_a, mean_b).statistic
            row["kendall_tau"] = kendalltau(mean_a, mean_b).statistic
    return row


def _top_ids(means: pd.Series, k: int) -> set:
    """The k best pairs of one rater; ties broken by qa_id so the set is reproducible."""
    order = pd.DataFrame({"qa_id": means.index, "mean": means.to_numpy()})
    return set(order.sort_values(["mean", "qa_id"], ascending=[False, True])["qa_id"].iloc[:k])


def common_warning(n: int, k: int | None = None, top_k: int | None = None) -> str:
    """Why figures over `n` common pairs (and a top-k with `k` of the asked `top_k`) mislead; ''
    when they do not."""
    parts = []
    if n < MIN_COMMON:
        parts.append(f"only {n} common pair{'s' * (n != 1)} (< {MIN_COMMON}): figures are unreliable")
    if k is not None and top_k is not None and n and k >= n:
        parts.append(f"k = n = {n}: Top-k overlap not defined" + (f" (asked {top_k})" if top_k != k else ""))
    return "; ".join(parts)
