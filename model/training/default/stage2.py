"""Stage 2, instruction tuning: frozen tower tokens, projector and language model learn the six
3D-RAD tasks, starting with balanced existence questions about what the tower sees.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from model.nets.findings import Calibration, FindingTokens
from model.training.default.checkpoint import Checkpoints, clone_state
from model.training.default.data import Dataset, Sampler, validation_examples
from model.training.default.recipe import TASK_WEIGHTS, Recipe
from model.training.default.stage1 import readout_auc, train_alignment
from model.training.default.stage3 import train_boxes
from model.training.default.steps import (
    Clock,
    LabelHead,
    TowerCache,
    choice_accuracy,
    lm_loss,
    lr_factor,
    make_optimiser,
    optimiser_step,
    set_lr,
)
from model.training.rng import random_state


def train_instruction(model: Any, head: LabelHead, tokenizer: Any, train_data: Dataset, valid_data: Dataset,
                      recipe: Recipe, seen: Sequence[str] = (), checkpoints: Checkpoints | None = None
                      ) -> dict[str, Any]:
    """Stage 2: projector + language model on all six tasks (+ captions and boxes), vision tower
    frozen and its tokens cached; keeps the weights that score best on closed validation questions."""
    checkpoints = checkpoints or Checkpoints(None, recipe)
    train_tower = TowerCache(model, train_data.pixels)
    valid_tower = TowerCache(model, valid_data.pixels)
    readout = model.vision.findings
    frozen = [*model.vision.vision_tower.parameters(), *(readout.head.parameters() if readout is not None else ())]
    for p in frozen:
        p.requires_grad_(False)
    embeddings = [p for module in readout.embedders() for p in module.parameters()] if readout is not None else []
    trained = [*model.vision.mm_projector.parameters(), *embeddings, *model.language_model.parameters()]
    parameters = [*trained, *head.parameters()]
    optimiser = make_optimiser(trained, list(head.parameters()), recipe)
    sampler = Sampler(train_data, recipe.seed, recipe.paired, seen, recipe.own_frequency_tasks,
                      recipe.balance_presence)
    checks = validation_examples(valid_data, recipe.validation_questions, recipe.seed)
    tasks = tuple(TASK_WEIGHTS)
    record: dict[str, Any] = {"log": [], "validation": []}
    best: tuple[float, dict | None, int] = (-1.0, None, 0)
    step, spent = 0, 0.0
    saved = checkpoints.load("stage2")
    if saved is None and recipe.stage2_fresh:
        restart_readers(model, head, recipe.seed)
    if saved is None and readout is not None and readout.calibration is not None:
        record["calibration"] = fit_calibration(readout.calibration, valid_tower, valid_data)
        print(f"[train] readout calibration (scale, shift) per finding: {record['calibration']}", flush=True)
    if saved is not None:
        model.load_state_dict(saved["model"])
        head.load_state_dict(saved["head"])
        optimiser.load_state_dict(saved["optimiser"])
        sampler.rng.setstate(random_state(saved["rng"]))
        record, step, spent = saved["record"], saved["step"], saved["seconds"]
        best = (saved["best_accuracy"], saved["best_state"], saved["best_step"])
    clock = Clock("instruction", recipe.stage2_steps, recipe.stage2_minutes, spent)
    model.train()
    first = step + 1
    for step in range(first, recipe.stage2_steps + 1):
        if clock.over():
            record["stopped_early"] = f"stage 2 reached its {recipe.stage2_minutes} min cap at step {step - 1}"
            print(f"[train] {record['stopped_early']}", flush=True)
            step -= 1
            break
        set_lr(optimiser, lr_factor(step - 1, recipe.stage2_steps, recipe.warmup_steps))
        volumes = sampler.volumes(recipe.stage2_images)
        # first only, then one per image: existence of what the tower sees, answers balanced
        anchored = recipe.questions_per_image if step <= recipe.focus_steps else recipe.seen_questions
        examples = [e for v in volumes for e in (
            sampler.questions(v, anchored, ("existence_detection",), balanced=True, findings=seen)
            + sampler.questions(v, recipe.questions_per_image - anchored, tasks))]
        owners = [k for k in range(len(volumes)) for _ in range(recipe.questions_per_image)]
        features = train_tower.features(model, volumes)
        text_loss = lm_loss(model, tokenizer, features, examples, owners)
        aux_loss = F.binary_cross_entropy_with_logits(head(features), train_data.labels[volumes])
        loss = text_loss + recipe.aux_weight * aux_loss
        optimiser_step(optimiser, loss, parameters)
        if step % 10 == 0 or step == recipe.stage2_steps:
            record["log"].append({"step": step, "loss": round(text_loss.item(), 4), "aux": round(aux_loss.item(), 4)})
            clock.show(step, loss=text_loss.item(), aux=aux_loss.item())
        if step % recipe.validate_every == 0 or step == recipe.stage2_steps:
            scores = choice_accuracy(model, tokenizer, valid_tower, checks)
            accuracy = scores["all"]
            record["validation"].append({"step": step, "closed_accuracy": scores})
            print(f"[check] step {step}: closed validation accuracy {scores} ({len(checks)} questions, "
                  "class-balanced)", flush=True)
            if accuracy >= best[0] and step > recipe.focus_steps:  # a focus-phase model knows one task
                best = (accuracy, clone_state(model), step)
        if checkpoints.due(step):
            checkpoints.save("stage2", {"step": step, "model": model.state_dict(), "head": head.state_dict(),
                                        "optimiser": optimiser.state_dict(), "rng": sampler.rng.getstate(),
                                        "record": record, "seconds": clock.elapsed(), "best_accuracy": best[0],
                                        "best_state": best[1], "best_step": best[2]})
    if best[1] is not None:
        model.load_state_dict(best[1])
    record.update(steps_done=step, best_step=best[2], best_closed_accuracy=round(best[0], 2),
                  seconds=round(clock.elapsed()))
    return record



CALIBRATION_C = 10.0  # sklearn's inverse L2 strength: 1 shrank a clear mid-range gap to 0.7-0.8 probabilities


@torch.no_grad()
def fit_calibration(calibration: Calibration, cache: TowerCache, data: Dataset) -> dict[str, list[float]]:
    """Per finding, the logistic regression of `data`'s labels on each scan's readout maximum, as
    the readout's scale and shift. On the validation scans: the stem was trained on the others,
    whose maxima separate better than a new patient's will. A finding with fewer than 3 scans on
    either side keeps the identity."""
    from sklearn.linear_model import LogisticRegression

    maxima = cache.findings.flatten(2).amax(-1).float().numpy()
    fitted = {}
    for k, name in enumerate(data.label_names):
        present = data.labels[:, k].numpy() > 0.5
        if min(int(present.sum()), int((~present).sum())) < 3:
            continue
        fit = LogisticRegression(C=CALIBRATION_C).fit(maxima[:, k : k + 1], present)
        calibration.scale[k], calibration.shift[k] = float(fit.coef_[0, 0]), float(fit.intercept_[0])
        fitted[name] = [round(float(fit.coef_[0, 0]), 3), round(float(fit.intercept_[0]), 3)]
    return fitted


def restart_readers(model: Any, head: LabelHead, seed: int) -> None:
    """What reads the frozen tower (projector, readout embeddings, label head) starts afresh from
    `seed`, so that stage 2 is the same run whether stage 1 just ended or its tower was loaded."""
    torch.manual_seed(seed + 2)
    std = model.config.initializer_range
    readers = [model.vision.mm_projector, *(model.vision.findings.embedders() if model.vision.findings else ())]
    # torch's own init, not the model's _init_weights: transformers skips tensors it initialised once
    for module in (m for reader in readers for m in reader.modules()):
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, 0.0, std)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, FindingTokens):
            module.init_parameters(std)
    for module in head.modules():
        if module is not head and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def seen_findings(names: Sequence[str], threshold: float, *aucs: dict[str, float]) -> list[str]:
    """The findings whose held-out AUC reaches `threshold` at any of the tower's outputs (label head,
    finding readout), in label order: those stage 2 asks about with balanced answers."""
    return [name for name in names if max((auc.get(name, 0.0) for auc in aucs), default=0.0) >= threshold]


def train(model: Any, tokenizer: Any, train_data: Dataset, valid_data: Dataset, recipe: Recipe,
          checkpoints: Checkpoints | None = None) -> dict[str, Any]:
    """Both stages; returns the training record (losses, validation checks, kept checkpoint)."""
    torch.manual_seed(recipe.seed)
    head = LabelHead(model.config.text_config.hidden_size, len(train_data.label_names), recipe.head_norm)
    alignment = train_alignment(model, head, train_data, valid_data, recipe, checkpoints)
    alignment["valid_readout_auc"] = readout_auc(model, valid_data)
    print(f"[check] held-out AUC of the finding readout's maximum: {alignment['valid_readout_auc']}", flush=True)
    seen = seen_findings(train_data.label_names, recipe.seen_auc, alignment["valid_label_auc"],
                         *([alignment["valid_readout_auc"]] if recipe.seen_readout else []))
    print(f"[train] stage 2 starts on existence questions about what the tower sees: {seen}", flush=True)
    instruction = train_instruction(model, head, tokenizer, train_data, valid_data, recipe, seen, checkpoints)
    boxes = train_boxes(model, tokenizer, train_data, valid_data, recipe, checkpoints or Checkpoints(None, recipe))
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return {"alignment": alignment, "instruction": instruction, "seen_findings": seen, "boxes": boxes,
            "train_seconds": (alignment.get("stem") or {}).get("seconds", 0) + alignment["seconds"]
            + instruction["seconds"] + (boxes or {}).get("seconds", 0)}
