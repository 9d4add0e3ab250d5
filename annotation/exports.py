"""Curated QA pairs out of the tool: 3D-RAD CSVs, M3D-VQA CSV, JSON lines, a Hugging Face dataset.

Exports feed finetuning (here or in the M3D/3D-RAD training code), so each format is the one the
consuming code reads, split so that no patient's scans sit on both sides of the train/validation
line (the cohort's own split, or by patient: annotation/export_splits.py). Only the fields of
`ExportRow` leave the tool: `patient` is the pseudonymous CT-RATE key from the volume name, never a
name, ID or birth date; `text` is the scan's report, which M3D-VQA's CSV carries.

Split names are the same in every format (`train`, `valid`, and a cohort's own others such as
3D-RAD's `test`): folders of the 3D-RAD layout, `{split}.csv` / `{split}.jsonl` files, splits of
the HF dataset. An empty split writes no files at all; the manifest still lists `train` and
`valid` (with 0 rows), so scripts can read the counts the same way every time.
"""
from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from annotation.export_splits import SPLIT_MODES, TRAIN, VALID, assign_splits, relative_images, valid_patients
from annotation.qa_templates import QARow, VolumeName, task_by_number, write_3drad_csvs
from model.inference.prompts import PROMPT_STYLES, format_prompt, format_target, priors_in_question

EXPORT_FORMATS: tuple[str, ...] = ("3drad", "m3d-vqa", "jsonl", "hf")
SPLITS: tuple[str, str] = (TRAIN, VALID)  # always listed in the manifest, even when empty
M3D_VQA_COLUMNS: tuple[str, ...] = (
    "Image Path", "Text", "Question Type", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
    "Answer", "Answer Choice",
)
# M3D-VQA numbers its question topics 1 plane, 2 phase, 3 organ, 4 abnormality, 5 location (M3D
# appendix B; its loader reads the column as an integer). M3D-VQA pairs keep their own number (their
# subtask). Of 3D-RAD's subtasks, anatomical observation asks about structures (organ) and
# abnormality position about where (location); every other one asks about an abnormality's type,
# feature, size, presence or course (abnormality, also for any other task).
M3D_QUESTION_TYPE: dict[tuple[str, int], int] = {("image_observation", 1): 3, ("anomaly_detection", 2): 5}
M3D_ABNORMALITY = 4
JSONL_FIELDS: tuple[str, ...] = (
    "qa_id", "image", "volume_name", "task", "subtask", "question_type", "question", "choices",
    "answer", "answer_choice", "priors", "prompt", "target",
)
_PROGRESS_CHUNK = 20_000


@dataclass(frozen=True)
class ExportRow:
    """One curated QA pair as it may leave the tool (and nothing more)."""

    qa_id: int
    patient: str
    volume_name: str
    image_path: str
    task: str
    task_number: int
    subtask: int
    question: str
    answer: str
    question_type: str
    answer_choice: str
    choices: tuple[str, str, str, str]
    priors: tuple[int, ...] | None
    cohort_split: str | None = None  # the scan's own split in its cohort (CT-RATE/3D-RAD name prefix)
    text: str = ""  # the scan's report

    @classmethod
    def from_qarow(cls, row: QARow, qa_id: int, image_path: str = "") -> ExportRow:
        """An export row for a 3D-RAD CSV row; task 6 priors are read from its question text."""
        task = task_by_number(row.task)
        priors = None
        if task.key == "longitudinal_temporal_diagnosis":
            found = priors_in_question(row.question)
            priors = tuple(found) if found is not None else None
        try:
            cohort_split = VolumeName.parse(row.volume_name).split
        except ValueError:
            cohort_split = None
        return cls(qa_id, patient_key(row.volume_name), row.volume_name, image_path, task.key, row.task,
                   row.subtask, row.question, row.answer, row.question_type, row.answer_choice,
                   tuple(row.choices), priors, cohort_split)


def patient_key(volume_name: str) -> str:
    """The pseudonymous patient key `{split}_{patient}` of a CT-RATE volume name (CT-RATE numbers
    patients per split, so `train_1` and `valid_1` are different people). A name that does not
    follow CT-RATE naming is its own key (file name without extension)."""
    try:
        parsed = VolumeName.parse(volume_name)
    except ValueError:
        return Path(volume_name).name.split(".")[0]
    return f"{parsed.split}_{parsed.patient}"


def patient_split(rows: Sequence[ExportRow], val_frac: float, seed: int) -> tuple[list[ExportRow], list[ExportRow]]:
    """(train, valid) with every patient's rows on one side only, keeping the input order.

    See `annotation.export_splits.valid_patients` for how patients are chosen."""
    valid = valid_patients(pd.Series([r.patient for r in rows], dtype=object), val_frac, seed)
    train_rows = [r for r in rows if r.patient not in valid]
    valid_rows = [r for r in rows if r.patient in valid]
    return train_rows, valid_rows


