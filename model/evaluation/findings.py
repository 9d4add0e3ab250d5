"""Which finding a closed question asks about, and whether its answer says present or absent.

Existence is judged per finding (balanced accuracy), so the finding is read from the question
with the cohort's own label names (the columns of its CT-RATE `labels.csv`), longest match first,
so "pericardial effusion" is not read as "effusion". Where no labels file is known, the
subtask file name stands in (3D-RAD names its existence files by finding).
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

YES, NO = "yes", "no"


class LabelsFileError(ValueError):
    """A labels.csv that cannot name findings; the message names the file."""


def finding_asked(question: str, label_names: Sequence[str]) -> str | None:
    """The label a closed question names (longest match), or None."""
    text = question.lower()
    named = [name for name in label_names if name.lower() in text]
    return max(named, key=len) if named else None


def read_label_names(path: str | Path) -> list[str]:
    """The finding columns of a CT-RATE labels.csv (every column but VolumeName), in file order."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except OSError as exc:
        raise LabelsFileError(f"{path}: cannot read the labels file ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LabelsFileError(f"{path}: not a readable UTF-8 CSV ({exc})") from None
    if not header or "VolumeName" not in header:
        raise LabelsFileError(f"{path}: no VolumeName column; a CT-RATE labels.csv has VolumeName + one column per finding")
    names = [c.strip() for c in header if c.strip() and c != "VolumeName"]
    if not names:
        raise LabelsFileError(f"{path}: no finding columns besides VolumeName")
    return names


def presence(answer: str | None) -> bool | None:
    """True for a "yes" answer, False for "no", None for anything else (not an existence answer)."""
    if answer is None:
        return None
    word = answer.strip().lower().rstrip(".")
    return True if word == YES else False if word == NO else None
