"""`ctvqa evaluate` throughput: batched against one question at a time, and 1 process against 2.

    python bench/evaluate.py                    # default model, 12-patient cohort of `ctvqa synth`
    python bench/evaluate.py --patients 20 --robustness

Every configuration is the same `ctvqa evaluate` command on the same folder (the cohort's training
questions, boxes included), run as a user runs it: the one-at-a-time baseline is `--batch-size 1`
(each question through `VLM.answer`, the chat's path, as `ctvqa evaluate` answered before), with
the default threads and with one;
sharded runs are `--processes N` (torchrun, gloo). Questions/s are printed twice: over the answering
phase the report times (all processes, until the last is done) and over the command's whole wall
time (start-up, model load and scoring included). Runs of one thread count must give identical
figures; across thread counts floating sums may end in other last digits (checked to 1e-6 relative).
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

REPO = Path(__file__).resolve().parents[1]
BENCH_TMP = REPO / ".bench-tmp" / "evaluate"
CTVQA = [sys.executable, "-m", "napari_ctvqa.cli"]


def run(cohort: Path, out: Path, batch_size: int, processes: int, threads: int, extra: list[str]) -> dict:
    args = [*CTVQA, "evaluate", "--qa", str(cohort / "qa" / "train"), "--volumes", str(cohort / "volumes"),
            "--json", str(out), "--batch-size", str(batch_size), "--processes", str(processes), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads(out.read_text())
    n = report["n"] + report.get("boxes", {}).get("n", 0)
    return {"report": report, "n": n, "wall_s": wall, "answer_s": report["seconds"]["answering"]}


def _close(a: object, b: object) -> bool:
    """Equal, floats to 1e-6 relative (what a different thread count may change)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--robustness", action="store_true", help="also the wrong-scan and noise runs")
    parser.add_argument("--keep", action="store_true", help="keep .bench-tmp/evaluate (the cohort) for a rerun")
    args = parser.parse_args()
    extra = ["--robustness"] * args.robustness
    cohort = BENCH_TMP / f"cohort-{args.patients}"
    if not (cohort / "volumes").is_dir():
        subprocess.run([*CTVQA, "synth", "--out", str(cohort), "--patients", str(args.patients), "--seed", "0"],
                       check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    cores = os.cpu_count() or 1
    print(f"default model, `ctvqa synth` cohort of {args.patients} patients (64x256x256), qa/train"
          f"{' with --robustness' if args.robustness else ''}; CPU cores visible: {cores}")
    rows = [("one at a time, 1 process (baseline)", 1, 1, cores), ("batched, 1 process", 32, 1, cores),
            ("one at a time, 1 process x 1 thread", 1, 1, 1), ("batched, 1 process x 1 thread", 32, 1, 1),
            ("batched, 2 processes x 1 thread", 32, 2, 1)]
    figures = {}
    try:
        for label, batch, processes, threads in rows:
            r = run(cohort, BENCH_TMP / f"{batch}-{processes}-{threads}.json", batch, processes, threads, extra)
            figures[label] = r
            print(f"{label:36s} {r['n']:5d} questions  answering {r['answer_s']:7.1f} s = "
                  f"{r['n'] / r['answer_s']:7.1f} q/s   whole command {r['wall_s']:6.1f} s = {r['n'] / r['wall_s']:6.1f} q/s")
        base, batched, base_single, single, two = (figures[label] for label, *_ in rows)

        def ratio(a: dict, b: dict, key: str) -> float:
            return b[key] and a[key] / b[key]

        print(f"batched vs one at a time, {cores} threads: {ratio(base, batched, 'answer_s'):.1f}x answering, "
              f"{ratio(base, batched, 'wall_s'):.1f}x whole command (target >= 5x)")
        print(f"batched vs one at a time, 1 thread: {ratio(base_single, single, 'answer_s'):.1f}x answering, "
              f"{ratio(base_single, single, 'wall_s'):.1f}x whole command")
        print(f"2 processes vs 1 (one thread each): {ratio(single, two, 'answer_s'):.2f}x answering, "
              f"{ratio(single, two, 'wall_s'):.2f}x whole command (target >= 1.6x)")
        print(f"2 processes vs 1 process with {cores} threads: {ratio(batched, two, 'answer_s'):.2f}x answering, "
              f"{ratio(batched, two, 'wall_s'):.2f}x whole command")
        strip = {label: {k: v for k, v in figures[label]["report"].items() if k not in ("seconds", "model")}
                 for label, *_ in rows}
        by_threads: dict[int, list[dict]] = {}
        for label, _, _, threads in rows:
            by_threads.setdefault(threads, []).append(strip[label])
        same = all(s == group[0] for group in by_threads.values() for s in group)
        close = all(_close(s, strip[rows[0][0]]) for s in strip.values())
        print("same figures in every run of one thread count:", "yes" if same else "NO",
              "| across thread counts, equal to 1e-6 relative:", "yes" if close else "NO",
              "(sums split over threads end in other last digits)")
    finally:
        if not args.keep:
            shutil.rmtree(BENCH_TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
