"""Load a model folder as a `VLM`: our save_pretrained folders, LoRA adapter folders (base +
adapter, merged on load) and published M3D-LaMed / M3D-RAD folders; per-model settings beside the weights.

Nothing here runs code from a checkpoint folder: tokenizers load with local files only and
`trust_remote_code` off, weights from safetensors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from model.data.json_files import read_json_file
from model.inference import prompts
from model.inference.devices import Runtime
from model.inference.quantize import quantize_weights
from model.inference.vlm import VLM
from model.nets.lamed import LamedConfig, LamedForCausalLM
from model.nets.published import CheckpointError, checkpoint_files, is_published_lamed, load_published
from model.nets.weights import check_tensors, expected_shapes, tensor_shapes

PROVENANCE_FILE = "finetune.json"



ADAPTER_CONFIG = "adapter_config.json"



# ----- model --------------------------------------------------------------------------------------
def load_finetuned(path: str | Path, dtype: torch.dtype | str | None = None,
                   device: str | torch.device | None = None, quantize: str | None = None) -> VLM:
    """A VLM from an adapter folder: its base model (recorded in `finetune.json`) with the LoRA
    weights merged in, so inference runs at the base model's speed with no peft wrapper (and can
    then be quantized like any other). `load_vlm` calls this for folders holding `adapter_config.json`."""
    from peft import PeftModel

    folder = Path(path)
    record = read_provenance(folder)
    if "base_path" not in record:
        raise CheckpointError(f"{folder / PROVENANCE_FILE}: no base_path; this folder was not written by model.training.finetune")
    base = load_vlm(record["base_path"], dtype=dtype, device=device, quantize="none")
    model = PeftModel.from_pretrained(base.model, str(folder), is_trainable=False).merge_and_unload()
    return _finish(model, folder, Runtime.from_options(quantize=quantize).quantize)


def read_provenance(folder: str | Path) -> dict[str, Any]:
    return read_json_file(Path(folder) / PROVENANCE_FILE, CheckpointError,
                          f"{folder}: no {PROVENANCE_FILE} (not a finetuned model folder)")


SETTINGS_FILE = "ctvqa.json"



DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default"



# ----- loading ------------------------------------------------------------------------------
# A finetune run folder (`ctvqa finetune --out DIR`) holds its model in one of these, best first;
# model.training.finetune and annotation.training_set write them under these names.
RUN_MODEL_DIRS: tuple[str, ...] = ("merged", "adapter")
RUN_MARKERS: tuple[str, ...] = ("run.json", "ctvqa_finetune.json")


def run_model_folder(folder: Path) -> Path:
    """The model folder a path stands for: itself, or for a finetune run folder the model it
    trained (the merged model if written, else the adapter), so `--model runs/ft1` and the chat's
    folder picker accept the run folder itself. An unfinished run says so."""
    if (folder / "config.json").is_file() or (folder / ADAPTER_CONFIG).is_file():
        return folder
    if not any((folder / marker).is_file() for marker in RUN_MARKERS):
        return folder
    for name in RUN_MODEL_DIRS:
        inner = folder / name
        if (inner / "config.json").is_file() or (inner / ADAPTER_CONFIG).is_file():
            return inner
    raise CheckpointError(f"{folder} is a finetune run folder whose training has not finished (no "
                          f"{' or '.join(RUN_MODEL_DIRS)}/ model yet); continue it with "
                          f"`ctvqa finetune --out {folder} --resume`")

def read_settings(folder: Path) -> dict[str, Any]:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    style = settings.get("prompt_style", "m3d")
    if style not in prompts.PROMPT_STYLES:
        raise ValueError(f"{path}: prompt_style {style!r} is not one of {prompts.PROMPT_STYLES}")
    return settings



def write_settings(folder: str | Path, **settings: Any) -> Path:
    """Store per-model settings (prompt style, window, notes) beside the weights."""
    path = Path(folder) / SETTINGS_FILE
    current = read_settings(Path(folder))
    current.update(settings)
    path.write_text(json.dumps(current, indent=2) + "\n")
    return path



def load_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in the folder; local files only, never remote code."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        if (folder / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        raise ValueError(f"{folder}: no usable tokenizer files ({exc})") from None



def stored_dtype(folder: Path) -> torch.dtype | None:
    """The dtype a checkpoint folder says its weights are in (an adapter: its base's)."""
    if (folder / ADAPTER_CONFIG).is_file():
        base = read_provenance(folder).get("base_path")
        return stored_dtype(run_model_folder(Path(base)) if base else DEFAULT_MODEL_DIR)  # a base may be a run folder
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    name = raw.get("torch_dtype") or raw.get("dtype") if isinstance(raw, dict) else None
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) else None


