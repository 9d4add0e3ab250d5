"""Base against finetuned on the held-out patients: differences, their standard errors, and which
drops are large enough to stop a new model version from being registered on its own.

Held-out splits of a curated set are often small (a few pairs per task), where a change of 50
points can be one question. So every figure travels with its n, and a task whose primary metric
(accuracy for closed tasks, ROUGE-1 for open ones: 3D-RAD's headline figures) falls by more than
the standard error of the difference counts as a regression.

The evaluation report gives each task's mean and n, not its spread, so the standard error of
each mean is taken at its largest possible value for a score in [0, 100] with that mean
(Bhatia-Davis: variance <= m (100 - m)); for accuracy that is exactly the binomial one. The
difference's standard error is sqrt(se_base^2 + se_new^2). Conservative on purpose: a drop has to
be clear to count, but 50 -> 0 on 2 pairs (difference 50, standard error 35) does.
"""
from __future__ import annotations

import math
from typing import Any

PRIMARY_METRICS: tuple[str, ...] = ("accuracy", "rouge1")
LABELS = {"accuracy": "accuracy", "rouge1": "ROUGE-1"}


def standard_error(mean: float, n: int) -> float:
    """Largest standard error of a mean of n scores in [0, 100] (exact for accuracy)."""
    if n <= 0:
        return float("nan")
    return math.sqrt(max(mean, 0.0) * max(100.0 - mean, 0.0) / n)


def metric_deltas(base: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per task, new minus base for every metric both reports have (percentage points)."""
    deltas = {}
    for task, figures in new.get("tasks", {}).items():
        before = base.get("tasks", {}).get(task, {})
        deltas[task] = {m: round(v - before[m], 3) for m, v in figures.items()
                        if m not in ("n", "subtasks") and isinstance(v, (int, float)) and
                        isinstance(before.get(m), (int, float))}
    return deltas


def comparisons(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task, its primary metric before and after with n, the difference, its standard error
    and whether it is a regression (a drop larger than that standard error)."""
    rows = []
    for task, figures in new.get("tasks", {}).items():
        before = base.get("tasks", {}).get(task, {})
        metric = next((m for m in PRIMARY_METRICS if m in figures and m in before), None)
        if metric is None:
            continue
        n_base, n_new = int(before.get("n", 0)), int(figures.get("n", 0))
        delta = figures[metric] - before[metric]
        se = math.hypot(standard_error(before[metric], n_base), standard_error(figures[metric], n_new))
        rows.append({"task": task, "metric": metric, "base": before[metric], "new": figures[metric],
                     "n": n_new, "n_base": n_base, "delta": round(delta, 3), "se": round(se, 3),
                     "regression": delta < 0 and -delta > se})
    return rows


def describe(row: dict[str, Any]) -> str:
    """One comparison as people read it: 'existence_detection: accuracy 50.0 -> 0.0 (n 2, -50.0 ± 35.4)'."""
    n = f"n {row['n']}" if row["n"] == row["n_base"] else f"n {row['n_base']} / {row['n']}"
    return (f"{row['task']}: {LABELS.get(row['metric'], row['metric'])} {row['base']:.1f} -> {row['new']:.1f} "
            f"({n}, {row['delta']:+.1f} ± {row['se']:.1f})")
