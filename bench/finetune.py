"""LoRA finetuning throughput: 1 vs 2 data-parallel processes (torchrun, gloo, CPU), in one run.

    python bench/finetune.py                      # default-model-sized random LaMed, 40 steps
    python bench/finetune.py --base model/default --steps 60

Each configuration is the same script (`python -m model.training.finetune`) under torchrun with the same
per-process batch, one thread per process, so two processes do twice the work per step; the
speed-up is samples/s(2 processes) / samples/s(1 process) (target >= 1.6x). A single process
with as many threads as the two-process run uses cores is printed as a second baseline. Peak
memory is each worker's peak RSS (CPU) or peak allocated GPU memory. The first steps (image
encoding of every volume, allocator warm-up) are included, as a user would see them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BENCH_TMP = REPO / ".bench-tmp" / "finetune"
QUESTIONS = ("Is there a lung nodule?", "Is there a pleural effusion?", "Is there cardiomegaly?")


def build_random_base(folder: Path) -> Path:
    """A randomly initialised LaMed at the embedded default model's sizes (model.training.default.recipe.Recipe)."""
    from model.nets.tokenizer import train_tokenizer
    from model.training.default.recipe import Recipe
    from model.training.default.steps import build_model
    from model.inference.loading import write_settings

    recipe = Recipe()
    corpus = [f"{q} Choices: A. Yes B. No {a}. {t}" for q in QUESTIONS for a in "AB" for t in ("Yes", "No")] * 20
    tokenizer = train_tokenizer(corpus, 400)
    build_model(recipe, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_settings(folder, prompt_style="m3d", description="random weights, for benchmarks only")
    return folder


def write_data(folder: Path, image_size: tuple[int, ...], n_volumes: int, per_volume: int) -> Path:
    """Random [0, 1] volumes at the model's input size and closed yes/no questions about them."""
    rng = np.random.default_rng(0)
    (folder / "volumes").mkdir(parents=True)
    records = []
    for v in range(n_volumes):
        path = folder / "volumes" / f"bench_{v}_a_1.npy"
        np.save(path, rng.random(image_size, dtype=np.float32))
        for k in range(per_volume):
            answer = int(rng.integers(2))
            records.append({"qa_id": len(records), "image": str(path), "task": "existence_detection",
                            "question": QUESTIONS[k % len(QUESTIONS)], "choices": ["Yes", "No", "-", "-"],
                            "answer": ("Yes", "No")[answer], "answer_choice": "AB"[answer]})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def run(base: Path, data: Path, out: Path, processes: int, threads: int, steps: int, batch: int) -> dict:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "model.training.finetune", "--base", str(base), "--data", str(data), "--out", str(out),
            "--max-steps", str(steps), "--batch-size", str(batch), "--save-every", str(10 * steps),
            "--progress-json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"event": "result"')]
    if proc.returncode != 0 or not results:
        raise SystemExit(f"{processes} process(es) failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return {**results[0], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="model folder (default: a random default-sized model)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4, help="per process")
    parser.add_argument("--volumes", type=int, default=16)
    args = parser.parse_args()

    from model.inference.loading import load_vlm

    shutil.rmtree(BENCH_TMP, ignore_errors=True)
    BENCH_TMP.mkdir(parents=True)
    try:
        base = args.base or build_random_base(BENCH_TMP / "base")
        image_size = load_vlm(base).image_size
        data = write_data(BENCH_TMP / "data", image_size, args.volumes, per_volume=4)
        print(f"model {base} (input {image_size}), {args.volumes * 4} QA pairs, {args.steps} steps, "
              f"batch {args.batch_size} per process, CPU cores visible: {os.cpu_count()}")
        rows = [("1 process x 1 thread (baseline)", 1, 1), ("2 processes x 1 thread (gloo)", 2, 1),
                ("1 process x 2 threads", 1, 2)]
        figures = {}
        for label, processes, threads in rows:
            r = run(base, data, BENCH_TMP / f"run-{processes}-{threads}", processes, threads, args.steps,
                    args.batch_size)
            figures[label] = r
            print(f"{label:34s} {r['samples_per_s']:7.2f} samples/s  train {r['seconds']:6.1f} s  "
                  f"wall {r['wall_s']:6.1f} s  peak memory/process {r['peak_memory_mb']:7.0f} MB")
        one, two, threaded = (figures[label]["samples_per_s"] for label, _, _ in rows)
        print(f"speed-up, 2 processes vs 1 (one thread each): {two / one:.2f}x (target >= 1.6x)")
        print(f"speed-up, 2 processes vs 1 process with 2 threads: {two / threaded:.2f}x")
    finally:
        shutil.rmtree(BENCH_TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