def export_rows(rows: Iterable[ExportRow], fmt: str, out_dir: str | Path, *, split: str = "keep",
                val_frac: float = 0.1, seed: int = 0, image_root: str | Path | None = None,
                manifest_extra: dict | None = None, progress: Callable[[int, int], None] | None = None,
                prompt_style: str = "m3d") -> dict:
    """Write `rows` in format `fmt` (one of EXPORT_FORMATS) under `out_dir`, which must be new or
    empty so an export never mixes with an older one. Returns the manifest (also written as
    `out_dir/manifest.json`); `manifest_extra` (e.g. the filter) is merged into it. `split` is
    "keep" (the cohort's own split where a row has one, by patient otherwise) or "patient";
    image paths are written relative to `image_root` (default: the folder holding every scan).
    `progress` is called as (rows written, total). `prompt_style` picks the jsonl/hf prompt layout."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {list(EXPORT_FORMATS)}")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {prompt_style!r}; expected one of {list(PROMPT_STYLES)}")
    if split not in SPLIT_MODES:
        raise ValueError(f"unknown split mode {split!r}; expected one of {list(SPLIT_MODES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: export folder must be new or empty (it already holds files)")
    frame = _frame(rows)
    if frame.empty:
        raise ValueError("nothing to export: no QA pairs passed the filter")
    clash = sorted(set(manifest_extra or {}) & _MANIFEST_KEYS)
    if clash:
        raise ValueError(f"manifest_extra may not replace the manifest's own keys {clash}")
    frame["split"], warnings = assign_splits(frame, split, val_frac, seed)
    frame["image"], root = relative_images(frame["image_path"].where(frame["image_path"].astype(bool)),
                                           frame["volume_name"], image_root)
    names = list(SPLITS) + sorted(set(frame["split"]) - set(SPLITS))
    splits = {name: frame[frame["split"] == name] for name in names if (frame["split"] == name).any()}
    own = frame["cohort_split"].notna() if split == "keep" else pd.Series(False, index=frame.index)
    manifest = {
        "format": fmt,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": {"name": "napari-ctvqa", "version": _tool_version()},
        "total": len(frame),
        "split": split,
        "split_by": "cohort" if own.all() else "patient" if not own.any() else "cohort, else patient",
        "val_frac": val_frac,
        "seed": seed,
        "splits": {name: _split_counts(frame[frame["split"] == name]) for name in names},
        "image_root": root,
        "warnings": warnings,
        **(manifest_extra or {}),
    }
    # Write beside the target and move into place at the end: a failed export leaves nothing behind.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        writer = {"3drad": _write_3drad, "m3d-vqa": _write_m3d_vqa, "jsonl": _write_jsonl, "hf": _write_hf}[fmt]
        writer(splits, partial, _Progress(len(frame), progress), prompt_style)
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # checked empty above
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


_MANIFEST_KEYS = frozenset({"format", "created", "tool", "total", "split", "split_by", "val_frac", "seed",
                            "splits", "image_root", "warnings"})


class _Progress:
    """Counts rows as writers finish chunks and forwards (done, total) to the caller's callback."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None) -> None:
        self.done, self.total, self.callback = 0, total, callback
        self.add(0)

    def add(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


def _frame(rows: Iterable[ExportRow]) -> pd.DataFrame:
    rows = list(rows)
    bad = next((r for r in rows if not isinstance(r, ExportRow)), None)
    if bad is not None:
        raise TypeError(f"export rows must be ExportRow, got {type(bad).__name__}")
    wrong = [r.qa_id for r in rows if len(r.choices) != 4]
    if wrong:
        raise ValueError(f"qa_id {wrong[0]}: choices must hold exactly four entries (A-D)")
    data = {f.name: [getattr(r, f.name) for r in rows] for f in fields(ExportRow)}
    for i, letter in enumerate("ABCD"):
        data[f"choice_{letter}"] = [r.choices[i] for r in rows]
    frame = pd.DataFrame(data, dtype=object)
    frame["closed"] = frame["question_type"].str.lower().isin(("close", "closed"))
    return frame


def _split_counts(split: pd.DataFrame) -> dict[str, object]:
    return {"rows": len(split), "patients": int(split["patient"].nunique()),
            "per_task": {str(k): int(v) for k, v in split["task"].value_counts().sort_index().items()}}


def _chunks(frame: pd.DataFrame) -> Iterable[pd.DataFrame]:
    for start in range(0, len(frame), _PROGRESS_CHUNK):
        yield frame.iloc[start:start + _PROGRESS_CHUNK]


_QAROW_COLUMNS = ("task_number", "subtask", "volume_name", "question", "answer", "question_type",
                  "answer_choice", "choice_A", "choice_B", "choice_C", "choice_D")


def _write_3drad(splits: dict[str, pd.DataFrame], out_dir: Path, report: _Progress, _style: str) -> None:
    # write_3drad_csvs groups by task folder, so writing task by task never overwrites a file.
    for name, split in splits.items():
        for _, group in split.groupby("task_number", sort=True):
            columns = [group[c].tolist() for c in _QAROW_COLUMNS]
            qa_rows = [QARow(int(t), int(s), v, q, a, qt, ac, (ca, cb, cc, cd))
                       for t, s, v, q, a, qt, ac, ca, cb, cc, cd in zip(*columns)]
            write_3drad_csvs(qa_rows, out_dir / name)
            report.add(len(group))


def _write_m3d_vqa(splits: dict[str, pd.DataFrame], out_dir: Path, report: _Progress, _style: str) -> None:
    for name, split in splits.items():
        closed = split["closed"]
        table = pd.DataFrame({
            "Image Path": split["image"],
            "Text": split["text"],
            "Question Type": [m3d_question_type(t, s) for t, s in zip(split["task"], split["subtask"])],
            "Question": split["question"],
            **{f"Choice {c}": split[f"choice_{c}"].where(closed, "") for c in "ABCD"},
            "Answer": split["answer"],
            "Answer Choice": split["answer_choice"].where(closed, ""),
        })
        path = out_dir / f"{name}.csv"
        for i, chunk in enumerate(_chunks(table)):
            chunk.to_csv(path, mode="w" if i == 0 else "a", header=i == 0, index=False, lineterminator="\n")
            report.add(len(chunk))


def m3d_question_type(task: str, subtask: int) -> int:
    """M3D-VQA's question topic number of a pair (see M3D_QUESTION_TYPE)."""
    if task == "m3d_vqa" and 1 <= int(subtask) <= 5:
        return int(subtask)
    return M3D_QUESTION_TYPE.get((task, int(subtask)), M3D_ABNORMALITY)


def _records(split: pd.DataFrame, style: str) -> dict[str, list]:
    """The jsonl/hf fields of each row as plain lists (no pandas dtype guessing turns None into
    NaN), with the prompt and target text the model trains on."""
    closed = split["closed"].tolist()
    choices = [list(c) if is_closed else None for c, is_closed in zip(
        zip(split["choice_A"], split["choice_B"], split["choice_C"], split["choice_D"]), closed)]
    answer_choice = [a if is_closed else None for a, is_closed in zip(split["answer_choice"], closed)]
    question, answer = split["question"].tolist(), split["answer"].tolist()
    return {
        "qa_id": [int(v) for v in split["qa_id"]],
        "image": split["image"].tolist(),
        "volume_name": split["volume_name"].tolist(),
        "task": split["task"].tolist(),
        "subtask": [int(v) for v in split["subtask"]],
        "question_type": split["question_type"].tolist(),
        "question": question,
        "choices": choices,
        "answer": answer,
        "answer_choice": answer_choice,
        "priors": [list(p) if p is not None else None for p in split["priors"]],
        "prompt": [format_prompt(q, c, style=style) for q, c in zip(question, choices)],
        "target": [format_target(a, c) for a, c in zip(answer, answer_choice)],
    }


def _write_jsonl(splits: dict[str, pd.DataFrame], out_dir: Path, report: _Progress, style: str) -> None:
    for name, split in splits.items():
        with (out_dir / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for chunk in _chunks(split):
                columns = _records(chunk, style)
                fh.writelines(json.dumps(dict(zip(JSONL_FIELDS, values)), ensure_ascii=False) + "\n"
                              for values in zip(*(columns[f] for f in JSONL_FIELDS)))
                report.add(len(chunk))


def _write_hf(splits: dict[str, pd.DataFrame], out_dir: Path, report: _Progress, style: str) -> None:
    import datasets
    from datasets import utils as hf_utils

    features = datasets.Features({
        "qa_id": datasets.Value("int64"), "image": datasets.Value("string"),
        "volume_name": datasets.Value("string"), "task": datasets.Value("string"),
        "subtask": datasets.Value("int64"), "question_type": datasets.Value("string"),
        "question": datasets.Value("string"), "choices": datasets.List(datasets.Value("string")),
        "answer": datasets.Value("string"), "answer_choice": datasets.Value("string"),
        "priors": datasets.List(datasets.Value("int64")), "prompt": datasets.Value("string"),
        "target": datasets.Value("string"),
    })
    parts = {name: datasets.Dataset.from_dict(_records(split, style), features=features)
             for name, split in splits.items()}
    bars_were_on = not hf_utils.are_progress_bars_disabled()
    hf_utils.disable_progress_bars()  # the caller shows its own progress; datasets' bars would interleave
    try:
        datasets.DatasetDict(parts).save_to_disk(str(out_dir))
    finally:
        if bars_were_on:
            hf_utils.enable_progress_bars()
    report.add(sum(len(split) for split in splits.values()))


def _tool_version() -> str:
    try:
        return metadata.version("napari-ctvqa")
    except metadata.PackageNotFoundError:
        return "unknown"
