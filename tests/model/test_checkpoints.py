"""Published M3D-LaMed folders: laid out as the released ones, loaded by the explicit key map."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.nets.published import CheckpointError, save_published
from model.nets.lamed import LamedForCausalLM
from model.inference.loading import load_vlm
from tests.model.conftest import build_tiny_model, build_tokenizer

DESIGN_KEYS = (  # DESIGN.md section 4 names, as the released state dicts spell them
    "model.vision_tower.vision_tower.cls_token",
    "model.vision_tower.vision_tower.patch_embedding.position_embeddings",
    "model.vision_tower.vision_tower.patch_embedding.patch_embeddings.1.weight",
    "model.vision_tower.vision_tower.patch_embedding.patch_embeddings.1.bias",
    "model.vision_tower.vision_tower.blocks.1.norm1.weight",
    "model.vision_tower.vision_tower.blocks.1.attn.qkv.weight",
    "model.vision_tower.vision_tower.blocks.1.attn.out_proj.weight",
    "model.vision_tower.vision_tower.blocks.1.norm2.bias",
    "model.vision_tower.vision_tower.blocks.1.mlp.linear1.weight",
    "model.vision_tower.vision_tower.blocks.1.mlp.linear2.bias",
    "model.vision_tower.vision_tower.norm.weight",
    "model.mm_projector.projector.0.weight",
    "model.mm_projector.projector.2.bias",
    "model.embed_tokens.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
)
SEG_KEYS = {"model.seg_projector.0.weight": (4, 4), "model.seg_module.image_encoder.patch.weight": (2, 3)}


def write_m3d_folder(folder: Path, model_type: str = "lamed_llama", seed: int = 3) -> LamedForCausalLM:
    """A tiny random checkpoint laid out like the released ones: config.json with the LaMed fields,
    two safetensors shards + index (segmentation tensors included), tokenizer with LaMed's tokens."""
    tokenizer = build_tokenizer()
    lm = "llama" if model_type == "lamed_llama" else "phi3"
    model = build_tiny_model(tokenizer, seed=seed, model_type=lm)
    state = model.state_dict()
    half = sum(t.numel() * t.element_size() for t in state.values()) * 2 // 3  # two shards
    files = save_published(folder, model.config, iter(state.items()), model_type=model_type, max_shard_bytes=half)
    assert len(files) == 2
    seg = {name: torch.randn(shape) for name, shape in SEG_KEYS.items()}  # M3D saves its SegVol parts too
    last = load_file(str(files[-1]))
    save_file({**last, **seg}, str(files[-1]), metadata={"format": "pt"})
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update({name: files[-1].name for name in seg})
    index_path.write_text(json.dumps(index))
    tokenizer.save_pretrained(folder)
    return model


@pytest.mark.parametrize("model_type", ["lamed_llama", "lamed_phi3"])
def test_published_layout_loads_with_equal_tensors(tmp_path: Path, model_type: str, caplog) -> None:
    original = write_m3d_folder(tmp_path, model_type)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == model_type and config["mm_projector_type"] == "spp"
    assert config["image_size"] == [16, 32, 32] and config["vision_tower"] == "vit3d"
    keys = set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"])
    assert set(DESIGN_KEYS) <= keys and set(SEG_KEYS) <= keys
    with caplog.at_level(logging.INFO, logger="model.nets.published"):
        vlm = load_vlm(tmp_path)
    assert any("skipped 2 segmentation tensors" in r.getMessage() for r in caplog.records)
    loaded = vlm.model.state_dict()
    saved = original.state_dict()
    assert set(loaded) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
    ids = torch.tensor([[1] + [vlm.image_token_id] * vlm.num_image_tokens + [5, 6]])
    images = torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vlm.model(input_ids=ids, images=images).logits,
                                   original(input_ids=ids, images=images).logits)


def test_renamed_key_fails_naming_it(tmp_path: Path) -> None:
    write_m3d_folder(tmp_path)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    old = "model.layers.0.self_attn.q_proj.weight"
    new = "model.layers.0.self_attn.query.weight"
    shard = tmp_path / index["weight_map"].pop(old)
    tensors = load_file(str(shard))
    tensors[new] = tensors.pop(old)
    save_file(tensors, str(shard))
    index["weight_map"][new] = shard.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as info:
        load_vlm(tmp_path)
    assert new in str(info.value)  # the unexpected key
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in str(info.value)  # and what is missing


def test_unmapped_key_and_missing_shard(tmp_path: Path) -> None:
    write_m3d_folder(tmp_path)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = tmp_path / index["weight_map"]["lm_head.weight"]
    tensors = load_file(str(shard))
    tensors["extra_head.weight"] = torch.zeros(2)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match="extra_head.weight"):
        load_vlm(tmp_path)
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_vlm(tmp_path)


def test_pytorch_bin_and_dtype(tmp_path: Path) -> None:
    original = write_m3d_folder(tmp_path)
    state = {}
    for shard in sorted(tmp_path.glob("model-*.safetensors")):
        state.update(load_file(str(shard)))
        shard.unlink()
    (tmp_path / "model.safetensors.index.json").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    vlm = load_vlm(tmp_path, dtype=torch.bfloat16)
    weight = vlm.model.vision.vision_tower.blocks[0].attn.qkv.weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, original.vision.vision_tower.blocks[0].attn.qkv.weight.to(torch.bfloat16))
