"""Agreement heatmaps in the manner of 3D-RAD's figures 7 and 8: per rater, the mean of each
metric against every other rater (consistency) and the rater's rank on it (ranking), plus the
reliability of each dimension across all raters.

Built on `matplotlib.figure.Figure` without pyplot, so the curator panel can draw the same figure
on a Qt canvas from any thread and `ctvqa agreement --plot` saves it with no display.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from annotation.rubric import DIMENSIONS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (column of per_rater_agreement, label, higher is better)
HEATMAP_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("top_k_overlap", "Top-k", True), ("ndcg_at_k", "NDCG@k", True), ("spearman_rho", "Spearman", True),
    ("kendall_tau", "Kendall", True), ("mae", "MAE", False), ("wkappa_mean", "w. kappa", True),
)
_RELIABILITY = (("alpha", "alpha"), ("wkappa", "w. kappa"), ("icc", "ICC(A,1)"))
_SHORT = {key: short for key, _, short in DIMENSIONS} | {"mean": "mean"}


def ranks(per_rater: pd.DataFrame) -> pd.DataFrame:
    """Each rater's rank per metric (1 = agrees most: highest, or lowest MAE); NaN stays NaN."""
    out = pd.DataFrame(index=per_rater["rater"])
    for column, _, higher in HEATMAP_METRICS:
        out[column] = per_rater[column].rank(ascending=not higher, method="min").to_numpy()
    return out


def agreement_figure(per_rater: pd.DataFrame, reliability: pd.DataFrame | None = None,
                     title: str = "") -> Figure:
    """The consistency and ranking heatmaps (and, given `reliability`, the per-dimension one)."""
    from matplotlib.figure import Figure  # deferred: matplotlib loads only to draw

    panels = 3 if reliability is not None and not reliability.empty else 2
    raters = list(per_rater["rater"])
    height = max(2.6, 0.45 * max(len(raters), 6 if panels == 3 else 0) + 1.6)
    figure = Figure(figsize=(4.6 * panels, height), layout="constrained")
    axes = figure.subplots(1, panels)
    labels = [label for _, label, _ in HEATMAP_METRICS]
    values = per_rater[[c for c, _, _ in HEATMAP_METRICS]].to_numpy(dtype=float)
    # colour by "how good", so a low MAE is as green as a high Spearman
    goodness = np.column_stack([v if higher else -v for v, (_, _, higher) in zip(values.T, HEATMAP_METRICS)])
    _heatmap(axes[0], _column_scaled(goodness), values, raters, labels, "Consistency (mean vs. others; colour per column)", "{:.2f}")
    rank = ranks(per_rater).to_numpy(dtype=float)
    _heatmap(axes[1], -rank, rank, raters, labels, "Ranking (1 = agrees most)", "{:.0f}")
    if panels == 3:
        rel = reliability.set_index("dimension")
        table = rel[[c for c, _ in _RELIABILITY]].to_numpy(dtype=float)
        _heatmap(axes[2], table, table, [_SHORT.get(d, d) for d in rel.index], [l for _, l in _RELIABILITY],
                 "Reliability per dimension", "{:.2f}", limits=(-0.2, 1.0))
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def report_title(report) -> str:  # noqa: ANN001 (an annotation.agreement.AgreementReport)
    """What the heatmaps stand on: raters, pairs rated by two or more, and the k actually used."""
    n = int(report.reliability["n_units"].max()) if not report.reliability.empty else 0
    k = int(report.pairwise["k_used"].min()) if not report.pairwise.empty else report.top_k
    return f"{len(report.per_rater)} raters · {n} pairs rated by two or more · Top-k with k = {k} (asked {report.top_k})"


def save_agreement_png(per_rater: pd.DataFrame, reliability: pd.DataFrame | None, path: str | Path,
                       title: str = "") -> Path:
    """Draw `agreement_figure` into a PNG at `path` (its folder must exist)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    agreement_figure(per_rater, reliability, title).savefig(path, dpi=120)
    return path


def _column_scaled(goodness: np.ndarray) -> np.ndarray:
    """Each metric scaled to 0-1 over the raters, so one colour map serves metrics of any range."""
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = np.nanmin(goodness, axis=0), np.nanmax(goodness, axis=0)
        span = np.where(high > low, high - low, 1.0)
        return np.where(np.isfinite(goodness), (goodness - low) / span, np.nan) if goodness.size else goodness


def _heatmap(ax, colour: np.ndarray, text: np.ndarray, rows: list[str], columns: list[str], title: str,
             fmt: str, limits: tuple[float, float] | None = None) -> None:  # noqa: ANN001
    masked = np.ma.masked_invalid(colour) if colour.size else np.zeros((len(rows), len(columns)))
    if limits is None and colour.size and np.isfinite(colour).any():
        limits = (float(np.nanmin(colour)), float(np.nanmax(colour)))
    ax.imshow(masked, cmap="RdYlGn", aspect="auto", vmin=limits[0] if limits else None,
              vmax=limits[1] if limits else None)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    for i in range(text.shape[0] if text.ndim == 2 else 0):
        for j in range(text.shape[1]):
            value = text[i, j]
            ax.text(j, i, "–" if not np.isfinite(value) else fmt.format(value), ha="center", va="center",
                    fontsize=8, color="black")
