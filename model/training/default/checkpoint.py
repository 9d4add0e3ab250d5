"""Resumable training: each stage's whole state (weights, optimiser, data-order generators, log)
written atomically every few steps, so a run stopped by a closed laptop or a killed job carries on
from its last checkpoint with the same data order instead of starting two hours over.

Files hold tensors and plain Python values only and are read with `weights_only=True`.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from model.training.default.recipe import Recipe, recipe_from_record

# Recipe fields stages 0 and 1 do not read: a finished stage 1 serves every recipe that differs only in
# these (a held-out-finding variant reuses the default model's vision tower instead of retraining it).
STAGE2_FIELDS = ("stage2_steps", "stage2_images", "focus_steps", "seen_questions", "seen_auc",
                 "seen_readout", "finding_tokens", "calibrated_readout", "asked_readout", "stage2_fresh", "own_frequency_tasks", "balance_presence",
                 "questions_per_image", "validate_every", "validation_questions", "eval_limit", "stage2_minutes",
                 "held_out_finding", "aux_weight", "heldout", "checkpoint_every")
# Fields only stage 3 (the box head, trained last on the frozen stem) reads: changing them retrains it alone.
STAGE3_FIELDS = ("box_steps", "box_cells", "box_context", "box_refine_steps", "box_refine_crops")


def _as_now(stored: dict[str, Any] | None) -> dict[str, Any]:
    """A checkpoint's recipe with the fields added since it was written set as that code ran
    (recipe_from_record): a new option that is off does not discard an hour of training."""
    try:
        return _plain(asdict(recipe_from_record(stored))) if stored else {}
    except (TypeError, KeyError, ValueError):  # written by a newer or foreign recipe
        return dict(stored or {})


class Checkpoints:
    """`folder/{stage}.pt` per stage; None folder = no checkpoints (tests, quick runs)."""

    def __init__(self, folder: Path | None, recipe: Recipe, every: int = 100) -> None:
        self.folder, self.every = folder, max(1, every)
        self.recipe = _plain(asdict(recipe))

    def path(self, stage: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{stage}.pt"

    def load(self, stage: str) -> dict[str, Any] | None:
        """The stage's saved state, or None (none saved, or saved by another recipe: said, then ignored)."""
        path = self.path(stage)
        if path is None or not path.is_file():
            return None
        state = torch.load(path, weights_only=True)
        ignored = {"stage0": STAGE2_FIELDS + STAGE3_FIELDS, "stage1": STAGE2_FIELDS + STAGE3_FIELDS,
                   "stage2": STAGE3_FIELDS}.get(stage, ())
        if {k: v for k, v in _as_now(state.get("recipe")).items() if k not in ignored} != \
                {k: v for k, v in self.recipe.items() if k not in ignored}:
            print(f"[resume] {path} was written by another recipe: starting {stage} afresh", flush=True)
            return None
        print(f"[resume] {stage} continues from step {state['step']} ({path})", flush=True)
        return state

    def due(self, step: int) -> bool:
        return self.folder is not None and step % self.every == 0

    def save(self, stage: str, state: dict[str, Any]) -> None:
        path = self.path(stage)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save({**state, "recipe": self.recipe}, partial)
        os.replace(partial, path)  # a kill mid-write leaves the previous checkpoint whole


def _plain(value: Any) -> Any:
    """Tuples as lists, so a recipe compares equal after a save/load round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}

