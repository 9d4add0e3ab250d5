"""Which dtype `auto` should pick on a CPU: speed and answer agreement of float32, bfloat16 and
float16 (and int8 weights), on the embedded default model and on a 4B-shaped layer stack.

    python bench/cpu_dtype.py [--threads 2] [--layers 4]

default  the embedded model on the fixed prompt set (model/inference/fidelity.py): seconds per
         answer (16 tokens, image encoded once per volume) and top-1 token / closed-choice
         agreement with float32 (its trained dtype)
stack    a Phi-3-mini-sized language model cut to --layers decoder layers (random weights, the
         real vocabulary and widths): prefill of 270 tokens (BOS + 256 image tokens + a question),
         decode tokens/s, and top-1 agreement with float32 on teacher-forced random text
The baseline of every row is float32 measured in the same run. Figures: docs/devices.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DTYPES = ("float32", "bfloat16", "float16")


def bench_default() -> dict:
    from model.inference.fidelity import agreement, fixed_prompts, reference_answers
    from model.inference.loading import load_vlm

    reference = load_vlm(None, device="cpu", dtype="float32")
    prompts = fixed_prompts(reference.image_size)
    answers = reference_answers(reference, prompts)
    out = {}
    variants = [(d, "none") for d in DTYPES] + [("bfloat16", "int8"), ("float32", "int8")]
    for dtype, quantize in variants:
        vlm = load_vlm(None, device="cpu", dtype=dtype, quantize=quantize)
        for p in prompts[:2]:  # warm-up, and the volumes' encodings cached as in a chat
            vlm.answer(p.image, p.question, choices=p.choices, max_new_tokens=16)
        times = []
        for p in prompts:
            start = time.perf_counter()
            vlm.answer(p.image, p.question, choices=p.choices, max_new_tokens=16, min_new_tokens=16)
            times.append(time.perf_counter() - start)
        fid = agreement(vlm, prompts, answers)
        name = dtype + ("+int8" if quantize != "none" else "")
        out[name] = {"s_per_answer": statistics.median(times), **fid.as_dict()}
    base = out["float32"]["s_per_answer"]
    for name, row in out.items():
        print(f"default model {name:>13}: {row['s_per_answer'] * 1000:6.1f} ms/answer ({row['s_per_answer'] / base:.2f}x "
              f"float32), top-1 agreement {row['top1_agreement']:.1%} of {row['tokens']} tokens, "
              f"same choice {row['choice_agreement']:.0%} of {row['closed_questions']}")
    return {"default": out}


def _stack(layers: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(REPO / "bench"))
    from vlm import PHI3_MINI  # the sizes bench/vlm.py's 4B checkpoint uses

    config = AutoConfig.for_model(**{**PHI3_MINI, "num_hidden_layers": layers})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _timed_decode(model, prompt: torch.Tensor, n_new: int) -> tuple[float, float]:
    """(prefill s, decode tokens/s) of greedy generation with a KV cache."""
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - start
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(n_new):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return prefill, n_new / (time.perf_counter() - start)


def bench_stack(layers: int) -> dict:
    from model.inference.quantize import quantize_weights

    reference = _stack(layers)
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 32000, (1, 270), generator=generator)
    text = torch.randint(3, 32000, (1, 64), generator=generator)
    with torch.inference_mode():
        expected = reference(input_ids=text).logits.argmax(-1)
    out = {}
    for name in (*DTYPES, "bfloat16+int8", "float32+int8", "bfloat16+int8pack"):
        dtype = getattr(torch, name.split("+")[0])
        model = _stack(layers).to(dtype)
        if "+" in name:  # int8: the kernel --quantize int8 picks; int8pack: the weight-only one it replaced
            quantize_weights(model, "int8", root="", kernel="int8pack" if name.endswith("int8pack") else None)
        _timed_decode(model, prompt[:, :16], 2)  # warm-up
        prefill, rate = _timed_decode(model, prompt, 16)
        with torch.inference_mode():
            top1 = float((model(input_ids=text).logits.argmax(-1) == expected).float().mean())
        out[name] = {"prefill_s": prefill, "tokens_per_s": rate, "top1_agreement": top1}
        del model
    base = out["float32"]
    n_params = sum(p.numel() for p in reference.parameters())
    for name, row in out.items():
        print(f"{layers}-layer Phi-3-mini stack ({n_params / 1e6:.0f}M) {name:>13}: prefill 270 tokens "
              f"{row['prefill_s']:.2f} s ({row['prefill_s'] / base['prefill_s']:.2f}x float32), decode "
              f"{row['tokens_per_s']:.1f} tokens/s ({row['tokens_per_s'] / base['tokens_per_s']:.2f}x), "
              f"top-1 agreement with float32 {row['top1_agreement']:.1%}")
    return {"stack": out, "stack_params": n_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--only", default="default,stack")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from model.inference.devices import cpu_has_native_bf16

    print(f"torch {torch.__version__}, {args.threads} threads, CPU {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {cpu_has_native_bf16()}")
    results = {}
    if "default" in args.only:
        results.update(bench_default())
    if "stack" in args.only:
        results.update(bench_stack(args.layers))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
