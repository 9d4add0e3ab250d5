"""Read-only tables of figures for the curator's panels: readable narrow headers with a tooltip
saying what each figure means, numbers right-aligned with two decimals, NaN as a dash."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHeaderView, QLabel, QTableWidget, QTableWidgetItem

from annotation.rubric import DIMENSIONS

if TYPE_CHECKING:
    import pandas as pd

# Readable, narrow headers for the agreement tables (column keys are annotation.agreement's).
HEADERS = {
    "rater_a": "Rater A", "rater_b": "Rater B", "rater": "Rater", "n_others": "Others",
    "n_common": "Common", "k_used": "k", "top_k_overlap": "Top-k", "ndcg_at_k": "NDCG@k",
    "ndcg_at_k_ba": "NDCG@k B→A", "spearman_rho": "Spearman", "kendall_tau": "Kendall", "mae": "MAE",
    "kappa_consistent": "κ consist.", "consistent_agreement": "Consist. agree", "warning": "Warning",
"dimension": "Dimension", "n_units": "n", "alpha": "α", "alpha_low": "α low", "alpha_high": "α high",
    "wkappa": "w.κ", "wkappa_low": "w.κ low", "wkappa_high": "w.κ high", "icc": "ICC", "icc_low": "ICC low",
    "icc_high": "ICC high", "icc_n": "ICC n", "icc_raters": "ICC raters", "n_repeats": "n", "exact": "Same",
    "qa_id": "Pair", "task": "Task", "mean_spread": "Spread", "worst_dimension": "Worst", "dimension_spread": "by",
    "consistent_split": "Consistent", "scores": "Mean per rater", "question": "Question", "answer": "Answer",
        "wkappa_mean": "w.κ mean", **{f"wkappa_{key}": f"w.κ {short}" for key, _, short in DIMENSIONS},
    **{f"mae_{key}": f"MAE {short}" for key, _, short in DIMENSIONS},
}
TIPS = {
    "top_k_overlap": "share of the top-k pairs (by mean score) both raters put in their top k",
    "ndcg_at_k": "NDCG@k of rater B's scores in rater A's order",
    "spearman_rho": "Spearman rank correlation of the mean scores",
    "kendall_tau": "Kendall rank correlation of the mean scores",
    "mae": "mean absolute difference of the mean scores",
    "kappa_consistent": "Cohen's kappa on the consistency flag",
    "k_used": "the k used: the k asked, capped at the common pairs (Top-k overlap is empty when k = n)",
    "wkappa_mean": "quadratic-weighted kappa of the mean scores",
    "warning": "why these figures should not be trusted (few common pairs, k = n)",
    **{f"mae_{key}": f"mean absolute difference in {label}" for key, label, _ in DIMENSIONS},
}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def fill_table(table: QTableWidget, frame: pd.DataFrame) -> None:
    """Show a DataFrame read-only, numbers right-aligned with two decimals, NaN as a dash."""
    table.clear()
    table.setRowCount(len(frame))
    table.setColumnCount(len(frame.columns))
    for j, column in enumerate(frame.columns):
        header = QTableWidgetItem(HEADERS.get(column, column))
        header.setToolTip(TIPS.get(column, column))
        table.setHorizontalHeaderItem(j, header)
    for i, row in enumerate(frame.itertuples(index=False)):
        for j, value in enumerate(row):
            item = QTableWidgetItem(_cell(value.item() if hasattr(value, "item") else value))
            if isinstance(value, str):
                item.setToolTip(value)  # a long cell is elided; hovering shows all of it
            else:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(i, j, item)
    table.resizeColumnsToContents()
    table.resizeRowsToContents()


def make_table() -> QTableWidget:
    table = QTableWidget()
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    table.horizontalHeader().setStretchLastSection(True)
    table.setWordWrap(True)
    return table


def caption(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: gray; font-size: 11px;")
    return label
