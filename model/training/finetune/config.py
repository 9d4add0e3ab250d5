"""A finetuning run's settings, records and file names (shared by the loop, the command line and
annotation/training_set.py, which trains from the database)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoint"
RUN_FILE = "run.json"
LOSSES_FILE = "losses.json"
STOP_FILE = "STOP"
# Every linear layer of the attention and MLP blocks of Llama (q/k/v/o, gate/up/down) and Phi-3
# (qkv_proj, gate_up_proj) inside the language model; the vision tower and projector are left alone.
LM_LINEAR_LAYERS = r"language_model\..*\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|down_proj|gate_up_proj)"
# The attention and MLP linear layers of the vision tower's blocks (M3D ViT3D, OmniCT slice ViT).
VISION_LINEAR_LAYERS = r"vision\.vision_tower\..*blocks\.\d+\.(attn\.qkv|attn\.out_proj|mlp\.linear1|mlp\.linear2)"
# What a run trains besides nothing else: the language model's LoRA only (fastest: image features are
# computed once per image), also the whole projector, or also a LoRA on the vision tower (M3D tunes
# every module; needed when the tower never learnt to tell what the new questions are about).
TRAIN_MODULES = ("lm", "lm+projector", "all")


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
    train_modules: str = "lm"  # one of TRAIN_MODULES

    def __post_init__(self) -> None:
        checks = {"lora_r": self.lora_r >= 1, "lora_alpha": self.lora_alpha > 0,
                  "lora_dropout": 0 <= self.lora_dropout < 1, "lr": self.lr > 0,
                  "warmup_frac": 0 <= self.warmup_frac < 1, "epochs": self.epochs >= 1,
                  "batch_size": self.batch_size >= 1, "save_every": self.save_every >= 1,
                  "max_steps": self.max_steps is None or self.max_steps >= 1,
                  "train_modules": self.train_modules in TRAIN_MODULES}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise FinetuneError(f"invalid finetune setting(s): {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}"
                                + (f" (train_modules is one of {', '.join(TRAIN_MODULES)})"
                                   if "train_modules" in bad else ""))

    @property
    def trains_encoder(self) -> bool:
        """Whether images must run through the projector (and tower) at every step."""
        return self.train_modules != "lm"

    def lora_targets(self) -> str:
        return self.target_modules if self.train_modules != "all" else f"({self.target_modules})|({VISION_LINEAR_LAYERS})"

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
    elapsed_s: float  # since this session (a start or a resume) began
    samples_per_s: float
    start_step: int = 0  # the step this session began at (the checkpoint's, after a resume)

    @property
    def eta_s(self) -> float:
        """Time left at this session's pace: steps done before a resume took no time in it."""
        done = self.step - self.start_step
        rate = done / self.elapsed_s if self.elapsed_s > 0 else 0.0
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


def stop_file(out_dir: str | Path) -> Path:
    """Creating this file stops a run at its next step, with a checkpoint, in every process: the
    way to cancel a run started by torchrun/accelerate launch (or from another program)."""
    return Path(out_dir) / STOP_FILE
