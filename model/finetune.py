"""LoRA finetuning of a LaMed VLM on curated QA pairs: the training core behind `ctvqa finetune`.

One script for one process or many: `python -m model.finetune ...` trains in this process, and
the same command under `torchrun --nproc_per_node N -m model.finetune ...` or
`accelerate launch --num_processes N -m model.finetune ...` trains data-parallel (gloo on CPU,
NCCL on GPUs); `accelerate` sets up the process group and wraps the model in DDP.

Why it looks the way it does:
- Only the language model gets LoRA adapters (M3D: r=16, alpha=32, dropout 0.05; lr 5e-5 with
  3% warm-up and cosine decay). The vision tower and projector stay frozen, so each volume's image
  features are computed once and reused every epoch; a step then costs only the language model.
- The data order is a pure function of (seed, epoch, step): step k of any run, interrupted or not,
  sees the same examples. A checkpoint therefore needs only the trainable weights, the optimizer,
  the scheduler, the RNG states and the step; `resume=True` continues to the same final step count.
- Prompts and targets are built by the loaded model's own `VLM.build_prompt` / `VLM.prompt_ids`
  and `prompts.format_target`, so training text is exactly what the model sees when answering.
- The result is a peft adapter folder (plus tokenizer and `ctvqa.json`) that `load_finetuned`
  turns back into a plain VLM; `merge_adapter` writes a standalone `save_pretrained` folder.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from model import prompts
from model.json_files import read_json_file

ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoint"
RUN_FILE = "run.json"
LOSSES_FILE = "losses.json"
STOP_FILE = "STOP"
PROVENANCE_FILE = "finetune.json"
ADAPTER_CONFIG = "adapter_config.json"
# Every linear layer of the attention and MLP blocks of Llama (q/k/v/o, gate/up/down) and Phi-3
# (qkv_proj, gate_up_proj) inside the language model; the vision tower and projector are left alone.
LM_LINEAR_LAYERS = r"language_model\..*\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|down_proj|gate_up_proj)"


class FinetuneError(ValueError):
    """Bad finetuning input (data file, base model, output folder); the message names it."""


@dataclass
class FinetuneConfig:
    """Hyper-parameters of a run (stored with the checkpoint and the model's provenance)."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lr: float = 5e-5
    warmup_frac: float = 0.03
    epochs: int = 3
    batch_size: int = 4  # per process
    max_steps: int | None = None  # overrides epochs when set
    seed: int = 0
    save_every: int = 50  # steps between checkpoints (and at cancel / the end)
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    target_modules: str = LM_LINEAR_LAYERS

    def __post_init__(self) -> None:
        checks = {"lora_r": self.lora_r >= 1, "lora_alpha": self.lora_alpha > 0,
                  "lora_dropout": 0 <= self.lora_dropout < 1, "lr": self.lr > 0,
                  "warmup_frac": 0 <= self.warmup_frac < 1, "epochs": self.epochs >= 1,
                  "batch_size": self.batch_size >= 1, "save_every": self.save_every >= 1,
                  "max_steps": self.max_steps is None or self.max_steps >= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise FinetuneError(f"invalid finetune setting(s): {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Sample:
    """One training QA pair with the file its image comes from and where the row was read."""

    image: str
    question: str
    answer: str
    choices: tuple[str, ...] | None
    answer_choice: str | None
    task: str
    qa_id: int | None
    source: str  # "file:line", for error messages


@dataclass
class TrainProgress:
    """What a watcher (progress bar, widget) shows after each step."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    elapsed_s: float
    samples_per_s: float

    @property
    def eta_s(self) -> float:
        rate = self.step / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (self.total_steps - self.step) / rate if rate > 0 else float("nan")


@dataclass
class TrainResult:
    status: str  # "done" or "cancelled"
    step: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    adapter_dir: str | None = None
    seconds: float = 0.0
    samples_per_s: float = 0.0
    world_size: int = 1
    peak_memory_mb: float = 0.0
    train_qa_ids: list[int] = field(default_factory=list)


# ----- data ---------------------------------------------------------------------------------------
def read_samples(data_dir: str | Path, split: str = "train", volumes_dir: str | Path | None = None) -> list[Sample]:
    """The QA pairs of one split of an exported folder: `{split}.jsonl` (the jsonl export), or a
    3D-RAD layout (`{split}/Task*/` as the 3drad export writes, or `Task*/` directly for "train").
    Images are the rows' paths, else found by file name under `volumes_dir`."""
    from model.evaluate import QAFolderError, read_qa_folder

    data_dir = Path(data_dir)
    jsonl = data_dir / f"{split}.jsonl"
    if jsonl.is_file():
        samples = _read_jsonl(jsonl)
    else:
        folder = data_dir / split if (data_dir / split).is_dir() else data_dir if split == "train" else None
        if folder is None or not any(p.name.startswith("Task") for p in folder.iterdir() if p.is_dir()):
            if split != "train":
                return []
            raise FinetuneError(f"{data_dir}: no {split}.jsonl and no 3D-RAD task folders (export with "
                                "`ctvqa export --format jsonl` or `--format 3drad`)")
        try:
            questions = read_qa_folder(folder)
        except QAFolderError as exc:
            raise FinetuneError(str(exc)) from None
        samples = [Sample(q.volume_name, q.question, q.answer, q.choices if q.closed else None, q.answer_choice,
                          q.task, None, q.source) for items in questions.values() for q in items]
    return _resolve_images(samples, data_dir, volumes_dir)


def _read_jsonl(path: Path) -> list[Sample]:
    samples = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
                choices = row.get("choices")
                samples.append(Sample(
                    image=str(row.get("image") or row["volume_name"]), question=str(row["question"]),
                    answer=str(row["answer"]), choices=tuple(choices) if choices else None,
                    answer_choice=row.get("answer_choice") or None, task=str(row.get("task", "")),
                    qa_id=int(row["qa_id"]) if row.get("qa_id") is not None else None, source=where))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise FinetuneError(f"{where}: not a QA record ({type(exc).__name__}: {exc}); "
                                    "expected the fields of the jsonl export") from None
    return samples


def _resolve_images(samples: list[Sample], data_dir: Path, volumes_dir: str | Path | None) -> list[Sample]:
    from model.evaluate import index_volumes

    index = index_volumes(volumes_dir) if volumes_dir is not None else {}
    resolved, missing = [], []
    for s in samples:
        path = Path(s.image)
        candidates = [path, data_dir / path] if not path.is_absolute() else [path]
        found = next((str(c) for c in candidates if c.exists()), None) or index.get(path.name)
        if found is None:
            missing.append(s)
        else:
            resolved.append(Sample(str(found), *(getattr(s, f.name) for f in fields(Sample)[1:])))
    if missing:
        first = missing[0]
        raise FinetuneError(f"{first.source}: image {first.image!r} not found ({len(missing)} row(s) without an "
                            "image file; pass the volumes folder or import the scans with their paths)")
    return resolved


def encode_sample(vlm: Any, sample: Sample) -> tuple[list[int], list[int]]:
    """(input ids, labels): BOS + image placeholders + prompt + target + EOS, labels only on the target."""
    prompt_ids = vlm.prompt_ids(vlm.build_prompt(sample.question, sample.choices))[0].tolist()
    target = prompts.format_target(sample.answer, sample.answer_choice if sample.choices else None)
    target_ids = vlm.tokenizer(target, add_special_tokens=False)["input_ids"] + [vlm.tokenizer.eos_token_id]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); padding is masked and never scored."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for k, (row, target) in enumerate(encoded):
        ids[k, : len(row)] = torch.tensor(row)
        mask[k, : len(row)] = 1
        labels[k, : len(target)] = torch.tensor(target)
    return ids, mask, labels


class FeatureCache:
    """Projected image features per image file, computed on first use (the encoder is frozen)."""

    def __init__(self, vlm: Any) -> None:
        self.vlm = vlm
        self._features: dict[str, torch.Tensor] = {}

    def __call__(self, image: str) -> torch.Tensor:
        if image not in self._features:
            from model.ct_io import read_ct
            from model.preprocess import to_model_input

            pixels = to_model_input(read_ct(image), size=self.vlm.image_size, window=self.vlm.settings.get("window"))
            # clone(): features made under inference_mode cannot take part in autograd otherwise
            self._features[image] = self.vlm.encode(pixels.to(self.vlm.device)).clone()
        return self._features[image]


def batch_indices(n: int, step: int, batch_size: int, world_size: int, rank: int, seed: int) -> list[int]:
    """The example indices this process trains on at global `step`: epoch-wise seeded permutations
    cut into global batches (wrapping at the epoch's end), each process taking its own slice."""
    global_batch = batch_size * world_size
    per_epoch = steps_per_epoch(n, batch_size, world_size)
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    start = offset * global_batch + rank * batch_size
    return [order[(start + j) % n] for j in range(batch_size)]


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return max(1, math.ceil(n / (batch_size * world_size)))


# ----- model --------------------------------------------------------------------------------------
def load_finetuned(path: str | Path, dtype: torch.dtype | str | None = None, device: str = "cpu") -> Any:
    """A VLM from an adapter folder: its base model (recorded in `finetune.json`) with the LoRA
    weights merged in, so inference runs at the base model's speed with no peft wrapper.
    `load_vlm` calls this for folders holding `adapter_config.json`."""
    from peft import PeftModel

    from model.vlm import VLM, load_tokenizer, load_vlm, read_settings

    folder = Path(path)
    record = read_provenance(folder)
    base_path = record.get("base_path")
    if "base_path" not in record:
        raise FinetuneError(f"{folder / PROVENANCE_FILE}: no base_path; this folder was not written by model.finetune")
    base = load_vlm(base_path)
    if dtype is not None or device != "cpu":
        base.model.to(device=device, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model = PeftModel.from_pretrained(base.model, str(folder), is_trainable=False).merge_and_unload()
    return VLM(model, load_tokenizer(folder), read_settings(folder), name=str(folder))


def read_provenance(folder: str | Path) -> dict[str, Any]:
    return read_json_file(Path(folder) / PROVENANCE_FILE, FinetuneError,
                          f"{folder}: no {PROVENANCE_FILE} (not a finetuned model folder)")


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + adapter as one standalone `save_pretrained` folder that `load_vlm` reads."""
    from model.vlm import write_settings

    out_dir = Path(out_dir)
    vlm = load_finetuned(adapter_dir)
    vlm.model.save_pretrained(out_dir)
    vlm.tokenizer.save_pretrained(out_dir)
    write_settings(out_dir, **vlm.settings)
    record = {**read_provenance(adapter_dir), "merged_from": str(Path(adapter_dir).resolve())}
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out_dir


def add_lora(model: Any, config: FinetuneConfig) -> Any:
    """Freeze the model and add LoRA adapters to the language model's linear layers."""
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, bias="none")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise FinetuneError(f"cannot add LoRA to this model ({exc})") from None


# ----- checkpoints --------------------------------------------------------------------------------
def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
    state = torch.load(state_path, weights_only=False, map_location="cpu")
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
        _set_rng_state(torch.load(rng, weights_only=False))
    return int(state["step"]), list(state["losses"])


# ----- training -----------------------------------------------------------------------------------
def _run_record(out_dir: Path, base: str | Path | None, data_dir: Path, volumes_dir: Any,
                config: FinetuneConfig, resume: bool) -> dict[str, Any]:
    """The run's identity (base, data, config) in `run.json`; a resume takes it from there."""
    path = out_dir / RUN_FILE
    if resume:
        return read_json_file(path, FinetuneError,
                              f"{out_dir}: nothing to resume (no {RUN_FILE}); start a new run without --resume")
    if (out_dir / CHECKPOINT_DIR).exists() or (out_dir / ADAPTER_DIR).exists():
        raise FinetuneError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out")
    base_path = None if base is None else str(Path(base).resolve())
    return {"base_path": base_path, "data_dir": str(data_dir.resolve()),
            "volumes_dir": None if volumes_dir is None else str(Path(volumes_dir).resolve()),
            "config": asdict(config)}


def stop_file(out_dir: str | Path) -> Path:
    """Creating this file stops a run at its next step, with a checkpoint, in every process: the
    way to cancel a run started by torchrun/accelerate launch (or from another program)."""
    return Path(out_dir) / STOP_FILE


def train(base: str | Path | None, data_dir: str | Path, out_dir: str | Path,
          config: FinetuneConfig | None = None, *, volumes_dir: str | Path | None = None,
          resume: bool = False, progress: Callable[[TrainProgress], None] | None = None,
          stop: threading.Event | None = None, handle_sigint: bool = False) -> TrainResult:
    """LoRA-finetune `base` on `data_dir`'s training split; write `out_dir/adapter` at the end.

    Checkpoints go to `out_dir/checkpoint` every `save_every` steps and when `stop` is set (or,
    with `handle_sigint`, on the first Ctrl-C); the run then returns with status "cancelled" and
    `resume=True` (same `out_dir`, same number of processes) continues it: the base, data and
    hyper-parameters then come from `out_dir/run.json`, not from the arguments."""
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    from model.vlm import load_vlm

    out_dir = Path(out_dir)
    record = _run_record(out_dir, base, Path(data_dir), volumes_dir, config or FinetuneConfig(), resume)
    config = FinetuneConfig.from_dict(record["config"])
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        stop_file(out_dir).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    samples = read_samples(record["data_dir"], "train", record["volumes_dir"])
    if not samples:
        raise FinetuneError(f"{record['data_dir']}: the training split is empty")
    vlm = load_vlm(record["base_path"])
    encoded = [encode_sample(vlm, s) for s in samples]
    features = FeatureCache(vlm)
    pad_id = vlm.tokenizer.pad_token_id if vlm.tokenizer.pad_token_id is not None else vlm.tokenizer.eos_token_id

    model = add_lora(vlm.model, config).to(accelerator.device)
    model.train()
    vlm.model.vision.eval()  # frozen: no dropout, so cached features equal what inference computes
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
            image_features = torch.cat([features(samples[i].image) for i in idx])
            out = model(input_ids=ids.to(accelerator.device), attention_mask=mask.to(accelerator.device),
                        labels=labels.to(accelerator.device), image_features=image_features)
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
                                       (step - start_step) * config.batch_size * world / max(elapsed, 1e-9)))
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
    from model.vlm import write_settings

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


