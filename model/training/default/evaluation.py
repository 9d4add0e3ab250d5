"""Held-out evaluation of a trained default model through `ctvqa evaluate`'s own code
(model/evaluation): the 3D-RAD metrics beside the majority-answer baseline, task-6 rule
consistency, every existence question per finding, image reliance and box IoU.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from model.evaluation.evaluate import evaluate_vlm
from model.inference.loading import load_vlm


# ----- evaluation, saving, model card -----------------------------------------------------------
def evaluate_default(folder: Path, cohort_dir: Path, limit: int | None) -> dict[str, Any]:
    """The held-out figures (valid patients) of the saved model: exactly `ctvqa evaluate --json
    --robustness` on the cohort's qa/valid (the same code computes them, so card and command agree),
    plus the existence task once more over every held-out question (`existence_all_questions`),
    where every finding occurs both present and absent often enough for its balanced accuracy."""

    vlm = load_vlm(folder)
    start = time.perf_counter()

    def show(done: int, total: int) -> None:
        if done == total or done % 100 < 10:
            print(f"[eval] {done}/{total} questions ({time.perf_counter() - start:.0f} s)", flush=True)

    common = {"robustness": True, "progress": show, "model_name": "ctvqa default (model/default)",
              "labels": cohort_dir / "labels.csv"}
    report = evaluate_vlm(vlm, cohort_dir / "qa" / "valid", cohort_dir / "volumes", limit=limit, **common)
    every = evaluate_vlm(vlm, cohort_dir / "qa" / "valid", cohort_dir / "volumes", tasks=["existence_detection"],
                         **common)
    report["existence_all_questions"] = every["tasks"]["existence_detection"]
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
    consistency = tasks.get("longitudinal_temporal_diagnosis", {}).get("rule_consistency")
    if consistency:
        rows["task6_rule_consistency"] = {**consistency, "met": consistency["consistent"] == consistency["n"]}
    return rows
