"""The VLM object on a tiny random model: splicing, cached generation, choice scores, cancel, cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import model.inference.loading as loading_module
import model.inference.vlm as vlm_module
from model.inference import prompts
from model.inference.vlm import VLM
from model.inference.loading import load_vlm


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir: Path) -> VLM:
    return load_vlm(tiny_vlm_dir)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    vol = np.full((20, 40, 40), -1000.0, np.float32)
    vol[2:18, 5:35, 6:34] = 40.0
    vol[8:12, 15:22, 10:16] = 300.0
    return vol


def test_forward_splices_image_features_after_bos(vlm: VLM) -> None:
    model = vlm.model
    n = vlm.num_image_tokens
    assert n == 8  # derived from the tiny config (16x32x32, patch 4x8x8, pooling 2)
    ids = vlm.prompt_ids("Is there a lung nodule?")
    assert ids[0, 0] == vlm.tokenizer.bos_token_id and (ids[0, 1 : n + 1] == vlm.image_token_id).all()
    images = torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        features = model.vision.mm_projector(model.vision.vision_tower(images))
        embeds = model.language_model.get_input_embeddings()(ids).clone()
        embeds[:, 1 : n + 1] = features
        manual = model.language_model(inputs_embeds=embeds).logits
        ours = model(input_ids=ids, images=images).logits
    torch.testing.assert_close(ours, manual)
    assert vlm.encode(images).shape == (1, n, model.config.text_config.hidden_size)
    torch.testing.assert_close(vlm.encode(images), features)
    # the image really matters for the text positions
    with torch.no_grad():
        other = model(input_ids=ids, images=torch.rand(1, 1, 16, 32, 32)).logits
    assert not torch.allclose(other[:, n + 1 :], ours[:, n + 1 :])


def test_cached_prefix_generation_equals_plain_generate(vlm: VLM, volume: np.ndarray) -> None:
    prepared = vlm.prepare(volume)
    assert vlm.prepare(volume) is prepared  # encoded once, reused by follow-up questions
    question = "What abnormalities are seen in this image?"
    answer = vlm.answer(volume, question, max_new_tokens=6, min_new_tokens=6)
    ids = vlm.prompt_ids(vlm.build_prompt(question))
    with torch.no_grad():
        plain = vlm.model.generate(input_ids=ids, images=prepared.pixels, max_new_tokens=6, min_new_tokens=6,
                                   do_sample=False, pad_token_id=vlm.tokenizer.pad_token_id)
    expected = vlm.tokenizer.decode(plain[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert answer.text == expected
    assert answer.n_tokens == 6 and answer.total_s > 0
    streamed = "".join(vlm.stream(volume, question, max_new_tokens=6, min_new_tokens=6))
    assert streamed.strip() == expected


def test_choice_scores_equal_full_forward_likelihoods(vlm: VLM, volume: np.ndarray) -> None:
    choices = ["Yes", "No", "-", "-"]
    answer = vlm.answer(volume, "Is there a lung nodule?", choices=choices, max_new_tokens=3)
    assert set(answer.choice_scores) == {"A", "B"}
    assert sum(answer.choice_scores.values()) == pytest.approx(1.0)
    assert answer.choice == max(answer.choice_scores, key=answer.choice_scores.get)
    prepared = vlm.prepare(volume)
    ids = vlm.prompt_ids(vlm.build_prompt("Is there a lung nodule?", choices))
    means = []
    for letter, text in (("A", "Yes"), ("B", "No")):
        target = vlm.tokenizer(prompts.format_target(text, letter), add_special_tokens=False)["input_ids"]
        full = torch.cat([ids, torch.tensor([target])], dim=1)
        with torch.no_grad():
            logits = vlm.model(input_ids=full, images=prepared.pixels).logits[0]
        logp = torch.log_softmax(logits[ids.shape[1] - 1 : -1].float(), -1)
        means.append(logp.gather(-1, torch.tensor(target)[:, None]).mean())
    expected = torch.softmax(torch.stack(means), 0)
    assert answer.choice_scores["A"] == pytest.approx(float(expected[0]), abs=1e-4)


def test_cancel_stops_within_one_token(vlm: VLM, volume: np.ndarray) -> None:
    seen: list[int] = []

    def on_text(piece: str) -> None:
        if not seen:
            seen.append(vlm.tokens_generated)
            vlm.cancel()

    answer = vlm.answer(volume, "Describe the findings.", max_new_tokens=120, min_new_tokens=120, on_text=on_text)
    assert seen, "no text was streamed"
    assert answer.n_tokens <= seen[0] + 1 < 120


def test_closing_the_stream_cancels(vlm: VLM, volume: np.ndarray) -> None:
    pieces = vlm.stream(volume, "Describe the findings.", max_new_tokens=200, min_new_tokens=200)
    next(pieces)
    pieces.close()
    assert vlm.tokens_generated < 200
    assert vlm.answer(volume, "Again?", max_new_tokens=2, min_new_tokens=2).n_tokens == 2  # not left locked


def test_priors_are_written_into_the_prompt(vlm: VLM) -> None:
    prompt = vlm.build_prompt("How has consolidation evolved?", ["a", "b", "c", "d"], priors=[0, 1],
                              prior_label="consolidation")
    assert prompt.startswith("Earlier consolidation sequences: [0, 1]. (Note: 0 indicates absence")
    assert prompt.endswith("D. d")


def test_cache_is_bounded_and_tensor_inputs_work(vlm: VLM) -> None:
    vlm.clear_cache()
    for seed in range(vlm.cache_size + 2):
        vlm.prepare(torch.rand(1, 16, 32, 32, generator=torch.Generator().manual_seed(seed)))
    assert len(vlm.cached_keys) == vlm.cache_size
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vlm.prepare(torch.full((1, 16, 32, 32), 5.0))


def test_bf16_load_answers(tiny_vlm_dir: Path, volume: np.ndarray) -> None:
    model16 = load_vlm(tiny_vlm_dir, dtype="bfloat16")
    assert model16.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model16.answer(volume, "Is there a lung nodule?", choices=["Yes", "No"], max_new_tokens=2).choice in "AB"


def test_missing_default_and_bad_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading_module, "DEFAULT_MODEL_DIR", tmp_path / "default")
    with pytest.raises(FileNotFoundError, match="default model is not built yet"):
        load_vlm()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vlm(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_vlm(tmp_path)


def test_large_volumes_are_cached_by_identity(vlm: VLM, volume: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from model.ct.volume import CTVolume

    monkeypatch.setattr(vlm_module, "_HASH_LIMIT_BYTES", 0)  # treat the small test volume as a big CT
    vlm.clear_cache()
    ct = CTVolume(volume.copy(), (2.0, 1.0, 1.0), np.eye(4), {"normalised": False})
    first = vlm.prepare(ct)
    assert vlm.prepare(ct) is first and first.key.startswith("obj:")
    assert first.geometry is not None and first.geometry.original_shape == volume.shape
    other = CTVolume(volume.copy(), (2.0, 1.0, 1.0), np.eye(4), {"normalised": False})
    assert vlm.prepare(other) is not first
