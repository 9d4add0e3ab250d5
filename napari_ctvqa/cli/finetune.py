"""`ctvqa finetune`: curated QA pairs -> LoRA finetune -> evaluated, registered model version.

A thin shell over `annotation.training_set.run_finetune`. The napari FinetuneWidget runs this
very command in a child process with `--progress-json` (one JSON object per line: progress, log,
result), so the panel trains exactly as the CLI does and napari's interpreter never trains.
Ctrl-C (or the run folder's STOP file) stops at the next step with a checkpoint; `--resume --out
DIR` continues, with `--max-steps` as a new total if given.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from napari_ctvqa.cli._common import fail, progress_bar
from napari_ctvqa.cli._runtime import DeviceOption, DtypeOption, runtime_or_fail
from napari_ctvqa.cli.store import DbOption, JsonOption


def finetune_cmd(
    out: Annotated[Path, typer.Option(help="Run folder: data, checkpoint, adapter, evaluation (new or empty, "
                                           "or the folder of a run to --resume).")],
    base: Annotated[str | None, typer.Option(help="Base model: a registered version name, a model or adapter "
                                                  "folder, or a published M3D-LaMed folder (default: the "
                                                  "embedded model).")] = None,
    from_db: Annotated[bool, typer.Option("--from-db", help="Train on the curated pairs of the database "
                                                           "(the default when --data is not given).")] = False,
    data: Annotated[Path | None, typer.Option(help="Train on an exported folder instead (jsonl, or 3drad "
                                                   "with train/ and valid/).")] = None,
    volumes: Annotated[Path | None, typer.Option(help="With --data: where to find images by file name.")] = None,
    db: DbOption = None,
    min_mean: Annotated[float, typer.Option(help="Filter: keep pairs whose mean score is at least this.")] = 3.0,
    min_dim: Annotated[float, typer.Option(help="Filter: ... and whose every dimension is at least this.")] = 3.0,
    require_consistent: Annotated[bool, typer.Option(help="Filter: ... and judged consistent.")] = False,
    cap_per_question: Annotated[int, typer.Option(help="Filter: at most this many identical open question-answer "
                                                       "pairs per subtask (0: no cap).")] = 10,
    include_unrated: Annotated[bool, typer.Option("--include-unrated", help="Filter: also train on unrated "
                                                                            "pairs imported as curated.")] = False,
    split: Annotated[str, typer.Option(help="patient: hold out --val-frac of the pairs by patient; keep: the "
                                            "cohort's own train/valid split (by patient where a scan has "
                                            "none).")] = "patient",
    tasks: Annotated[str | None, typer.Option(help="Comma-separated task keys to train on (default: all).")] = None,
    val_frac: Annotated[float, typer.Option(help="Share of patients held out for evaluation.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the patient split and of training.")] = 0,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    train_modules: Annotated[str, typer.Option(help="lm: LoRA on the language model only (fastest); "
                                                    "lm+projector: also train the projector; all: also a LoRA "
                                                    "on the vision tower (for findings the base never read).")] = "lm",
    epochs: Annotated[int, typer.Option(help="Passes over the training set.")] = 3,
    lr: Annotated[float, typer.Option(help="Peak learning rate (3% warm-up, cosine decay).")] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="QA pairs per step and process.")] = 4,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps (overrides --epochs; with "
                                                       "--resume: the run's new total).")] = None,
    save_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    processes: Annotated[int, typer.Option(help="Data-parallel processes (torchrun; gloo on CPU).")] = 1,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint "
                                              "(its own settings are used).")] = False,
    merge: Annotated[bool, typer.Option(help="Also write base + adapter as one standalone model folder "
                                             "and register that.")] = False,
    name: Annotated[str | None, typer.Option(help="Name of the new model version "
                                                  "(default: ft-BASE-TIME-rRUN).")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="At most this many held-out questions per task.")] = None,
    allow_regression: Annotated[bool, typer.Option(
        "--allow-regression", help="Register the new version even when a held-out task fell by more than its "
                                   "standard error (otherwise it is only kept in --out).")] = False,
    progress_json: Annotated[bool, typer.Option("--progress-json", hidden=True,
                                                help="One JSON object per line (for the napari panel).")] = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    as_json: JsonOption = False,
) -> None:
    """LoRA-finetune a model on the curated QA pairs, evaluate it against its base on held-out
    patients and register it as a new model version (it then appears in the chat panel)."""
    from annotation.curation import FilterRule
    from annotation.heldout import describe
    from annotation.store import Store
    from annotation.training_set import run_finetune
    from model.training.finetune.config import FinetuneConfig, FinetuneError

    if from_db and data is not None:
        fail("choose one source: --from-db or --data DIR")
    runtime = runtime_or_fail(device, dtype)
    if resume and db is None:  # the run's own database, unless told otherwise
        from annotation.training_set import read_run_record

        try:
            db = read_run_record(out.expanduser().resolve())["database"]
        except FinetuneError as exc:
            fail(str(exc))
    try:
        store = Store.create(db)
    except Exception as exc:  # noqa: BLE001 (any connection/migration failure is one clear line)
        fail(f"cannot open database {db or '(default)'}: {exc}")
    emit = _json_lines if progress_json else None
    if progress_json and hasattr(os, "nice"):
        os.nice(5)  # the panel's run: on a busy machine the viewer's GUI thread goes first
    try:
        config = FinetuneConfig(lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lr=lr,
                                epochs=epochs, batch_size=batch_size, seed=seed, save_every=save_every,
                                train_modules=train_modules)
        rule = FilterRule(min_mean, min_dim, require_consistent, cap_per_question or None, include_unrated)
        with progress_bar("finetune") if emit is None else nullcontext(None) as update:
            def on_progress(p: Any) -> None:  # noqa: ANN401
                if emit is None:
                    update(p.step, p.total_steps)
                else:
                    emit({"event": "progress", **asdict(p), "eta_s": p.eta_s})

            def on_log(text: str) -> None:
                if emit is None:
                    typer.echo(text, err=True)
                else:
                    emit({"event": "log", "text": text})

            outcome = run_finetune(
                store, out, base=base, rule=rule, tasks=tasks.split(",") if tasks else None, data_dir=data,
                volumes_dir=volumes, config=config, val_frac=val_frac, split_seed=seed, resume=resume,
                merge=merge, name=name, processes=processes, eval_limit=eval_limit, progress=on_progress,
                handle_sigint=True, log=on_log, split=split, allow_regression=allow_regression,
                max_steps=max_steps, device=runtime.device, dtype=runtime.dtype)
    except (FinetuneError, ValueError, KeyError, FileNotFoundError) as exc:
        fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training (evaluation, loading)
        fail(f"interrupted; continue with: ctvqa finetune --out {out} --resume", code=130)
    finally:
        store.close()
    summary = outcome_summary(outcome)
    if emit is not None:
        emit({"event": "result", **summary})
    elif as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    elif outcome.status == "done":
        where = f"model version {outcome.version}" if outcome.version else "not registered: model"
        typer.echo(f"{where} at {outcome.model_path} (loss {summary['first_loss']:.3f} -> "
                   f"{summary['final_loss']:.3f} in {outcome.train.step} steps)")
        for row in summary["comparison"]:
            typer.echo(f"  {describe(row)}" + ("  <- worse by more than its standard error" if row["regression"] else ""))
    if outcome.status != "done":
        typer.echo(f"cancelled at step {outcome.train.step}/{outcome.train.total_steps}; "
                   f"continue with: ctvqa finetune --out {out} --resume", err=True)
        raise typer.Exit(130)


def outcome_summary(outcome: Any) -> dict[str, Any]:  # noqa: ANN401
    """What `--json` prints and the panel reads: the run, its losses and the held-out comparison
    (primary metric per task with n, difference and standard error)."""
    metrics = outcome.metrics or {}
    return {"run_id": outcome.run_id, "status": outcome.status, "version": outcome.version,
            "model_path": outcome.model_path, "steps": outcome.train.step,
            "total_steps": outcome.train.total_steps,
            "first_loss": outcome.train.losses[0] if outcome.train.losses else None,
            "final_loss": outcome.train.losses[-1] if outcome.train.losses else None,
            "delta": metrics.get("delta"), "comparison": metrics.get("comparison", []),
            "heldout": metrics.get("heldout"), "warnings": outcome.warnings}


def _json_lines(event: dict[str, Any]) -> None:
    typer.echo(json.dumps(event, default=str))


def register(app: typer.Typer) -> None:
    """Add `ctvqa finetune` to the app."""
    app.command("finetune")(finetune_cmd)
