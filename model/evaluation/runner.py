"""Answer an evaluation's questions volume by volume, batched, resumably and sharded.

The unit of work is one volume under one run: "normal" (its own scan), and for robustness
(OmniCT's stress tests) "wrong_volume" (another patient's scan: the next volume of the seeded
order that belongs to someone else) and "noise_volume" (one seeded uniform-noise input). Each
volume is read and encoded once per process; its questions are answered in batches
(`model.inference.batched`), or one at a time through `VLM.answer` with `batch_size=1` (the
chat's path, the reference the batched figures are checked against).
"""
from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.ct.io import read_ct
from model.ct.metadata import row_for
from model.ct.modality import NotCTError
from model.ct.volume import CTReadError
from model.evaluation.answers import AnswerLog, Done
from model.evaluation.sharding import Shard, split
from model.inference.batched import Question, answer_batch
from model.inference.vlm import VLM, Answer, PreparedImage

NORMAL = "normal"
ROBUSTNESS_RUNS = ("wrong_volume", "noise_volume")
_KEPT_IMAGES = 3  # this volume, its partner (next in order, usually the next unit) and one spare
_PATIENT = re.compile(r"^(?P<patient>[A-Za-z]+_[^_]+)_[a-z]+_\d+")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Job:
    """One question to ask: `key` names it in the answers folder (task/subtask:line, boxes:line)."""

    key: str
    volume: str
    question: str
    choices: tuple[str, ...] | None = None


def patient_of(volume: str) -> str:
    """The patient of a CT-RATE volume name (`train_12_a_1.nii.gz` -> `train_12`), else the name."""
    match = _PATIENT.match(volume)
    return match["patient"] if match else volume


def volume_order(volumes: Sequence[str], seed: int) -> list[str]:
    """The seeded order volumes are worked through and paired in (the same in every process)."""
    order = sorted(volumes)
    random.Random(seed).shuffle(order)
    return order


def partners(order: Sequence[str], volume: str) -> list[str]:
    """Candidate "wrong" scans for `volume`: the volumes after it in the cycle, other patients first."""
    k = order.index(volume)
    cycle = [*order[k + 1:], *order[:k]]
    patient = patient_of(volume)
    return [v for v in cycle if patient_of(v) != patient] + [v for v in cycle if patient_of(v) == patient]


class _Images:
    """Prepared (read, preprocessed, encoded) volumes by name, the last few kept; the next
    volume's file is read on a thread while the current one is answered.

    Why read ahead: decompressing a NIfTI file is a fixed cost per volume, as large as answering
    all of its questions in batches on a small model, and it leaves the model's threads idle;
    file readers mostly run outside the GIL."""

    def __init__(self, vlm: VLM, paths: dict[str, Path],
                 metadata: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.vlm, self.paths, self.metadata = vlm, paths, metadata
        self.kept: OrderedDict[str, PreparedImage | str] = OrderedDict()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctvqa-read-ahead")
        self._ahead: dict[str, Future] = {}

    def read_ahead(self, name: str) -> None:
        """Start reading `name`'s file unless it is kept or being read."""
        if name not in self.kept and name not in self._ahead:
            self._ahead[name] = self._reader.submit(read_ct, self.paths[name], metadata=row_for(self.metadata, name))

    def get(self, name: str) -> PreparedImage | str:
        """The prepared volume, or the reason it cannot be read."""
        if name not in self.kept:
            self.read_ahead(name)
            try:
                self.kept[name] = self.vlm.prepare(self._ahead.pop(name).result())
            except (CTReadError, NotCTError) as exc:
                self.kept[name] = str(exc)
            while len(self.kept) > _KEPT_IMAGES:
                self.kept.popitem(last=False)
        self.kept.move_to_end(name)
        return self.kept[name]

    def close(self) -> None:
        for future in self._ahead.values():
            future.cancel()
        self._reader.shutdown(wait=True)


def _ask(vlm: VLM, image: PreparedImage, jobs: Sequence[Job], max_new_tokens: int, batch_size: int) -> list[Answer]:
    if batch_size == 1:
        return [vlm.answer(image, j.question, choices=j.choices, max_new_tokens=max_new_tokens) for j in jobs]
    return answer_batch(vlm, image, [Question(j.question, j.choices) for j in jobs], max_new_tokens, batch_size)


def _entry(job: Job, answer: Answer) -> dict[str, Any]:
    return {"key": job.key, "question": job.question, "text": answer.text, "choice": answer.choice,
            "scores": answer.choice_scores, "box": list(answer.box) if answer.box is not None else None}


def answer_jobs(vlm: VLM, jobs: dict[str, list[Job]], paths: dict[str, Path], runs: Sequence[str], log: AnswerLog,
                done: Done, shard: Shard, *, seed: int, max_new_tokens: int, batch_size: int,
                progress: Progress | None = None,
                metadata: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Answer every question of each (volume, run) unit not yet in `done` that falls to this process,
    writing each unit to `log`. A resumed run with more questions (a larger --limit, more tasks)
    answers the new questions of volumes finished before, not only the volumes not yet begun."""
    order = volume_order(jobs, seed)
    todo: dict[str, dict[str, list[Job]]] = {}
    for v in order:
        if v in done.unreadable:
            continue
        missing = {r: [j for j in jobs[v] if (j.key, r) not in done.answers] for r in runs}
        missing = {r: js for r, js in missing.items() if js}
        if missing:
            todo[v] = missing
    pending = list(todo)
    sizes = [sum(len(js) for js in todo[v].values()) for v in pending]
    mine = [pending[k] for k in split(sizes, shard.world)[shard.rank]]
    total = sum(len(js) for v in mine for js in todo[v].values())
    if progress:
        progress(0, total)
    images = _Images(vlm, paths, metadata)
    try:
        _answer_volumes(vlm, mine, todo, order, images, log, seed=seed, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress, total=total)
    finally:
        images.close()


def _answer_volumes(vlm: VLM, mine: list[str], todo: dict[str, dict[str, list[Job]]], order: list[str],
                    images: _Images, log: AnswerLog, *, seed: int, max_new_tokens: int, batch_size: int,
                    progress: Progress | None, total: int) -> None:
    finished = 0
    noise: PreparedImage | None = None
    for k, volume in enumerate(mine):
        images.read_ahead(volume)
        if k + 1 < len(mine):  # read while this one is preprocessed, encoded and answered
            images.read_ahead(mine[k + 1])
        image = images.get(volume)
        if isinstance(image, str):
            log.write_unreadable(volume, image)
            finished += sum(len(js) for js in todo[volume].values())
            if progress:
                progress(finished, total)
            continue
        for run, run_jobs in todo[volume].items():
            shown: PreparedImage | str | None = image
            if run == "noise_volume":
                if noise is None:
                    generator = torch.Generator().manual_seed(seed)
                    noise = vlm.prepare(torch.rand((1, *vlm.image_size), generator=generator))
                shown = noise
            elif run == "wrong_volume":
                readable = (images.get(v) for v in partners(order, volume))
                shown = next((p for p in readable if not isinstance(p, str)), None)
            answers = [] if shown is None else _ask(vlm, shown, run_jobs, max_new_tokens, batch_size)
            log.write_unit(volume, run, [_entry(j, a) for j, a in zip(run_jobs, answers)])
            finished += len(run_jobs)
            if progress:
                progress(finished, total)
