"""The figures of an evaluation from its answers: what `ctvqa evaluate --json` writes.

`{"model", "n", "tasks": {TASK: {"n", METRIC...}}}` (DESIGN.md section 3), all in percent, with
per-subtask figures and the honest measures of `measures.py` beside each closed task's accuracy:
`majority_answer`, `majority_baseline`, `accuracy_over_baseline`; for existence also `findings`
(per-finding balanced accuracy) and `balanced_accuracy` (their macro mean); for longitudinal
`rule_consistency`; for static temporal `presence_ceiling` (the best a single-scan reader can do). With robustness, every primary figure also per run (`accuracy_wrong_volume`,
`balanced_accuracy_noise_volume`, ...) and `image_reliance` / `balanced_image_reliance`: points
lost per run. Box questions go under the top-level `boxes`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from model.data.box_questions import BoxItem
from model.data.qa_folders import TASK_KEYS, QAItem
from model.evaluation import measures, metrics
from model.evaluation.findings import finding_asked, presence
from model.evaluation.runner import NORMAL

Answers = dict[tuple[str, str], dict[str, Any]]


def qa_key(item: QAItem) -> str:
    """The name of a QA question in the answers folder: task/subtask:line, stable across runs."""
    return f"{item.task}/{item.subtask}:{item.source.rsplit(':', 1)[1]}"


def box_key(item: BoxItem) -> str:
    return f"boxes:{item.source.rsplit(':', 1)[1]}"


def _chosen_text(item: QAItem, choice: str | None) -> str | None:
    if choice is None or choice.upper() not in "ABCD":
        return None
    return item.choices["ABCD".index(choice.upper())]


def _sample_rows(items: Sequence[QAItem], answers: Answers, runs: Sequence[str],
                 encoder: metrics.TokenEncoder | None) -> list[dict[str, float]]:
    """Per-question figures: the contract metrics plus the primary metric of each robustness run."""
    normal = [answers[(qa_key(i), NORMAL)] for i in items]
    rows: list[dict[str, float]] = [{} for _ in items]
    open_idx = [k for k, i in enumerate(items) if not i.closed]
    closed_idx = [k for k, i in enumerate(items) if i.closed]
    if open_idx:
        opened = metrics.open_sample_scores([normal[k]["text"] for k in open_idx],
                                            [items[k].answer for k in open_idx], encoder)
        for k, row in zip(open_idx, opened):
            rows[k] = row
    if closed_idx:
        closed = metrics.closed_sample_scores([normal[k]["choice"] for k in closed_idx],
                                              [normal[k]["text"] for k in closed_idx],
                                              [items[k].answer_choice for k in closed_idx])
        for k, row in zip(closed_idx, closed):
            rows[k] = row
    for row, item in zip(rows, items):
        for run in runs:
            answer = answers.get((qa_key(item), run))
            if answer is None:  # no other scan to pair with
                continue
            if item.closed:
                row[f"accuracy_{run}"] = 100.0 if answer["choice"] == item.answer_choice else 0.0
            else:
                row[f"rouge1_{run}"] = metrics.rouge1(answer["text"], item.answer)
    return rows


def _reliance(scores: dict[str, Any], primary: str, runs: Sequence[str]) -> dict[str, float]:
    """Points of `primary` lost per robustness run (near 0: the image is ignored)."""
    return {run: scores[primary] - scores[f"{primary}_{run}"] for run in runs
            if scores.get(primary) is not None and scores.get(f"{primary}_{run}") is not None}


def _aggregate(items: Sequence[QAItem], rows: Sequence[dict[str, float]], runs: Sequence[str]) -> dict[str, Any]:
    """Means of a group, the majority baseline beside closed accuracy, and points lost without the image."""
    scores: dict[str, Any] = {"n": len(items), **metrics.mean_scores(rows)}
    closed = items[0].closed
    if closed:
        answer, share = measures.majority_baseline([i.answer for i in items])
        scores.update(majority_answer=answer, majority_baseline=share,
                      accuracy_over_baseline=scores["accuracy"] - share)
    reliance = _reliance(scores, "accuracy" if closed else "rouge1", runs)
    if reliance:
        scores["image_reliance"] = reliance
        scores["image_effect"] = sum(reliance.values()) / len(reliance)  # mean over runs, as before
    return scores


def _existence(items: Sequence[QAItem], answers: Answers, runs: Sequence[str],
               label_names: Sequence[str] | None) -> dict[str, Any]:
    """Per-finding balanced accuracy (normal run) and its macro mean per run."""
    findings = [finding_asked(i.question, label_names) if label_names else i.subtask for i in items]
    truth = [presence(i.answer) for i in items]
    out: dict[str, Any] = {}
    for run in (NORMAL, *runs):
        said = [answers.get((qa_key(i), run)) for i in items]
        if any(a is None for a in said):
            continue
        table = measures.balanced_by_finding(findings, truth, [presence(_chosen_text(i, a["choice"]))
                                                              for i, a in zip(items, said)])
        suffix = "" if run == NORMAL else f"_{run}"
        out[f"balanced_accuracy{suffix}"] = measures.macro_balanced(table)
        if run == NORMAL:
            out["findings"] = table
    reliance = _reliance(out, "balanced_accuracy", runs)
    if reliance:
        out["balanced_image_reliance"] = reliance
    return out


def task_figures(items: Sequence[QAItem], answers: Answers, runs: Sequence[str], encoder: metrics.TokenEncoder | None,
                 label_names: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Per task (contract order): figures, subtasks and the honest measures."""
    rows = _sample_rows(items, answers, runs, encoder)
    tasks: dict[str, dict[str, Any]] = {}
    for key in TASK_KEYS:
        members = [k for k, i in enumerate(items) if i.task == key]
        if not members:
            continue
        group = [items[k] for k in members]
        figures = _aggregate(group, [rows[k] for k in members], runs)
        if key == "existence_detection":
            figures.update(_existence(group, answers, runs, label_names))
        if key == "static_temporal_diagnosis":
            ceiling = measures.presence_ceiling([i.answer for i in group])
            if ceiling is not None:
                figures["presence_ceiling"] = ceiling
        if key == "longitudinal_temporal_diagnosis":
            consistency = measures.rule_consistency([i.question for i in group],
                                                    [answers[(qa_key(i), NORMAL)]["choice"] for i in group])
            if consistency:
                figures["rule_consistency"] = consistency
        subtasks: dict[str, list[int]] = {}
        for k in members:
            subtasks.setdefault(items[k].subtask, []).append(k)
        figures["subtasks"] = {name: _aggregate([items[k] for k in ks], [rows[k] for k in ks], runs)
                               for name, ks in subtasks.items()}
        tasks[key] = figures
    return tasks


def box_report(items: Sequence[BoxItem], answers: Answers, runs: Sequence[str]) -> dict[str, Any]:
    """IoU figures of the box questions, and the points of mean IoU lost per robustness run."""
    def boxes(run: str) -> list[Any] | None:
        said = [answers.get((box_key(i), run)) for i in items]
        return None if any(a is None for a in said) else [a["box"] for a in said]

    figures = measures.box_figures([i.finding for i in items], [i.box for i in items], boxes(NORMAL))
    for run in runs:
        predicted = boxes(run)
        if predicted is not None:
            other = measures.box_figures([i.finding for i in items], [i.box for i in items], predicted)
            figures[f"iou_mean_{run}"] = other["iou_mean"]
    reliance = _reliance(figures, "iou_mean", runs)
    if reliance:
        figures["image_reliance"] = reliance
    return figures
