"""Stage 1, alignment: the vision tower learns the CT-RATE labels through an auxiliary head, on
inputs standardised by the training set's mean volume (folded into the patch embedding at save).
"""
from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.nets.vision import ConvStem
from model.training.default.checkpoint import Checkpoints
from model.training.default.data import (
    Dataset,
    box_targets,
    paired_volumes,
    patient_groups,
)
from model.training.default.recipe import Recipe
from model.training.default.stage0 import train_stem
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
from model.training.default.tower import load_vision
from model.training.rng import random_state


class DenseHead:
    """Per-label logits on the convolutional stem's last feature map (training only): where each
    finding lies, at a quarter (depth 0) or an eighth (depth 1) of the input's resolution in plane.
    Dense targets train the stem's local detectors directly; a label per scan or per 8x16x16 patch
    reaches them through a global pool that the anatomy dominates. Reads the stem's features
    through a forward hook; stage 0 trains the same head on crops first."""

    def __init__(self, tower: nn.Module, n_labels: int, head: nn.Conv3d | None = None) -> None:
        """`head`: the model's own finding readout (nets.findings), else one for training only."""
        stem = tower.patch_embedding.patch_embeddings
        if not isinstance(stem, ConvStem):
            raise ValueError("dense targets need the convolutional stem (recipe.vision_stem > 0)")
        self.stem = stem
        self.head = head if head is not None else nn.Conv3d(stem.feature_channels, n_labels, 1)
        self.features: torch.Tensor | None = None
        self.hook = stem.convs[-2].register_forward_hook(self._keep)  # the last activation before the tokens

    def _keep(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self.features = output

    def logits(self) -> torch.Tensor:
        return self.head(self.features)

    def remove(self) -> None:
        self.hook.remove()


class InputStandardiser:
    """Per-voxel centring and one global scale of the model input, for training the tower only.

    Phantoms differ from each other by a few percent of the [0, 1] range, so a tower fed raw
    inputs mostly sees the common anatomy; subtracting the training set's mean volume leaves the
    findings. The step is linear and the patch embedding is linear with a per-patch position term,
    so `fold_into` moves it into the weights exactly and the saved model takes ordinary inputs."""

    def __init__(self, pixels: torch.Tensor, chunk: int = 64) -> None:
        """Mean volume and spread in float64 over chunks of volumes: a float32 copy of thousands of
        float16 volumes at once would take several GB."""
        total = torch.zeros_like(pixels[:1], dtype=torch.float64)
        for k in range(0, len(pixels), chunk):
            total += pixels[k : k + chunk].double().sum(0, keepdim=True)
        mean = total / len(pixels)
        squares = sum(float(((pixels[k : k + chunk].double() - mean) ** 2).sum()) for k in range(0, len(pixels), chunk))
        self.mean = mean.float()
        self.scale = (squares / (pixels.numel() - 1)) ** 0.5  # torch.std's (unbiased) definition

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() - self.mean) / self.scale

    @torch.no_grad()
    def fold_into(self, tower: nn.Module) -> None:
        """W(x - m)/s + b + pos = (W/s)x + b + (pos - (W/s)m): same outputs on raw inputs. A
        convolutional stem keeps the mean volume and scale as its own weights instead."""
        embedding = tower.patch_embedding
        if isinstance(embedding.patch_embeddings, ConvStem):
            embedding.patch_embeddings.reference.copy_(self.mean)
            embedding.patch_embeddings.scale.fill_(self.scale)
            return
        flatten, linear = embedding.patch_embeddings[0], embedding.patch_embeddings[1]
        linear.weight.div_(self.scale)
        embedding.position_embeddings.sub_(flatten(self.mean) @ linear.weight.T)



def _auc_per_label(data: Dataset, scores: torch.Tensor) -> dict[str, float]:
    """ROC AUC per finding present in some but not all of `data`'s volumes."""
    from sklearn.metrics import roc_auc_score

    return {name: round(float(roc_auc_score(data.labels[:, i], scores[:, i])), 3)
            for i, name in enumerate(data.label_names) if 0 < int(data.labels[:, i].sum()) < len(data.labels)}


