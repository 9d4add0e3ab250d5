"""`python -m model.training.default`: train, save, evaluate and describe the default model, or
re-evaluate a saved one.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from model.inference.loading import write_settings
from model.nets.tokenizer import build_tokenizer
from model.training.default.card import model_card
from model.training.default.data import build_dataset, check_cohort
from model.training.default.evaluation import acceptance, evaluate_default
from model.training.default.recipe import RAD_TEST_DIR, REPO, Recipe
from model.training.default.stage2 import train
from model.training.default.steps import build_model


def save_model(model: Any, tokenizer: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_settings(out, prompt_style="m3d", window=None, name="ctvqa-default",
                   description="Small LaMed trained on synthetic phantoms only; never use on a real patient.")



def run(out: Path, cohort_dir: Path, recipe: Recipe, evaluate: bool = True) -> dict[str, Any]:
    """The whole pipeline (cohort, cache, tokenizer, two stages, save, held-out evaluation, card)."""

    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    check_cohort(cohort_dir, recipe)
    tokenizer, tokenizer_info = build_tokenizer(cohort_dir, cohort_dir / "tokenizer", recipe.vocab_size,
                                                RAD_TEST_DIR)
    print(f"[tokenizer] {tokenizer_info}", flush=True)
    train_data = build_dataset(cohort_dir, "train", tokenizer, recipe)
    valid_data = build_dataset(cohort_dir, "valid", tokenizer, recipe)
    model = build_model(recipe, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] {n_params / 1e6:.2f} M parameters, {model.num_image_tokens} image tokens; "
          f"{len(train_data.names)} training / {len(valid_data.names)} held-out volumes", flush=True)
    record = train(model, tokenizer, train_data, valid_data, recipe)
    record.update(image_tokens=model.num_image_tokens, machine=f"{platform.machine()} CPU, "
                  f"{torch.get_num_threads()} threads", recipe=asdict(recipe), tokenizer=tokenizer_info)
    save_model(model, tokenizer, out)
    record.update(cohort={"train_volumes": len(train_data.names), "valid_volumes": len(valid_data.names)},
                  n_params=n_params)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return {"record": record, "report": evaluate_and_describe(out, cohort_dir, recipe, record, evaluate)}



def evaluate_and_describe(out: Path, cohort_dir: Path, recipe: Recipe, record: dict[str, Any],
                          evaluate: bool = True) -> dict[str, Any] | None:
    """Held-out evaluation (eval.json) and the model card of a saved model: the end of a training
    run, or `--reevaluate` after the evaluation changed, without training again."""
    report = None
    if evaluate:
        report = evaluate_default(out, cohort_dir, recipe.eval_limit)
        report["acceptance"] = acceptance(report)
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["acceptance"], indent=2), flush=True)
    card = model_card(recipe, record, report, record["n_params"], record["tokenizer"], record["cohort"])
    (out / "README.md").write_text(card)
    return report



def reevaluate(out: Path, cohort_dir: Path) -> dict[str, Any] | None:
    """Evaluate the model in `out` again with the recipe its training.json records."""
    record = json.loads((out / "training.json").read_text())
    stored = record["recipe"]
    recipe = Recipe(**{**stored, **{k: tuple(stored[k]) for k in ("synth_size", "image_size", "patch_size")}})
    check_cohort(cohort_dir, recipe)
    return evaluate_and_describe(out, cohort_dir, recipe, record)



def _size(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X, got {text!r}")
    return values  # type: ignore[return-value]



def main(argv: Sequence[str] | None = None) -> int:
    defaults = Recipe()
    parser = argparse.ArgumentParser(prog="python -m model.training.default", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "model" / "default", help="model folder to write")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cohort", type=Path, default=None,
                        help="cohort folder made by `ctvqa synth` (default .bench-tmp/default-cohort-seedS)")
    parser.add_argument("--patients", type=int, default=defaults.patients)
    parser.add_argument("--synth-size", type=_size, default=defaults.synth_size, help="phantom grid Z,Y,X")
    parser.add_argument("--stage1-steps", type=int, default=defaults.stage1_steps)
    parser.add_argument("--stage2-steps", type=int, default=defaults.stage2_steps)
    parser.add_argument("--stage1-minutes", type=float, default=defaults.stage1_minutes,
                        help="wall-clock cap on stage 1")
    parser.add_argument("--stage2-minutes", type=float, default=defaults.stage2_minutes,
                        help="wall-clock cap on stage 2; the best checkpoint so far is kept")
    parser.add_argument("--head-lr-scale", type=float, default=defaults.head_lr_scale,
                        help="learning-rate factor of the training-only label heads")
    parser.add_argument("--head-norm", action="store_true", help="batch-normalise the label head's input")
    parser.add_argument("--eval-limit", type=int, default=defaults.eval_limit, help="held-out questions per task")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    parser.add_argument("--reevaluate", action="store_true",
                        help="do not train: evaluate the model already in --out again and rewrite its card")
    args = parser.parse_args(argv)
    recipe = Recipe(seed=args.seed, patients=args.patients, synth_size=args.synth_size,
                    stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                    stage1_minutes=args.stage1_minutes, stage2_minutes=args.stage2_minutes,
                    head_lr_scale=args.head_lr_scale, head_norm=args.head_norm,
                    eval_limit=args.eval_limit)
    cohort = args.cohort or REPO / ".bench-tmp" / f"default-cohort-seed{args.seed}"
    if args.reevaluate:
        reevaluate(args.out, cohort)
        return 0
    run(args.out, cohort, recipe, evaluate=not args.no_eval)
    return 0
