"""3D-RAD-layout QA folders and volume indexes: what training, evaluation and the tokenizer read.

The QA folder holds task folders (`Task4_Existence_Detection/*.csv`, ...); a task is known by its
folder NAME because 3D-RAD's folder numbers differ from the paper's. Each CSV file is one
subtask. Volumes are found by file name anywhere under the volumes folder (flat, or CT-RATE's
nested layout).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.data.csv_files import read_csv_records

# The contract's task keys, in the paper's order; the folder name "TaskN_Foo_Bar" maps to "foo_bar".
TASK_KEYS = (
    "anomaly_detection", "image_observation", "medical_computation",
    "existence_detection", "static_temporal_diagnosis", "longitudinal_temporal_diagnosis",
)
QA_COLUMNS = ("Task", "Subtask", "VolumeName", "Question", "Answer", "QuestionType", "AnswerChoice",
              "Choice A", "Choice B", "Choice C", "Choice D")
_TASK_FOLDER = re.compile(r"^Task\d+_(?P<name>\w+)$")
_LETTERS = "ABCD"


class QAFolderError(ValueError):
    """A QA folder or CSV that cannot be evaluated; the message names the file (and line)."""


@dataclass(frozen=True)
class QAItem:
    """One question of a 3D-RAD CSV row, with where it came from for error messages."""

    task: str
    subtask: str
    volume_name: str
    question: str
    answer: str
    answer_choice: str | None  # letter for closed questions, None for open ones
    choices: tuple[str, ...]
    source: str  # "path:line"

    @property
    def closed(self) -> bool:
        return self.answer_choice is not None


def task_key(folder_name: str) -> str | None:
    """The task key of a 3D-RAD task folder name, or None for folders that are not task folders."""
    match = _TASK_FOLDER.match(folder_name)
    if not match:
        return None
    key = match.group("name").lower()
    return key if key in TASK_KEYS else None


def _check_tasks(tasks: Iterable[str] | None) -> tuple[str, ...]:
    if tasks is None:
        return TASK_KEYS
    chosen = tuple(dict.fromkeys(t.strip() for t in tasks if t.strip()))
    unknown = [t for t in chosen if t not in TASK_KEYS]
    if unknown:
        raise QAFolderError(f"unknown task(s) {unknown}; expected some of {list(TASK_KEYS)}")
    return chosen


def _read_csv(path: Path, task: str) -> list[QAItem]:
    items = []
    for where, row in read_csv_records(path, QA_COLUMNS, "3D-RAD CSV", QAFolderError):
        kind = (row["QuestionType"] or "").strip()
        if kind not in ("Open", "Close"):
            raise QAFolderError(f"{where}: QuestionType is {kind!r}, expected 'Open' or 'Close'")
        letter = (row["AnswerChoice"] or "").strip().upper() if kind == "Close" else None
        if letter is not None and letter not in _LETTERS:
            raise QAFolderError(f"{where}: AnswerChoice is {row['AnswerChoice']!r}, expected one of A-D")
        choices = tuple((row[f"Choice {c}"] or "").strip() for c in _LETTERS)
        if letter is not None and choices[_LETTERS.index(letter)] in ("", "-"):
            raise QAFolderError(f"{where}: AnswerChoice {letter} points at an empty choice")
        volume, question = (row["VolumeName"] or "").strip(), (row["Question"] or "").strip()
        if not volume or not question:
            raise QAFolderError(f"{where}: empty VolumeName or Question")
        items.append(QAItem(
            task=task, subtask=path.stem, volume_name=volume, question=question,
            answer=(row["Answer"] or "").strip(), answer_choice=letter,
            choices=choices, source=where,
        ))
    return items


def read_qa_folder(qa_dir: str | Path, tasks: Iterable[str] | None = None) -> dict[str, list[QAItem]]:
    """Questions per task key, in file order (subtask files sorted by name), for the chosen tasks."""
    qa_dir = Path(qa_dir)
    if not qa_dir.is_dir():
        raise QAFolderError(f"{qa_dir}: not a folder (expected a 3D-RAD split: Task*/ folders of CSVs)")
    wanted = _check_tasks(tasks)
    found: dict[str, list[QAItem]] = {}
    for folder in sorted(p for p in qa_dir.iterdir() if p.is_dir()):
        key = task_key(folder.name)
        if key is None and folder.name.startswith("Task"):
            raise QAFolderError(f"{folder}: not a known 3D-RAD task folder (task keys: {list(TASK_KEYS)})")
        if key in wanted:
            found[key] = [item for csv_path in sorted(folder.glob("*.csv")) for item in _read_csv(csv_path, key)]
    if not found:
        raise QAFolderError(f"{qa_dir}: no task folder for {list(wanted)} (expected e.g. Task4_Existence_Detection/)")
    return {key: found[key] for key in TASK_KEYS if key in found}


def take_per_task(items: Sequence[QAItem], limit: int | None) -> list[QAItem]:
    """The first `limit` questions, taken round-robin over subtasks so each subtask is represented."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    by_subtask: dict[str, list[QAItem]] = {}
    for item in items:
        by_subtask.setdefault(item.subtask, []).append(item)
    queues = [iter(group) for group in by_subtask.values()]
    chosen: list[QAItem] = []
    while len(chosen) < limit:
        for queue in queues:
            item = next(queue, None)
            if item is not None and len(chosen) < limit:
                chosen.append(item)
    return chosen


def index_volumes(volumes_dir: str | Path) -> dict[str, Path]:
    """File name -> path for every file under `volumes_dir`, so flat and nested layouts both work."""
    volumes_dir = Path(volumes_dir)
    if not volumes_dir.is_dir():
        raise QAFolderError(f"{volumes_dir}: volumes folder not found")
    index: dict[str, Path] = {}
    for root, dirs, files in os.walk(volumes_dir):
        dirs.sort()
        for name in sorted(files + dirs):
            index.setdefault(name, Path(root) / name)  # a DICOM series folder counts as a volume too
    return index