def load_vlm(path: str | Path | None = None, dtype: torch.dtype | str | None = None,
             device: str | torch.device | None = None, quantize: str | None = None) -> VLM:
    """Load one of our save_pretrained folders, a LoRA adapter folder written by `ctvqa finetune`, a
    published M3D-LaMed / M3D-RAD folder, or (None) the model shipped in `model/default/`.

    `device` (`auto|cpu|cuda[:N]|mps`), `dtype` (`auto|float32|bfloat16|float16`) and `quantize`
    (`none|int8`) default to $CTVQA_DEVICE / $CTVQA_DTYPE / $CTVQA_QUANTIZE, else auto / auto /
    none (`model.inference.devices` says what auto picks); an absent device raises DeviceError."""

    folder = run_model_folder(Path(path)) if path is not None else DEFAULT_MODEL_DIR
    if path is None and not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded default model is not built yet ({folder} has no config.json); "
            "pass a model folder (--model PATH or CTVQA_MODEL)"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    runtime = Runtime.from_options(None if device is None else str(device),
                                   None if dtype is None else str(dtype), quantize)
    if (folder / ADAPTER_CONFIG).is_file():  # a LoRA finetune: its base plus the adapter
        return load_finetuned(folder, runtime.dtype, runtime.device, runtime.quantize)
    target = runtime.torch_device()
    compute = runtime.torch_dtype(target, stored_dtype(folder))
    try:
        if is_published_lamed(folder):
            model = load_published(folder, dtype=compute, device=str(target))
        else:
            model = load_own(folder, compute).to(target)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: cannot load the model ({_first_line(exc)})") from None
    return _finish(model, folder, runtime.quantize)


def _finish(model: Any, folder: Path, quantize: str) -> VLM:
    """The loaded module as a VLM, quantized when asked (`vlm.runtime` says where and how it runs)."""
    quantize_weights(model, quantize)
    return VLM(model, load_tokenizer(folder), read_settings(folder), name=str(folder))


def load_own(folder: Path, dtype: torch.dtype | None = None) -> LamedForCausalLM:
    """One of our save_pretrained folders, with the same strict checks as a published one: every
    weight file is checked (header, size, pickle) and its tensors must be exactly the model's, so a
    folder missing a tensor is refused instead of answering with that layer random."""
    try:
        config = LamedConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / 'config.json'}: not a usable model config ({_first_line(exc)})") from None
    # torch's device context is per thread; accelerate's init_empty_weights patches nn.Module for every
    # thread, so two models loading at once (a sharded evaluation in threads) left real models on "meta"
    with torch.device("meta"):
        skeleton = LamedForCausalLM(config)
    tied = frozenset(getattr(skeleton, "all_tied_weights_keys", None) or ())
    check_tensors(folder, tensor_shapes(checkpoint_files(folder)), expected_shapes(skeleton), tied)
    del skeleton
    model, info = LamedForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                   output_loading_info=True)
    if info.get("missing_keys") or info.get("mismatched_keys"):  # what the file check cannot see
        raise CheckpointError(f"{folder}: cannot load the checkpoint; missing tensors: "
                              f"{sorted(info.get('missing_keys') or ())[:10]}, wrong shapes: "
                              f"{sorted(info.get('mismatched_keys') or ())[:10]}")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
