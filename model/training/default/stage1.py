"""Stage 1, alignment: the vision tower learns the CT-RATE labels through an auxiliary head, on
inputs standardised by the training set's mean volume (folded into the patch embedding at save).
"""
from __future__ import annotations

import random
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.training.default.data import Dataset
from model.training.default.recipe import Recipe
from model.training.default.steps import (
    Clock,
    LabelHead,
    augment,
    identity,
    lr_factor,
    make_optimiser,
    optimiser_step,
    set_lr,
)


class InputStandardiser:
    """Per-voxel centring and one global scale of the model input, for training the tower only.

    Phantoms differ from each other by a few percent of the [0, 1] range, so a tower fed raw
    inputs mostly sees the common anatomy; subtracting the training set's mean volume leaves the
    findings. The step is linear and the patch embedding is linear with a per-patch position term,
    so `fold_into` moves it into the weights exactly and the saved model takes ordinary inputs."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.mean = pixels.float().mean(0, keepdim=True)
        self.scale = float((pixels.float() - self.mean).std())

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() - self.mean) / self.scale

    @torch.no_grad()
    def fold_into(self, tower: nn.Module) -> None:
        """W(x - m)/s + b + pos = (W/s)x + b + (pos - (W/s)m): same outputs on raw inputs."""
        embedding = tower.patch_embedding
        flatten, linear = embedding.patch_embeddings[0], embedding.patch_embeddings[1]
        linear.weight.div_(self.scale)
        embedding.position_embeddings.sub_(flatten(self.mean) @ linear.weight.T)



@torch.no_grad()
def label_auc(model: Any, head: "LabelHead", data: Dataset, prepare: Any = identity) -> dict[str, float]:
    """Held-out ROC AUC of the label head per finding (findings present in some but not all
    volumes): what the vision tower learned to see, reported in the model card."""
    from sklearn.metrics import roc_auc_score

    model.vision.eval()
    scores = torch.cat([head(model.vision(prepare(data.pixels[k : k + 16]))) for k in range(0, len(data.pixels), 16)])
    model.vision.train()
    return {name: round(float(roc_auc_score(data.labels[:, i], scores[:, i])), 3)
            for i, name in enumerate(data.label_names) if 0 < int(data.labels[:, i].sum()) < len(data.labels)}



def train_alignment(model: Any, head: LabelHead, data: Dataset, valid_data: Dataset, recipe: Recipe) -> dict[str, Any]:
    """Stage 1: vision tower + projector learn the 18 findings from the image: per label through
    the head on the projected features, per patch through a linear head on the tower's tokens.
    With `input_norm` the tower trains on standardised inputs, folded into its weights at the end."""
    prepare = InputStandardiser(data.pixels) if recipe.input_norm else identity
    patch_head = nn.Linear(model.config.mm_hidden_size, len(data.label_names))
    heads = [*head.parameters(), *patch_head.parameters()]
    parameters = [*model.vision.parameters(), *heads]
    optimiser = make_optimiser(list(model.vision.parameters()), heads, recipe)
    generator = torch.Generator().manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    clock = Clock("alignment", recipe.stage1_steps, recipe.stage1_minutes)
    log, done = [], 0
    model.vision.train()
    for step in range(1, recipe.stage1_steps + 1):
        if clock.over():
            break
        done = step
        set_lr(optimiser, lr_factor(step - 1, recipe.stage1_steps, recipe.warmup_steps))
        volumes = rng.sample(range(len(data.names)), min(recipe.stage1_images, len(data.names)))
        tokens = model.vision.vision_tower(prepare(augment(data.pixels[volumes].float(), generator)))
        label_loss = F.binary_cross_entropy_with_logits(head(model.vision.mm_projector(tokens)), data.labels[volumes])
        patch_loss = F.binary_cross_entropy_with_logits(patch_head(tokens), data.patch_labels[volumes])
        loss = label_loss + recipe.patch_weight * patch_loss
        optimiser_step(optimiser, loss, parameters)
        if step % 10 == 0 or step == recipe.stage1_steps:
            log.append({"step": step, "aux": round(label_loss.item(), 4), "patch": round(patch_loss.item(), 4)})
            clock.show(step, aux=label_loss.item(), patch=patch_loss.item())
    seconds = round(time.perf_counter() - clock.start)
    auc = label_auc(model, head, valid_data, prepare)
    if isinstance(prepare, InputStandardiser):
        prepare.fold_into(model.vision.vision_tower)
    print(f"[check] held-out label AUC after stage 1: {auc}", flush=True)
    return {"steps_done": done, "log": log, "seconds": seconds, "valid_label_auc": auc}
