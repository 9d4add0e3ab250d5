"""Measures that answer priors cannot pass (DESIGN.md section 4, "How a model is judged").

Closed tasks are imbalanced (most findings are absent in most scans), so a model that ignores
the image can score high accuracy. These figures say how much of a score comes from the image:
- the majority-answer baseline: always giving the most common answer of the same questions;
- per-finding balanced accuracy of existence answers (mean of the present cases found and the
  absent cases called absent: 50 = not using the image), and their macro mean;
- the 3D-RAD rule for longitudinal answers (a prior 1 allows only refractory/resolved, all-0
  priors only new/none), given the priors the question states;
- box IoU against the generator's ground-truth boxes;
- for static temporal diagnosis, the ceiling of a reader that sees from the image alone whether
  the finding is there now: one scan cannot tell new from refractory, nor resolved from always
  absent, so that reader's best is the most common answer of each side, and a target above the
  ceiling cannot be met by any single-scan model.
Image reliance (points lost with another patient's scan or noise) is the difference of these
figures between runs, taken in report.py.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from model.inference import prompts

IOU_HIT = 0.5


def majority_baseline(answers: Sequence[str]) -> tuple[str, float]:
    """The most common answer text (case-folded; ties: the first met) and its share in percent."""
    counts = Counter(a.strip().lower() for a in answers)
    answer, n = max(counts.items(), key=lambda kv: kv[1])
    return answer, 100.0 * n / len(answers)


def present_now(answer: str) -> bool | None:
    """Whether a static-temporal answer says the finding is there on this scan (None: not one)."""
    text = answer.strip().lower()
    if text.startswith(("new", "refractory")):
        return True
    if text.startswith(("no abnormality", "resolved")):
        return False
    return None


def presence_ceiling(answers: Sequence[str]) -> float | None:
    """Accuracy in percent of answering each question with the most common answer of its side
    (finding there now, or not), sides known perfectly: the module docstring says why. In-sample,
    so an upper bound; None when an answer is not a static-temporal one."""
    sides: dict[bool, Counter] = {True: Counter(), False: Counter()}
    for answer in answers:
        side = present_now(answer)
        if side is None:
            return None
        sides[side][answer.strip().lower()] += 1
    best = sum(max(c.values()) for c in sides.values() if c)
    return 100.0 * best / len(answers) if answers else None


def balanced_by_finding(findings: Sequence[str | None], truth: Sequence[bool | None],
                        predicted: Sequence[bool | None]) -> dict[str, dict[str, Any]]:
    """Per finding: present and absent cases, how many of each were answered right, sensitivity,
    specificity and balanced accuracy in percent (None where one side never occurs).
    Questions with no finding or a non-yes/no reference are left out; a prediction that is
    neither yes nor no counts as wrong."""
    tally: dict[str, Counter] = {}
    for finding, present, said in zip(findings, truth, predicted):
        if finding is None or present is None:
            continue
        side = "present" if present else "absent"
        counts = tally.setdefault(finding, Counter())
        counts[side] += 1
        counts[f"{side}_right"] += said is present
    table = {}
    for finding in sorted(tally):
        c = tally[finding]
        sensitivity = 100.0 * c["present_right"] / c["present"] if c["present"] else None
        specificity = 100.0 * c["absent_right"] / c["absent"] if c["absent"] else None
        balanced = (sensitivity + specificity) / 2 if sensitivity is not None and specificity is not None else None
        table[finding] = {"present": c["present"], "present_right": c["present_right"],
                          "absent": c["absent"], "absent_right": c["absent_right"],
                          "sensitivity": sensitivity, "specificity": specificity, "balanced_accuracy": balanced}
    return table


def macro_balanced(table: dict[str, dict[str, Any]]) -> float | None:
    """Mean balanced accuracy over the findings that occur both present and absent."""
    values = [row["balanced_accuracy"] for row in table.values() if row["balanced_accuracy"] is not None]
    return sum(values) / len(values) if values else None


def rule_consistency(questions: Sequence[str], choices: Sequence[str | None]) -> dict[str, Any] | None:
    """How many longitudinal answers the 3D-RAD rule allows for the priors the question states."""
    allowed = []
    for question, choice in zip(questions, choices):
        priors = prompts.priors_in_question(question)
        if priors is not None:
            allowed.append(choice is not None and choice.upper() in ("AB" if 1 in priors else "CD"))
    if not allowed:
        return None
    return {"n": len(allowed), "consistent": sum(allowed), "percent": 100.0 * sum(allowed) / len(allowed)}


def box_iou(a: Sequence[float] | None, b: Sequence[float]) -> float:
    """Intersection over union of two 3D boxes (z1, y1, x1, z2, y2, x2); no box scores 0."""
    if a is None:
        return 0.0
    inter = 1.0
    for i in range(3):
        inter *= max(0.0, min(a[i + 3], b[i + 3]) - max(a[i], b[i]))

    def volume(box: Sequence[float]) -> float:
        return max(0.0, box[3] - box[0]) * max(0.0, box[4] - box[1]) * max(0.0, box[5] - box[2])

    union = volume(a) + volume(b) - inter
    return inter / union if union > 0 else 0.0


def _iou_figures(ious: Sequence[float], answered: Sequence[bool]) -> dict[str, float]:
    return {"n": len(ious), "answered": 100.0 * sum(answered) / len(ious),
            "iou_mean": 100.0 * sum(ious) / len(ious),
            "iou_at_50": 100.0 * sum(i >= IOU_HIT for i in ious) / len(ious)}


def box_figures(findings: Sequence[str], truth: Sequence[Sequence[float]],
                predicted: Sequence[Sequence[float] | None]) -> dict[str, Any]:
    """IoU in percent (mean; share of boxes with IoU >= 0.5; share answered with a box at all),
    overall and per finding."""
    ious = [box_iou(p, t) for p, t in zip(predicted, truth)]
    answered = [p is not None for p in predicted]
    by_finding: dict[str, list[int]] = {}
    for k, finding in enumerate(findings):
        by_finding.setdefault(finding, []).append(k)
    return {**_iou_figures(ious, answered),
            "by_finding": {f: _iou_figures([ious[k] for k in ks], [answered[k] for k in ks])
                           for f, ks in sorted(by_finding.items())}}
