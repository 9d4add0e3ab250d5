"""From curated ratings to a new model version: the training set, the finetune run, its record.

`ctvqa finetune` and the napari FinetuneWidget both call `run_finetune`, which
1. builds the training set: the QA pairs that pass the curation filter (`Store.export` as jsonl,
   so the patient-level split and the exports table are the curator's own), or an exported folder;
   the held-out (validation) patients are also written as a 3D-RAD folder for `evaluate_vlm`;
2. records a `finetune_runs` row and trains (`model.training.finetune.train`, in this process or under
   `torchrun` for several processes), checkpointing so a cancelled run can be resumed;
3. evaluates the base and the new model on the held-out split and registers the new model
   version with its provenance (base, QA pair ids, filter, hyper-parameters, metrics, times), so
   it shows up in the chat panel's model picker, unless a held-out task fell by more than its
   standard error (annotation/heldout.py): then the run says so and registers nothing unless told
   to (`allow_regression`, `--allow-regression`, also on a `--resume` of the finished run).

Everything a resume needs is in `OUT/ctvqa_finetune.json`, so `--resume` takes only the folder.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotation.curation import FilterRule
from annotation.heldout import comparisons, describe, metric_deltas
from annotation.qa_templates import CSV_COLUMNS, TASKS, QARow
from model.ct.metadata import TABLE_FILE, table_beside, write_metadata_table
from model.data.json_files import read_json_file
from model.evaluation.evaluate import evaluate_vlm
from model.inference.loading import load_vlm
from model.training.finetune.adapters import merge_adapter
from model.training.finetune.config import (
    ADAPTER_DIR,
    LOSSES_FILE,
    RUN_FILE,
    FinetuneConfig,
    FinetuneError,
    Sample,
    TrainProgress,
    TrainResult,
    stop_file,
)
from model.training.finetune.loop import train
from model.training.finetune.samples import read_samples

if TYPE_CHECKING:
    from annotation.store import Store

RECORD_FILE = "ctvqa_finetune.json"
DATA_DIR = "data"
HELDOUT_DIR = "heldout"
MERGED_DIR = "merged"
DEFAULT_VERSION = "default"

Log = Callable[[str], None]


@dataclass
class TrainingSet:
    """Where a run's data lies: `data_dir` holds train.jsonl / valid.jsonl, `heldout_qa` the
    validation split in 3D-RAD layout (None when it is empty) with its images under `volumes_dir`."""
    data_dir: Path
    heldout_qa: Path | None
    volumes_dir: Path
    train_qa_ids: list[int]
    heldout_qa_ids: list[int]
    n_train: int
    n_heldout: int
    per_task: dict[str, int]


@dataclass
class FinetuneOutcome:
    run_id: int
    status: str  # done | cancelled
    version: str | None  # None when cancelled, or held back by a regression
    model_path: str | None
    train: TrainResult
    metrics: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)


# ----- training set -------------------------------------------------------------------------------
def build_training_set(store: Store, out_dir: str | Path, rule: FilterRule | None = None, val_frac: float = 0.1,
                       seed: int = 0, tasks: Iterable[str] | None = None,
                       progress: Callable[[int, int | None], None] | None = None,
                       split: str = "patient") -> TrainingSet:
    """The curated pairs of the store (export filter; held-out patients by `val_frac`, or with
    `split="keep"` the cohort's own valid split), optionally only some tasks. Pairs of a cohort's
    `test` split are never trained on."""
    export_dir = Path(out_dir) / "export"
    manifest = store.export("jsonl", export_dir, rule, val_frac=val_frac, seed=seed, progress=progress, split=split)
    if not manifest["splits"]["train"]["rows"]:
        others = ", ".join(f"{n} in {k!r}" for k, v in manifest["splits"].items() if (n := v["rows"]))
        raise FinetuneError(f"no training QA pairs: the cohort's own split puts {others}; "
                            "split by patient instead (--split patient)")
    training_set = training_set_from_folder(export_dir, out_dir, tasks=tasks)
    calibration = {Path(scan.path).name: scan.ct_metadata for scan in store.scans() if scan.path and scan.ct_metadata}
    if calibration:  # the scans' CT-RATE rows travel with the data to the training processes
        write_metadata_table(training_set.data_dir / TABLE_FILE, calibration)
    return training_set


def training_set_from_folder(data_dir: str | Path, out_dir: str | Path, volumes_dir: str | Path | None = None,
                             tasks: Iterable[str] | None = None) -> TrainingSet:
    """The training set of an exported folder (jsonl, or 3D-RAD layout with train/ and valid/)."""
    train_samples = read_samples(data_dir, "train", volumes_dir)
    heldout = read_samples(data_dir, "valid", volumes_dir)
    if tasks is not None:
        wanted = _check_tasks(tasks)
        train_samples = [s for s in train_samples if s.task in wanted]
        heldout = [s for s in heldout if s.task in wanted]
    if not train_samples:
        raise FinetuneError(f"{data_dir}: no training QA pairs" + (f" for tasks {sorted(wanted)}" if tasks else "")
                            + " (rate more pairs or loosen the filter)")
    out_dir = Path(out_dir)
    target = out_dir / DATA_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name, samples in (("train", train_samples), ("valid", heldout)):
        with (target / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(_sample_record(s), ensure_ascii=False) + "\n" for s in samples)
    volumes_out = out_dir / HELDOUT_DIR / "volumes"
    heldout_qa = write_eval_folder(heldout, out_dir / HELDOUT_DIR / "qa", volumes_out)
    per_task: dict[str, int] = {}
    for s in train_samples:
        per_task[s.task] = per_task.get(s.task, 0) + 1
    return TrainingSet(target, heldout_qa, volumes_out, _ids(train_samples), _ids(heldout),
                       len(train_samples), len(heldout), per_task)


def _check_tasks(tasks: Iterable[str]) -> set[str]:
    wanted = {t.strip() for t in tasks if t and t.strip()}
    unknown = sorted(t for t in wanted if t not in TASKS and t != "chat")
    if unknown:
        raise FinetuneError(f"unknown task(s) {unknown}; expected some of {sorted(TASKS)} or 'chat'")
    return wanted


def _ids(samples: list[Sample]) -> list[int]:
    return sorted({s.qa_id for s in samples if s.qa_id is not None})


def _sample_record(s: Sample) -> dict[str, Any]:
    return {"qa_id": s.qa_id, "image": s.image, "volume_name": Path(s.image).name, "task": s.task,
            "question": s.question, "choices": list(s.choices) if s.choices else None, "answer": s.answer,
            "answer_choice": s.answer_choice}


def write_eval_folder(samples: list[Sample], qa_dir: Path, volumes_dir: Path) -> Path | None:
    """QA pairs of the six 3D-RAD tasks as an evaluation folder for `evaluate_vlm` (one CSV per
    task folder) with a folder of links named after each image, so it finds them by VolumeName.
    Returns the QA folder, or None when no pair belongs to those tasks."""
    rows: dict[str, list[QARow]] = {}
    volumes_dir.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for s in samples:
        if s.task not in TASKS:
            continue  # e.g. chat pairs: trained on, but evaluate_vlm scores 3D-RAD tasks only
        if s.image not in names:
            name = Path(s.image).name
            if name in names.values():  # two files of the same name in different folders
                name = f"{len(names)}_{name}"
            link = volumes_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()  # left by an earlier build of this folder
            link.symlink_to(Path(s.image).resolve())
            names[s.image] = name
        closed = bool(s.choices)
        choices = tuple((list(s.choices) + ["-"] * 4)[:4]) if closed else ("-",) * 4
        rows.setdefault(s.task, []).append(QARow(
            TASKS[s.task].number, 0, names[s.image], s.question, s.answer, "Close" if closed else "Open",
            (s.answer_choice or "-") if closed else "-", choices))
    if not rows:
        return None
    for task, group in rows.items():
        folder = qa_dir / TASKS[task].folder
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "heldout.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(r.to_csv_dict() for r in group)
    return qa_dir


# ----- base model ---------------------------------------------------------------------------------
def resolve_base(store: Store, base: str | None) -> tuple[str, str | None]:
    """(version name, model folder) of the base: None = the embedded default, a registered version
    name, or a model/adapter folder (registered as an "external" version on first use)."""
    if base is None or base == DEFAULT_VERSION:
        if store.model_version(DEFAULT_VERSION) is None:
            store.register_model_version(DEFAULT_VERSION, None, kind="default",
                                         provenance={"source": "embedded model shipped in model/default"})
        return DEFAULT_VERSION, None
    known = store.model_version(base)
    if known is not None:
        return known.name, known.path
    folder = Path(base).expanduser()
    if not folder.is_dir():
        raise FinetuneError(f"base {base!r} is neither a registered model version nor a model folder")
    path = str(folder.resolve())
    for version in store.model_versions():
        if version.path == path:
            return version.name, path
    name = folder.name
    suffix = 1
    while store.model_version(name) is not None:
        suffix += 1
        name = f"{folder.name}-{suffix}"
    store.register_model_version(name, path, kind="external", provenance={"source": path})
    return name, path


# ----- the run ------------------------------------------------------------------------------------
def run_finetune(store: Store, out_dir: str | Path, *, base: str | None = None, rule: FilterRule | None = None,
                 tasks: Iterable[str] | None = None, data_dir: str | Path | None = None,
                 volumes_dir: str | Path | None = None, config: FinetuneConfig | None = None,
                 val_frac: float = 0.1, split_seed: int = 0, resume: bool = False, merge: bool = False,
                 name: str | None = None, processes: int = 1, eval_limit: int | None = None,
                 progress: Callable[[TrainProgress], None] | None = None, stop: threading.Event | None = None,
                 handle_sigint: bool = False, log: Log | None = None, split: str = "patient",
                 allow_regression: bool = False, max_steps: int | None = None, device: str | None = None,
                 dtype: str | None = None) -> FinetuneOutcome:
    """Train, evaluate, register: the whole loop of one finetune run (see the module docstring).

    `data_dir` trains on an exported folder instead of the store's curated pairs. A cancelled run
    (`stop` set, or Ctrl-C with `handle_sigint`) returns status "cancelled" with a checkpoint;
    `resume=True` on the same `out_dir` continues it with the settings it started with, except
    `max_steps`, which sets a new total (refused below the step already reached).
    `device`/`dtype` (`model.inference.devices`; env, else auto) are where training and the
    evaluation run; they are not part of the run's identity, so a resume may choose others."""
    say = log or (lambda text: None)
    out_dir = Path(out_dir).expanduser().resolve()
    if resume:
        record = read_run_record(out_dir)
    else:
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FinetuneError(f"{out_dir}: folder is not empty; pass --resume to continue the run in it "
                                "or choose a new --out")
        try:
            config = config or FinetuneConfig()
            if max_steps is not None:
                config = FinetuneConfig.from_dict({**asdict(config), "max_steps": max_steps})
            record = _start(store, out_dir, base, rule, tasks, data_dir, volumes_dir, config,
                            val_frac, split_seed, merge, name, say, split)
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)  # it was empty: a retry with the same --out works
            raise
    run_id = record["run_id"]
    store.update_finetune_run(run_id, status="running")
    try:
        say(f"training on {record['training_set']['n_train']} QA pairs from {record['base_name']}")
        runtime = {"device": device, "dtype": dtype}
        result = _train(record, out_dir, resume, processes, progress, stop, handle_sigint, runtime, max_steps)
        if resume and max_steps is not None:  # accepted by the training: the run's total from now on
            record["config"]["max_steps"] = max_steps
            (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        if result.status != "done":
            store.update_finetune_run(run_id, status="cancelled",
                                      metrics={"step": result.step, "total_steps": result.total_steps})
            say(f"cancelled at step {result.step}/{result.total_steps}; resume with --resume --out {out_dir}")
            return FinetuneOutcome(run_id, "cancelled", None, None, result, None)
        model_path = out_dir / ADAPTER_DIR
        if record["merge"]:
            say("merging the adapter into a standalone model folder")
            model_path = merge_adapter(model_path, out_dir / MERGED_DIR)
        metrics = _evaluate(record, model_path, eval_limit, say, runtime)
        metrics["training"] = {"steps": result.step, "first_loss": result.losses[0] if result.losses else None,
                               "final_loss": result.losses[-1] if result.losses else None,
                               "seconds": result.seconds, "samples_per_s": result.samples_per_s,
                               "world_size": result.world_size}
        warnings = [f"held-out {describe(r)}: a drop larger than its standard error"
                    for r in metrics.get("comparison", []) if r["regression"]]
        for warning in warnings:
            say(f"warning: {warning}")
        if warnings and not allow_regression:
            metrics["not_registered"] = warnings
            store.update_finetune_run(run_id, status="done", metrics=metrics, model_version=None)
            say(f"not registered: the new model is worse on {len(warnings)} held-out task(s); it stays in "
                f"{model_path} (load it with --model {out_dir}); register it anyway with "
                f"`ctvqa finetune --out {out_dir} --resume --allow-regression`")
            return FinetuneOutcome(run_id, "done", None, str(model_path), result, metrics, warnings)
        version = _register(store, record, model_path, {**metrics, "warnings": warnings})
        store.update_finetune_run(run_id, status="done", metrics=metrics, model_version=version)
        say(f"registered model version {version!r} ({model_path})")
        return FinetuneOutcome(run_id, "done", version, str(model_path), result, metrics, warnings)
    except BaseException as exc:
        store.update_finetune_run(run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise


def _start(store: Store, out_dir: Path, base: str | None, rule: FilterRule | None, tasks: Iterable[str] | None,
           data_dir: str | Path | None, volumes_dir: str | Path | None, config: FinetuneConfig,
           val_frac: float, split_seed: int, merge: bool, name: str | None, say: Log,
           split: str = "patient") -> dict[str, Any]:
    base_name, base_path = resolve_base(store, base)
    if name is not None and store.model_version(name) is not None:
        raise FinetuneError(f"a model version named {name!r} already exists; choose another --name")
    tasks = sorted(_check_tasks(tasks)) if tasks else None
    if data_dir is None:
        rule = rule or FilterRule()
        say(f"building the training set: {rule.describe()['text']}")
        training = build_training_set(store, out_dir, rule, val_frac, split_seed, tasks, split=split)
        source: dict[str, Any] = {"database": repr(store), "filter": rule.describe(), "val_frac": val_frac,
                                  "split_seed": split_seed, "split": split}
    else:
        training = training_set_from_folder(data_dir, out_dir, volumes_dir, tasks)
        source = {"folder": str(Path(data_dir).resolve())}
    run_id = store.add_finetune_run(config=asdict(config), qa_ids=training.train_qa_ids,
                                    filter=source.get("filter"), base=base_name, output_path=out_dir)
    record = {
        "run_id": run_id, "database": store.url, "base_name": base_name, "base_path": base_path,
        "source": source, "tasks": tasks, "config": asdict(config), "merge": merge,
        "name": name or f"ft-{base_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-r{run_id}",
        "training_set": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(training).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def read_run_record(out_dir: Path) -> dict[str, Any]:
    return read_json_file(out_dir / RECORD_FILE, FinetuneError,
                          f"{out_dir}: nothing to resume (no {RECORD_FILE}); start a new run without --resume")


def _train(record: dict[str, Any], out_dir: Path, resume: bool, processes: int,
           progress: Callable[[TrainProgress], None] | None, stop: threading.Event | None,
           handle_sigint: bool, runtime: dict[str, str | None], max_steps: int | None = None) -> TrainResult:
    """Train in this process (`processes` 1), or under torchrun with that many workers."""
    data_dir = record["training_set"]["data_dir"]
    config = FinetuneConfig.from_dict({**record["config"], **({} if max_steps is None else {"max_steps": max_steps})})
    resume = resume and (out_dir / RUN_FILE).is_file()  # stopped before training began: start it
    if processes <= 1:
        return train(record["base_path"], data_dir, out_dir, config, resume=resume, progress=progress,
                     stop=stop, handle_sigint=handle_sigint, max_steps=max_steps if resume else None, **runtime)
    return train_in_processes(record["base_path"], data_dir, out_dir, config, processes, resume=resume,
                              progress=progress, stop=stop, **runtime)


def train_in_processes(base: str | None, data_dir: str | Path, out_dir: Path, config: FinetuneConfig,
                       processes: int, *, resume: bool = False,
                       progress: Callable[[TrainProgress], None] | None = None,
                       stop: threading.Event | None = None, device: str | None = None,
                       dtype: str | None = None) -> TrainResult:
    """`model.training.finetune` under torchrun with `processes` workers (gloo on CPU), reading its JSON
    progress lines. Cancelling writes the run's stop file: every worker sees it at the next step,
    checkpoints and exits (a signal could kill a worker mid-checkpoint)."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "model.training.finetune", "--out", str(out_dir), "--data", str(data_dir), "--progress-json"]
    if base is not None:
        args += ["--base", str(base)]
    if resume:
        args.append("--resume")
    for flag, value in (("--device", device), ("--dtype", dtype)):
        if value is not None:
            args += [flag, value]
    for key, value in asdict(config).items():
        if key != "target_modules" and value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    if stop is not None:
        def watch() -> None:
            while proc.poll() is None:
                if stop.wait(0.2):
                    stop_file(out_dir).touch()
                    return

        threading.Thread(target=watch, name="ctvqa-finetune-stop", daemon=True).start()
    result: dict[str, Any] | None = None
    tail: list[str] = []

    def read_output() -> None:
        nonlocal result, tail
        assert proc.stdout is not None
        for line in proc.stdout:
            event = _event(line)
            if event is None:
                tail = (tail + [line.rstrip()])[-20:]
            elif event["event"] == "progress" and progress is not None:
                progress(TrainProgress(**{k: event[k] for k in ("step", "total_steps", "epoch", "loss",
                                                                 "elapsed_s", "samples_per_s")},
                                       start_step=int(event.get("start_step", 0))))
            elif event["event"] == "result":
                result = event

    try:
        read_output()
    except KeyboardInterrupt:  # Ctrl-C: the workers checkpoint and report a cancelled run
        stop_file(out_dir).touch()
        read_output()
    finally:
        proc.wait()
    if result is None:
        raise FinetuneError(f"training under torchrun failed (exit {proc.returncode}):\n" + "\n".join(tail))
    losses_path = out_dir / LOSSES_FILE
    losses = json.loads(losses_path.read_text()) if losses_path.is_file() else []
    known = {k: result[k] for k in ("status", "step", "total_steps", "adapter_dir", "seconds", "samples_per_s",
                                    "world_size", "peak_memory_mb")}
    return TrainResult(**known, losses=losses or result["first_loss"] + result["last_loss"])


def _event(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _evaluate(record: dict[str, Any], model_path: Path, limit: int | None, say: Log,
              runtime: dict[str, str | None]) -> dict[str, Any]:
    """Both models on the held-out split with the `ctvqa evaluate` metrics (and the difference)."""
    qa = record["training_set"]["heldout_qa"]
    if qa is None:
        say("no held-out QA pairs of the six 3D-RAD tasks: evaluation skipped (raise --val-frac)")
        return {"heldout": None}
    volumes = record["training_set"]["volumes_dir"]
    reports = {}
    for key, path in (("base", record["base_path"]), ("finetuned", str(model_path))):
        say(f"evaluating the {key} model on the held-out split")
        reports[key] = evaluate_vlm(load_vlm(path, **runtime), qa, volumes, limit=limit, model_name=key,
                                    metadata=table_beside(record["training_set"]["data_dir"]))
    return {"heldout": {"n": reports["finetuned"]["n"]}, **reports,
            "delta": metric_deltas(reports["base"], reports["finetuned"]),
            "comparison": comparisons(reports["base"], reports["finetuned"])}


def _register(store: Store, record: dict[str, Any], model_path: Path, metrics: dict[str, Any]) -> str:
    training = record["training_set"]
    provenance = {
        "base": record["base_name"], "base_path": record["base_path"], "run_id": record["run_id"],
        "train_qa_ids": training["train_qa_ids"], "heldout_qa_ids": training["heldout_qa_ids"],
        "source": record["source"], "tasks": record["tasks"], "hyperparameters": record["config"],
        "per_task": training["per_task"], "started": record["started"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "merged": record["merge"],
    }
    store.register_model_version(record["name"], model_path, kind="finetuned", base=record["base_name"],
                                 provenance=provenance, metrics=metrics)
    return record["name"]
