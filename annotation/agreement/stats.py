"""The statistics for ordinal 0-5 scores from several raters: the libraries' own estimates, and
the bootstrap that puts an interval around them.

Point estimates always come from the kept libraries (sklearn's weighted kappa, `krippendorff`,
pingouin's ICC), so a reviewer recomputing them gets the same number. Their bootstrap replicates
are a different matter: 1000 resamples x 6 scores x every rater pair through sklearn or pingouin
take a minute (pingouin: about 7 ms per ICC), so the replicates of kappa and ICC use the same
closed forms vectorised over the resamples (tests check them against the libraries on every
replicate they compare). Krippendorff's alpha is fast enough to call per replicate.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from annotation.rubric import MAX_SCORE, MIN_SCORE, SCORE_KEYS, rated_scores

# The mean of five 0-5 scores moves in steps of 1/5: kappa sees it as 26 ordered categories.
_MEAN_STEPS = len(SCORE_KEYS)
DIMENSIONS_AND_MEAN: tuple[str, ...] = ("mean", *SCORE_KEYS)


def mean_scores(ratings: pd.DataFrame) -> pd.DataFrame:
    """The finished ratings (checked by `rated_scores`) with the mean of the five scores added."""
    scores = rated_scores(ratings)
    scores["mean"] = scores[list(SCORE_KEYS)].mean(axis=1)
    return scores


def categories(values: np.ndarray, dimension: str) -> tuple[np.ndarray, list[int]]:
    """Integer categories and the full label list of a dimension (a 0-5 score) or of the mean
    (26 steps of 0.2), so that kappa's weights follow score distances, not observed ranks."""
    if dimension == "mean":
        return np.rint(np.asarray(values, dtype=float) * _MEAN_STEPS).astype(int), list(
            range(MIN_SCORE * _MEAN_STEPS, MAX_SCORE * _MEAN_STEPS + 1))
    return np.asarray(values).astype(int), list(range(MIN_SCORE, MAX_SCORE + 1))


def weighted_kappa(a: np.ndarray, b: np.ndarray, dimension: str) -> float:
    """Cohen's quadratic-weighted kappa (sklearn) of two raters' scores of the same pairs; NaN
    when it is undefined (fewer than two pairs, or both raters constant)."""
    from sklearn.metrics import cohen_kappa_score  # deferred: sklearn loads only for agreement

    if len(a) < 2:
        return float("nan")
    ca, labels = categories(a, dimension)
    cb, _ = categories(b, dimension)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0/0 for constant raters: NaN is the honest figure
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(cohen_kappa_score(ca, cb, labels=labels, weights="quadratic"))


def kappa_replicates(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Quadratic-weighted kappa of every bootstrap replicate at once. `counts` (B x n) says how
    often each pair is drawn. With quadratic weights kappa is
    1 - E[(a-b)^2] / (var a + var b + (mean a - mean b)^2), population moments, weighted."""
    w = counts.astype(float)
    total = w.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ma, mb = w @ a / total, w @ b / total
        va = w @ (a * a) / total - ma ** 2
        vb = w @ (b * b) / total - mb ** 2
        mse = w @ ((a - b) ** 2) / total
        return 1.0 - mse / (va + vb + (ma - mb) ** 2)


def icc_a1(x: np.ndarray) -> np.ndarray:
    """ICC(A,1) (two-way random effects, absolute agreement, one rater: pingouin's ICC2) of a
    stack of targets x raters matrices (... x n x k), McGraw and Wong's mean squares."""
    n, k = x.shape[-2], x.shape[-1]
    grand = x.mean(axis=(-2, -1), keepdims=True)
    rows = x.mean(axis=-1, keepdims=True)
    cols = x.mean(axis=-2, keepdims=True)
    msr = k * ((rows - grand) ** 2).sum(axis=(-2, -1)) / (n - 1)
    msc = n * ((cols - grand) ** 2).sum(axis=(-2, -1)) / (k - 1)
    sse = ((x - rows - cols + grand) ** 2).sum(axis=(-2, -1))
    mse = sse / ((n - 1) * (k - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)


def icc_pingouin(x: np.ndarray) -> float:
    """pingouin's ICC(A,1) (ICC2 in its older releases) of a complete targets x raters matrix; NaN if undefined."""
    import pingouin  # deferred: pingouin (statsmodels) takes a second to import

    n, k = x.shape
    if n < 2 or k < 2:
        return float("nan")
    long = pd.DataFrame({"target": np.repeat(np.arange(n), k), "rater": np.tile(np.arange(k), n),
                         "score": x.reshape(-1)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(divide="ignore", invalid="ignore"):
            table = pingouin.intraclass_corr(long, targets="target", raters="rater", ratings="score")
    return float(table.set_index("Type").loc["ICC(A,1)", "ICC"])


def alpha_ordinal(data: np.ndarray) -> float:
    """Krippendorff's ordinal alpha (the `krippendorff` package) of a raters x units matrix with
    NaN for a missing rating; NaN when fewer than two pairable values or no variation."""
    import krippendorff  # deferred: only agreement needs it

    pairable = (np.sum(~np.isnan(data), axis=0) >= 2)
    if pairable.sum() < 1 or len(np.unique(data[:, pairable][~np.isnan(data[:, pairable])])) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """B x n draw counts of a nonparametric bootstrap over n units (resampling with replacement)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) if n else np.zeros((n_boot, 0), int)


def interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN, NaN when too few are finite)."""
    finite = np.asarray(replicates, dtype=float)
    finite = finite[np.isfinite(finite)]
    if len(finite) < 10:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)
