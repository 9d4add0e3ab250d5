"""Box questions ("Where is the pleural effusion? Give the box.") with their ground-truth boxes.

3D-RAD has no grounding task, so the synthetic cohort writes its own file beside the task
folders, `qa/{split}/boxes.csv`, with the columns `VolumeName,Finding,Question,Box`. `Box` is
`[z1, y1, x1, z2, y2, x2]` in voxel-edge coordinates of the volume file as `model.read_ct`
orients it (stop exclusive, so a lesion filling voxels 4..14 is `4 ... 15`): independent of any
model's input size or crop. A model's box is mapped to the same coordinates (`Answer.box`)
before the two are compared.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.data.csv_files import read_csv_records

BOX_COLUMNS = ("VolumeName", "Finding", "Question", "Box")
BOX_FILE = "boxes.csv"


@dataclass(frozen=True)
class BoxItem:
    """One box question and the box it should be answered with."""

    volume_name: str
    finding: str
    question: str
    box: tuple[float, ...]  # z1, y1, x1, z2, y2, x2 (voxel edges of the volume)
    source: str  # "path:line"


def format_box_cell(box: tuple[float, ...] | list[float]) -> str:
    """The `Box` cell as the cohort writes it."""
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def _parse_box(cell: str, where: str) -> tuple[float, ...]:
    parts = [p for p in (cell or "").strip().strip("[]").replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{where}: Box {cell!r} is not six numbers [z1, y1, x1, z2, y2, x2]") from None
    if len(values) != 6:
        raise ValueError(f"{where}: Box {cell!r} has {len(values)} numbers, expected 6 [z1, y1, x1, z2, y2, x2]")
    if any(values[i] >= values[i + 3] for i in range(3)):
        raise ValueError(f"{where}: Box {cell!r} is empty (each stop must exceed its start)")
    return values


def read_box_questions(path: str | Path) -> list[BoxItem]:
    """Every row of a box-question CSV, in file order; a bad row raises ValueError naming file and line."""
    path = Path(path)
    items = []
    for where, row in read_csv_records(path, BOX_COLUMNS, "box-question CSV", ValueError):
        volume, question = (row["VolumeName"] or "").strip(), (row["Question"] or "").strip()
        if not volume or not question:
            raise ValueError(f"{where}: empty VolumeName or Question")
        items.append(BoxItem(volume, (row["Finding"] or "").strip(), question, _parse_box(row["Box"], where), where))
    return items