# ----- command line (the script `torchrun` / `accelerate launch` run) ------------------------------
def _parser() -> argparse.ArgumentParser:
    defaults = FinetuneConfig()
    parser = argparse.ArgumentParser(
        prog="python -m model.finetune",
        description="LoRA-finetune a LaMed VLM on an exported QA folder (jsonl or 3D-RAD layout). "
                    "Run under torchrun or accelerate launch for several processes.")
    parser.add_argument("--data", type=Path, help="exported folder (train.jsonl or Task*/ CSVs)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, adapter)")
    parser.add_argument("--base", help="base model folder or adapter folder (default: the embedded model)")
    parser.add_argument("--volumes", type=Path, help="folder to find images by file name")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--progress-json", action="store_true", help="print one JSON line per step (for a parent process)")
    for f in fields(FinetuneConfig):
        if f.name == "target_modules":
            continue
        kind = int if f.name == "max_steps" else type(getattr(defaults, f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=getattr(defaults, f.name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.resume and args.data is None:
        _parser().error("--data is required unless --resume")
    config = FinetuneConfig.from_dict({f.name: getattr(args, f.name) for f in fields(FinetuneConfig)
                                       if hasattr(args, f.name)})
    rank0 = int(os.environ.get("RANK", "0")) == 0

    def show(p: TrainProgress) -> None:
        if args.progress_json:
            print(json.dumps({"event": "progress", **asdict(p), "eta_s": p.eta_s}), flush=True)
        elif p.step == p.total_steps or p.step % 10 == 0:
            print(f"step {p.step}/{p.total_steps}  loss {p.loss:.4f}  {p.samples_per_s:.2f} samples/s  "
                  f"eta {p.eta_s:.0f} s", flush=True)

    try:
        result = train(args.base, args.data or ".", args.out, config, volumes_dir=args.volumes,
                       resume=args.resume, progress=show, handle_sigint=True)
    except FinetuneError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    if rank0:
        summary = {k: v for k, v in asdict(result).items() if k not in ("losses", "train_qa_ids")}
        print(json.dumps({"event": "result", **summary, "first_loss": result.losses[:1],
                          "last_loss": result.losses[-1:]}), flush=True)
    return 0 if result.status == "done" else 130


if __name__ == "__main__":
    raise SystemExit(main())
