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


def test_static_temporal_answers_keep_their_own_frequency() -> None:
    """A static temporal answer hangs on earlier scans the model never sees: drawn more often than
    it happens, a rare answer becomes a prior the image cannot correct."""
    from model.training.default.data import Example, Sampler

    data = dataset(60)
    for v in range(60):
        rare = "A" if v % 10 == 0 else "D"
        data.by_volume[v] = {"static_temporal_diagnosis": [
            Example(v, "static_temporal_diagnosis", rare, [1], [2], ("a", "b", "c", "d"), "Lung nodule"),
            Example(v, "static_temporal_diagnosis", "D", [1], [2], ("a", "b", "c", "d"), "Cardiomegaly")]}

    def share_of_a(sampler: Sampler) -> float:
        draws = [e for v in range(60) for _ in range(100)
                 for e in sampler.questions(v, 1, ("static_temporal_diagnosis",))]
        return sum(e.answer_class == "A" for e in draws) / len(draws)

    assert 0.04 < share_of_a(Sampler(data, seed=0, own_frequency=("static_temporal_diagnosis",))) < 0.06
    assert share_of_a(Sampler(data, seed=0)) > 0.07  # 1/sqrt(frequency) lifts it (about 0.081)


def test_findings_seen_at_the_readout_count_as_seen() -> None:
    from model.training.default.stage2 import seen_findings

    names = ["Medical material", "Arterial wall calcification", "Emphysema", "Coronary artery wall calcification"]
    label = {"Medical material": 1.0, "Arterial wall calcification": 0.63, "Emphysema": 0.58}
    readout = {"Medical material": 1.0, "Arterial wall calcification": 0.89, "Emphysema": 0.74,
               "Coronary artery wall calcification": 0.55}
    assert seen_findings(names, 0.7, label) == ["Medical material"]
    assert seen_findings(names, 0.7, label, readout) == names[:3]
    assert seen_findings(names, 0.8, label, readout) == names[:2]


def test_static_temporal_questions_about_seen_findings_balance_presence_now() -> None:
    """Per scan, a seen finding present now (A refractory, C new) is asked about as often as the
    seen findings that are not (B, D); unseen findings and scans without both kinds keep their own
    frequency."""
    from model.training.default.data import Example, Sampler

    data = dataset(80)
    names = ["Cardiomegaly", "Lung nodule", "Emphysema", "Atelectasis"]
    for v in range(80):
        answers = ["A" if v % 2 else "D", "C" if v % 4 == 1 else "D", "D", "B" if v % 8 == 3 else "D"]
        data.by_volume[v] = {"static_temporal_diagnosis": [
            Example(v, "static_temporal_diagnosis", a, [1], [2], ("a", "b", "c", "d"), f) for a, f in zip(answers, names)]}
    sampler = Sampler(data, seed=0, seen=names[:3], own_frequency=("static_temporal_diagnosis",),
                      balance_presence=True)
    draws = {v: [sampler.questions(v, 1, ("static_temporal_diagnosis",))[0] for _ in range(400)] for v in (1, 3, 0)}
    seen_of = {v: [e for e in d if e.finding in names[:3]] for v, d in draws.items()}
    # scan 1: Cardiomegaly (A) and Lung nodule (C) present, Emphysema absent: half the seen draws present
    assert 0.42 < sum(e.answer_class in "AC" for e in seen_of[1]) / len(seen_of[1]) < 0.58
    present = [e for e in seen_of[1] if e.answer_class in "AC"]
    assert 0.38 < sum(e.answer_class == "A" for e in present) / len(present) < 0.62  # A:C as on the scan, 1:1
    # scan 3: only Cardiomegaly present of three seen: still half, not one in three
    assert 0.42 < sum(e.answer_class == "A" for e in seen_of[3]) / len(seen_of[3]) < 0.58
    # the seen findings keep their share (3 of 4) of the scan's draws; the unseen one its own
    assert 0.68 < len(seen_of[3]) / len(draws[3]) < 0.82
    # scan 0: nothing seen is present: every seen question draws at its own frequency
    assert {e.answer_class for e in seen_of[0]} == {"D"}
    plain = Sampler(data, seed=0, seen=names[:3], own_frequency=("static_temporal_diagnosis",))
    scan3 = [plain.questions(3, 1, ("static_temporal_diagnosis",))[0] for _ in range(400)]
    assert sum(e.answer_class == "A" for e in scan3) / len(scan3) < 0.33  # one of four, not balanced


