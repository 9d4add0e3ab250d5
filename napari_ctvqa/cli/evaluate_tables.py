"""The tables `ctvqa evaluate` prints: open and closed questions (accuracy beside the majority-answer
baseline), existence per finding, image reliance, boxes, and what was skipped."""
from __future__ import annotations

from typing import Any

from model.evaluation.metrics import OPEN_METRICS
from model.evaluation.runner import ROBUSTNESS_RUNS

_HEADERS = {"bleu1": "BLEU-1", "rouge1": "ROUGE-1", "meteor": "METEOR", "bertscore_f1": "BERTScore F1",
            "accuracy": "accuracy", "accuracy_reference": "accuracy (text)", "majority_baseline": "majority answer",
            "accuracy_over_baseline": "over majority", "balanced_accuracy": "balanced (existence)",
            "normal": "image", "wrong_volume": "another scan", "noise_volume": "noise", "image_effect": "mean drop",
            "iou_mean": "mean IoU", "iou_at_50": "IoU >= 0.5", "answered": "with a box"}
_CLOSED = ("accuracy", "accuracy_reference", "majority_baseline", "accuracy_over_baseline", "balanced_accuracy")
_WIDTH = 120


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.1f}" if isinstance(value, float) else ""


def _table(title: str, first: str, rows: list[tuple[str, dict]], metrics: list[str], caption: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column(first, no_wrap=True)
    table.add_column("n", justify="right")
    for name in metrics:
        table.add_column(_HEADERS.get(name, name), justify="right")
    for name, figures in rows:
        table.add_row(name, str(figures.get("n", "")), *(_cell(figures.get(m)) for m in metrics))
    return table


def _mean(drops: dict[str, float] | None) -> float | None:
    return sum(drops.values()) / len(drops) if drops else None


def _robustness_rows(report: dict) -> list[tuple[str, dict]]:
    rows = []
    for task, figures in report["tasks"].items():
        primary = "accuracy" if "accuracy" in figures else "rouge1"
        rows.append((f"{task} ({'accuracy' if primary == 'accuracy' else 'ROUGE-1'})",
                     {"n": figures["n"], "normal": figures.get(primary), "image_effect": figures.get("image_effect"),
                      **{run: figures.get(f"{primary}_{run}") for run in ROBUSTNESS_RUNS}}))
        if figures.get("balanced_accuracy_wrong_volume") is not None:
            rows.append(("existence (balanced accuracy)",
                         {"n": figures["n"], "normal": figures.get("balanced_accuracy"),
                          "image_effect": _mean(figures.get("balanced_image_reliance")),
                          **{run: figures.get(f"balanced_accuracy_{run}") for run in ROBUSTNESS_RUNS}}))
    boxes = report.get("boxes")
    if boxes and "iou_mean_wrong_volume" in boxes:
        rows.append(("boxes (mean IoU)", {"n": boxes["n"], "normal": boxes["iou_mean"],
                                          "image_effect": _mean(boxes.get("image_reliance")),
                                          **{run: boxes.get(f"iou_mean_{run}") for run in ROBUSTNESS_RUNS}}))
    return rows


def print_report(report: dict) -> None:
    """Every table of one report, to stdout."""
    from rich.console import Console

    console = Console(width=max(Console().width, _WIDTH))  # tables wider than a pipe's 80 columns
    console.print(f"{report['model']}: {report['n']} questions over {report.get('volumes', '?')} volumes of "
                  f"{report.get('patients', '?')} patients, figures in percent")
    tasks = list(report["tasks"].items())
    open_rows = [(t, f) for t, f in tasks if "rouge1" in f]
    closed_rows = [(t, f) for t, f in tasks if "accuracy" in f]
    if open_rows:
        console.print(_table("open questions", "task", open_rows, list(OPEN_METRICS)))
    if closed_rows:
        console.print(_table("closed questions", "task", closed_rows, list(_CLOSED),
                             caption="majority answer: always giving the most common answer of these questions"))
    existence = report["tasks"].get("existence_detection", {})
    if existence.get("findings"):
        rows = [(name, {"n": f["present"] + f["absent"], **f}) for name, f in existence["findings"].items()]
        console.print(_table(f"existence per finding ({report.get('finding_names', '')})", "finding", rows,
                             ["present", "present_right", "absent", "absent_right", "balanced_accuracy"],
                             caption="balanced accuracy: mean of present found and absent called absent; 50 = image not used"))
    consistency = report["tasks"].get("longitudinal_temporal_diagnosis", {}).get("rule_consistency")
    if consistency:
        console.print(f"longitudinal answers the 3D-RAD rule allows for the stated priors: "
                      f"{consistency['consistent']}/{consistency['n']} ({consistency['percent']:.1f} %)")
    boxes = report.get("boxes")
    if boxes:
        rows = [("all", boxes), *boxes["by_finding"].items()]
        console.print(_table("box questions (IoU with the generator's boxes)", "finding", rows,
                             ["answered", "iou_mean", "iou_at_50"]))
    if report["robustness"]:
        console.print(_table("image reliance: right scan / another patient's scan / noise", "figure",
                             _robustness_rows(report), ["normal", *ROBUSTNESS_RUNS, "image_effect"],
                             caption="points lost without the right scan; near 0 = the image is ignored"))
    for kind in ("missing_volumes", "unreadable_volumes"):
        shown = report[kind]
        if shown["count"]:
            names = [v["name"] if isinstance(v, dict) else v for v in shown["first"]]
            console.print(f"{shown['count']} {kind.replace('_', ' ')} skipped (first: {', '.join(names)})")
    if "bertscore_encoder" in report:
        console.print(f"BERTScore encoder: {report['bertscore_encoder']}")
