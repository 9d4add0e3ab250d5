"""The command line that `python -m model.training.finetune`, torchrun and accelerate launch run.
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from model.training.finetune.config import FinetuneConfig, FinetuneError, TrainProgress
from model.training.finetune.loop import train


# ----- command line (the script `torchrun` / `accelerate launch` run) ------------------------------
def _parser() -> argparse.ArgumentParser:
    defaults = FinetuneConfig()
    parser = argparse.ArgumentParser(
        prog="python -m model.training.finetune",
        description="LoRA-finetune a LaMed VLM on an exported QA folder (jsonl or 3D-RAD layout). "
                    "Run under torchrun or accelerate launch for several processes.")
    parser.add_argument("--data", type=Path, help="exported folder (train.jsonl or Task*/ CSVs)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, adapter)")
    parser.add_argument("--base", help="base model folder or adapter folder (default: the embedded model)")
    parser.add_argument("--volumes", type=Path, help="folder to find images by file name")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--device", help="auto|cpu|cuda[:N]|mps (default: $CTVQA_DEVICE, else auto)")
    parser.add_argument("--dtype", help="auto|float32|bfloat16|float16 (default: $CTVQA_DTYPE, else auto)")
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
                       resume=args.resume, progress=show, handle_sigint=True,
                       max_steps=args.max_steps if args.resume else None, device=args.device, dtype=args.dtype)
    except FinetuneError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    if rank0:
        summary = {k: v for k, v in asdict(result).items() if k not in ("losses", "train_qa_ids")}
        print(json.dumps({"event": "result", **summary, "first_loss": result.losses[:1],
                          "last_loss": result.losses[-1:]}), flush=True)
    return 0 if result.status == "done" else 130