@torch.no_grad()
def label_auc(model: Any, head: LabelHead, data: Dataset, prepare: Any = identity) -> dict[str, float]:
    """Held-out ROC AUC of the label head per finding: what the vision tower learned to see,
    reported in the model card."""
    model.vision.eval()
    scores = torch.cat([head(model.vision.project(*model.vision.tower(prepare(data.pixels[k : k + 16])),
                                                 stage2_parts=False)) for k in range(0, len(data.pixels), 16)])
    model.vision.train()
    return _auc_per_label(data, scores)


@torch.no_grad()
def readout_auc(model: Any, data: Dataset) -> dict[str, float]:
    """Held-out ROC AUC of the finding readout's maximum over the scan, per finding (empty without
    a readout): the signal the language model reads directly. A small finding a few map cells
    wide can be clear there and diluted in the pooled tokens the label head reads (the shipped
    model of session 6: arterial calcification 0.89-0.96 here, 0.63 at the label head)."""
    if model.vision.findings is None:
        return {}
    model.vision.eval()
    maxima = torch.cat([model.vision.tower(data.pixels[k : k + 16].float())[1].flatten(2).amax(-1)
                        for k in range(0, len(data.pixels), 16)])
    model.vision.train()
    return _auc_per_label(data, maxima)



def train_alignment(model: Any, head: LabelHead, data: Dataset, valid_data: Dataset, recipe: Recipe,
                    checkpoints: Checkpoints | None = None) -> dict[str, Any]:
    """Stage 1: vision tower + projector learn the 18 findings from the image: per label through
    the head on the projected features, per patch through a linear head on the tower's tokens.
    With `input_norm` the tower trains on standardised inputs, folded into its weights at the end.
    A saved checkpoint (`checkpoints`) is resumed, also one of a finished stage."""
    checkpoints = checkpoints or Checkpoints(None, recipe)
    saved = checkpoints.load("stage1")
    if saved is not None:
        load_vision(model, saved["vision"])
        head.load_state_dict(saved["head"])
        if saved.get("finished"):
            return saved["result"]
    prepare = InputStandardiser(data.pixels) if recipe.input_norm else identity
    patch_head = nn.Linear(model.config.mm_hidden_size, len(data.label_names))
    heads = [*head.parameters(), *patch_head.parameters()]
    readout = model.vision.findings
    dense = DenseHead(model.vision.vision_tower, len(data.label_names), readout.head if readout is not None else None
                      ) if recipe.dense_weight else None
    stem_result: dict[str, Any] | None = None
    if dense is not None:
        if readout is None:  # the model's own readout trains with the tower
            heads += list(dense.head.parameters())
        if recipe.stem_steps and saved is None:
            stem_result = train_stem(dense.stem, dense.head, data, recipe, prepare, checkpoints)
            print(f"[train] stage 0 (the stem's detectors on lesion-centred crops) done in "
                  f"{stem_result['seconds']} s", flush=True)
    parameters = [*model.vision.parameters(), *heads]
    optimiser = make_optimiser(list(model.vision.parameters()), heads, recipe)
    generator = torch.Generator().manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    log, done, first, spent = [], 0, 1, 0.0
    if saved is not None:
        patch_head.load_state_dict(saved["patch_head"])
        if dense is not None:
            dense.head.load_state_dict(saved["dense_head"])
        optimiser.load_state_dict(saved["optimiser"])
        generator.set_state(saved["generator"])
        rng.setstate(random_state(saved["rng"]))
        log, done, spent = saved["log"], saved["step"], saved["seconds"]
        first = done + 1
    groups = patient_groups(data.names) if recipe.paired else []
    clock = Clock("alignment", recipe.stage1_steps, recipe.stage1_minutes, spent)
    # rare findings weigh more (a label present in 5 % of scans, a nodule in 1 of 256 patches, is
    # otherwise learnt as "never"): present cases by sqrt(absent / present), per label
    pos_weight = _positive_weight(data.labels) if recipe.balance_labels else None
    patch_pos_weight = _positive_weight(data.patch_labels.flatten(0, 1)) if recipe.balance_labels else None
    model.vision.train()
    for step in range(first, recipe.stage1_steps + 1):
        if clock.over():
            break
        done = step
        set_lr(optimiser, lr_factor(step - 1, recipe.stage1_steps, recipe.warmup_steps))
        volumes = paired_volumes(rng, groups, recipe.stage1_images) if groups else \
            rng.sample(range(len(data.names)), min(recipe.stage1_images, len(data.names)))
        tokens, findings = model.vision.tower(prepare(augment(data.pixels[volumes].float(), generator)))
        label_logits = head(model.vision.project(tokens, findings, stage2_parts=False))
        label_loss = F.binary_cross_entropy_with_logits(label_logits, data.labels[volumes], pos_weight=pos_weight)
        patch_logits = patch_head(tokens)
        patch_loss = F.binary_cross_entropy_with_logits(patch_logits, data.patch_labels[volumes],
                                                        pos_weight=patch_pos_weight)
        loss = label_loss + recipe.patch_weight * patch_loss
        if findings is not None:  # the readout's maximum says whether the scan has the finding
            loss = loss + F.binary_cross_entropy_with_logits(findings.flatten(2).amax(-1), data.labels[volumes])
        if dense is not None:
            logits = findings if findings is not None else dense.logits()  # with a readout: its head's map
            target = box_targets([data.boxes[v] for v in volumes], logits.shape[2:], logits.shape[1])
            loss = loss + recipe.dense_weight * F.binary_cross_entropy_with_logits(
                logits, target, pos_weight=torch.full((logits.shape[1], 1, 1, 1), recipe.dense_pos_weight))
        if groups and recipe.pair_weight:
            rank = pair_rank_loss(label_logits, data.labels[volumes]) + \
                pair_rank_loss(patch_logits, data.patch_labels[volumes])
            loss = loss + recipe.pair_weight * rank
        optimiser_step(optimiser, loss, parameters)
        if step % 10 == 0 or step == recipe.stage1_steps:
            log.append({"step": step, "aux": round(label_loss.item(), 4), "patch": round(patch_loss.item(), 4)})
            clock.show(step, aux=label_loss.item(), patch=patch_loss.item())
        if step % recipe.auc_every == 0 and step < recipe.stage1_steps:
            auc = label_auc(model, head, valid_data, prepare)
            log.append({"step": step, "valid_label_auc": auc})
            print(f"[check] stage-1 step {step}: held-out label AUC {auc}", flush=True)
        if checkpoints.due(step):
            checkpoints.save("stage1", {"step": step, "vision": model.vision.state_dict(), "head": head.state_dict(),
                                        "patch_head": patch_head.state_dict(), "optimiser": optimiser.state_dict(),
                                        "dense_head": dense.head.state_dict() if dense is not None else {},
                                        "generator": generator.get_state(), "rng": rng.getstate(), "log": log,
                                        "seconds": clock.elapsed()})
    auc = label_auc(model, head, valid_data, prepare)
    if isinstance(prepare, InputStandardiser):
        prepare.fold_into(model.vision.vision_tower)
    print(f"[check] held-out label AUC after stage 1: {auc}", flush=True)
    if dense is not None:
        dense.remove()
    result = {"steps_done": done, "log": log, "seconds": round(clock.elapsed()), "valid_label_auc": auc,
              "stem": stem_result}
    checkpoints.save("stage1", {"step": done, "finished": True, "vision": model.vision.state_dict(),
                                "head": head.state_dict(), "result": result})
    return result


def _positive_weight(targets: torch.Tensor) -> torch.Tensor:
    positive = targets.float().mean(0).clamp(1e-4, 1 - 1e-4)
    return ((1 - positive) / positive).sqrt()


def pair_rank_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """For consecutive pairs of one patient's scans (rows 0-1, 2-3, ...): wherever their targets
    differ, the scan with the finding must score higher (RankNet's logistic loss on the logit
    difference). The pair shares its anatomy, so where a finding usually lies, and what the rest of
    the scan looks like, cancel out: only reading the finding itself lowers this loss, which is
    the shortcut a plain per-scan loss leaves open (a patch head learns the finding's usual place)."""
    a, b = logits[0::2].float(), logits[1::2].float()
    sign = targets[0::2].float() - targets[1::2].float()
    differs = sign != 0
    if not bool(differs.any()):
        return logits.sum() * 0.0
    return F.softplus(-(a - b)[differs] * sign[differs]).mean()
