"""The box head (nets.findings.FindingBoxes, model/inference/locate.py, training stage 3): a box
is read off the cells around the readout's peak, box questions about a located finding are
answered from it in the chat's path and the batched evaluation's alike, it survives save/load,
and stage 3 teaches it where a finding is."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from model.nets.findings import box_from_map
from model.nets.lamed import LamedForCausalLM
from model.training.default.data import Dataset, Example
from tests.model.test_finding_readout import FINDINGS, readout_config


def test_the_box_comes_from_the_cells_around_the_peak() -> None:
    logits = torch.full((4, 8, 8), -10.0)
    logits[1, 2, 5] = 10.0  # the peak; its neighbours are near zero probability
    boxes = torch.zeros((6, 4, 8, 8))
    boxes[:3, 1, 2, 5] = torch.tensor([0.5, -0.5, 0.0])  # centre offset from the cell's centre
    boxes[3:, 1, 2, 5] = torch.log(torch.tensor([2.0, 1.0, 4.0]))  # size in cells
    box = box_from_map(logits, boxes)
    # centre (2.0, 2.0, 5.5) in cells, half sizes (1, 0.5, 2)
    expected = (1.0 / 4, 1.5 / 8, 3.5 / 8, 3.0 / 4, 2.5 / 8, 7.5 / 8)
    assert box == pytest.approx(expected, abs=1e-3)
    logits[3, 7, 7] = 12.0  # a stronger peak elsewhere wins
    assert box_from_map(logits, boxes)[0] > 0.5


def test_config_refuses_box_findings_the_readout_does_not_have() -> None:
    with pytest.raises(ValueError, match="vision_box_findings"):
        readout_config(vision_box_findings=["Pleural effusion"])
    with pytest.raises(ValueError, match="list of finding names"):
        readout_config(vision_box_findings="Lung nodule")


def _dataset(volumes: int = 12) -> Dataset:
    """Noise volumes with one bright nodule (label 0) each, at a known box, and box questions."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand((volumes, 1, 16, 64, 64), generator=generator).half() * 0.1
    rng = random.Random(0)
    lesions = []
    for v in range(volumes):
        z, y, x = rng.randrange(2, 10), rng.randrange(4, 44), rng.randrange(4, 44)
        dz, dy = rng.randrange(3, 6), rng.randrange(6, 16)
        pixels[v, 0, z:z + dz, y:y + dy, x:x + dy] = 0.9
        lesions.append([(0, (z / 16, y / 64, x / 64, (z + dz) / 16, (y + dy) / 64, (x + dy) / 64))])
    labels = torch.tensor([[1.0, 0.0, 0.0]] * volumes)
    data = Dataset([f"v{v}" for v in range(volumes)], pixels, labels, FINDINGS, torch.zeros(volumes, 1, 3),
                   boxes=lesions, lesions=lesions)
    for v in range(volumes):
        data.by_volume[v] = {"box": [Example(v, "box", "open", [1], [2], (), "Lung nodule")]}
    return data


def test_stage3_adds_a_box_head_that_finds_what_it_was_taught(tmp_path: Path) -> None:
    from model.training.default.checkpoint import Checkpoints
    from model.training.default.recipe import Recipe
    from model.training.default.stage3 import box_findings, box_iou, train_boxes

    torch.manual_seed(0)
    model = LamedForCausalLM(readout_config()).eval()
    data = _dataset()
    assert box_findings(data) == ["Lung nodule"]
    recipe = Recipe(box_steps=300, box_cells=16, warmup_steps=5, stem_lr=3e-3)
    before = model.vision.vision_tower.state_dict()
    result = train_boxes(model, data, data, recipe, Checkpoints(tmp_path, recipe))
    assert model.config.vision_box_findings == ["Lung nodule"] and result["findings"] == ["Lung nodule"]
    assert result["log"][-1]["box"] < result["log"][0]["box"] / 2
    for key, value in model.vision.vision_tower.state_dict().items():  # the stem stays as it was
        torch.testing.assert_close(value, before[key])
    # the head's size from a cell of the nodule is right even where the peak is not learnt
    features = model.vision.vision_tower.encode(data.pixels[:1].float())[1]
    box = data.lesions[0][0][1]
    cell = [int((box[i] + box[i + 3]) / 2 * features.shape[2 + i]) for i in range(3)]
    with torch.no_grad():
        out = model.vision.boxes(features)[0, 0, :, cell[0], cell[1], cell[2]]
    sizes = [(box[i + 3] - box[i]) * features.shape[2 + i] for i in range(3)]
    assert out[3:].exp().tolist() == pytest.approx(sizes, rel=0.5)
    again = train_boxes(LamedForCausalLM(readout_config()).eval(), data, data, recipe, Checkpoints(tmp_path, recipe))
    assert again == result  # resumed from its checkpoint
    assert box_iou((0, 0, 0, 1, 1, 1), (0, 0, 0, 1, 1, 0.5)) == pytest.approx(0.5)
    assert train_boxes(model, data, data, Recipe(box_steps=0), Checkpoints(None, recipe)) is None


@pytest.fixture
def located_vlm(tmp_path: Path):
    """A tiny VLM with a box head for lung nodules, saved and loaded back as a user gets it."""
    from model.inference.loading import load_vlm, write_settings
    from tests.model.conftest import build_tokenizer, tiny_text_config

    tokenizer = build_tokenizer()
    torch.manual_seed(3)
    model = LamedForCausalLM(readout_config(text_config=tiny_text_config(tokenizer),
                                            vision_box_findings=["Lung nodule"])).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    write_settings(tmp_path, prompt_style="m3d", description="tiny model with a box head")
    return load_vlm(str(tmp_path), device="cpu"), model


def test_a_box_question_about_a_located_finding_is_answered_by_the_head_in_every_path(located_vlm) -> None:
    from model.inference.batched import Question, answer_batch

    vlm, saved = located_vlm
    assert vlm.model.config.vision_box_findings == ["Lung nodule"]
    for key, value in saved.vision.boxes.state_dict().items():  # the head's weights survived the round trip
        torch.testing.assert_close(vlm.model.vision.boxes.state_dict()[key], value)
    volume = torch.rand((1, 16, 64, 64))
    prepared = vlm.prepare(volume)
    expected = vlm.model.vision.locate(prepared.pixels)[0]
    pieces: list[str] = []
    question = "Where is the lung nodule? Give the box."
    answer = vlm.answer(volume, question, on_text=pieces.append)
    assert answer.box_normalized == pytest.approx(expected) and answer.n_tokens == 0
    assert pieces == [answer.text] and answer.text.startswith("[") and answer.latency_first_token_s is not None
    assert list(vlm.stream(volume, question)) == [answer.text]
    batched = answer_batch(vlm, prepared, [Question("Is there a lung nodule?", ("Yes", "No")), Question(question),
                                           Question("Where is the emphysema? Give the box.")])
    assert batched[1].box_normalized == answer.box_normalized and batched[1].text == answer.text
    assert batched[0].choice in ("A", "B") and batched[0].box_normalized is None
    assert batched[2].n_tokens > 0  # a finding the head does not locate: the language model writes
    plain = vlm.answer(volume, "Is there a lung nodule?", choices=["Yes", "No"])
    assert plain.choice in ("A", "B") and plain.n_tokens > 0
