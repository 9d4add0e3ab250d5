"""The embedded default model: it ships, loads with `load_vlm(None)`, sees a finding on a synthetic
phantom it never trained on, and its training script and tokenizer builder work end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.inference import prompts
from model.inference.loading import DEFAULT_MODEL_DIR

MAX_WEIGHTS_MB = 50


@pytest.fixture(scope="module")
def default_vlm():
    from model import load_vlm

    return load_vlm(None)


def test_shipped_folder_is_complete_small_and_honest() -> None:
    weights = DEFAULT_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size < MAX_WEIGHTS_MB * 2**20
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "ctvqa.json", "README.md", "eval.json"):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "Never use this model on a real patient" in card
    assert "--model PATH" in card and "CTVQA_MODEL" in card
    report = json.loads((DEFAULT_MODEL_DIR / "eval.json").read_text())
    assert set(report["sizes"]) == {"64x192x192", "64x256x256", "96x320x320"}  # issue 16: each size users meet
    for size, figures in report["sizes"].items():
        assert set(figures["tasks"]) == {
            "anomaly_detection", "image_observation", "medical_computation",
            "existence_detection", "static_temporal_diagnosis", "longitudinal_temporal_diagnosis",
        }
        assert f"### {size}" in card
        for figure in figures["acceptance"].values():  # the card's lines come from these same figures
            shown = next(figure[k] for k in ("balanced_accuracy", "accuracy", "points", "percent", "consistent")
                         if k in figure)
            assert str(shown) in card


def test_default_model_loads_with_its_own_tokenizer_and_input_size(default_vlm) -> None:
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert default_vlm.image_size == tuple(config["image_size"])
    assert default_vlm.prompt_style == "m3d"
    tokenizer = default_vlm.tokenizer
    for token in prompts.SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id, token
    assert None not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert len(tokenizer) == default_vlm.model.config.text_config.vocab_size


def _phantom(findings: dict[str, tuple[float, ...]], size: tuple[int, int, int], seed: int):
    from annotation.synth import Grid, default_spacing, synthesize_patient

    grid = Grid(size, default_spacing(size))
    return synthesize_patient(grid, np.random.default_rng(seed), 1, findings=findings).scans[0]


# The findings the shipped model reads (model/default/README.md), from a pleural fluid layer and an
# enlarged heart down to a collapsed segment, a lobar consolidation, a thin pericardial rim, a catheter,
# dilated airways, enlarged nodes, a ground-glass opacity and a nodule, each drawn into the same fixed
# phantom and left out of it: each existence question must be answered right. (Calcifications,
# emphysema and fibrotic bands are not read yet.)
SHIPPED_FINDINGS = ("Pleural effusion", "Cardiomegaly", "Pericardial effusion", "Medical material", "Consolidation",
                    "Atelectasis", "Hiatal hernia", "Bronchiectasis", "Lymphadenopathy", "Lung opacity", "Lung nodule")
PHANTOM_SIZE = (64, 192, 192)  # a size users meet (`ctvqa synth --size 64,192,192`)


@pytest.mark.parametrize("present", [True, False], ids=["with", "without"])
@pytest.mark.parametrize("finding", SHIPPED_FINDINGS)
def test_existence_question_answered_from_the_image(default_vlm, finding, present) -> None:
    from annotation.qa_templates import closed_qa_for_scan

    scan = _phantom({finding: (1.0,)} if present else {}, PHANTOM_SIZE, seed=2026)
    assert scan.labels[finding] == present
    row = next(r for r in closed_qa_for_scan("test_1_a_1.nii.gz", scan.labels, [])
               if finding.lower() in r.question.lower())
    letter = "A" if present else "B"
    answer = default_vlm.answer(scan.hu, row.question, choices=list(row.choices), max_new_tokens=8)
    assert answer.choice == letter, (finding, present, answer)
    assert answer.text.startswith(f"{letter}."), answer.text


def test_tokenizer_splits_digits_and_keeps_lamed_tokens(tmp_path: Path) -> None:
    from model.nets.tokenizer import train_tokenizer

    texts = ["The nodule measures 23x18 mm in the right upper lobe.",
             "Is there pleural effusion in this image? Choices: A. Yes B. No", "A. Yes", "B. No"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=320)
    pieces = tokenizer.tokenize("23x18 mm")
    assert [p for p in pieces if p.isdigit()] == ["2", "3", "1", "8"]
    text = prompts.IMAGE_TOKEN * 3 + " Is there pleural effusion in this image?"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[:3] == [tokenizer.convert_tokens_to_ids(prompts.IMAGE_TOKEN)] * 3
    assert tokenizer.decode(ids[3:]) == " Is there pleural effusion in this image?"
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()


def test_finding_asked_takes_the_longest_label_named() -> None:
    from model.evaluation.findings import finding_asked

    FINDINGS = ["Pericardial effusion", "Pleural effusion", "Lung nodule"]
    assert finding_asked("Is there pericardial effusion in this image?", FINDINGS) == "Pericardial effusion"
    assert finding_asked("Past sequences of pleural effusion: [0, 1]. ...", FINDINGS) == "Pleural effusion"
    assert finding_asked("Where is the largest lesion?", FINDINGS) is None


@pytest.mark.parametrize(("stem", "depth"), [(0, 0), (4, 0), (4, 1)], ids=["linear patches", "conv stem", "deep stem"])
def test_input_standardisation_folds_into_the_patch_embedding_exactly(stem: int, depth: int) -> None:
    """The tower trains on standardised inputs but ships taking raw ones: same tokens either way."""
    import torch

    from model.training.default.stage1 import InputStandardiser
    from model.nets.vision import ViT3D

    torch.manual_seed(0)
    pixels = torch.rand((6, 1, 8, 16, 16))
    tower = ViT3D(image_size=(8, 16, 16), patch_size=(4, 8, 8), hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
                  stem_channels=stem, stem_depth=depth)
    standardise = InputStandardiser(pixels[:4])
    with torch.no_grad():
        trained_on = tower(standardise(pixels[4:]))
        standardise.fold_into(tower)
        shipped = tower(pixels[4:])
    assert not torch.allclose(trained_on, tower(pixels[4:] * 0.5)), "the tower must depend on its input"
    torch.testing.assert_close(shipped, trained_on, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("depth", [0, 1])
def test_conv_stem_model_saves_and_loads_with_its_standardisation(tmp_path: Path, depth: int) -> None:
    """A LaMed config with `vision_stem_channels` rebuilds the stem from the folder alone, the stored
    mean volume and scale included (the shipped model depends on them)."""
    import torch

    from model.nets.lamed import LamedConfig, LamedForCausalLM

    text = dict(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2)
    config = LamedConfig(text_config=text, image_size=[8, 32, 32], patch_size=[4, 8, 8], mm_hidden_size=16,
                         vision_num_layers=1, vision_num_heads=2, vision_mlp_dim=32, vision_stem_channels=4,
                         vision_stem_depth=depth)
    model = LamedForCausalLM(config).eval()
    stem = model.vision.vision_tower.patch_embedding.patch_embeddings
    with torch.no_grad():
        stem.reference.uniform_()
        stem.scale.fill_(0.3)
    model.save_pretrained(tmp_path)
    again = LamedForCausalLM.from_pretrained(tmp_path).eval()
    image = torch.rand((1, 1, 8, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(again.encode_images(image), model.encode_images(image))
    assert float(again.vision.vision_tower.patch_embedding.patch_embeddings.scale) == pytest.approx(0.3)
    assert len(again.vision.vision_tower.patch_embedding.patch_embeddings.convs) == (7 if depth == 0 else 19)


@pytest.mark.slow
def test_training_script_end_to_end_is_deterministic(tmp_path: Path) -> None:
    """A tiny cohort and a few steps through the real pipeline, twice: same seed, same weights."""
    from safetensors.torch import load_file

    from model.training.default.recipe import Recipe, cohort_folder
    from model.training.default.run import run
    from model.inference.loading import load_vlm

    recipe = Recipe(cohorts=((0, (32, 48, 48), 2),), heldout=(), image_size=(16, 32, 32), patch_size=(4, 8, 8),
                    vision_hidden=32, vision_layers=1, vision_heads=1, vision_mlp=64, lm_hidden=32, lm_layers=1,
                    lm_heads=2, lm_intermediate=64, vocab_size=600, stem_steps=3, stem_images=2, stage1_steps=2, stage2_steps=3,
                    stage2_fresh=True, box_refine_steps=5, box_refine_crops=2,
                    stage1_images=2, stage2_images=2, questions_per_image=2, focus_steps=1, warmup_steps=1, validate_every=2,
                    validation_questions=4)
    from annotation.synth import write_cohort

    seed, size, patients = recipe.cohorts[0]
    write_cohort(cohort_folder(tmp_path, recipe.cohorts[0]), patients, seed=seed, size=size, workers=1,
                 valid_frac=recipe.valid_frac)
    run(tmp_path / "a", tmp_path, recipe, evaluate=False)
    run(tmp_path / "b", tmp_path, recipe, evaluate=False)
    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(bool((first[k] == second[k]).all()) for k in first)
    assert all(k.startswith(("vision.", "language_model.")) for k in first)  # training heads are not shipped
    # stages 0-1 taken from the saved model give the same run (stage 2 restarts what reads the tower)
    run(tmp_path / "c", tmp_path, recipe, evaluate=False, work=tmp_path / "work-c", tower_from=tmp_path / "a")
    third = load_file(tmp_path / "c" / "model.safetensors")
    assert third.keys() == first.keys() and all(bool((first[k] == third[k]).all()) for k in first)
    assert any(k.startswith("vision.findings.tokens.identity") for k in first)  # the asked finding's token
    vlm = load_vlm(tmp_path / "a")
    answer = vlm.answer(np.full((24, 40, 40), -1000.0, np.float32), "Is there a lung nodule in this image?",
                        choices=["Yes", "No", "-", "-"], max_new_tokens=4)
    assert answer.choice in ("A", "B")
    assert "synthetic" in (tmp_path / "a" / "README.md").read_text()


@pytest.mark.parametrize(("finding", "question", "least_iou"), [
    ("Consolidation", "Where is the consolidation? Give the box.", 0.5),
    ("Cardiomegaly", "Where is the cardiomegaly? Draw its bounding box.", 0.5),
    ("Lung nodule", "Where is the lung nodule? Give the box.", 0.5),  # redrawn by the box refiner
    ("Pleural effusion", "Where is the left pleural effusion? Give the box.", 0.5),
])
def test_box_questions_about_located_findings_are_answered_by_the_box_head(default_vlm, finding, question,
                                                                          least_iou) -> None:
    """The same fixed phantom, each finding drawn into it: the box comes from the box head (no
    token written) and lies on the painted lesion."""
    from model.evaluation.measures import box_iou

    assert finding in default_vlm.model.config.vision_box_findings
    scan = _phantom({finding: (1.0,)}, PHANTOM_SIZE, seed=2026)
    truth = next(p.record["bbox_voxel"] for p in scan.painted if p.record["label"] == finding)
    answer = default_vlm.answer(scan.hu, question)
    assert answer.n_tokens == 0 and answer.box is not None, answer
    centre = [(answer.box[i] + answer.box[i + 3]) / 2 for i in range(3)]
    assert all(truth[i] <= centre[i] <= truth[i + 3] for i in range(3)), (answer.box, truth)
    assert box_iou(answer.box, truth) >= least_iou, (answer.box, truth)


def test_heldout_readout_auc_reads_each_scans_findings(default_vlm, tmp_path: Path) -> None:
    """The held-out readout figure beside the answers' balanced accuracy: the shipped readout
    separates the findings it reads on patients it never saw, and the figure follows the labels
    (scored against the labels inverted, the same scans give 1 - AUC)."""
    import csv

    from annotation.synth import write_cohort
    from model.training.default.evaluation import heldout_readout_auc

    write_cohort(tmp_path, 6, seed=77, size=(48, 128, 128), workers=1, valid_frac=0.5)
    auc = heldout_readout_auc(default_vlm, tmp_path)
    mixed = {"Pleural effusion", "Cardiomegaly", "Medical material"} & set(auc)
    assert mixed, auc  # 6 patients: some of the large findings occur both present and absent
    assert all(auc[k] >= 0.9 for k in mixed), auc
    with (tmp_path / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    finding = min(mixed)
    for row in rows:
        row[finding] = str(1 - int(row[finding]))
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    inverted = heldout_readout_auc(default_vlm, tmp_path)
    assert inverted[finding] == pytest.approx(1.0 - auc[finding], abs=1e-3), (auc, inverted)
