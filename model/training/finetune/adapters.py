"""LoRA adapters and checkpoints: what is trainable, how a run is saved and restored, and how an
adapter becomes a standalone model folder.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from model.inference.loading import (
    PROVENANCE_FILE,
    load_finetuned,
    read_provenance,
    stored_dtype,
    write_settings,
)
from model.training.finetune.config import CHECKPOINT_DIR, FinetuneConfig, FinetuneError
from model.training.rng import random_state


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + adapter as one standalone `save_pretrained` folder that `load_vlm` reads, in
    the base checkpoint's own dtype (a bf16 base stays bf16 whatever the machine computes in)."""

    out_dir = Path(out_dir)
    vlm = load_finetuned(adapter_dir, dtype=stored_dtype(Path(adapter_dir)) or torch.float32, device="cpu")
    vlm.model.save_pretrained(out_dir)
    vlm.tokenizer.save_pretrained(out_dir)
    write_settings(out_dir, **vlm.settings)
    record = {**read_provenance(adapter_dir), "merged_from": str(Path(adapter_dir).resolve())}
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out_dir



def add_lora(model: Any, config: FinetuneConfig) -> Any:
    """Freeze the model and add LoRA adapters to the language model's linear layers, and as
    `config.train_modules` says, train the whole projector and add LoRA to the vision tower."""
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    projector = ["mm_projector"] if config.trains_encoder else None
    if projector and not any(name.endswith("mm_projector") for name, _ in model.named_modules()):
        raise FinetuneError(f"train_modules={config.train_modules!r}: this model has no mm_projector module")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_targets(), bias="none", modules_to_save=projector)
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise FinetuneError(f"cannot add LoRA to this model ({exc})") from None



# ----- checkpoints --------------------------------------------------------------------------------
def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}



def _rng_state() -> dict[str, Any]:
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state



def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(random_state(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])



def save_checkpoint(out_dir: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any,
                    step: int, losses: list[float]) -> None:
    """Atomically replace `out_dir/checkpoint`: weights/optimizer/scheduler once, RNG per process."""
    final = out_dir / CHECKPOINT_DIR
    partial = out_dir / f".{CHECKPOINT_DIR}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), partial / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        torch.save({"step": step, "losses": losses, "world_size": accelerator.num_processes,
                    "trainable": _trainable_state(accelerator.unwrap_model(model)),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   partial / "state.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = out_dir / f".{CHECKPOINT_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()



def load_checkpoint(out_dir: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, list[float]]:
    folder = out_dir / CHECKPOINT_DIR
    state_path = folder / "state.pt"
    if not state_path.is_file():
        raise FinetuneError(f"{out_dir}: no checkpoint to resume from (expected {state_path})")
    state = torch.load(state_path, weights_only=True, map_location="cpu")
    if state["world_size"] != accelerator.num_processes:
        raise FinetuneError(f"{state_path}: saved by {state['world_size']} process(es); resume with the same "
                            f"number (this run has {accelerator.num_processes}) so the data order matches")
    missing = accelerator.unwrap_model(model).load_state_dict(state["trainable"], strict=False)
    if missing.unexpected_keys:
        raise FinetuneError(f"{state_path}: weights {missing.unexpected_keys[:3]} do not belong to this model")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = folder / f"rng-{accelerator.process_index}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return int(state["step"]), list(state["losses"])
