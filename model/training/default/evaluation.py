"""Held-out evaluation of a trained default model: the 3D-RAD metrics, task-6 rule consistency,
every existence question per finding and the majority-answer baseline.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from model.ct.io import read_ct
from model.data.qa_folders import read_qa_folder, take_per_task
from model.evaluation.evaluate import evaluate_vlm
from model.inference import prompts
from model.inference.loading import load_vlm
from model.training.default.data import cohort_label_names, finding_asked, read_csv_rows
from model.training.default.recipe import CLOSED_TASK_LETTERS


# ----- evaluation, saving, model card -----------------------------------------------------------
def _closed_answers(vlm: Any, cohort_dir: Path, items: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    """(item, the model's one-token answer) for closed held-out questions, each volume read and
    encoded once for its run of questions (the QA files list a volume's questions together)."""

    images: dict[str, Any] = {}
    for item in items:
        if item.volume_name not in images:
            images = {item.volume_name: vlm.prepare(read_ct(cohort_dir / "volumes" / item.volume_name))}
        yield item, vlm.answer(images[item.volume_name], item.question, choices=item.choices, max_new_tokens=1)



def task6_consistency(vlm: Any, cohort_dir: Path, limit: int | None) -> dict[str, Any]:
    """How many task-6 answers follow the 3D-RAD rule given the model's own presence call: a
    prior 1 allows only A/B (refractory/resolved), all-0 priors only C/D (new/none)."""

    items = take_per_task(read_qa_folder(cohort_dir / "qa" / "valid", ["longitudinal_temporal_diagnosis"])
                          ["longitudinal_temporal_diagnosis"], limit)
    consistent = 0
    for item, answer in _closed_answers(vlm, cohort_dir, items):
        priors = prompts.priors_in_question(item.question)
        if priors is None:
            raise ValueError(f"{item.source}: no prior sequence like [0, 1] in the question")
        consistent += answer.choice in ("AB" if 1 in priors else "CD")
    return {"n": len(items), "consistent": consistent,
            "percent": round(100.0 * consistent / max(1, len(items)), 2)}



def existence_by_finding(vlm: Any, cohort_dir: Path) -> dict[str, dict[str, Any]]:
    """Every held-out existence question, per finding: present cases found, absent cases called
    absent, and their mean (balanced accuracy: 50 = not using the image). The first-150 slice
    of `ctvqa evaluate` covers a handful of scans where most findings are absent; this is the
    figure that says which findings the model reads."""

    label_names = cohort_label_names(read_csv_rows(cohort_dir / "labels.csv"))
    asked = [(item, finding_asked(item.question, label_names))
             for item in read_qa_folder(cohort_dir / "qa" / "valid", ["existence_detection"])["existence_detection"]]
    asked = [(item, finding) for item, finding in asked if finding]
    counts: dict[str, Counter] = {}
    answers = _closed_answers(vlm, cohort_dir, [item for item, _ in asked])
    for (_, finding), (item, answer) in zip(asked, answers):
        side = "present" if item.answer_choice == "A" else "absent"
        tally = counts.setdefault(finding, Counter())
        tally[side] += 1
        tally[f"{side}_right"] += answer.choice == item.answer_choice
    table = {}
    for finding, tally in sorted(counts.items()):
        rates = [100.0 * tally[f"{side}_right"] / tally[side] for side in ("present", "absent") if tally[side]]
        table[finding] = {"present": f"{tally['present_right']}/{tally['present']}",
                          "absent": f"{tally['absent_right']}/{tally['absent']}",  # one side only: no balance
                          "balanced_accuracy": round(sum(rates) / 2, 1) if len(rates) == 2 else None}
    return table



def majority_baseline(cohort_dir: Path, limit: int | None) -> dict[str, float]:
    """Per closed task, the accuracy of always giving the most common answer on the evaluated
    questions: what a model that ignores the image scores, the figure to beat."""

    baseline = {}
    for task, items in read_qa_folder(cohort_dir / "qa" / "valid", list(CLOSED_TASK_LETTERS)).items():
        letters = Counter(item.answer_choice for item in take_per_task(items, limit))
        baseline[task] = round(100.0 * max(letters.values()) / sum(letters.values()), 2)
    return baseline



def evaluate_default(folder: Path, cohort_dir: Path, limit: int | None) -> dict[str, Any]:
    """The held-out figures (valid patients) of the saved model, as `ctvqa evaluate --json` writes them."""

    vlm = load_vlm(folder)
    start = time.perf_counter()

    def show(done: int, total: int) -> None:
        if done == total or done % 100 < 10:
            print(f"[eval] {done}/{total} questions ({time.perf_counter() - start:.0f} s)", flush=True)

    report = evaluate_vlm(vlm, cohort_dir / "qa" / "valid", cohort_dir / "volumes", limit=limit,
                          progress=show, model_name="ctvqa default (model/default)")
    report["task6_rule_consistency"] = task6_consistency(vlm, cohort_dir, limit)
    report["majority_answer_baseline"] = majority_baseline(cohort_dir, limit)
    report["existence_by_finding"] = existence_by_finding(vlm, cohort_dir)
    report["eval_seconds"] = round(time.perf_counter() - start)
    return report



ACCEPTANCE = {"existence_detection": 90.0, "static_temporal_diagnosis": 80.0,
              "longitudinal_temporal_diagnosis": 95.0}



OPEN_TASKS = ("anomaly_detection", "image_observation", "medical_computation")



def acceptance(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 6's held-out targets against this run's figures."""
    tasks = report["tasks"]
    rows = {key: {"accuracy": tasks[key]["accuracy"], "target": target, "met": tasks[key]["accuracy"] >= target}
            for key, target in ACCEPTANCE.items() if key in tasks}
    open_scores = [tasks[k]["rouge1"] for k in OPEN_TASKS if k in tasks]
    if open_scores:
        mean = sum(open_scores) / len(open_scores)
        rows["open_rouge1_mean"] = {"rouge1": round(mean, 2), "target": 60.0, "met": mean >= 60.0}
    consistency = report.get("task6_rule_consistency")
    if consistency:
        rows["task6_rule_consistency"] = {**consistency, "met": consistency["consistent"] == consistency["n"]}
    return rows
