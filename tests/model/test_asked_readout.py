"""The asked finding's token (nets.findings, `vision_finding_asked`): the image's last token is the
readout of the finding the question names, chosen the same way in training (steps.answer_logits),
in one answer (VLM), in a batch (inference.batched) and in a plain forward pass (finetuning)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.nets.findings import select_asked
from model.nets.lamed import LamedConfig, LamedForCausalLM
from tests.model.conftest import build_tokenizer, tiny_text_config

FINDINGS = ["Lung nodule", "Pleural effusion", "Emphysema"]
NODULE_Q = "Is there a lung nodule in this image?"
EFFUSION_Q = "Is there pleural effusion in this image?"
OPEN_Q = "What abnormalities are seen in this image?"


@pytest.fixture(scope="module")
def asked_vlm():
    from model.inference.vlm import VLM

    tokenizer = build_tokenizer()
    config = LamedConfig(text_config=tiny_text_config(tokenizer), image_size=[16, 64, 64], patch_size=[8, 16, 16],
                         mm_hidden_size=16, vision_num_layers=1, vision_num_heads=2, vision_mlp_dim=32,
                         vision_stem_channels=4, vision_stem_depth=1, vision_finding_names=FINDINGS,
                         vision_finding_asked=True, vision_finding_calibrated=True)
    torch.manual_seed(0)
    model = LamedForCausalLM(config).eval()
    with torch.no_grad():  # distinct tokens per finding, so a wrong choice shows
        for p in model.vision.findings.tokens.parameters():
            p.normal_(0.0, 1.0)
    return VLM(model, tokenizer)


def test_select_asked_takes_each_rows_named_token_or_none() -> None:
    features = torch.arange(2 * 7 * 1, dtype=torch.float32).reshape(2, 7, 1)  # 3 grid + 3 findings + none
    chosen = select_asked(features, [1, None], 3)
    assert chosen.shape == (2, 4, 1)
    assert chosen[0, :, 0].tolist() == [0.0, 1.0, 2.0, 4.0]
    assert chosen[1, :, 0].tolist() == [7.0, 8.0, 9.0, 13.0]
    assert select_asked(features[:1], [0, 2], 3)[:, -1, 0].tolist() == [3.0, 5.0]  # one image, two questions
    with pytest.raises(ValueError, match="do not fit"):
        select_asked(features, [3, 0], 3)


def test_config_refuses_asked_tokens_without_a_readout_or_beside_finding_tokens() -> None:
    for bad in ({"vision_finding_names": []}, {"vision_finding_tokens": True}):
        with pytest.raises(ValueError, match="vision_finding_asked"):
            LamedConfig(**{"image_size": [16, 64, 64], "patch_size": [8, 16, 16], "vision_stem_channels": 4,
                           "vision_finding_names": FINDINGS, "vision_finding_asked": True, **bad})


def test_each_question_reads_its_own_findings_token(asked_vlm) -> None:
    model = asked_vlm.model
    grid = 4  # (16/8, 64/16, 64/16) patches pooled by 2
    assert model.num_image_tokens == grid + 1
    image = torch.rand((1, 1, 16, 64, 64))
    prepared = asked_vlm.prepare(image)
    assert prepared.features.shape[1] == grid + len(FINDINGS) + 1  # every finding's token, and "none"
    for question in (NODULE_Q, EFFUSION_Q, OPEN_Q):
        assert asked_vlm.answer(image, question, choices=["Yes", "No"], max_new_tokens=2).choice in ("A", "B")
    assert set(prepared.views) == {"Lung nodule", "Pleural effusion", None}
    for name, slot in (("Lung nodule", 0), ("Pleural effusion", 1), (None, 3)):
        view = prepared.views[name]
        assert view.num_tokens == grid + 1
        torch.testing.assert_close(view.features[:, :grid], prepared.features[:, :grid])
        torch.testing.assert_close(view.features[:, grid], prepared.features[:, grid + slot])
    nodule, effusion = (asked_vlm.answer(image, q, choices=["Yes", "No"]).choice_scores for q in (NODULE_Q, EFFUSION_Q))
    assert nodule != effusion  # same image and wording, another finding's token


def _teacher_forced(vlm, image, question: str, target: list[int]) -> torch.Tensor:
    """Answer-token logits of a plain forward pass given the encoder's output and the asked finding."""
    prompt = vlm.prompt_ids(vlm.build_prompt(question, ["Yes", "No"]))
    ids = torch.cat((prompt, torch.tensor([target])), dim=1)
    with torch.no_grad():
        features = vlm.model.encode_images(image)
        logits = vlm.model(input_ids=ids, image_features=features,
                           asked_findings=[vlm.model.config.vision_finding_names[0]]).logits[0]
    return logits[prompt.shape[1] - 1 : ids.shape[1] - 1]


