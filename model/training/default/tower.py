"""Stages 0-1 taken from a saved default model: its vision tower and finding readout head.

Why: stages 0-1 are 48 of the recipe's 80 minutes, and stages 2-3 never change what they make
(the tower and the readout head stay frozen; with `stage2_fresh` everything that reads them starts
afresh). A recipe that changes only the language model's side can then be rerun on the tower a
model folder already holds, and gives the run a full one of that recipe (`--stage2-fresh`) gives.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from model.training.default.checkpoint import Checkpoints
from model.training.default.steps import LabelHead

# what stages 0-1 make: the tower (stem, patch embedding, ViT) and the readout's 1x1x1 head
TOWER_PREFIXES = ("vision.vision_tower.", "vision.findings.head.")
# the finding tokens and calibration (nets.findings): stage 1 never reads them, stage 2 trains them
LATER_READOUT_PARTS = ("tokens", "calibration")


def load_vision(model: Any, state: dict[str, Any]) -> None:
    """Load a stage-1 vision state into a model with or without finding tokens or calibration:
    their parameters may be missing (a checkpoint written before they existed, or by a run
    without them) or extra (dropped), since stage 1 does not train them; nothing else may differ."""
    later = tuple(f"findings.{part}." for part in LATER_READOUT_PARTS)
    absent = tuple(f"findings.{part}." for part in LATER_READOUT_PARTS
                   if getattr(model.vision.findings, part, None) is None)
    state = {k: v for k, v in state.items() if not k.startswith(absent)} if absent else state
    missing, unexpected = model.vision.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith(later)] + list(unexpected)
    if wrong:
        raise SystemExit(f"the stage-1 checkpoint does not fit this model: missing or unexpected {wrong[:6]}")


def stage1_from_model(model: Any, folder: Path, checkpoints: Checkpoints, label_names: Sequence[str],
                      head_norm: bool = False) -> None:
    """Write a finished stage-1 checkpoint holding `folder`'s tower and readout head, so training
    goes on with stage 2. A finished stage 1 already in the work folder is kept."""
    if checkpoints.folder is None:
        raise SystemExit("--tower-from needs a --work folder for its stage-1 checkpoint")
    saved = checkpoints.load("stage1")
    if saved is not None and saved.get("finished"):
        print(f"[tower] stage 1 is already finished in {checkpoints.folder}: --tower-from {folder} is not used")
        return
    weights, record_path = folder / "model.safetensors", folder / "training.json"
    for path in (weights, record_path, folder / "config.json"):
        if not path.is_file():
            raise SystemExit(f"--tower-from {folder}: {path.name} is missing (a default model folder holds it)")
    names = json.loads((folder / "config.json").read_text()).get("vision_finding_names", [])
    if list(names) != list(label_names):
        raise SystemExit(f"--tower-from {folder}: its readout's findings {names} are not the cohort's labels "
                         f"{list(label_names)}")
    stored = {k: v for k, v in load_file(str(weights)).items() if k.startswith(TOWER_PREFIXES)}
    own = model.state_dict()
    bad = [k for k, v in stored.items() if k not in own or own[k].shape != v.shape]
    if bad or not stored:
        raise SystemExit(f"--tower-from {folder}: its tower does not fit this recipe's model ({bad[:4] or 'none found'})")
    model.load_state_dict(stored, strict=False)
    alignment = json.loads(record_path.read_text()).get("alignment")
    if not isinstance(alignment, dict) or "valid_label_auc" not in alignment:
        raise SystemExit(f"--tower-from {folder}: training.json has no stage-1 record (alignment.valid_label_auc)")
    head = LabelHead(model.config.text_config.hidden_size, len(label_names), head_norm)
    checkpoints.save("stage1", {"step": alignment.get("steps_done", 0), "finished": True,
                                "vision": model.vision.state_dict(), "head": head.state_dict(),
                                "result": alignment})
    print(f"[tower] stages 0-1 taken from {folder} ({len(stored)} tensors)", flush=True)
