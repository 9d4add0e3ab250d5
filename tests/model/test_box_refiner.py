"""The box refiner (nets.refine, training/default/refine.py): a crop of the input around a
located box, read at the input's resolution, redraws the box; stage 3 trains it after the box
head and keeps it only for the findings it redraws better; it survives save/load and answers
box questions in the chat's path."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.evaluation.measures import box_iou
from model.nets.lamed import LamedForCausalLM
from model.nets.refine import (
    BoxRefiner,
    crop_volumes,
    crop_windows,
    window_boxes,
    window_targets,
)
from tests.model.test_box_head import _dataset
from tests.model.test_finding_readout import readout_config


def test_a_small_box_is_cropped_at_the_inputs_resolution_and_a_large_one_at_twice_its_size() -> None:
    image = torch.zeros((1, 1, 32, 128, 128))
    image[0, 0, 10:14, 40:48, 70:76] = 1.0
    box = torch.tensor([[10 / 32, 40 / 128, 70 / 128, 14 / 32, 48 / 128, 76 / 128]])
    centre, extent = crop_windows(box, (32, 128, 128))
    torch.testing.assert_close(extent, torch.tensor([[0.5, 0.25, 0.25]]))  # 16 x 32 x 32 voxels: one per voxel
    crop = crop_volumes(image, centre, extent)[0, 0]
    assert crop.shape == (16, 32, 32) and float(crop.sum()) == pytest.approx(4 * 8 * 6)
    inside = crop.nonzero()
    assert inside.min(0).values.tolist() == [6, 12, 13] and inside.max(0).values.tolist() == [9, 19, 18]
    large = torch.tensor([[0.1, 0.2, 0.3, 0.6, 0.5, 0.5]])
    torch.testing.assert_close(crop_windows(large, (32, 128, 128))[1], torch.tensor([[1.0, 0.6, 0.4]]))
    targets = window_targets(large, *crop_windows(large, (32, 128, 128)))
    torch.testing.assert_close(window_boxes(targets, *crop_windows(large, (32, 128, 128))), large)


def test_a_refiner_keeps_the_trained_weights_of_the_findings_it_keeps_and_runs_in_bf16() -> None:
    torch.manual_seed(2)
    refiner = BoxRefiner((16, 64, 64), 3).eval()
    crops = torch.rand((2, 1, 16, 32, 32))
    kept = refiner.keep([2, 0])
    with torch.no_grad():
        torch.testing.assert_close(kept(crops, torch.tensor([0, 1])), refiner(crops, torch.tensor([2, 0])))
    image, box = torch.rand((1, 1, 16, 64, 64)), torch.tensor([[0.2, 0.3, 0.3, 0.5, 0.5, 0.6]])
    full = refiner.refine(image, box, torch.tensor([1]))
    half = refiner.to(torch.bfloat16).refine(image.bfloat16(), box, torch.tensor([1]))  # a model loaded in bf16
    assert half.dtype == torch.float32 and torch.allclose(half, full, atol=0.03)


def test_the_refiner_learns_to_redraw_missed_boxes() -> None:
    """Bright cuboids in noise: boxes missed as the box head misses them come back closer."""
    from model.training.default.recipe import Recipe
    from model.training.default.refine import fit_refiner, missed_boxes, refiner_samples
    from model.training.default.steps import Clock
    from tests.model.conftest import build_tokenizer

    data = _dataset(build_tokenizer(), volumes=24)
    torch.manual_seed(0)
    refiner = BoxRefiner((16, 64, 64), 1, channels=8)
    crops, slots, targets = refiner_samples(data, {0: 0}, 16, (16, 64, 64), seed=1)
    assert crops.shape == (24 * 16, 1, 16, 32, 32) and set(slots.tolist()) == {0}
    recipe = Recipe(box_refine_steps=250, warmup_steps=5, stem_lr=3e-3)
    log = fit_refiner(refiner, crops, slots, targets, recipe, Clock("refiner", 250, 5.0))
    assert log[-1]["refine"] < log[0]["refine"] / 2
    truth = torch.tensor([lesions[0][1] for lesions in data.lesions])
    missed = missed_boxes(truth, (16, 64, 64), torch.Generator().manual_seed(7))  # boxes it never saw
    redrawn = torch.cat([refiner.refine(data.pixels[v:v + 1].float(), missed[v:v + 1], torch.tensor([0]))
                         for v in range(len(truth))])
    before = [box_iou(m.tolist(), t.tolist()) for m, t in zip(missed, truth)]
    after = [box_iou(r.tolist(), t.tolist()) for r, t in zip(redrawn, truth)]
    assert sum(after) / len(after) > sum(before) / len(before) + 0.15


def test_config_refuses_refined_findings_the_box_head_does_not_locate() -> None:
    with pytest.raises(ValueError, match="vision_box_refined"):
        readout_config(vision_box_findings=["Lung nodule"], vision_box_refined=["Cardiomegaly"])


def test_stage3_trains_the_refiner_keeps_it_where_it_helps_and_it_survives_save_and_load(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from model.inference.loading import CheckpointError, load_vlm, write_settings
    from model.training.default.checkpoint import Checkpoints
    from model.training.default.recipe import Recipe
    from model.training.default.stage3 import train_boxes
    from tests.model.conftest import build_tokenizer, tiny_text_config

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = LamedForCausalLM(readout_config(text_config=tiny_text_config(tokenizer))).eval()
    data = _dataset(tokenizer)
    recipe = Recipe(box_steps=200, box_cells=16, box_refine_steps=60, box_refine_crops=4, warmup_steps=5,
                    stem_lr=3e-3)
    result = train_boxes(model, tokenizer, data, data, recipe, Checkpoints(tmp_path / "work", recipe))
    if not result["kept"]:
        pytest.skip("the box head lost to the language model on this data: nothing to refine")
    refined = result["refiner"]
    assert refined["crops"] == 12 * 4 and set(refined["valid_iou_at_50"]) == {"Lung nodule"}
    helps = refined["valid_iou_at_50"]["Lung nodule"] > result["valid_iou_at_50"]["Lung nodule"]
    assert refined["redrawn"] == (["Lung nodule"] if helps else [])
    assert model.config.vision_box_refined == refined["redrawn"] and (model.vision.refiner is not None) == helps
    if not helps:  # still keep the refiner, to check the paths below
        model.vision.add_refiner([list(model.config.vision_finding_names).index("Lung nodule")])
        model.config.vision_box_refined = ["Lung nodule"]
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    write_settings(tmp_path / "saved", prompt_style="m3d", description="tiny model with a box refiner")
    vlm = load_vlm(str(tmp_path / "saved"), device="cpu")
    volume = data.pixels[0].float()
    prepared = vlm.prepare(volume)
    nodule = list(model.config.vision_finding_names).index("Lung nodule")
    with torch.no_grad():
        model.vision.refiner, refiner = None, model.vision.refiner
        coarse = model.vision.locate(prepared.pixels)[nodule]
        model.vision.refiner = refiner
        redrawn = refiner.refine(prepared.pixels, torch.tensor([coarse]), torch.tensor([0]))[0].tolist()
    assert model.vision.locate(prepared.pixels)[nodule] == pytest.approx(redrawn, abs=1e-6)
    assert vlm.model.vision.locate(prepared.pixels)[nodule] == pytest.approx(redrawn, abs=1e-6)  # saved and loaded
    assert prepared.boxes["Lung nodule"] == pytest.approx(redrawn, abs=1e-6)
    answer = vlm.answer(volume, "Where is the lung nodule? Give the box.")
    assert answer.box_normalized == pytest.approx(redrawn, abs=5e-4)  # what the chat draws
    again_model = LamedForCausalLM(readout_config(text_config=tiny_text_config(tokenizer))).eval()
    again = train_boxes(again_model, tokenizer, data, data, recipe, Checkpoints(tmp_path / "work", recipe))
    assert again == result and again_model.config.vision_box_refined == refined["redrawn"]  # resumed
    weights = tmp_path / "saved" / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if not k.startswith("vision.refiner.")}, weights,
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="vision.refiner"):  # a refiner named in the config but absent
        load_vlm(str(tmp_path / "saved"), device="cpu")
