"""`python -m model.training.default`: train, save, evaluate and describe the default model, or
re-evaluate a saved one.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from model.inference.loading import write_settings
from model.nets.tokenizer import build_tokenizer
from model.training.default.card import model_card
from model.training.default.checkpoint import Checkpoints
from model.training.default.data import (
    build_dataset,
    check_cohort,
    join_datasets,
    synth_command,
    without_finding,
)
from model.training.default.evaluation import acceptance, evaluate_default
from model.training.default.recipe import (
    HELDOUT_VALID_FRAC,
    RAD_TEST_DIR,
    REPO,
    Recipe,
    cohort_folder,
    recipe_from_record,
)
from model.training.default.stage2 import train
from model.training.default.steps import build_model
from model.training.default.tower import stage1_from_model


def save_model(model: Any, tokenizer: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_settings(out, prompt_style="m3d", window=None, name="ctvqa-default",
                   description="Small LaMed trained on synthetic phantoms only; never use on a real patient.")



def run(out: Path, cohort_root: Path, recipe: Recipe, evaluate: bool = True, work: Path | None = None,
        tower_from: Path | None = None) -> dict[str, Any]:
    """The whole pipeline (cohorts, cache, tokenizer, two stages, save, held-out evaluation, card).
    `work`: where checkpoints go; a rerun with the same recipe resumes from them. `tower_from`: a
    saved default model whose tower stands in for stages 0-1 (tower.stage1_from_model)."""

    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    folders = [check_cohort(cohort_folder(cohort_root, c), c, recipe.valid_frac) for c in recipe.cohorts]
    tokenizer, tokenizer_info = build_tokenizer(folders[0], folders[0] / "tokenizer", recipe.vocab_size,
                                                RAD_TEST_DIR)
    print(f"[tokenizer] {tokenizer_info}", flush=True)
    train_data = join_datasets([build_dataset(f, "train", tokenizer, recipe) for f in folders])
    valid_data = join_datasets([build_dataset(f, "valid", tokenizer, recipe) for f in folders])
    if recipe.held_out_finding:
        if recipe.held_out_finding not in train_data.label_names:
            raise SystemExit(f"--held-out-finding {recipe.held_out_finding!r} is not one of the cohort's labels: "
                             f"{', '.join(train_data.label_names)}")
        train_data = without_finding(train_data, recipe.held_out_finding, tokenizer)
        valid_data = without_finding(valid_data, recipe.held_out_finding, tokenizer)
        print(f"[data] no question about {recipe.held_out_finding} is asked in training", flush=True)
    model = build_model(recipe, tokenizer, train_data.label_names)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] {n_params / 1e6:.2f} M parameters, {model.num_image_tokens} image tokens; "
          f"{len(train_data.names)} training / {len(valid_data.names)} validation volumes", flush=True)
    checkpoints = Checkpoints(work, recipe, recipe.checkpoint_every)
    if tower_from is not None:
        stage1_from_model(model, tower_from, checkpoints, train_data.label_names, recipe.head_norm)
    record = train(model, tokenizer, train_data, valid_data, recipe, checkpoints)
    record.update(image_tokens=model.num_image_tokens, machine=f"{platform.machine()} CPU, "
                  f"{torch.get_num_threads()} threads", recipe=asdict(recipe), tokenizer=tokenizer_info)
    if tower_from is not None:  # stages 0-1 of this record are that model's (the card says so)
        record["tower_from"] = str(tower_from)
    save_model(model, tokenizer, out)
    record.update(cohort={"train_volumes": len(train_data.names), "valid_volumes": len(valid_data.names)},
                  n_params=n_params)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return {"record": record, "report": evaluate_and_describe(out, cohort_root, recipe, record, evaluate)}



def evaluate_and_describe(out: Path, cohort_root: Path, recipe: Recipe, record: dict[str, Any],
                          evaluate: bool = True) -> dict[str, Any] | None:
    """Held-out evaluation (eval.json, one report per phantom size) and the model card of a saved
    model: the end of a training run, or `--reevaluate` after the evaluation changed."""
    report = None
    if evaluate:
        heldout = {"x".join(str(n) for n in c[1]): check_cohort(cohort_folder(cohort_root, c, heldout=True), c,
                                                               HELDOUT_VALID_FRAC) for c in recipe.heldout}
        report = evaluate_default(out, heldout, recipe.eval_limit)
        for figures in report["sizes"].values():
            figures["acceptance"] = acceptance(figures)
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: v["acceptance"] for k, v in report["sizes"].items()}, indent=2), flush=True)
    write_card(out, recipe, record, report)
    return report


def write_card(out: Path, recipe: Recipe, record: dict[str, Any], report: dict[str, Any] | None) -> None:
    card = model_card(recipe, record, report, record["n_params"], record["tokenizer"], record["cohort"])
    (out / "README.md").write_text(card)


def rewrite_card(out: Path) -> None:
    """The card again from the saved training.json and eval.json: the card's text changed (a new
    entry under what was tried), the figures did not, so nothing is evaluated again."""
    loaded = {}
    for name in ("training.json", "eval.json"):
        try:
            loaded[name] = json.loads((out / name).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{out / name}: cannot rewrite the card without it ({exc.__class__.__name__}: {exc})")
    record = loaded["training.json"]
    write_card(out, recipe_from_record(record["recipe"]), record, loaded["eval.json"])



def reevaluate(out: Path, cohort_root: Path) -> dict[str, Any] | None:
    """Evaluate the model in `out` again with the recipe its training.json records."""
    record = json.loads((out / "training.json").read_text())
    return evaluate_and_describe(out, cohort_root, recipe_from_record(record["recipe"]), record)



def main(argv: Sequence[str] | None = None) -> int:
    defaults = Recipe()
    parser = argparse.ArgumentParser(prog="python -m model.training.default", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "model" / "default", help="model folder to write")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cohorts", type=Path, default=REPO / ".bench-tmp" / "default-cohorts",
                        help="folder holding the cohorts made by `ctvqa synth` (train-ZxYxX-seedS, heldout-...)")
    parser.add_argument("--work", type=Path, default=REPO / ".bench-tmp" / "default-model-work",
                        help="checkpoint folder: the same command resumes from it after a stop")
    parser.add_argument("--fresh", action="store_true", help="discard the checkpoints in --work and start over")
    parser.add_argument("--stage1-steps", type=int, default=defaults.stage1_steps)
    parser.add_argument("--stage2-steps", type=int, default=defaults.stage2_steps)
    parser.add_argument("--stem-steps", type=int, default=defaults.stem_steps,
                        help="stage 0: steps of the stem's detectors on lesion-centred crops (0: none)")
    parser.add_argument("--stage1-minutes", type=float, default=defaults.stage1_minutes,
                        help="wall-clock cap on stage 1")
    parser.add_argument("--stage2-minutes", type=float, default=defaults.stage2_minutes,
                        help="wall-clock cap on stage 2; the best checkpoint so far is kept")
    parser.add_argument("--eval-limit", type=int, default=defaults.eval_limit, help="held-out questions per task")
    parser.add_argument("--held-out-finding", default=None,
                        help="train a variant that is never asked about this CT-RATE label (feedback demonstration)")
    parser.add_argument("--tower-from", type=Path, default=None,
                        help="take stages 0-1 (vision tower, readout head) from this saved default model folder; "
                             "implies --stage2-fresh")
    parser.add_argument("--stage2-fresh", action="store_true", default=defaults.stage2_fresh,
                        help="stage 2 starts the projector, readout embeddings and label head afresh from the seed: "
                             "the run --tower-from gives, in full")
    parser.add_argument("--finding-tokens", action=argparse.BooleanOptionalAction, default=defaults.finding_tokens,
                        help="one more image token per finding, its calibrated readout logit (tried: see the card)")
    parser.add_argument("--calibrated-readout", action=argparse.BooleanOptionalAction, default=defaults.calibrated_readout,
                        help="the readout's logits through per-finding scales fitted at stage 2's start (see the card)")
    parser.add_argument("--asked-readout", action=argparse.BooleanOptionalAction, default=defaults.asked_readout,
                        help="one more image token: the readout logit of the finding the question names (see the card)")
    parser.add_argument("--seen-readout", action=argparse.BooleanOptionalAction, default=defaults.seen_readout,
                        help="balanced existence questions also about what the readout's maximum sees (see the card)")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    parser.add_argument("--print-cohorts", action="store_true",
                        help="print the `ctvqa synth` commands of the recipe's cohorts and exit")
    parser.add_argument("--reevaluate", action="store_true",
                        help="do not train: evaluate the model already in --out again and rewrite its card")
    parser.add_argument("--card-only", action="store_true",
                        help="do not train or evaluate: rewrite the card of the model in --out from its "
                             "training.json and eval.json")
    args = parser.parse_args(argv)
    recipe = replace(defaults, seed=args.seed, stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                     stem_steps=args.stem_steps,
                     stage1_minutes=args.stage1_minutes, stage2_minutes=args.stage2_minutes,
                     eval_limit=args.eval_limit, held_out_finding=args.held_out_finding,
                     finding_tokens=args.finding_tokens, seen_readout=args.seen_readout,
                     calibrated_readout=args.calibrated_readout, asked_readout=args.asked_readout,
                     stage2_fresh=args.stage2_fresh or args.tower_from is not None)
    if args.print_cohorts:
        for cohort in recipe.cohorts:
            print(synth_command(cohort_folder(args.cohorts, cohort), cohort, recipe.valid_frac))
        for cohort in recipe.heldout:
            print(synth_command(cohort_folder(args.cohorts, cohort, heldout=True), cohort, HELDOUT_VALID_FRAC))
        return 0
    if args.reevaluate:
        reevaluate(args.out, args.cohorts)
        return 0
    if args.card_only:
        rewrite_card(args.out)
        return 0
    if args.fresh and args.work.is_dir():
        shutil.rmtree(args.work)
    run(args.out, args.cohorts, recipe, evaluate=not args.no_eval, work=args.work, tower_from=args.tower_from)
    return 0
