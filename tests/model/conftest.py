"""Tiny random LaMed models for tests: built in seconds, no downloads.

`tiny_vlm_dir` is a save_pretrained folder (config, safetensors, tokenizer, ctvqa.json) that
`model.load_vlm` loads; other test packages reuse it with `from tests.model.conftest import tiny_vlm_dir`.
The image is 16x32x32 with 4x8x8 patches pooled by 2, so a prompt has 8 image tokens, not 256.
"""
from __future__ import annotations

from pathlib import Path

import pytest

TINY_IMAGE_SIZE = (16, 32, 32)
TINY_PATCH_SIZE = (4, 8, 8)
_CORPUS = [
    "Is there a lung nodule? Yes No A. Yes B. No C. D.",
    "What abnormalities are seen in this image? The heart is enlarged. Pleural effusion on the right.",
    "Refractory Lesion (Persistent or recurrent, now present) Resolved Lesion (Previously present or recurrent, now absent)",
    "New Lesion (Absent previously, now present) No Abnormality (Always absent) Choices: Answer:",
    "Earlier consolidation sequences: [0, 1, 1]. (Note: 0 indicates absence, and 1 indicates presence.)",
    "The nodule measures 12 mm in the right upper lobe. Emphysema, consolidation, cardiomegaly. 0.25, 0.5]",
]


def build_tokenizer(vocab_size: int = 400):
    """A tiny byte-level BPE tokenizer with LaMed's special tokens (see `model.nets.tokenizer`)."""
    from model.nets.tokenizer import train_tokenizer

    return train_tokenizer(_CORPUS * 4, vocab_size)


def tiny_text_config(tokenizer, model_type: str = "llama") -> dict:
    """A 2-layer LM config sized to the tokenizer."""
    return dict(
        model_type=model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2 if model_type == "llama" else 4,
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )


def tiny_config(tokenizer, model_type: str = "llama"):
    from model.nets.lamed import LamedConfig

    return LamedConfig(
        text_config=tiny_text_config(tokenizer, model_type), image_size=list(TINY_IMAGE_SIZE),
        patch_size=list(TINY_PATCH_SIZE), mm_hidden_size=64, vision_num_layers=2, vision_num_heads=1,
        vision_mlp_dim=96,
    )


def build_tiny_model(tokenizer, seed: int = 0, model_type: str = "llama"):
    import torch

    from model.nets.lamed import LamedForCausalLM

    torch.manual_seed(seed)
    return LamedForCausalLM(tiny_config(tokenizer, model_type)).eval()


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LaMed model folder, as `save_pretrained` writes it, plus tokenizer and ctvqa.json."""
    from model.inference.loading import write_settings

    folder = tmp_path_factory.mktemp("tiny_vlm")
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_settings(folder, prompt_style="m3d", description="tiny random test model")
    return folder


#: The tiny OmniCT-family model: 9 slices = 3 units, 32x32 in-plane, 8x8 patches (4x4 grid),
#: unshuffle 2 -> a volume gives 3 x 2 x 2 = 12 global tokens, a slice 4 x 4 = 16; 3 organs x 2 tokens.
TINY_OMNICT_IMAGE_SIZE = (9, 32, 32)
TINY_OMNICT_TOKENS = {"volume": 12 + 6, "slice": 16 + 6}


def tiny_omnict_config(tokenizer):
    from model.nets.lamed import LamedConfig

    return LamedConfig(
        text_config=tiny_text_config(tokenizer), vision_family="omnict", image_size=list(TINY_OMNICT_IMAGE_SIZE),
        patch_size=[3, 8, 8], mm_hidden_size=32, vision_num_layers=1, vision_num_heads=2, vision_mlp_dim=64,
        token_unshuffle=2, position_dims=[8, 8, 8], organ_names=["lung_left", "lung_right", "mediastinum"],
        organ_tokens=2,
    )


@pytest.fixture(scope="session")
def tiny_omnict_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random OmniCT-family model folder (save_pretrained + tokenizer + ctvqa.json)."""
    import torch

    from model.inference.loading import write_settings
    from model.nets.lamed import LamedForCausalLM

    folder = tmp_path_factory.mktemp("tiny_omnict")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    LamedForCausalLM(tiny_omnict_config(tokenizer)).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_settings(folder, prompt_style="m3d", description="tiny random OmniCT-family test model")
    return folder
