"""A 4B-class M3D-LaMed-Phi-3 checkpoint end to end on this machine, against M3D's plain recipe.

    python bench/real_checkpoint.py [--threads 2] [--tokens 16]

Writes a random-weight M3D-LaMed-Phi-3 folder at Phi-3-mini sizes in the published layout
(bf16 shards, ~7.6 GiB under .bench-tmp/, deleted afterwards), then runs one child process per
phase so each phase's peak RSS is its own and a phase never holds two models:

  bf16   load time, peak RSS; the plain recipe of M3D's README (encode the image, splice it into
         `inputs_embeds`, transformers `generate`, no prefix cache) against `VLM.answer`: time to
         first token with encoding included (a new volume), the follow-up question's (encoding
         and image prefix cached), a 4-question chat's mean, tokens/s; the fixed prompts'
         reference answers for the agreement figures
  int8   the same with int8 weights (`--quantize int8`): tokens/s against bf16's, top-1 token and
         closed-choice agreement with bf16 on the fixed prompts (model/inference/fidelity.py)
  int8-fp32  int8 weights, everything else in float32 (`--dtype float32 --quantize int8`); needs
         the memory of fp32 while loading
  fp32   the same in float32, skipped (and said so) when under 18 GiB of memory is free

Targets (CPU, 2 cores): first-token time <= 0.6x the plain recipe's; int8 tokens/s >= 1.8x bf16's
with >= 99 % top-1 agreement. Random weights have near-tied logits, so the agreement here is a
pessimistic bound (the trained default model's figures are in docs/devices.md).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
BENCH_TMP = REPO / ".bench-tmp"
FP32_MIN_FREE_GIB = 18
QUESTION = "Is there a pleural effusion?"
PHASES = {"bf16": ("bfloat16", "none"), "int8": ("bfloat16", "int8"), "int8-fp32": ("float32", "int8"),
          "fp32": ("float32", "none")}  # name: (dtype, quantize)


def free_gib() -> float:
    """MemAvailable (what can be allocated without swapping), in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def volume(seed: int, size: tuple[int, ...]) -> torch.Tensor:
    """A smooth model input in [0, 1]; another seed is another scan (nothing cached)."""
    coarse = torch.rand(1, 1, *(s // 8 for s in size), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=size, mode="trilinear")[0]


# ----- the plain recipe (M3D README) -----------------------------------------------------------
def plain_generate(vlm, image: torch.Tensor, question: str, new_tokens: int) -> float:
    """Seconds for M3D's recipe to produce `new_tokens` tokens: encode, splice, generate."""
    model = vlm.model
    ids = vlm.prompt_ids(vlm.build_prompt(question))
    start = time.perf_counter()
    with torch.inference_mode():
        features = model.encode_images(image[None].to(vlm.device))
        embeds = model.splice_image_features(model.get_input_embeddings()(ids), features)
        model.language_model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      pad_token_id=vlm.tokenizer.pad_token_id)
    return time.perf_counter() - start


def measure_speed(vlm, tokens: int, plain: bool) -> dict:
    """Our figures and, with `plain`, the plain recipe's: each new-scan sample alternates with a
    plain one (a median of three each), so that the machine's drift within a run (20-30 % in session 15) falls
    on both alike."""
    size = vlm.image_size
    out = {}
    vlm.answer(volume(99, size), QUESTION, max_new_tokens=2)  # warm-up (allocator, kernels)
    if plain:
        plain_generate(vlm, volume(98, size), QUESTION, 1)
    colds, first = [], []
    for k, seed in enumerate((4, 5, 1)):  # new scans; the chat goes on about the last
        colds.append(vlm.answer(volume(seed, size), QUESTION, max_new_tokens=tokens, min_new_tokens=tokens))
        if plain:
            first.append(plain_generate(vlm, volume(10 + k, size), QUESTION, 1))
    cold = colds[-1]
    warm = [vlm.answer(volume(1, size), f"{QUESTION} ({i})", max_new_tokens=tokens, min_new_tokens=tokens)
            for i in range(3)]
    # what the chat panel does when a scan is opened: encode it and fill its image prefix, then wait
    ahead = vlm.prepare(volume(2, size))
    vlm.prefix_cache(ahead)
    out["ttft_read_ahead_s"] = vlm.answer(ahead, QUESTION, max_new_tokens=tokens,
                                          min_new_tokens=tokens).latency_first_token_s
    out["ttft_cold_s"] = statistics.median(a.latency_first_token_s for a in colds)
    out["ttft_warm_s"] = statistics.median(a.latency_first_token_s for a in warm)
    out["ttft_chat4_mean_s"] = (cold.latency_first_token_s + sum(a.latency_first_token_s for a in warm)) / 4
    out["tokens_per_s"] = statistics.median((a.n_tokens - 1) / (a.total_s - a.latency_first_token_s)
                                            for a in [cold, *warm])
    if plain:
        full = plain_generate(vlm, volume(20, size), QUESTION, tokens)
        out["plain_ttft_s"] = statistics.median(first)
        out["plain_tokens_per_s"] = (tokens - 1) / max(full - out["plain_ttft_s"], 1e-9)
    return out


def phase(name: str, folder: Path, tokens: int, reference_file: Path) -> dict:
    from model.inference.fidelity import agreement, fixed_prompts, reference_answers
    from model.inference.loading import load_vlm

    dtype, quantize = PHASES[name]
    start = time.perf_counter()
    vlm = load_vlm(folder, device="cpu", dtype=dtype, quantize=quantize)
    result = {"phase": name, "runtime": vlm.runtime, "load_s": time.perf_counter() - start,
              "load_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    result.update(measure_speed(vlm, tokens, plain=name == "bf16"))
    prompts = fixed_prompts(vlm.image_size, n_images=1)
    if name == "bf16":
        reference_file.write_text(json.dumps(reference_answers(vlm, prompts, max_new_tokens=tokens)))
    else:
        result.update(agreement(vlm, prompts, json.loads(reference_file.read_text())).as_dict())
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def run_phase(name: str, folder: Path, args: argparse.Namespace) -> dict | None:
    print(f"[{name}] {free_gib():.1f} GiB free before the phase", flush=True)
    if PHASES[name][0] == "float32" and free_gib() < FP32_MIN_FREE_GIB:
        print(f"[{name}] skipped: {free_gib():.1f} GiB free, a 4B model in float32 needs ~15 GiB "
              f"(this phase runs only with >= {FP32_MIN_FREE_GIB} GiB free)", flush=True)
        return None
    child = subprocess.run([sys.executable, __file__, "--phase", name, "--folder", str(folder),
                            "--threads", str(args.threads), "--tokens", str(args.tokens)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        print(f"[{name}] failed (exit {child.returncode}): {child.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(child.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict]) -> None:
    bf16 = results.get("bf16")
    if bf16 is None:
        return
    plain = bf16["plain_ttft_s"]
    print(f"plain recipe (bf16, M3D README): first token {plain:.1f} s, {bf16['plain_tokens_per_s']:.2f} tokens/s")
    for name, r in results.items():
        line = (f"{name:>4} ({r['runtime']}): load {r['load_s']:.0f} s, peak RSS {r['peak_rss_gib']:.1f} GiB; "
                f"first token on a new scan {r['ttft_cold_s']:.1f} s ({r['ttft_cold_s'] / plain:.2f}x plain, target "
                f"<= 0.6), first question on a scan the chat read when it was opened {r['ttft_read_ahead_s']:.2f} s "
                f"({r['ttft_read_ahead_s'] / plain:.2f}x), follow-up {r['ttft_warm_s']:.2f} s "
                f"({r['ttft_warm_s'] / plain:.2f}x), 4-question chat mean "
                f"{r['ttft_chat4_mean_s']:.1f} s ({r['ttft_chat4_mean_s'] / plain:.2f}x); {r['tokens_per_s']:.2f} tokens/s "
                f"({r['tokens_per_s'] / bf16['tokens_per_s']:.2f}x bf16)")
        if "top1_agreement" in r:
            line += (f"; top-1 agreement with bf16 {r['top1_agreement']:.1%} of {r['tokens']} tokens, same choice "
                     f"{r['choice_agreement']:.0%} of {r['closed_questions']} closed questions")
        print(line)
    for name in ("int8", "int8-fp32"):
        if name in results:
            speed = results[name]["tokens_per_s"] / bf16["tokens_per_s"]
            print(f"{name} vs bf16: {speed:.2f}x tokens/s (target >= 1.8), top-1 agreement "
                  f"{results[name]['top1_agreement']:.1%} (target >= 99 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per answer")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="which of bf16,int8,int8-fp32,fp32 to run (bf16 always runs: it is the baseline)")
    parser.add_argument("--phase", choices=tuple(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.phase:
        print(json.dumps(phase(args.phase, args.folder, args.tokens, args.folder / "reference.json")))
        return
    wanted = {"bf16", *filter(None, args.phases.split(","))}
    if wanted - set(PHASES):
        sys.exit(f"--phases: {', '.join(sorted(wanted - set(PHASES)))} not among {','.join(PHASES)}")
    disk = shutil.disk_usage(REPO).free / 2**30
    if disk < 20:
        sys.exit(f"need 20 GiB free disk for the 4B checkpoint, {disk:.0f} GiB free")
    from vlm import write_4b_checkpoint

    folder = BENCH_TMP / "m3d-phi3-4b-speed"
    print(f"torch {torch.__version__}, {args.threads} threads; writing the 4B checkpoint...", flush=True)
    try:
        start = time.perf_counter()
        n_params = write_4b_checkpoint(folder)
        print(f"{n_params / 1e9:.2f}B parameters written in {time.perf_counter() - start:.0f} s", flush=True)
        results = {}
        for name in [n for n in PHASES if n in wanted]:
            result = run_phase(name, folder, args)
            if result is not None:
                results[name] = result
                print(f"[{name}] {json.dumps(result)}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
