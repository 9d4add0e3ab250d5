"""Stage 3's second part, the box refiner (nets.refine): a crop of the input around a located box
to the box again, at the input's resolution.

Trained on the training lesions' true boxes moved and resized as the box head misses them (its
validation boxes are off by about a fifth of a small lesion's size and a voxel or two), so it
learns to find the edges wherever in its crop they lie; cheap, as the crops are cut once.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from model.nets.refine import BoxRefiner, crop_volumes, crop_windows, window_targets
from model.training.default.data import Dataset
from model.training.default.recipe import Recipe
from model.training.default.steps import Clock, fit_on_samples

MOVED = 0.25  # sd of the centre's move, in the box's sizes ...
SHIFTED = 1.5  # ... plus this many input voxels
RESIZED = 0.3  # sd of the log size's change


def missed_boxes(truth: torch.Tensor, image_size: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """(N, 6) true boxes moved and resized at random, as a located box misses them."""
    voxel = torch.tensor([1.0 / s for s in image_size])
    size = (truth[:, 3:] - truth[:, :3]).clamp_min(float(voxel.min()))
    centre = (truth[:, :3] + truth[:, 3:]) / 2
    centre = centre + torch.randn(centre.shape, generator=generator) * (MOVED * size + SHIFTED * voxel)
    half = size * torch.exp(torch.randn(size.shape, generator=generator) * RESIZED) / 2
    return torch.cat((centre - half, centre + half), dim=1)


def refiner_samples(data: Dataset, slots: dict[int, int], per_lesion: int, image_size: Sequence[int],
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops (float16), finding slots and window targets: `per_lesion` missed boxes of each lesion
    of a refined finding in `data`."""
    generator = torch.Generator().manual_seed(seed)
    crops, slot_of, targets = [], [], []
    for v, lesions in enumerate(data.lesions):
        mine = [(slots[label], box) for label, box in lesions if label in slots]
        if not mine:
            continue
        truth = torch.tensor([box for _, box in mine for _ in range(per_lesion)], dtype=torch.float32)
        centre, extent = crop_windows(missed_boxes(truth, image_size, generator), image_size)
        crops.append(crop_volumes(data.pixels[v:v + 1], centre, extent).half())
        targets.append(window_targets(truth, centre, extent))
        slot_of += [slot for slot, _ in mine for _ in range(per_lesion)]
    if not crops:
        raise ValueError("no lesion of a refined finding in the training data: nothing to refine")
    return torch.cat(crops), torch.tensor(slot_of), torch.cat(targets)


def fit_refiner(refiner: BoxRefiner, crops: torch.Tensor, slot_of: torch.Tensor, targets: torch.Tensor,
                recipe: Recipe, clock: Clock) -> list[dict[str, Any]]:
    """`recipe.box_refine_steps` steps of 64 crops, each flipped left-right half the time (the
    chest's two sides are alike; the x targets flip with it): smooth L1 on the window targets."""
    def loss_of(pick: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, target = crops[pick].float(), targets[pick].clone()
        flip = torch.rand(len(pick), generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        target[flip, 2] = -target[flip, 2]
        return F.smooth_l1_loss(refiner(batch, slot_of[pick]), target, beta=0.1)
    return fit_on_samples(refiner, len(crops), 64, recipe.box_refine_steps, recipe.seed + 4, "refine", recipe, clock,
                          loss_of)


def train_refiner(model: Any, data: Dataset, names: Sequence[str], recipe: Recipe) -> dict[str, Any]:
    """Adds and trains the model's refiner for these located findings (in place)."""
    readout = list(model.config.vision_finding_names)
    refiner = model.vision.add_refiner([readout.index(n) for n in names])
    torch.manual_seed(recipe.seed + 4)
    slots = {data.label_names.index(n): k for k, n in enumerate(names)}
    crops, slot_of, targets = refiner_samples(data, slots, recipe.box_refine_crops, refiner.image_size,
                                              recipe.seed + 4)
    print(f"[train] stage 3 (the box refiner) on {len(crops)} crops of {len(names)} findings", flush=True)
    clock = Clock("refiner", recipe.box_refine_steps, recipe.stage2_minutes, 0.0)
    log = fit_refiner(refiner, crops, slot_of, targets, recipe, clock)
    return {"crops": len(crops), "steps_done": recipe.box_refine_steps, "log": log,
            "seconds": round(clock.elapsed())}
