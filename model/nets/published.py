"""Load published M3D-LaMed / M3D-RAD checkpoint folders without running their code.

Their config.json says `model_type` `lamed_phi3` / `lamed_llama`; their state dicts use M3D's
names. `KEY_MAP` is the whole translation to our module tree; anything it does not cover (other
than the segmentation parts VQA never uses) is an error that lists the keys, because a silently
half-loaded model answers confidently and wrongly. Shards are read one at a time into a model
whose parameters start on the `meta` device, so a 4B model needs about its own size in memory.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.data.json_files import read_json_file
from model.nets.lamed import LamedConfig, LamedForCausalLM
from model.nets.weights import CheckpointError, iter_tensors

__all__ = ["CheckpointError", "checkpoint_files", "is_published_lamed", "load_published", "save_published"]

log = logging.getLogger(__name__)

PUBLISHED_MODEL_TYPES = {"lamed_phi3": "phi3", "lamed_llama": "llama"}

# (prefix in the published checkpoint, prefix in LamedForCausalLM); the first match wins.
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.vision_tower.", "vision.vision_tower."),
    ("model.mm_projector.", "vision.mm_projector."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
SKIPPED_PREFIXES = ("model.seg_projector.", "model.seg_module.")

# LaMed's own config fields (and file bookkeeping) that are not part of the language model's config.
_LAMED_FIELDS = {
    "image_channel", "image_size", "patch_size", "mm_hidden_size", "mm_projector_type", "proj_layer_type",
    "proj_layer_num", "proj_pooling_size", "proj_pooling_type", "vision_tower", "vision_select_layer",
    "vision_select_feature", "segmentation_module", "num_clicks", "freeze_vision_tower", "pretrain_vision_model",
    "pretrain_mm_mlp_adapter", "tune_mm_mlp_adapter", "pretrain_seg_module", "mm_use_im_start_end",
    "img_token_id", "seg_token_id", "vision_num_layers", "vision_num_heads", "vision_mlp_dim",
}
_FILE_FIELDS = {"architectures", "auto_map", "_name_or_path", "transformers_version", "model_type", "torch_dtype", "dtype"}


def read_config(folder: Path) -> dict[str, Any]:
    return read_json_file(folder / "config.json", CheckpointError, f"{folder}: no config.json (not a model folder)")


def is_published_lamed(folder: str | Path) -> bool:
    """Whether the folder holds an M3D-LaMed-layout checkpoint (vs one of our save_pretrained folders)."""
    return read_config(Path(folder)).get("model_type") in PUBLISHED_MODEL_TYPES


def config_from_published(raw: dict[str, Any]) -> LamedConfig:
    """Our config for a published one: the LM fields become `text_config`; vision sizes are M3D's
    (its ViT3D sizes are fixed in its code, not in config.json, and equal LamedConfig's defaults)."""
    model_type = raw.get("model_type")
    if model_type not in PUBLISHED_MODEL_TYPES:
        raise CheckpointError(f"model_type {model_type!r} is not one of {sorted(PUBLISHED_MODEL_TYPES)}")
    if raw.get("vision_tower", "vit3d") != "vit3d":
        raise CheckpointError(f"vision_tower {raw.get('vision_tower')!r} is not supported (only 'vit3d')")
    if raw.get("proj_pooling_type", "spatial") != "spatial":
        raise CheckpointError(f"proj_pooling_type {raw.get('proj_pooling_type')!r} is not supported (only 'spatial')")
    text = {k: v for k, v in raw.items() if k not in _LAMED_FIELDS and k not in _FILE_FIELDS}
    text["model_type"] = PUBLISHED_MODEL_TYPES[model_type]
    vision = {k: raw[k] for k in (
        "image_size", "patch_size", "image_channel", "mm_hidden_size", "mm_projector_type", "proj_layer_type",
        "proj_layer_num", "proj_pooling_size", "vision_num_layers", "vision_num_heads", "vision_mlp_dim",
    ) if k in raw}
    return LamedConfig(text_config=text, **vision)


def map_key(name: str) -> str | None:
    """Our parameter name for a published key; None for the skipped segmentation parts; KeyError if unmapped."""
    if name.startswith(SKIPPED_PREFIXES):
        return None
    for source, target in KEY_MAP:
        if name.startswith(source):
            return target + name[len(source):]
    raise KeyError(name)


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a folder: sharded safetensors (index), one safetensors, or pytorch_model.bin."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index}: not a valid shard index ({exc})") from None
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{folder}: shard(s) listed in {index_name} are missing: {missing}")
            return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError(f"{folder}: no weights (model.safetensors[.index.json] or pytorch_model.bin)")


def _checkpoint_dtype(raw: dict[str, Any]) -> torch.dtype | None:
    name = raw.get("torch_dtype") or raw.get("dtype")
    return getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else None


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())


