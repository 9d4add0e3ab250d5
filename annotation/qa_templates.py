"""CT-RATE labels, 3D-RAD task identity and the exact 3D-RAD question templates of tasks 4-6.

The synthetic cohort and the CT-RATE importer both build their closed questions here, so the same
labels always give the same rows (template picked by a stable hash), and those rows are
indistinguishable in wording and layout from the published 3D-RAD benchmark files.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

CT_RATE_LABELS: tuple[str, ...] = (
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema",
    "Atelectasis", "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
    "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
    "Interlobular septal thickening",
)
# 3D-RAD leaves devices out of the temporal tasks: a port is not a lesion that evolves.
TEMPORAL_LABELS: tuple[str, ...] = tuple(l for l in CT_RATE_LABELS if l != "Medical material")
TEMPORAL_CHOICES: tuple[str, str, str, str] = (
    "Refractory Lesion (Persistent or recurrent, now present)",
    "Resolved Lesion (Previously present or recurrent, now absent)",
    "New Lesion (Absent previously, now present)",
    "No Abnormality (Always absent)",
)
EXISTENCE_CHOICES: tuple[str, str, str, str] = ("Yes", "No", "-", "-")
OPEN_CHOICES: tuple[str, str, str, str] = ("-", "-", "-", "-")
CSV_COLUMNS: tuple[str, ...] = (
    "Task", "Subtask", "VolumeName", "Question", "Answer", "QuestionType", "AnswerChoice",
    "Choice A", "Choice B", "Choice C", "Choice D",
)
# The real Task4 files number their subtasks by file name (alphabetical), not by CT-RATE column.
EXISTENCE_SUBTASK_LABELS: tuple[str, ...] = tuple(sorted(CT_RATE_LABELS))
SCAN_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Task:
    """One 3D-RAD task. `number` is the CSV/folder number, which differs from the paper's for
    tasks 1 and 2; code keys tasks by `key` so the two numberings cannot be mixed up."""

    key: str
    number: int
    folder: str
    paper_number: int
    open: bool
    subtask_files: tuple[str, ...] = ()  # open tasks: file stem of subtask 1, 2, ...

    @property
    def question_type(self) -> str:
        return "Open" if self.open else "Close"


TASKS: dict[str, Task] = {t.key: t for t in (
    Task("image_observation", 1, "Task1_Image_Observation", 2, True,
         ("Anatomical_observation", "Pathological_observation")),
    Task("anomaly_detection", 2, "Task2_Anomaly_Detection", 1, True,
         ("Abnormality_feature", "Abnormality_position", "Abnormality_type", "Diagnosis")),
    Task("medical_computation", 3, "Task3_Medical_Computation", 3, True, ("Diameter", "Size", "Thickness")),
    Task("existence_detection", 4, "Task4_Existence_Detection", 4, False),
    Task("static_temporal_diagnosis", 5, "Task5_Static_Temporal_Diagnosis", 5, False),
    Task("longitudinal_temporal_diagnosis", 6, "Task6_Longitudinal_Temporal_Diagnosis", 6, False),
)}


def task_by_number(number: int) -> Task:
    """The task whose CSV `Task` column / folder prefix is `number` (not the paper's number)."""
    for task in TASKS.values():
        if task.number == number:
            return task
    raise KeyError(f"no 3D-RAD task with CSV number {number!r} (expected 1-6)")


def task_by_folder(name: str) -> Task:
    """The task stored in folder `name`, e.g. "Task4_Existence_Detection"."""
    for task in TASKS.values():
        if task.folder == name:
            return task
    raise KeyError(f"{name!r} is not a 3D-RAD task folder (expected one of {[t.folder for t in TASKS.values()]})")


_VOLUME_NAME = re.compile(r"^(?P<split>[A-Za-z]+)_(?P<patient>[^_]+)_(?P<letter>[a-z])_(?P<recon>\d+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class VolumeName:
    """The parts of a CT-RATE volume name `{split}_{patient}_{letter}_{reconstruction}.nii.gz`."""

    split: str
    patient: str
    letter: str
    reconstruction: int

    @classmethod
    def parse(cls, name: str) -> VolumeName:
        match = _VOLUME_NAME.match(name)
        if match is None:
            raise ValueError(f"volume name {name!r} does not follow CT-RATE naming "
                             "{split}_{patient}_{letter}_{reconstruction}.nii.gz")
        return cls(match["split"], match["patient"], match["letter"], int(match["recon"]))

    def __str__(self) -> str:
        return f"{self.split}_{self.patient}_{self.letter}_{self.reconstruction}.nii.gz"

    @property
    def timepoint(self) -> int:
        """0 for scan a, 1 for b, ...: also the number of earlier scans of the patient."""
        return SCAN_LETTERS.index(self.letter)


@dataclass(frozen=True)
class QARow:
    """One row of a 3D-RAD CSV, field for field."""

    task: int
    subtask: int
    volume_name: str
    question: str
    answer: str
    question_type: str
    answer_choice: str
    choices: tuple[str, str, str, str] = OPEN_CHOICES

    def to_csv_dict(self) -> dict[str, str]:
        return dict(zip(CSV_COLUMNS, (
            str(self.task), str(self.subtask), self.volume_name, self.question, self.answer,
            self.question_type, self.answer_choice, *self.choices)))

    @classmethod
    def from_csv_dict(cls, d: Mapping[str, str]) -> QARow:
        """Parse one CSV record; raises ValueError naming the missing column or bad value."""
        missing = [c for c in CSV_COLUMNS if c not in d or d[c] is None]
        if missing:
            raise ValueError(f"missing column(s) {missing}")
        try:
            task, subtask = int(d["Task"]), int(d["Subtask"])
        except ValueError:
            raise ValueError(f"Task/Subtask must be integers, got {d['Task']!r}/{d['Subtask']!r}") from None
        if d["QuestionType"] not in ("Open", "Close"):
            raise ValueError(f"QuestionType must be Open or Close, got {d['QuestionType']!r}")
        if d["AnswerChoice"] not in ("A", "B", "C", "D", "-"):
            raise ValueError(f"AnswerChoice must be A-D or '-', got {d['AnswerChoice']!r}")
        choices = (d["Choice A"], d["Choice B"], d["Choice C"], d["Choice D"])
        return cls(task, subtask, d["VolumeName"], d["Question"], d["Answer"], d["QuestionType"],
                   d["AnswerChoice"], choices)


@cache
def question_templates() -> dict[str, tuple[str, ...]]:
    """The exact 3D-RAD question templates of tasks 4-6 by task key ({label}, {sequence} slots)."""
    text = resources.files("annotation").joinpath("qa_templates.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return {key: tuple(data[key]) for key in
            ("existence_detection", "static_temporal_diagnosis", "longitudinal_temporal_diagnosis")}


def stable_pick(options: Sequence[str], *key: object) -> str:
    """Deterministic across processes and machines (unlike hash()), so re-imports add nothing new."""
    digest = hashlib.sha256("|".join(map(str, key)).encode("utf-8")).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def temporal_answer(priors: Sequence[int], now: int) -> str:
    """The 3D-RAD rule: any earlier 1 -> refractory/resolved, all earlier 0 -> new/none."""
    if any(priors):
        return "A" if now else "B"
    return "C" if now else "D"


def _check_labels(volume_name: str, labels: Mapping[str, int], what: str) -> None:
    missing = [l for l in CT_RATE_LABELS if l not in labels]
    if missing:
        raise ValueError(f"{volume_name}: {what} lack label(s) {missing}")
    bad = {l: labels[l] for l in CT_RATE_LABELS if labels[l] not in (0, 1)}
    if bad:
        raise ValueError(f"{volume_name}: {what} must be 0 or 1, got {bad}")


def closed_qa_for_scan(volume_name: str, labels: Mapping[str, int],
                       priors: Sequence[Mapping[str, int]]) -> list[QARow]:
    """Tasks 4-6 for one scan from its CT-RATE labels and those of the patient's earlier scans
    (`priors`, scan a first). Scans without priors get task 4 only, as in 3D-RAD."""
    _check_labels(volume_name, labels, "labels")
    for i, prior in enumerate(priors):
        _check_labels(volume_name, prior, f"prior scan {i + 1}'s labels")
    templates = question_templates()
    rows = []
    for label in CT_RATE_LABELS:
        question = stable_pick(templates["existence_detection"], volume_name, label, 4)
        rows.append(QARow(4, EXISTENCE_SUBTASK_LABELS.index(label) + 1, volume_name,
                          question.format(label=label.lower()), EXISTENCE_CHOICES[1 - labels[label]],
                          "Close", "A" if labels[label] else "B", EXISTENCE_CHOICES))
    if not priors:
        return rows
    try:
        subtask = VolumeName.parse(volume_name).timepoint
    except ValueError:
        subtask = len(priors)
    for task in (5, 6):
        key = "static_temporal_diagnosis" if task == 5 else "longitudinal_temporal_diagnosis"
        for label in TEMPORAL_LABELS:
            sequence = [int(p[label]) for p in priors]
            letter = temporal_answer(sequence, labels[label])
            question = stable_pick(templates[key], volume_name, label, task)
            question = question.format(label=label.lower(), sequence=str(sequence))
            rows.append(QARow(task, subtask, volume_name, question, TEMPORAL_CHOICES["ABCD".index(letter)],
                              "Close", letter, TEMPORAL_CHOICES))
    return rows


def csv_file_stem(row: QARow) -> str:
    """The 3D-RAD file a row belongs in: subtask name (tasks 1-3), label (4), scan letter (5-6)."""
    task = task_by_number(row.task)
    try:
        if task.open:
            return task.subtask_files[row.subtask - 1]
        if task.number == 4:
            return EXISTENCE_SUBTASK_LABELS[row.subtask - 1]
        return SCAN_LETTERS[row.subtask]
    except IndexError:
        raise ValueError(f"{row.volume_name}: task {row.task} has no subtask {row.subtask}") from None


def write_3drad_csvs(rows: Iterable[QARow], out_dir: str | Path) -> list[Path]:
    """Write rows as the 3D-RAD layout `out_dir/TaskN_Name/<file>.csv` (rows keep their order).

    Files are written with '\\n' line ends and minimal quoting like the published ones, so a
    diff against the benchmark shows content differences only."""
    out_dir = Path(out_dir)
    groups: dict[tuple[int, str], list[QARow]] = {}
    for row in rows:  # group by (task, file stem), not Path: 170k Path joins cost a second
        groups.setdefault((row.task, csv_file_stem(row)), []).append(row)
    paths = []
    for (task, stem), group in groups.items():
        path = out_dir / task_by_number(task).folder / f"{stem}.csv"
        paths.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(r.to_csv_dict() for r in group)
    return sorted(paths)


def read_3drad_csvs(directory: str | Path) -> list[QARow]:
    """Every row of a 3D-RAD split (folder of task folders). Raises ValueError naming the file and
    line of the first bad row; files in unknown folders are an error, not silently skipped."""
    directory = Path(directory)
    files = sorted(directory.glob("*/*.csv"))
    if not files:
        raise ValueError(f"{directory}: no 3D-RAD CSVs found (expected {directory}/TaskN_Name/*.csv)")
    rows: list[QARow] = []
    for path in files:
        try:
            task_by_folder(path.parent.name)
        except KeyError as exc:
            raise ValueError(f"{path}: {exc.args[0]}") from None
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
                raise ValueError(f"{path}: header {reader.fieldnames} differs from {list(CSV_COLUMNS)}")
            for record in reader:
                try:
                    rows.append(QARow.from_csv_dict(record))
                except ValueError as exc:
                    raise ValueError(f"{path}, line {reader.line_num}: {exc}") from None
    return rows
