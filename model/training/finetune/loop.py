"""The finetuning loop (one process or many through accelerate): checkpoints, cancel, progress.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from model.ct.metadata import table_beside
from model.data.json_files import read_json_file
from model.inference.asked import asks_about
from model.inference.devices import Runtime
from model.inference.loading import PROVENANCE_FILE, load_vlm, write_settings
from model.training.finetune.adapters import add_lora, load_checkpoint, save_checkpoint
from model.training.finetune.config import (
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    LOSSES_FILE,
    RUN_FILE,
    FinetuneConfig,
    FinetuneError,
    TrainProgress,
    TrainResult,
    stop_file,
)
from model.training.finetune.samples import (
    FeatureCache,
    batch_indices,
    collate,
    encode_sample,
    read_samples,
    steps_per_epoch,
)


# ----- training -----------------------------------------------------------------------------------
def _run_record(out_dir: Path, base: str | Path | None, data_dir: Path, volumes_dir: Any,
                config: FinetuneConfig, resume: bool, max_steps: int | None = None) -> dict[str, Any]:
    """The run's identity (base, data, config) in `run.json`; a resume takes it from there, with
    `max_steps` (when given) as its new total."""
    path = out_dir / RUN_FILE
    if resume:
        record = read_json_file(path, FinetuneError,
                                f"{out_dir}: nothing to resume (no {RUN_FILE}); start a new run without --resume")
        if max_steps is not None:
            record["config"]["max_steps"] = max_steps
        return record
    if (out_dir / CHECKPOINT_DIR).exists() or (out_dir / ADAPTER_DIR).exists():
        raise FinetuneError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out")
    base_path = None if base is None else str(Path(base).resolve())
    return {"base_path": base_path, "data_dir": str(data_dir.resolve()),
            "volumes_dir": None if volumes_dir is None else str(Path(volumes_dir).resolve()),
            "config": asdict(config)}



def train(base: str | Path | None, data_dir: str | Path, out_dir: str | Path,
          config: FinetuneConfig | None = None, *, volumes_dir: str | Path | None = None,
          resume: bool = False, progress: Callable[[TrainProgress], None] | None = None,
          stop: threading.Event | None = None, handle_sigint: bool = False,
          max_steps: int | None = None, device: str | None = None, dtype: str | None = None) -> TrainResult:
    """LoRA-finetune `base` on `data_dir`'s training split; write `out_dir/adapter` at the end.

    Checkpoints go to `out_dir/checkpoint` every `save_every` steps and when `stop` is set (or,
    with `handle_sigint`, on the first Ctrl-C); the run then returns with status "cancelled" and
    `resume=True` (same `out_dir`, same number of processes) continues it: the base, data and
    hyper-parameters then come from `out_dir/run.json`, not from the arguments, except
    `max_steps`, which sets a new total (the cosine schedule is stretched or shortened to it from
    the checkpoint on); a total below the checkpoint's step is refused. `device` and `dtype` are
    where and how this run computes (`model.inference.devices`; env, else auto)."""
    from transformers import get_cosine_schedule_with_warmup


    out_dir = Path(out_dir)
    record = _run_record(out_dir, base, Path(data_dir), volumes_dir, config or FinetuneConfig(), resume, max_steps)
    config = FinetuneConfig.from_dict(record["config"])
    accelerator = _accelerator(Runtime.from_options(device, dtype))
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        stop_file(out_dir).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    samples = read_samples(record["data_dir"], "train", record["volumes_dir"])
    if not samples:
        raise FinetuneError(f"{record['data_dir']}: the training split is empty")
    vlm = load_vlm(record["base_path"], device=str(accelerator.device), dtype=dtype)
    encoded = [encode_sample(vlm, s) for s in samples]
    features = FeatureCache(vlm, table_beside(record["data_dir"]), inputs=config.trains_encoder)
    pad_id = vlm.pad_token_id  # padding is masked out of the loss

    model = add_lora(vlm.model, config).to(accelerator.device)
    model.train()
    vlm.model.vision.eval()  # no dropout: cached features (a frozen encoder) equal what inference computes
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = steps_per_epoch(len(samples), config.batch_size, world)
    total = config.max_steps or config.epochs * per_epoch
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(config.warmup_frac * total), total)
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler steps once per step: not prepared
    # A run that stopped before its first checkpoint simply starts again from step 0.
    resumable = resume and (out_dir / CHECKPOINT_DIR / "state.pt").is_file()
    step, losses = load_checkpoint(out_dir, accelerator, model, optimizer, scheduler) if resumable else (0, [])
    if step > total:
        raise FinetuneError(f"{out_dir}: the run is already at step {step}; --max-steps {total} would undo "
                            "training (give a larger number, or start a new run)")
    if accelerator.is_main_process:  # only now: a refused --max-steps leaves the run as it was
        (out_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    accelerator.wait_for_everyone()

    stop = stop or threading.Event()
    previous_handler = None
    if handle_sigint and threading.current_thread() is threading.main_thread():
        def on_sigint(signum: int, frame: Any) -> None:
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()

        previous_handler = signal.signal(signal.SIGINT, on_sigint)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start, start_step = time.perf_counter(), step
    status = "done"
    try:
        while step < total:
            if _any_rank(accelerator, stop.is_set() or stop_file(out_dir).exists()):
                status = "cancelled"
                break
            idx = batch_indices(len(samples), step, config.batch_size, world, rank, config.seed)
            ids, mask, labels = collate([encoded[i] for i in idx], pad_id)
            images = torch.cat([features(samples[i].image) for i in idx])
            if config.trains_encoder:  # the image through the trained projector (and tower LoRA)
                masks = [features.organ_masks(samples[i].image) for i in idx]
                image_inputs = {"images": images.to(accelerator.device),
                                "organ_masks": None if masks[0] is None else torch.cat(masks).to(accelerator.device)}
            else:
                image_inputs = {"image_features": images}
            if getattr(vlm.model.config, "vision_finding_asked", False):  # the token each question names
                image_inputs["asked_findings"] = [asks_about(vlm.model, samples[i].question) for i in idx]
            out = model(input_ids=ids.to(accelerator.device), attention_mask=mask.to(accelerator.device),
                        labels=labels.to(accelerator.device), **image_inputs)
            accelerator.backward(out.loss)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(accelerator.reduce(out.loss.detach(), reduction="mean")))
            elapsed = time.perf_counter() - start
            if progress is not None and accelerator.is_main_process:
                progress(TrainProgress(step, total, step // per_epoch, losses[-1], elapsed,
                                       (step - start_step) * config.batch_size * world / max(elapsed, 1e-9),
                                       start_step))
            if step % config.save_every == 0 and step < total:
                save_checkpoint(out_dir, accelerator, model, optimizer, scheduler, step, losses)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    seconds = time.perf_counter() - start
    save_checkpoint(out_dir, accelerator, model, optimizer, scheduler, step, losses)
    result = TrainResult(
        status=status, step=step, total_steps=total, losses=losses, seconds=seconds,
        samples_per_s=(step - start_step) * config.batch_size * world / max(seconds, 1e-9), world_size=world,
        peak_memory_mb=_peak_memory_mb(), train_qa_ids=sorted({s.qa_id for s in samples if s.qa_id is not None}))
    if accelerator.is_main_process:
        (out_dir / LOSSES_FILE).write_text(json.dumps(losses) + "\n")
        stop_file(out_dir).unlink(missing_ok=True)
        if status == "done":
            _save_adapter(out_dir, accelerator.unwrap_model(model), vlm, record, result)
    accelerator.wait_for_everyone()
    if status == "done":
        result.adapter_dir = str(out_dir / ADAPTER_DIR)
    return result



def _accelerator(runtime: Runtime) -> Any:
    """An Accelerator on the asked device: the CPU, the GPU of this process (under torchrun each
    process takes its local rank's GPU; alone, `cuda:N` takes GPU N) or MPS."""
    from accelerate import Accelerator

    target = runtime.torch_device()
    if target.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(target)
    return Accelerator(cpu=target.type == "cpu")



def _any_rank(accelerator: Any, flag: bool) -> bool:
    """True on every process when any one of them wants to stop (all must checkpoint together)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)



def _peak_memory_mb() -> float:
    """Peak GPU memory, else this process's peak resident memory (Linux ru_maxrss is in KiB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024



def _save_adapter(out_dir: Path, model: Any, vlm: Any, record: dict[str, Any], result: TrainResult) -> None:
    folder = out_dir / ADAPTER_DIR
    model.save_pretrained(str(folder))
    vlm.tokenizer.save_pretrained(str(folder))
    write_settings(folder, **vlm.settings)
    provenance = {**record, "steps": result.step, "world_size": result.world_size,
                  "final_loss": result.losses[-1] if result.losses else None,
                  "first_loss": result.losses[0] if result.losses else None,
                  "train_qa_ids": result.train_qa_ids,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, default=str) + "\n")