def load_published(folder: str | Path, dtype: torch.dtype | None = None, device: str = "cpu") -> LamedForCausalLM:
    """Build a LamedForCausalLM from a published M3D-LaMed / M3D-RAD folder (explicit key map, shard by shard)."""
    from accelerate import init_empty_weights

    folder = Path(folder)
    raw = read_config(folder)
    config = config_from_published(raw)
    dtype = dtype or _checkpoint_dtype(raw) or torch.float32
    config.dtype = dtype
    with init_empty_weights(include_buffers=False):
        model = LamedForCausalLM(config)
    expected = dict(model.named_parameters())
    loaded: set[str] = set()
    unmapped: list[str] = []
    unexpected: list[str] = []
    mismatched: list[str] = []
    skipped = 0
    for name, tensor, file in iter_tensors(checkpoint_files(folder)):
        try:
            target = map_key(name)
        except KeyError:
            unmapped.append(name)
            continue
        if target is None:
            skipped += 1
            continue
        if target not in expected:
            unexpected.append(name)
            continue
        if tuple(tensor.shape) != tuple(expected[target].shape):
            mismatched.append(f"{name} in {file.name} is {tuple(tensor.shape)}, the model expects "
                              f"{tuple(expected[target].shape)}")
            continue
        # copy=True: safetensors hands out tensors over the file's memory map; a model left on them
        # is re-read from disk whenever the page cache is squeezed (measured: bf16 decoding 4x slower)
        _assign(model, target, tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype,
                                         copy=True))
        loaded.add(target)
    if config.text_config.tie_word_embeddings and "language_model.lm_head.weight" not in loaded:
        embed = model.get_input_embeddings().weight
        if embed.device.type != "meta":
            model.get_output_embeddings().weight = embed
            loaded.add("language_model.lm_head.weight")
    missing = sorted(set(expected) - loaded)
    problems = []
    if unmapped:
        problems.append(f"keys no mapping covers: {sorted(unmapped)[:20]}")
    if unexpected:
        problems.append(f"keys the model does not have: {sorted(unexpected)[:20]}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched[:20]}")
    if missing:
        problems.append(f"missing keys: {missing[:20]}" + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else ""))
    if problems:
        raise CheckpointError(f"{folder}: cannot load the checkpoint; " + "; ".join(problems))
    if skipped:
        log.info("%s: skipped %d segmentation tensors (seg_projector/seg_module; not used for VQA)", folder, skipped)
    return model.to(device).eval()


def published_name(name: str) -> str:
    """The M3D-LaMed key for one of our parameter names (the inverse of `KEY_MAP`)."""
    for source, target in KEY_MAP:
        if name.startswith(target):
            return source + name[len(target):]
    raise KeyError(f"{name} has no published counterpart")


def published_config(config: LamedConfig, model_type: str = "lamed_phi3") -> dict[str, Any]:
    """config.json as M3D writes it: the LM's fields at top level plus LaMed's vision/projector fields."""
    if config.vision_family != "m3d":  # the published layout has no place for another encoder family
        raise ValueError(f"the published M3D layout holds M3D-family models only, not {config.vision_family!r}")
    if model_type not in PUBLISHED_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {sorted(PUBLISHED_MODEL_TYPES)}, got {model_type!r}")
    text = config.text_config.to_dict()
    if text.get("model_type") != PUBLISHED_MODEL_TYPES[model_type]:
        raise ValueError(f"{model_type} needs a {PUBLISHED_MODEL_TYPES[model_type]} language model, "
                         f"config has {text.get('model_type')!r}")
    raw = {k: v for k, v in text.items() if k not in _FILE_FIELDS}
    architecture = "LamedPhi3ForCausalLM" if model_type == "lamed_phi3" else "LamedLlamaForCausalLM"
    raw.update(
        model_type=model_type, architectures=[architecture], image_channel=1, image_size=list(config.image_size),
        patch_size=list(config.patch_size), mm_hidden_size=config.mm_hidden_size, mm_projector_type="spp",
        proj_layer_type="mlp", proj_layer_num=config.proj_layer_num, proj_pooling_type="spatial",
        proj_pooling_size=config.proj_pooling_size, vision_tower="vit3d", vision_select_layer=-1,
        vision_select_feature="patch",
    )
    defaults = LamedConfig.__dataclass_fields__
    for key in ("vision_num_layers", "vision_num_heads", "vision_mlp_dim"):  # M3D's are fixed in its code
        if getattr(config, key) != defaults[key].default:
            raw[key] = getattr(config, key)
    if config.dtype is not None:
        raw["torch_dtype"] = str(config.dtype).removeprefix("torch.")
    return raw


def save_published(
    folder: str | Path,
    config: LamedConfig,
    tensors: Iterator[tuple[str, torch.Tensor]],
    model_type: str = "lamed_phi3",
    max_shard_bytes: int = 2 * 1024**3,
) -> list[Path]:
    """Write an M3D-LaMed-layout folder (config.json, sharded safetensors + index) from (our name,
    tensor) pairs, holding at most one shard in memory: for exporting to M3D's code and for tests
    and benchmarks of the published-checkpoint loader."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(published_config(config, model_type), indent=2) + "\n")
    parts: list[tuple[Path, list[str]]] = []
    shard: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal shard, size
        if shard:
            path = folder / f"shard-{len(parts):05d}.tmp"
            save_file(shard, str(path), metadata={"format": "pt"})
            parts.append((path, list(shard)))
            shard, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
        shard[published_name(name)] = tensor.contiguous()
        size += nbytes
        total += nbytes
    flush()
    weight_map: dict[str, str] = {}
    files = []
    for i, (path, names) in enumerate(parts):
        final = folder / f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        path.rename(final)
        files.append(final)
        weight_map.update({n: final.name for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files
