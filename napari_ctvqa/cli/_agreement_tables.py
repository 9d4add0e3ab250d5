"""How `ctvqa agreement` prints its report: rich tables that fit an 80-column terminal, warnings
first, every figure beside its n (and k), intervals in brackets."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

    from annotation.agreement import AgreementReport

# The figures 3D-RAD reports, with headers short enough for an 80-column terminal.
_PAIR_COLUMNS = {"n_common": "n", "k_used": "k", "top_k_overlap": "top-k", "ndcg_at_k": "NDCG",
                 "spearman_rho": "rho", "kendall_tau": "tau", "mae": "MAE", "wkappa_mean": "w.kappa",
                 "kappa_consistent": "kappa C"}


def _number(value: Any, digits: int = 3) -> str:  # noqa: ANN401
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(row: Any, stat: str) -> str:  # noqa: ANN401
    low, high = row[f"{stat}_low"], row[f"{stat}_high"]
    interval = "" if math.isnan(low) else f" [{low:.2f}, {high:.2f}]"
    return _number(row[stat], 2) + interval


def _frame_table(frame: pd.DataFrame, keys: list[str], columns: dict[str, str], title: str) -> Table:
    table = Table(*keys, *columns.values(), title=title)
    for _, row in frame.iterrows():
        marker = " !" if row.get("warning") else ""
        table.add_row(*[str(row[k]) for k in keys[:-1]], str(row[keys[-1]]) + marker,
                      *[_number(row[c]) if c not in ("n_common", "k_used") else f"{row[c]:g}" for c in columns])
    return table


def print_report(report: AgreementReport, disagreements: int) -> None:
    """The whole report on stdout; `disagreements` > 0 adds the adjudication list."""
    console = Console()
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(_frame_table(report.pairwise, ["rater_a", "rater_b"], _PAIR_COLUMNS,
                               f"pairwise agreement (mean score; k asked {report.top_k}; ! = see --json warning)"))
    per_rater = report.per_rater.assign(warning="")
    console.print(_frame_table(per_rater, ["rater"], _PAIR_COLUMNS, "per rater (mean over the other raters)"))
    level = f"{round(report.level * 100)}%"
    table = Table("dimension", "n", "alpha (ordinal)", "w. kappa", "ICC(A,1)", "ICC on",
                  title=f"reliability across raters, {level} bootstrap intervals ({report.n_boot} resamples)")
    for _, row in report.reliability.iterrows():
        table.add_row(row["dimension"] + (" !" if row["warning"] else ""), str(row["n_units"]), _ci(row, "alpha"),
                      _ci(row, "wkappa"), _ci(row, "icc"), f"{row['icc_n']} pairs: {row['icc_raters'] or '–'}")
    console.print(table)
    if not report.intra.empty:
        table = Table("rater", "dimension", "n", "w. kappa", "alpha", "MAE", "same", title="intra-rater (repeats)")
        for _, row in report.intra.iterrows():
            table.add_row(row["rater"], row["dimension"] + (" !" if row["warning"] else ""), str(row["n_repeats"]),
                          _ci(row, "wkappa"), _number(row["alpha"], 2), _number(row["mae"], 2), _number(row["exact"], 2))
        console.print(table)
    else:
        console.print("intra-rater: no repeats rated yet (ctvqa assign --repeat 0.1 shows a share twice)")
    if disagreements > 0:
        table = Table("qa_id", "task", "spread", "worst", "consistent", "scores", "question",
                      title=f"most-disagreed pairs (top {disagreements}): adjudicate these first")
        for _, row in report.disagreements.head(disagreements).iterrows():
            table.add_row(str(row["qa_id"]), str(row.get("task", "")), f"{row['mean_spread']:.1f}",
                          f"{row['worst_dimension']} {row['dimension_spread']}", row["consistent_split"],
                          row["scores"], str(row.get("question", "")))
        console.print(table)
    console.print("per-dimension MAE and kappa, NDCG both ways, every warning: --json")
