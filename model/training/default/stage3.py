"""Stage 3, the box head: where each box-question finding is, read off the final stem's map.

The stem and its finding readout are final after stage 1 (stage 2 trains the projector and the
language model only), so the box head (nets.findings.FindingBoxes) learns on their frozen
features: every cell the readout is taught to mark for a lesion (its box grown by one cell)
learns the offset to the lesion's centre and its log size. At most `box_cells` cells per
lesion, so a pleural effusion of a thousand cells does not drown a nodule of one. Cheap: one
stem pass per volume, then a small MLP on cached feature vectors.

The head then answers only the findings whose validation boxes it finds more often than the
language model's own written boxes (a large effusion's extent is read better from the whole
image than from the cells around one peak); for the rest the language model keeps writing them.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from model.evaluation.measures import IOU_HIT, box_iou
from model.inference.batched import Question, answer_batch
from model.inference.vlm import VLM
from model.training.default.checkpoint import Checkpoints
from model.training.default.data import Dataset, box_cells
from model.training.default.recipe import Recipe
from model.training.default.refine import train_refiner
from model.training.default.steps import Clock, fit_on_samples


def box_findings(data: Dataset) -> list[str]:
    """The findings the training data asks box questions about, in label order (a variant that
    never hears of a finding is not taught to locate it either)."""
    asked = {e.finding for tasks in data.by_volume.values() for e in tasks.get("box", [])}
    return [name for name in data.label_names if name in asked]


def cell_samples(features: torch.Tensor, lesions: Sequence[tuple[int, Sequence[float]]], slots: dict[int, int],
                 rng: random.Random, per_lesion: int, context: int = 0
                 ) -> tuple[list[torch.Tensor], list[int], list[list[float]]]:
    """Features (C, k, k, k), k = 1 + 2 * context, of one volume's cells around each lesion of a
    located finding (zero beyond the map, as the head's padding sees it), their slot in the box
    head, and their targets (centre offset, log size, in cells)."""
    grid = features.shape[1:]
    padded = F.pad(features, (context,) * 6)
    k = 1 + 2 * context
    vectors, slot_of, targets = [], [], []
    for label, box in lesions:
        if label not in slots:
            continue
        lo, hi = box_cells(box, grid, margin=1)
        cells = [(z, y, x) for z in range(lo[0], hi[0]) for y in range(lo[1], hi[1]) for x in range(lo[2], hi[2])]
        centre = [(box[i] + box[i + 3]) / 2 * grid[i] for i in range(3)]
        size = [max((box[i + 3] - box[i]) * grid[i], 1e-3) for i in range(3)]
        for z, y, x in rng.sample(cells, min(per_lesion, len(cells))):
            vectors.append(padded[:, z:z + k, y:y + k, x:x + k])
            slot_of.append(slots[label])
            targets.append([centre[0] - z - 0.5, centre[1] - y - 0.5, centre[2] - x - 0.5, *map(math.log, size)])
    return vectors, slot_of, targets


def cell_vectors(model: Any, data: Dataset, slots: dict[int, int], rng: random.Random, per_lesion: int,
                 context: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    vectors, slot_of, targets = [], [], []
    tower = model.vision.vision_tower
    with torch.no_grad():
        for start in range(0, len(data.names), 16):
            batch = [v for v in range(start, min(start + 16, len(data.names))) if data.lesions[v]]
            if not batch:
                continue
            features = tower.encode(data.pixels[batch].float())[1]
            for k, v in enumerate(batch):
                got = cell_samples(features[k], data.lesions[v], slots, rng, per_lesion, context)
                vectors += got[0]
                slot_of += got[1]
                targets += got[2]
    if not vectors:
        raise ValueError("no lesion of a box-question finding in the training data: nothing to locate")
    return torch.stack(vectors), torch.tensor(slot_of), torch.tensor(targets)


def located_iou(model: Any, data: Dataset, names: Sequence[str]) -> dict[str, float]:
    """Share (%) of `data`'s lesions of each located finding whose box the model's own `locate`
    finds with IoU >= 0.5 (in the model input's 0-1 coordinates, as box questions are scored)."""
    index = {name: data.label_names.index(name) for name in names}
    readout = list(model.config.vision_finding_names)
    hits: dict[str, list[bool]] = {name: [] for name in names}
    model.vision.eval()
    for v, lesions in enumerate(data.lesions):
        wanted = [(name, box) for name in names for label, box in lesions if label == index[name]]
        if not wanted:
            continue
        found = model.vision.locate(data.pixels[v:v + 1].float())
        for name, box in wanted:
            hits[name].append(box_iou(found[readout.index(name)], box) >= IOU_HIT)
    return {name: round(100.0 * sum(h) / len(h), 1) for name, h in hits.items() if h}


def written_iou(model: Any, tokenizer: Any, data: Dataset, names: Sequence[str]) -> dict[str, float]:
    """As `located_iou`, for the boxes the language model writes in answer to `data`'s box
    questions (the model without a box head, as the chat would ask it)."""
    vlm = VLM(model, tokenizer)
    hits: dict[str, list[bool]] = {name: [] for name in names}
    for v, tasks in data.by_volume.items():
        asked = [e for e in tasks.get("box", []) if e.finding in hits]
        if not asked:
            continue
        questions = [Question(tokenizer.decode(e.prompt_ids).strip()) for e in asked]
        for e, answer in zip(asked, answer_batch(vlm, vlm.prepare(data.pixels[v].float()), questions, 64)):
            truth = [box for label, box in data.lesions[v] if data.label_names[label] == e.finding]
            hits[e.finding].append(bool(truth) and box_iou(answer.box_normalized, truth[0]) >= IOU_HIT)
    vlm.clear_cache()
    return {name: round(100.0 * sum(h) / len(h), 1) for name, h in hits.items() if h}


def fit_head(head: Any, vectors: torch.Tensor, slot_of: torch.Tensor, targets: torch.Tensor, recipe: Recipe,
             clock: Clock) -> list[dict[str, Any]]:
    """`recipe.box_steps` steps of 1024 sampled cells: smooth L1 on the centre offset, L1 on the log size."""
    def loss_of(pick: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        out = head(vectors[pick])  # (N, findings, 6, k, k, k): the middle cell is the sampled one
        middle = out.shape[-1] // 2
        predicted = out[..., middle, middle, middle][torch.arange(len(pick)), slot_of[pick]]
        return F.smooth_l1_loss(predicted[:, :3], targets[pick, :3]) + F.l1_loss(predicted[:, 3:], targets[pick, 3:])
    return fit_on_samples(head, len(vectors), 1024, recipe.box_steps, recipe.seed + 3, "box", recipe, clock, loss_of)


def _attach(model: Any, kept: Sequence[str], context: int, state: dict[str, Any]) -> None:
    """The model's box head for the `kept` findings only, with their trained `state` (no head
    when none is kept), and the config that rebuilds it at load."""
    readout = list(model.config.vision_finding_names)
    if kept:
        model.vision.add_boxes([readout.index(n) for n in kept], context).load_state_dict(state)
    else:
        model.vision.box_findings, model.vision.boxes = (), None
    model.config.vision_box_findings = list(kept)
    model.config.vision_box_context = context


def _attach_refiner(model: Any, redrawn: Sequence[str], state: dict[str, Any] | None) -> None:
    """The model's box refiner for the `redrawn` findings only (none when empty), with their
    trained `state`, and the config that rebuilds it at load."""
    readout = list(model.config.vision_finding_names)
    if redrawn:
        model.vision.add_refiner([readout.index(n) for n in redrawn]).load_state_dict(state or {})
    else:
        model.vision.refined, model.vision.refiner = (), None
    model.config.vision_box_refined = list(redrawn)


def _refine(model: Any, train_data: Dataset, valid_data: Dataset, kept: Sequence[str], located: dict[str, float],
            recipe: Recipe) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """The refiner trained for the `kept` findings, its validation boxes, the findings it
    redraws better than the box head alone and its weights for those."""
    result = train_refiner(model, train_data, kept, recipe)
    refined = located_iou(model, valid_data, kept)
    redrawn = [n for n in kept if refined.get(n, 0.0) > located.get(n, 0.0)]
    state = model.vision.refiner.keep([kept.index(n) for n in redrawn]).state_dict() if redrawn else {}
    print(f"[check] validation boxes with IoU >= 0.5 (%), refined {refined}: the refiner redraws "
          f"{redrawn or 'none'}", flush=True)
    return {**result, "valid_iou_at_50": refined, "redrawn": redrawn}, redrawn, state


def train_boxes(model: Any, tokenizer: Any, train_data: Dataset, valid_data: Dataset, recipe: Recipe,
                checkpoints: Checkpoints) -> dict[str, Any] | None:
    """Stage 3 in place: adds the model's box head, trains it and keeps it for the findings it
    locates better than the language model writes (None when the recipe has no stage 3)."""
    names = box_findings(train_data) if recipe.box_steps else []
    if not names:
        return None
    readout = list(model.config.vision_finding_names)
    saved = checkpoints.load("stage3")
    if saved is not None and saved.get("finished"):
        _attach(model, saved["result"]["kept"], recipe.box_context, saved["head"])
        _attach_refiner(model, saved["result"].get("refiner", {}).get("redrawn", []), saved.get("refiner"))
        return saved["result"]
    written = written_iou(model, tokenizer, valid_data, names)
    head = model.vision.add_boxes([readout.index(n) for n in names], recipe.box_context)
    torch.manual_seed(recipe.seed + 3)
    rng = random.Random(recipe.seed + 3)
    clock = Clock("boxes", recipe.box_steps, recipe.stage2_minutes, 0.0)
    slots = {train_data.label_names.index(n): k for k, n in enumerate(names)}
    vectors, slot_of, targets = cell_vectors(model, train_data, slots, rng, recipe.box_cells, recipe.box_context)
    print(f"[train] stage 3 (the box head) on {len(vectors)} cells of {len(names)} findings: {names}", flush=True)
    log = fit_head(head, vectors, slot_of, targets, recipe, clock)
    located = located_iou(model, valid_data, names)
    kept = [n for n in names if located.get(n, 0.0) > written.get(n, 0.0)]
    _attach(model, kept, recipe.box_context, head.keep([names.index(n) for n in kept]).state_dict() if kept else {})
    result = {"findings": names, "kept": kept, "cells": len(vectors), "steps_done": recipe.box_steps, "log": log,
              "valid_iou_at_50": located, "valid_written_iou_at_50": written, "seconds": round(clock.elapsed())}
    print(f"[check] validation boxes with IoU >= 0.5 (%), box head {located}, written by the language model "
          f"{written}: the head answers {kept or 'none'}", flush=True)
    redrawn: list[str] = []
    refiner_state: dict[str, Any] = {}
    if kept and recipe.box_refine_steps:
        result["refiner"], redrawn, refiner_state = _refine(model, train_data, valid_data, kept, located, recipe)
    _attach_refiner(model, redrawn, refiner_state)
    checkpoints.save("stage3", {"step": recipe.box_steps, "finished": True, "result": result,
                                "head": model.vision.boxes.state_dict() if kept else {}, "refiner": refiner_state})
    return result
