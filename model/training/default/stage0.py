"""Stage 0, the stem's detectors: the convolutional stem learns where each finding is on crops of
the training volumes, half of them centred on a lesion, before the tower sees whole volumes.

Why: on whole volumes a nodule, a consolidation or an enlarged node is a few hundred of half a
million voxels, and every other finding and the anatomy vary around it. Trained that way (labels
per scan, per patch, dense box targets, pairs of one patient's scans: stage 1) the tower learnt the
four findings that change the whole scan and stayed at chance on the rest, and so did a plain CNN
(model card, "what was tried"). Crops centred on lesions make every step show many findings
large, beside crops of normal anatomy, and the same dense box targets then teach the local
detectors in a few thousand cheap steps. Stage 1 starts from them.
"""
from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.training.default.checkpoint import Checkpoints
from model.training.default.data import Dataset, box_targets, lesion_ids
from model.training.default.recipe import Recipe
from model.training.default.steps import Clock, lr_factor, optimiser_step, set_lr


def crop_plan(rng: random.Random, data: Dataset, grid: tuple[int, int, int], crop: tuple[int, int, int],
              count: int, positive: float) -> list[tuple[int, tuple[int, int, int]]]:
    """(volume, crop origin in feature-map cells) for `count` crops: a share `positive` centred
    (give or take a third of the crop) on a lesion drawn uniformly from all lesions (then on one of
    its parts, so that a cluster of forty calcified spots is drawn no more often than a nodule),
    the rest anywhere."""
    grouped: dict[tuple[int, int], list[tuple[float, ...]]] = {}
    for v, (boxes, ids) in enumerate(zip(data.boxes, lesion_ids(data))):
        for (_, box), lesion in zip(boxes, ids):
            grouped.setdefault((v, lesion), []).append(box)
    lesions = list(grouped.items())
    plan = []
    for _ in range(count):
        if lesions and rng.random() < positive:
            (volume, _), parts = lesions[rng.randrange(len(lesions))]
            box = parts[rng.randrange(len(parts))] if len(parts) > 1 else parts[0]
            centre = [(box[i] + box[i + 3]) / 2 * grid[i] for i in range(3)]
            origin = tuple(min(max(0, int(centre[i] - crop[i] / 2 + rng.uniform(-crop[i] / 3, crop[i] / 3))),
                               grid[i] - crop[i]) for i in range(3))
        else:
            volume = rng.randrange(len(data.names))
            origin = tuple(rng.randint(0, grid[i] - crop[i]) for i in range(3))
        plan.append((volume, origin))  # type: ignore[arg-type]
    return plan


def crops(data: Dataset, plan: list[tuple[int, tuple[int, int, int]]], stride: tuple[int, int, int],
          crop: tuple[int, int, int], grid: tuple[int, int, int], prepare: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The planned crops of the standardised volumes and their dense box targets (crop cells)."""
    volumes = sorted({v for v, _ in plan})
    inputs = dict(zip(volumes, prepare(data.pixels[volumes]).float()))
    targets = dict(zip(volumes, box_targets([data.boxes[v] for v in volumes], grid, len(data.label_names), margin=0)))
    xs, ts = [], []
    for volume, o in plan:
        xs.append(inputs[volume][:, o[0] * stride[0]:(o[0] + crop[0]) * stride[0], o[1] * stride[1]:(o[1] + crop[1]) * stride[1],
                                 o[2] * stride[2]:(o[2] + crop[2]) * stride[2]])
        ts.append(targets[volume][:, o[0]:o[0] + crop[0], o[1]:o[1] + crop[1], o[2]:o[2] + crop[2]])
    return torch.stack(xs), torch.stack(ts)


def train_stem(stem: nn.Module, head: nn.Conv3d, data: Dataset, recipe: Recipe, prepare: Any,
               checkpoints: Checkpoints) -> dict[str, Any]:
    """Stage 0 on `stem` (a ConvStem) and the dense `head` reading its feature map, in place.
    Resumed when a finished stage 0 of this recipe is saved."""
    saved = checkpoints.load("stage0")
    if saved is not None and saved.get("finished"):
        stem.load_state_dict(saved["stem"])
        head.load_state_dict(saved["head"])
        return saved["result"]
    with torch.no_grad():
        grid = tuple(int(n) for n in stem.features(torch.zeros(1, 1, *recipe.image_size)).shape[2:])
    stride = tuple(size // cells for size, cells in zip(recipe.image_size, grid))
    crop = tuple(min(g, max(1, c // s)) for g, c, s in zip(grid, recipe.stem_crop, stride))
    parameters = [*stem.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW([{"params": parameters, "base_lr": recipe.stem_lr}], lr=recipe.stem_lr,
                                  weight_decay=1e-4)
    rng = random.Random(recipe.seed + 1)
    pos_weight = torch.full((len(data.label_names), 1, 1, 1), recipe.stem_pos_weight)
    clock = Clock("stem", recipe.stem_steps, recipe.stage1_minutes, 0.0)
    log = []
    stem.train()
    for step in range(1, recipe.stem_steps + 1):
        set_lr(optimiser, lr_factor(step - 1, recipe.stem_steps, recipe.warmup_steps))
        plan = crop_plan(rng, data, grid, crop, recipe.stem_images, recipe.stem_positive)
        x, target = crops(data, plan, stride, crop, grid, prepare)
        loss = F.binary_cross_entropy_with_logits(head(stem.features(x)), target, pos_weight=pos_weight)
        optimiser_step(optimiser, loss, parameters)
        if step % 10 == 0 or step == recipe.stem_steps:
            log.append({"step": step, "dense": round(loss.item(), 4)})
        if step % 100 == 0 or step == recipe.stem_steps:
            clock.show(step, dense=loss.item())
    result = {"steps_done": recipe.stem_steps, "log": log, "seconds": round(clock.elapsed()),
              "crop_cells": list(crop), "grid": list(grid)}
    checkpoints.save("stage0", {"step": recipe.stem_steps, "finished": True, "stem": stem.state_dict(),
                                "head": head.state_dict(), "result": result})
    return result
