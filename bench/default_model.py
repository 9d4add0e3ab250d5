"""Speed of the shipped default model (model/default) on a synthetic scan, CPU.

    python bench/default_model.py [--threads 2] [--tokens 48]

Prints the time to encode a volume, the time to first token of a question once the volume is
encoded (issue 6 target < 0.5 s), and tokens/s of a forced-length answer (target >= 30), each
next to a baseline measured in the same run: the same question answered by a plain `generate`
that re-runs the image prefix (no per-volume cache), as a naive chat would.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
QUESTIONS = (
    "Is there pleural effusion in this image?",
    "Does this CT show a lung nodule?",
    "Where is the nodule located?",
)


def synthetic_scan(size: tuple[int, int, int]) -> np.ndarray:
    from annotation.synth import Grid, default_spacing, synthesize_patient

    grid = Grid(size, default_spacing(size))
    findings = {"Lung nodule": (1.2,), "Pleural effusion": (1.0,)}
    return synthesize_patient(grid, np.random.default_rng(0), 1, findings=findings).scans[0].hu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    parser.add_argument("--tokens", type=int, default=48, help="forced answer length for tokens/s")
    parser.add_argument("--size", default="64,192,192", help="phantom grid Z,Y,X")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from model import load_vlm

    start = time.perf_counter()
    vlm = load_vlm(None)
    load_s = time.perf_counter() - start
    hu = synthetic_scan(tuple(int(v) for v in args.size.split(",")))

    start = time.perf_counter()
    prepared = vlm.prepare(hu)
    encode_s = time.perf_counter() - start
    vlm.answer(prepared, "warm-up", max_new_tokens=2)  # builds the BOS + image prefix cache once
    answers = [vlm.answer(prepared, q, max_new_tokens=args.tokens, min_new_tokens=args.tokens) for q in QUESTIONS]
    ttft = statistics.median(a.latency_first_token_s for a in answers)
    rate = statistics.median((a.n_tokens - 1) / (a.total_s - a.latency_first_token_s) for a in answers)

    def plain_generate(question: str) -> tuple[float, float]:
        """Baseline: one `generate` call from the full prompt and the pixels, no cache kept."""
        ids = vlm.prompt_ids(vlm.build_prompt(question))
        with torch.inference_mode():
            begin = time.perf_counter()
            vlm.model.generate(input_ids=ids, images=prepared.pixels, max_new_tokens=1, do_sample=False,
                               pad_token_id=vlm.tokenizer.pad_token_id)
            first = time.perf_counter() - begin
            begin = time.perf_counter()
            vlm.model.generate(input_ids=ids, images=prepared.pixels, max_new_tokens=args.tokens,
                               min_new_tokens=args.tokens, do_sample=False, pad_token_id=vlm.tokenizer.pad_token_id)
            total = time.perf_counter() - begin
        return first, (args.tokens - 1) / max(1e-9, total - first)

    baseline = [plain_generate(q) for q in QUESTIONS]
    base_ttft = statistics.median(b[0] for b in baseline)
    base_rate = statistics.median(b[1] for b in baseline)
    n_params = sum(p.numel() for p in vlm.model.parameters())
    figures = {"params_m": round(n_params / 1e6, 2), "threads": args.threads, "load_s": round(load_s, 3),
               "encode_s": round(encode_s, 3), "ttft_s": round(ttft, 4), "tokens_per_s": round(rate, 1),
               "baseline_ttft_s": round(base_ttft, 4), "baseline_tokens_per_s": round(base_rate, 1)}
    print(f"default model {figures['params_m']} M params, {args.threads} threads: load {load_s:.2f} s, "
          f"encode {encode_s:.3f} s")
    print(f"time to first token after encoding {ttft * 1000:.0f} ms (target < 500) vs plain generate "
          f"{base_ttft * 1000:.0f} ms; {rate:.0f} tokens/s (target >= 30) vs {base_rate:.0f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
