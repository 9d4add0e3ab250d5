"""Stage 0 of the default model's training (model/training/default/stage0.py): crops centred on
lesions carry their lesion, crops and targets are cut from the same place, and the stage trains
the stem and resumes from its checkpoint."""
from __future__ import annotations

import random

import pytest
import torch

from model.nets.vision import ConvStem
from model.training.default.checkpoint import Checkpoints
from model.training.default.data import Dataset, box_targets
from model.training.default.recipe import Recipe
from model.training.default.stage0 import crop_plan, crops, train_stem

IMAGE = (16, 64, 64)
LABELS = ["Lung nodule", "Cardiomegaly"]


def dataset(volumes: int = 6) -> Dataset:
    """Volumes with one bright cube each (label 0) at a known box, and an empty one or two."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand((volumes, 1, *IMAGE), generator=generator).half() * 0.1
    boxes = []
    for v in range(volumes):
        if v % 3 == 2:
            boxes.append([])
            continue
        z, y, x = 4 + v % 4, 8 + 6 * v, 40 - 4 * v
        pixels[v, 0, z:z + 3, y:y + 6, x:x + 6] = 0.9
        boxes.append([(0, (z / IMAGE[0], y / IMAGE[1], x / IMAGE[2], (z + 3) / IMAGE[0], (y + 6) / IMAGE[1],
                           (x + 6) / IMAGE[2]))])
    labels = torch.tensor([[float(bool(b)), 0.0] for b in boxes])
    return Dataset([f"v{v}" for v in range(volumes)], pixels, labels, LABELS, torch.zeros(volumes, 1, 2), boxes=boxes)


def test_lesion_centred_crops_hold_their_lesion_and_match_their_targets() -> None:
    data = dataset()
    grid, crop, stride = (4, 8, 8), (2, 4, 4), (4, 8, 8)
    plan = crop_plan(random.Random(0), data, grid, crop, 40, positive=1.0)
    assert {v for v, _ in plan} <= {v for v, b in enumerate(data.boxes) if b}  # only volumes with a lesion
    x, target = crops(data, plan, stride, crop, grid, prepare=lambda p: p)
    assert x.shape == (40, 1, 8, 32, 32) and target.shape == (40, 2, *crop)
    assert bool((target[:, 0].flatten(1).amax(1) > 0).all())  # every crop holds its lesion
    whole = box_targets([data.boxes[v] for v, _ in plan], grid, 2, margin=0)
    for k, (v, o) in enumerate(plan):
        torch.testing.assert_close(target[k], whole[k][:, o[0]:o[0] + 2, o[1]:o[1] + 4, o[2]:o[2] + 4])
        torch.testing.assert_close(x[k], data.pixels[v].float()[:, 4 * o[0]:4 * o[0] + 8, 8 * o[1]:8 * o[1] + 32,
                                                                 8 * o[2]:8 * o[2] + 32])
    anywhere = crop_plan(random.Random(1), data, grid, crop, 200, positive=0.0)
    assert len({o for _, o in anywhere}) > 20 and {v for v, _ in anywhere} == set(range(len(data.names)))


def test_stage0_trains_the_stem_and_resumes_finished(tmp_path) -> None:
    torch.manual_seed(0)
    data = dataset()
    recipe = Recipe(image_size=IMAGE, patch_size=(8, 16, 16), stem_steps=25, stem_images=4, stem_crop=(8, 32, 32),
                    warmup_steps=2)
    stem = ConvStem(IMAGE, recipe.patch_size, 4, 16, depth=1)
    head = torch.nn.Conv3d(stem.feature_channels, len(LABELS), 1)
    before = {k: v.clone() for k, v in stem.state_dict().items()}
    checkpoints = Checkpoints(tmp_path, recipe)
    result = train_stem(stem, head, data, recipe, lambda p: p.float(), checkpoints)
    assert result["grid"] == [4, 8, 8] and result["crop_cells"] == [2, 4, 4]
    losses = [row["dense"] for row in result["log"]]
    assert losses[-1] < losses[0]
    assert any(not torch.equal(before[k], v) for k, v in stem.state_dict().items())
    trained = {k: v.clone() for k, v in stem.state_dict().items()}

    fresh = ConvStem(IMAGE, recipe.patch_size, 4, 16, depth=1)
    fresh_head = torch.nn.Conv3d(fresh.feature_channels, len(LABELS), 1)
    again = train_stem(fresh, fresh_head, data, recipe, lambda p: p.float(), checkpoints)  # a finished stage 0
    assert again == result
    assert all(torch.equal(trained[k], v) for k, v in fresh.state_dict().items())


def test_deep_stem_cuts_the_token_grid_and_refuses_patches_it_cannot() -> None:
    stem = ConvStem(IMAGE, (8, 16, 16), 4, 16, depth=1)
    assert stem(torch.rand(2, 1, *IMAGE)).shape == (2, 2 * 4 * 4, 16)
    assert stem.features(torch.rand(1, 1, *IMAGE)).shape == (1, 16, 4, 8, 8)
    with pytest.raises(ValueError, match="divisible by"):
        ConvStem(IMAGE, (2, 8, 8), 4, 16, depth=1)
    with pytest.raises(ValueError, match="depth 0 or 1"):
        ConvStem(IMAGE, (8, 16, 16), 4, 16, depth=2)


def _existence_dataset() -> Dataset:
    """60 volumes, each asked about a seen finding (present in half) and an unseen one (present in 1 of 5)."""
    from model.training.default.data import Example

    data = dataset(60)
    for v in range(60):
        examples = [Example(v, "existence_detection", "yes" if v % 2 else "no", [1], [2], ("Yes", "No"), "Cardiomegaly"),
                    Example(v, "existence_detection", "yes" if v % 5 == 0 else "no", [1], [2], ("Yes", "No"),
                            "Lung nodule")]
        data.by_volume[v] = {"existence_detection": examples}
    return data


def test_unseen_findings_keep_their_answer_frequency_and_are_never_balanced() -> None:
    from model.training.default.data import Sampler

    data = _existence_dataset()
    sampler = Sampler(data, seed=0, seen=["Cardiomegaly"])
    draws = [e for v in range(60) for _ in range(40) for e in sampler.questions(v, 1, ("existence_detection",))]
    nodules = [e for e in draws if e.finding == "Lung nodule"]
    present = sum(e.answer_class == "yes" for e in nodules) / len(nodules)
    assert 0.16 < present < 0.24  # its own 1 in 5, not lifted towards "yes"
    cardio = [e for e in draws if e.finding == "Cardiomegaly"]
    assert 0.4 < sum(e.answer_class == "yes" for e in cardio) / len(cardio) < 0.6

    only_unseen = {v: {"existence_detection": [e for e in data.by_volume[v]["existence_detection"]
                                               if e.finding == "Lung nodule"]} for v in range(60)}
    data.by_volume.update(only_unseen)
    balanced = [e for v in range(60) for _ in range(20)
                for e in sampler.questions(v, 1, ("existence_detection",), balanced=True, findings=["Cardiomegaly"])]
    assert all(e.finding == "Lung nodule" for e in balanced)
    assert sum(e.answer_class == "yes" for e in balanced) / len(balanced) < 0.26  # no balanced draw about it
