"""The box head (nets.findings.FindingBoxes, model/inference/locate.py, training stage 3): a box
is read off the cells around the readout's peak, box questions about a located finding are
answered from it in the chat's path and the batched evaluation's alike, it survives save/load,
and stage 3 teaches it where a finding is."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from model.inference import boxes
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


def _dataset(tokenizer, volumes: int = 12) -> Dataset:
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
        question = tokenizer(" Where is the lung nodule? Give the box.", add_special_tokens=False)["input_ids"]
        data.by_volume[v] = {"box": [Example(v, "box", "open", question, [2], (), "Lung nodule")]}
    return data


def test_stage3_teaches_the_head_where_a_finding_is_and_keeps_it_only_where_it_beats_the_lm(tmp_path: Path) -> None:
    from model.evaluation.measures import box_iou
    from model.nets.findings import FindingBoxes
    from model.training.default.checkpoint import Checkpoints
    from model.training.default.recipe import Recipe
    from model.training.default.stage3 import (
        box_findings,
        cell_vectors,
        fit_head,
        train_boxes,
    )
    from model.training.default.steps import Clock
    from tests.model.conftest import build_tokenizer, tiny_text_config

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = LamedForCausalLM(readout_config(text_config=tiny_text_config(tokenizer))).eval()
    data = _dataset(tokenizer)
    assert box_findings(data) == ["Lung nodule"]
    recipe = Recipe(box_steps=300, box_cells=16, box_refine_steps=0, warmup_steps=5, stem_lr=3e-3)
    vectors, slots, targets = cell_vectors(model, data, {0: 0}, random.Random(0), recipe.box_cells)
    assert len(vectors) == 12 * 16 and set(slots.tolist()) == {0}
    head = FindingBoxes(vectors.shape[1], 1)
    log = fit_head(head, vectors, slots, targets, recipe, Clock("boxes", 300, 5.0))
    assert log[-1]["box"] < log[0]["box"] / 2
    with torch.no_grad():  # the sizes it gives from the lesions' cells are about right
        sizes = head(vectors)[:, 0, 3:, 0, 0, 0].exp()
    assert float((sizes / targets[:, 3:].exp() - 1).abs().median()) < 0.3
    assert box_iou((0, 0, 0, 1, 1, 1), (0, 0, 0, 1, 1, 0.5)) == pytest.approx(0.5)

    before = model.vision.vision_tower.state_dict()
    result = train_boxes(model, tokenizer, data, data, recipe, Checkpoints(tmp_path, recipe))
    assert result["findings"] == ["Lung nodule"] and set(result["valid_written_iou_at_50"]) == {"Lung nodule"}
    beats = result["valid_iou_at_50"]["Lung nodule"] > result["valid_written_iou_at_50"]["Lung nodule"]
    assert result["kept"] == (["Lung nodule"] if beats else [])
    assert model.config.vision_box_findings == result["kept"] and (model.vision.boxes is not None) == beats
    for key, value in model.vision.vision_tower.state_dict().items():  # the stem stays as it was
        torch.testing.assert_close(value, before[key])
    again_model = LamedForCausalLM(readout_config(text_config=tiny_text_config(tokenizer))).eval()
    again = train_boxes(again_model, tokenizer, data, data, recipe, Checkpoints(tmp_path, recipe))
    assert again == result and again_model.config.vision_box_findings == result["kept"]  # resumed
    if beats:
        torch.testing.assert_close(again_model.vision.boxes.state_dict(), model.vision.boxes.state_dict())
    assert train_boxes(model, tokenizer, data, data, Recipe(box_steps=0), Checkpoints(None, recipe)) is None


def test_a_head_keeps_the_trained_weights_of_the_findings_it_keeps() -> None:
    from model.nets.findings import FindingBoxes

    torch.manual_seed(4)
    head = FindingBoxes(8, 3).eval()
    features = torch.rand((1, 8, 2, 3, 3))
    kept = head.keep([2, 0])
    with torch.no_grad():
        torch.testing.assert_close(kept(features), head(features)[:, [2, 0]])


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
    # the scan's encoding found the boxes in the same pass of the tower (no second one per question)
    assert set(prepared.boxes) == {"Lung nodule"} and prepared.boxes["Lung nodule"] == pytest.approx(expected)
    pieces: list[str] = []
    question = "Where is the lung nodule? Give the box."
    answer = vlm.answer(volume, question, on_text=pieces.append)
    # the box it says, to the 3 decimals it writes
    assert answer.box_normalized == pytest.approx(expected, abs=5e-4) and answer.n_tokens == 0
    assert answer.box_normalized == boxes.parse_box(boxes.BOX_START + answer.text + boxes.BOX_END)
    assert pieces == [answer.text] and answer.text.startswith("[") and answer.latency_first_token_s is not None
    assert list(vlm.stream(volume, question)) == [answer.text]
    batched = answer_batch(vlm, prepared, [Question("Is there a lung nodule?", ("Yes", "No")), Question(question),
                                           Question("Where is the emphysema? Give the box.")])
    assert batched[1].box_normalized == answer.box_normalized and batched[1].text == answer.text
    assert batched[0].choice in ("A", "B") and batched[0].box_normalized is None
    assert batched[2].n_tokens > 0  # a finding the head does not locate: the language model writes
    plain = vlm.answer(volume, "Is there a lung nodule?", choices=["Yes", "No"])
    assert plain.choice in ("A", "B") and plain.n_tokens > 0


def test_a_folder_whose_box_head_tensors_are_missing_is_refused(located_vlm, tmp_path: Path) -> None:
    """A config that names box findings with no head in the weights would answer boxes at random."""
    from safetensors.torch import load_file, save_file

    from model.inference.loading import CheckpointError, load_vlm

    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    assert any(k.startswith("vision.boxes.") for k in tensors)
    save_file({k: v for k, v in tensors.items() if not k.startswith("vision.boxes.")}, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="vision.boxes"):
        load_vlm(str(tmp_path), device="cpu")


def test_a_context_head_trains_on_exactly_what_it_reads_on_the_whole_map() -> None:
    """With context 1 a sampled cell's 3x3x3 patch (zero beyond the map) gives the head the same
    output there as the whole map does, edges included."""
    from model.nets.findings import FindingBoxes
    from model.training.default.stage3 import cell_samples

    torch.manual_seed(5)
    features = torch.rand((8, 4, 6, 6))
    head = FindingBoxes(8, 2, hidden=16, context=1).eval()
    lesions = [(0, (0.0, 0.0, 0.0, 0.2, 0.3, 0.3)), (1, (0.5, 0.5, 0.5, 1.0, 1.0, 1.0))]
    vectors, slots, _ = cell_samples(features, lesions, {0: 0, 1: 1}, random.Random(0), 200, context=1)
    assert all(v.shape == (8, 3, 3, 3) for v in vectors) and set(slots) == {0, 1}
    with torch.no_grad():
        whole = head(features[None])[0]  # (2, 6, 4, 6, 6)
        patches = head(torch.stack(vectors))[..., 1, 1, 1]  # (N, 2, 6)
    found = 0
    for patch in patches:  # every patch's output is the whole map's output at some cell
        found += bool(((whole.flatten(2) - patch[..., None]).abs().amax(dim=(0, 1)) < 1e-5).any())
    assert found == len(vectors)
