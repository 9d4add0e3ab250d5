"""Benchmarks of the model path, each against a baseline measured in the same run (CPU).

    python bench/vlm.py                          # all parts
    python bench/vlm.py --only preprocess,vit    # some parts: preprocess, vit, families, rois, lm, load4b

preprocess  to_model_input on a 300x512x512 HU volume vs a straightforward M3D-style pipeline
vit         ViT3D + projector at the full M3D config (1x32x256x256), fp32 and bf16, vs naive attention
families    forward time and image-token count of the M3D and OmniCT encoder families at the default
            model's size (model/default/config.json) and at M3D's full size, fp32
rois        find_rois on a 300x512x512 HU volume vs one full-resolution connected-component labelling
lm          time to first token and tokens/s of a ~30M-parameter llama-style LM, cached vs uncached image
load4b      load a 4B-scale (Phi-3 sizes) M3D-layout sharded bf16 checkpoint; time and peak RSS
            (writes ~8 GB of random shards under .bench-tmp/, deleted afterwards)
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BENCH_TMP = REPO / ".bench-tmp"
PARTS = ("preprocess", "vit", "families", "rois", "lm", "load4b")


def timed(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Median wall time of `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def chest_like_volume(shape=(300, 512, 512)) -> np.ndarray:
    """Air, an elliptic body with lungs and a spine, and a CT table (built with broadcasting)."""
    z, y, x = (np.arange(n, dtype=np.float32)[:, None, None] for n in shape)
    y, x = y.reshape(1, -1, 1), x.reshape(1, 1, -1)
    vol = np.full(shape, -1000.0, np.float32)
    body = ((y - 250) / 170) ** 2 + ((x - 256) / 220) ** 2 < 1
    lungs = (((y - 230) / 110) ** 2 + ((np.abs(x - 256) - 100) / 70) ** 2) < 1
    vol[:, :, :] = np.where(body, 40.0, -1000.0)
    vol[:, :, :] = np.where(lungs, -850.0, vol[0])
    vol[:, 380:400, 240:272] = 700.0
    vol[:, 440:450, 40:470] = 200.0
    vol += np.random.default_rng(0).normal(0, 20, size=shape[1:]).astype(np.float32)
    return vol


# ----- preprocess ------------------------------------------------------------------------------
def naive_preprocess(array: np.ndarray, size=(32, 256, 256)) -> torch.Tensor:
    """M3D's recipe written plainly: min-max the whole volume, crop to voxels > 0 (np.nonzero), resize."""
    norm = (array - array.min()) / (array.max() - array.min())
    nz = np.nonzero(norm > 0.3)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    crop = np.ascontiguousarray(norm[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    return F.interpolate(torch.from_numpy(crop)[None, None], size=size, mode="trilinear")[0]


def bench_preprocess() -> dict:
    from model.ct.preprocess import to_model_input

    vol = chest_like_volume()
    ours = timed(lambda: to_model_input(vol))
    naive = timed(lambda: naive_preprocess(vol), repeat=2)
    print(f"preprocess 300x512x512 -> 32x256x256: ours {ours:.3f} s, naive {naive:.3f} s, "
          f"ratio {ours / naive:.2f} (target < 0.5 s)")
    return {"preprocess_s": ours, "preprocess_naive_s": naive}


# ----- ViT ---------------------------------------------------------------------------------------
def naive_encoder_forward(encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The same weights, attention as M3D wrote it: explicit q k^T, softmax, times v."""
    vit = encoder.vision_tower
    x = vit.patch_embedding(images)
    x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    for blk in vit.blocks:
        y = blk.norm1(x)
        b, n, _ = y.shape
        heads, dim = blk.attn.num_heads, blk.attn.head_dim
        q, k, v = blk.attn.qkv(y).reshape(b, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * dim ** -0.5).softmax(dim=-1)
        x = x + blk.attn.out_proj((att @ v).transpose(1, 2).reshape(b, n, -1))
        x = x + blk.mlp(blk.norm2(x))
    return encoder.mm_projector(vit.norm(x)[:, 1:])


def bench_vit() -> dict:
    from model.nets.encoders import build_vision_encoder

    torch.manual_seed(0)
    encoder = build_vision_encoder(768, 12, 12, 3072, 3072).eval()
    images = torch.rand(1, 1, 32, 256, 256)
    out: dict = {}
    for dtype in (torch.float32, torch.bfloat16):
        enc = encoder.to(dtype)
        x = images.to(dtype)
        with torch.inference_mode():
            ours = timed(lambda: enc(x), repeat=2)
            naive = timed(lambda: naive_encoder_forward(enc, x), repeat=2)
            diff = float((enc(x).float() - naive_encoder_forward(enc, x).float()).abs().max())
        name = str(dtype).removeprefix("torch.")
        print(f"ViT3D+projector 1x32x256x256 {name}: ours {ours:.2f} s, naive attention {naive:.2f} s, "
              f"ratio {ours / naive:.2f} (target <= 0.8), max |diff| {diff:.2e}")
        out[f"vit_{name}_s"], out[f"vit_{name}_naive_s"] = ours, naive
    return out


# ----- encoder families --------------------------------------------------------------------------
def _family_sizes() -> dict[str, dict]:
    """The default model's vision sizes (read from its config) and M3D's full sizes."""
    config = json.loads((REPO / "model" / "default" / "config.json").read_text())
    default = dict(hidden_size=config["mm_hidden_size"], num_layers=config["vision_num_layers"],
                   num_heads=config["vision_num_heads"], mlp_dim=config["vision_mlp_dim"],
                   out_dim=config["text_config"]["hidden_size"])
    full = dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, out_dim=3072)  # Phi-3 hidden
    d, h, w = config["image_size"]
    return {
        "default": {"sizes": default, "m3d": dict(image_size=(d, h, w), patch_size=tuple(config["patch_size"])),
                    "omnict": dict(image_size=(d // 3 * 3, h, w), patch_size=(3, 16, 16))},
        "full": {"sizes": full, "m3d": dict(image_size=(32, 256, 256), patch_size=(4, 16, 16)),
                 "omnict": dict(image_size=(30, 256, 256), patch_size=(3, 16, 16))},
    }


def bench_families() -> dict:
    """Both families at the same tower sizes; OmniCT with unshuffle 2 (the paper's) and 4 (fewer tokens)."""
    from model.nets.encoders import build_vision_encoder

    out: dict = {}
    for scale, spec in _family_sizes().items():
        variants = [("m3d", "m3d", {}), ("omnict_m2", "omnict", {"unshuffle": 2}), ("omnict_m4", "omnict", {"unshuffle": 4})]
        rows = []
        for name, family, extra in variants:
            torch.manual_seed(0)
            encoder = build_vision_encoder(**spec["sizes"], **spec[family], family=family, **extra).eval()
            images = torch.rand(1, 1, *spec[family]["image_size"])
            repeat = 1 if scale == "full" else 3
            with torch.inference_mode():
                seconds = timed(lambda: encoder(images), repeat=repeat, warmup=1)
                tokens = encoder(images).shape[1]
                slice_tokens = encoder(images[:, :, :1]).shape[1] if family == "omnict" else None
            rows.append((name, seconds, tokens, slice_tokens))
            out[f"{scale}_{name}_s"], out[f"{scale}_{name}_tokens"] = seconds, tokens
        base = rows[0][1]
        for name, seconds, tokens, slice_tokens in rows:
            size = spec["m3d" if name == "m3d" else "omnict"]["image_size"]
            extra = f", one slice {slice_tokens} tokens" if slice_tokens else ""
            print(f"encoder {scale} size ({spec['sizes']['hidden_size']} hidden, {spec['sizes']['num_layers']} layers) "
                  f"{name} 1x{'x'.join(map(str, size))}: {seconds:.3f} s, {tokens} tokens{extra} "
                  f"(ratio to m3d {seconds / base:.2f})")
    return out


# ----- organ masks -------------------------------------------------------------------------------
def bench_rois() -> dict:
    from scipy import ndimage

    from model.ct.rois import find_rois

    vol = chest_like_volume()
    ours = timed(lambda: find_rois(vol), repeat=3)
    baseline = timed(lambda: ndimage.label(vol < -400.0), repeat=1)
    print(f"find_rois 300x512x512: {ours:.3f} s (target < 1 s); one full-resolution ndimage.label of the "
          f"air mask alone {baseline:.3f} s (ratio {ours / baseline:.2f})")
    return {"find_rois_s": ours, "full_res_label_s": baseline}


# ----- LM generation ----------------------------------------------------------------------------
def bench_lm() -> dict:
    from model.nets.lamed import LamedConfig, LamedForCausalLM
    from model.nets.tokenizer import train_tokenizer
    from model.inference.vlm import VLM

    corpus = [f"The {w} shows {v} in the {s} lobe." for w in ("scan", "image", "CT") for v in
              ("a nodule", "an effusion", "consolidation", "emphysema") for s in ("upper", "lower", "middle")]
    tokenizer = train_tokenizer(corpus * 10, vocab_size=600)
    text = dict(model_type="llama", vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    config = LamedConfig(text_config=text, mm_hidden_size=192, vision_num_layers=2, vision_num_heads=3,
                         vision_mlp_dim=384)
    torch.manual_seed(0)
    model = LamedForCausalLM(config).eval()
    n_lm = sum(p.numel() for p in model.language_model.parameters())
    vlm = VLM(model, tokenizer)
    volume = torch.rand(1, 32, 256, 256)
    question = "What does the scan show in the upper lobe?"
    n_new = 32

    first = vlm.answer(volume, question, max_new_tokens=n_new, min_new_tokens=n_new)  # encodes + prefix cache
    follow = [vlm.answer(volume, question + f" ({i})", max_new_tokens=n_new, min_new_tokens=n_new) for i in range(3)]
    ttft = statistics.median(a.latency_first_token_s for a in follow)
    rate = statistics.median((a.n_tokens - 1) / (a.total_s - a.latency_first_token_s) for a in follow)

    ids = vlm.prompt_ids(vlm.build_prompt(question))
    pixels = volume[None]

    def uncached_first_token() -> None:
        with torch.inference_mode():
            model.generate(input_ids=ids, images=pixels, max_new_tokens=1, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)

    baseline = timed(uncached_first_token, repeat=3)
    print(f"LM {n_lm / 1e6:.0f}M params, {vlm.num_image_tokens} image tokens: first question TTFT "
          f"{first.latency_first_token_s:.3f} s; follow-up TTFT (cached image + prefix) {ttft:.3f} s vs "
          f"uncached {baseline:.3f} s (ratio {ttft / baseline:.2f}); {rate:.1f} tokens/s")
    return {"lm_params_m": n_lm / 1e6, "ttft_first_s": first.latency_first_token_s, "ttft_cached_s": ttft,
            "ttft_uncached_s": baseline, "tokens_per_s": rate}


# ----- 4B checkpoint load -----------------------------------------------------------------------
PHI3_MINI = dict(model_type="phi3", vocab_size=32014, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                 original_max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=32000,
                 pad_token_id=32000, sliding_window=2047, tie_word_embeddings=False)


def write_4b_checkpoint(folder: Path) -> int:
    """Random bf16 weights in the published layout, generated tensor by tensor (never the whole model)."""
    from accelerate import init_empty_weights

    from model.nets.published import save_published
    from model.nets.lamed import LamedConfig, LamedForCausalLM
    from model.nets.tokenizer import train_tokenizer

    config = LamedConfig(text_config=dict(PHI3_MINI))
    config.dtype = torch.bfloat16
    with init_empty_weights():
        shapes = [(n, p.shape) for n, p in LamedForCausalLM(config).named_parameters()]
    generator = torch.Generator().manual_seed(0)
    tensors = ((n, torch.empty(s, dtype=torch.bfloat16).uniform_(-0.02, 0.02, generator=generator)) for n, s in shapes)
    save_published(folder, config, tensors, model_type="lamed_phi3", max_shard_bytes=2 * 1024**3)
    train_tokenizer(["a tiny tokenizer for the load benchmark"], vocab_size=300).save_pretrained(folder)
    return sum(int(np.prod(s)) for _, s in shapes)


_LOAD_CHILD = """
import resource, sys, time, json, torch
sys.path.insert(0, {repo!r})
start = time.perf_counter()
from model.nets.published import load_published
model = load_published({folder!r}, dtype=torch.bfloat16)
seconds = time.perf_counter() - start
meta = sum(p.is_meta for p in model.parameters())
touched = sum(float(p.detach().abs().max()) for p in model.parameters())  # page every weight in (mmap)
print(json.dumps({{"load_s": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "params": sum(p.numel() for p in model.parameters()), "meta_params": meta}}))
"""


def bench_load4b() -> dict:
    free = shutil.disk_usage(REPO).free / 2**30
    if free < 20:
        print(f"load4b skipped: {free:.0f} GiB free disk, need 20")
        return {}
    folder = BENCH_TMP / "m3d-phi3-4b-random"
    try:
        start = time.perf_counter()
        n_params = write_4b_checkpoint(folder)
        written = time.perf_counter() - start
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30
        child = subprocess.run([sys.executable, "-c", _LOAD_CHILD.format(repo=str(REPO), folder=str(folder))],
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"4B M3D-layout checkpoint ({n_params / 1e9:.2f}B params, {size:.1f} GiB bf16 shards, written in "
          f"{written:.0f} s): load {result['load_s']:.1f} s, peak RSS {result['peak_rss_gib']:.1f} GiB "
          f"after touching every weight (target < 20 GiB; weights alone {size:.1f} GiB), "
          f"meta params left {result['meta_params']}")
    return {"load4b_s": result["load_s"], "load4b_peak_rss_gib": result["peak_rss_gib"], "load4b_gib": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    results: dict = {}
    for part in parts:
        results.update(globals()[f"bench_{part}"]())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