def test_recipe_records_round_trip_and_old_ones_keep_their_sampling(tmp_path) -> None:
    """A session-6 training.json (before the static-temporal fields) reads back as the recipe it
    trained with; a new one round-trips; a finished stage 1 serves a recipe that changes them."""
    import json
    from dataclasses import asdict, replace

    from model.training.default.recipe import recipe_from_record

    recipe = Recipe()
    assert recipe_from_record(json.loads(json.dumps(asdict(recipe)))) == recipe
    old = {k: v for k, v in json.loads(json.dumps(asdict(recipe))).items()
           if k not in ("seen_readout", "own_frequency_tasks", "balance_presence", "finding_readout")}
    again = recipe_from_record(old)
    assert (again.own_frequency_tasks, again.balance_presence, again.seen_readout, again.finding_readout) == \
        ((), False, False, False)
    Checkpoints(tmp_path, recipe).save("stage1", {"step": 3, "finished": True})
    changed = replace(recipe, own_frequency_tasks=(), balance_presence=False, seen_readout=True)
    assert Checkpoints(tmp_path, changed).load("stage1")["step"] == 3
    assert Checkpoints(tmp_path, replace(recipe, stem_steps=7)).load("stage1") is None


def test_a_checkpoint_from_before_a_new_option_resumes_while_the_option_is_off(tmp_path) -> None:
    """An hour of stage 0 or 1 is not discarded because the recipe gained an option that is off."""
    from dataclasses import asdict, replace

    from model.training.default.checkpoint import _plain

    recipe = Recipe()
    before = {k: v for k, v in _plain(asdict(recipe)).items() if k != "dense_parts"}
    torch.save({"step": 5, "finished": True, "recipe": before}, tmp_path / "stage1.pt")
    torch.save({"step": 7, "recipe": {**before, "seen_auc": 0.9}}, tmp_path / "stage0.pt")  # stage 2 field
    assert Checkpoints(tmp_path, recipe).load("stage1")["step"] == 5
    assert Checkpoints(tmp_path, recipe).load("stage0")["step"] == 7
    assert Checkpoints(tmp_path, replace(recipe, dense_parts=True)).load("stage1") is None  # on: retrain
    torch.save({"step": 1, "recipe": {**before, "from_the_future": 1}}, tmp_path / "stage2.pt")
    assert Checkpoints(tmp_path, recipe).load("stage2") is None


def test_dense_targets_take_each_part_of_a_many_part_lesion_when_asked() -> None:
    from model.training.default.data import lesion_boxes

    spots = {"bbox_voxel": [0, 0, 0, 10, 40, 40], "parts_bbox_voxel": [[0, 0, 0, 2, 4, 4], [8, 36, 36, 10, 40, 40]]}
    assert lesion_boxes(spots, parts=True) == spots["parts_bbox_voxel"]
    assert lesion_boxes(spots, parts=False) == [spots["bbox_voxel"]]
    assert lesion_boxes({"bbox_voxel": [1, 2, 3, 4, 5, 6]}, parts=True) == [[1, 2, 3, 4, 5, 6]]  # one piece


def test_a_many_part_lesion_is_drawn_as_often_as_a_one_part_lesion() -> None:
    """Forty calcified spots are one lesion: crop centres follow lesions, not parts, or spots would
    take nearly every lesion-centred crop."""
    spot = [(0, (0.1 + 0.02 * k, 0.1, 0.1, 0.12 + 0.02 * k, 0.12, 0.12)) for k in range(40)]
    nodule = [(1, (0.7, 0.7, 0.7, 0.8, 0.8, 0.8))]
    pixels = torch.zeros((2, 1, *IMAGE), dtype=torch.float16)
    data = Dataset(["spots", "nodule"], pixels, torch.eye(2), LABELS, torch.zeros(2, 1, 2), boxes=[spot, nodule],
                   box_lesions=[[0] * 40, [0]])
    plan = crop_plan(random.Random(0), data, (4, 8, 8), (2, 4, 4), 400, positive=1.0)
    on_spots = sum(v == 0 for v, _ in plan)
    assert 150 < on_spots < 250
    assert len({o for v, o in plan if v == 0}) > 1  # different spots centre different crops
    parts = Dataset(["spots", "nodule"], pixels, torch.eye(2), LABELS, torch.zeros(2, 1, 2), boxes=[spot, nodule])
    assert sum(v == 0 for v, _ in crop_plan(random.Random(0), parts, (4, 8, 8), (2, 4, 4), 400, 1.0)) > 350