def test_training_scores_the_answer_as_inference_does(asked_vlm) -> None:
    from model.training.default.data import encode_example
    from model.training.default.steps import answer_logits

    image = torch.rand((1, 1, 16, 64, 64))
    example = encode_example(asked_vlm.tokenizer, 0, "existence_detection", NODULE_Q, "Yes", "A", ["Yes", "No"],
                             "Lung nodule", FINDINGS)
    assert example.asked == "Lung nodule"
    # a box question trains on the token its words name, as inference reads it, not on its box's label
    heart = encode_example(asked_vlm.tokenizer, 0, "box", "Where is the enlarged heart? Give the box.", "[0.1]",
                           None, None, "Cardiomegaly", FINDINGS + ["Cardiomegaly"])
    assert heart.finding == "Cardiomegaly" and heart.asked is None
    with torch.no_grad():
        features = asked_vlm.model.encode_images(image)
        logits, wanted, _ = answer_logits(asked_vlm.model, asked_vlm.tokenizer, features, [example], [0])
    assert wanted.tolist() == example.target_ids
    torch.testing.assert_close(logits, _teacher_forced(asked_vlm, image, NODULE_Q, example.target_ids).float(),
                               atol=1e-4, rtol=1e-4)
    # a forward pass that is not told the finding reads the "none" token: other logits
    prompt = asked_vlm.prompt_ids(asked_vlm.build_prompt(NODULE_Q, ["Yes", "No"]))
    with torch.no_grad():
        unnamed = asked_vlm.model(input_ids=prompt, image_features=features).logits[0, -1]
    assert not torch.allclose(unnamed, logits[0])


def test_a_batch_answers_as_one_question_at_a_time(asked_vlm) -> None:
    from model.inference.batched import Question, answer_batch

    image = torch.rand((1, 1, 16, 64, 64))
    questions = [Question(NODULE_Q, ("Yes", "No")), Question(OPEN_Q), Question(EFFUSION_Q, ("Yes", "No"))]
    batched = answer_batch(asked_vlm, asked_vlm.prepare(image), questions, max_new_tokens=6)
    for question, got in zip(questions, batched):
        one = asked_vlm.answer(image, question.text, choices=list(question.choices) if question.choices else None,
                               max_new_tokens=6)
        assert got.text == one.text
        if question.choices:
            assert got.choice == one.choice
            assert got.choice_scores == pytest.approx(one.choice_scores, abs=1e-4)


def test_the_option_saves_and_loads(asked_vlm, tmp_path: Path) -> None:
    asked_vlm.model.save_pretrained(tmp_path)
    again = LamedForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.vision_finding_asked and again.num_image_tokens == asked_vlm.model.num_image_tokens
    image = torch.rand((1, 1, 16, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(again.encode_images(image), asked_vlm.model.encode_images(image))


@pytest.mark.parametrize("modules", ["lm", "all"])
def test_finetuning_tells_the_model_the_finding_each_question_names(asked_vlm, tmp_path: Path, monkeypatch,
                                                                     modules: str) -> None:
    """From the database's QA pairs as from the training script's: a question about a nodule trains
    through the nodule's token, one naming no finding through "none" (frozen encoder and trained)."""
    import json

    import numpy as np

    from model.inference.loading import write_settings
    from model.training.finetune.config import FinetuneConfig
    from model.training.finetune.loop import train

    folder, data = tmp_path / "model", tmp_path / "data"
    asked_vlm.model.save_pretrained(folder)
    asked_vlm.tokenizer.save_pretrained(folder)
    write_settings(folder, prompt_style="m3d", description="tiny asked-readout test model")
    data.mkdir()
    rows = []
    for k in range(2):
        path = tmp_path / f"train_{k}_a_1.npy"
        np.save(path, np.random.default_rng(k).random((16, 64, 64), dtype=np.float32))
        rows += [{"qa_id": k, "image": str(path), "volume_name": path.name, "task": "existence_detection",
                  "question": NODULE_Q, "choices": ["Yes", "No"], "answer": "Yes", "answer_choice": "A"},
                 {"qa_id": 10 + k, "image": str(path), "volume_name": path.name, "task": "image_observation",
                  "question": OPEN_Q, "choices": None, "answer": "The heart is enlarged.", "answer_choice": None}]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen: list = []
    forward = LamedForCausalLM.forward

    def spy(self, *args, **kwargs):
        seen.extend(kwargs.get("asked_findings") or [])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LamedForCausalLM, "forward", spy)
    result = train(folder, data, tmp_path / "run", FinetuneConfig(max_steps=2, batch_size=4, train_modules=modules))
    assert result.status == "done"
    assert set(seen) == {None, "Lung nodule"} and len(seen) == 8  # 2 steps of 4 questions
