"""`--tower-from` (model/training/default/tower.py): stages 0-1 taken from a saved default model.
The run it gives is checked in tests/model/test_default_model.py (the slow end-to-end test); here,
what it takes, and what it refuses with a one-line reason."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.nets.lamed import LamedConfig, LamedForCausalLM
from model.training.default.checkpoint import Checkpoints
from model.training.default.data import Dataset
from model.training.default.recipe import Recipe
from model.training.default.stage1 import train_alignment
from model.training.default.steps import LabelHead
from model.training.default.tower import load_vision, stage1_from_model

TEXT = {"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}
FINDINGS = ["Lung nodule", "Cardiomegaly"]


def tiny(tokens: bool = True, names: list[str] = FINDINGS, seed: int = 0, calibrated: bool = False
         ) -> LamedForCausalLM:
    torch.manual_seed(seed)
    return LamedForCausalLM(LamedConfig(
        text_config=TEXT, image_size=[16, 64, 64], patch_size=[8, 16, 16], mm_hidden_size=16, vision_num_layers=1,
        vision_num_heads=2, vision_mlp_dim=32, vision_stem_channels=4, vision_stem_depth=1,
        vision_finding_names=names, vision_finding_tokens=tokens, vision_finding_calibrated=calibrated))


def saved_model(folder: Path, **kwargs) -> LamedForCausalLM:
    model = tiny(**kwargs)
    model.save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps({"alignment": {"steps_done": 5, "valid_label_auc": {}}}))
    return model


def test_the_tower_and_readout_head_are_taken_and_nothing_else(tmp_path: Path) -> None:
    source = saved_model(tmp_path / "source", seed=1)
    model = tiny(seed=2)
    checkpoints = Checkpoints(tmp_path / "work", Recipe())
    stage1_from_model(model, tmp_path / "source", checkpoints, FINDINGS)
    state = checkpoints.load("stage1")
    assert state["finished"] and state["result"]["steps_done"] == 5
    mine, theirs = state["vision"], source.vision.state_dict()
    taken = [k for k in mine if k.startswith(("vision_tower.", "findings.head."))]
    assert taken and all(torch.equal(mine[k], theirs[k]) for k in taken)
    for key in ("mm_projector.projector.0.weight", "findings.tokens.identity", "findings.local.weight"):
        assert not torch.equal(mine[key], theirs[key]), key  # the rest stays this model's own
    stage1_from_model(tiny(seed=3), tmp_path / "source", checkpoints, FINDINGS)  # a finished stage 1 is kept
    assert torch.equal(checkpoints.load("stage1")["vision"]["findings.tokens.identity"], mine["findings.tokens.identity"])


def test_refusals_name_what_is_wrong(tmp_path: Path) -> None:
    saved_model(tmp_path / "source")
    with pytest.raises(SystemExit, match="needs a --work folder"):
        stage1_from_model(tiny(), tmp_path / "source", Checkpoints(None, Recipe()), FINDINGS)
    with pytest.raises(SystemExit, match="are not the cohort's labels"):
        stage1_from_model(tiny(names=["Emphysema", "Cardiomegaly"]), tmp_path / "source",
                          Checkpoints(tmp_path / "w1", Recipe()), ["Emphysema", "Cardiomegaly"])
    (tmp_path / "source" / "training.json").unlink()
    with pytest.raises(SystemExit, match="training.json is missing"):
        stage1_from_model(tiny(), tmp_path / "source", Checkpoints(tmp_path / "w2", Recipe()), FINDINGS)
    assert not (tmp_path / "w1").exists() and not (tmp_path / "w2").exists()


def test_an_older_stage1_checkpoint_without_finding_tokens_still_loads() -> None:
    model, older = tiny(tokens=True), tiny(tokens=False, seed=4)
    load_vision(model, older.vision.state_dict())
    assert torch.equal(model.vision.vision_tower.state_dict()["cls_token"],
                       older.vision.vision_tower.state_dict()["cls_token"])
    broken = {k: v for k, v in older.vision.state_dict().items() if not k.startswith("findings.head.")}
    with pytest.raises(SystemExit, match="findings.head"):
        load_vision(model, broken)


@pytest.mark.parametrize("later", [{"tokens": True}, {"tokens": False, "calibrated": True}])
def test_stage1_trains_the_same_tower_with_or_without_finding_tokens(later: dict) -> None:
    """Stage 2 alone trains the finding tokens and calibration, so a finished stage 1 serves recipes
    with and without them (checkpoint.STAGE2_FIELDS): its label head must not read them."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand((4, 1, 16, 64, 64), generator=generator).half()
    pixels[:2, 0, 4:8, 20:30, 20:30] = 0.9
    boxes = [[(0, (0.25, 0.3, 0.3, 0.5, 0.47, 0.47))]] * 2 + [[]] * 2
    data = Dataset([f"p{v}_a_1" for v in range(4)], pixels, torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2),
                   FINDINGS, torch.zeros(4, 32, 2), boxes=boxes)
    recipe = Recipe(image_size=(16, 64, 64), patch_size=(8, 16, 16), stage1_steps=3, stage1_images=2, stem_steps=0,
                    paired=False, warmup_steps=1)
    plain, with_tokens = tiny(tokens=False), tiny(**later)
    load_vision(with_tokens, plain.vision.state_dict())
    if with_tokens.vision.findings.calibration is not None:  # fitted as stage 2 would: stage 1 must not see it
        with torch.no_grad():
            with_tokens.vision.findings.calibration.scale.fill_(3.0)
    before = {k: v.clone() for k, v in plain.vision.vision_tower.state_dict().items()}
    towers = []
    for model in (plain, with_tokens):
        torch.manual_seed(0)
        train_alignment(model, LabelHead(16, len(FINDINGS)), data, data, recipe)
        towers.append(model.vision.vision_tower.state_dict())
    assert any(not torch.equal(before[k], v) for k, v in towers[0].items())  # it did train
    assert all(torch.equal(towers[0][k], towers[1][k]) for k in towers[0])
    load_vision(plain, with_tokens.vision.state_dict())  # a stage 1 of a run with tokens serves one without
