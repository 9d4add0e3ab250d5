"""Box questions of the synthetic cohort: "where is ...? give the box", answered by the painted
lesion's bounding box in voxels of its volume (model-independent; see model/data/box_questions.py).

Asked for the findings whose place a reader can point at and the issue's acceptance names: lung
nodules, pleural effusion, cardiomegaly and consolidation. Absent findings get no box question.
"""
from __future__ import annotations

from model.data.box_questions import format_box_cell

_SIDE = {"right": "right ", "left": "left ", "bilateral": ""}


def _question(record: dict) -> str | None:
    kind = record["type"]
    if kind == "nodule":
        return f"Where is the lung nodule in the {record['lobe']}? Give the box."
    if kind == "consolidation":
        return f"Where is the consolidation in the {record['lobe']}? Give the box."
    if kind == "pleural_effusion":
        return f"Where is the {_SIDE.get(record['side'], '')}pleural effusion? Give the box."
    if kind == "cardiomegaly":
        return "Where is the enlarged heart? Give the box."
    return None


def box_rows_for_scan(volume_name: str, findings: list[dict]) -> list[dict[str, str]]:
    """`boxes.csv` rows (VolumeName, Finding, Question, Box) for one scan's painted lesions."""
    rows = []
    for record in findings:
        question = _question(record)
        if question is not None:
            rows.append({"VolumeName": volume_name, "Finding": record["label"], "Question": question,
                         "Box": format_box_cell(record["bbox_voxel"])})
    return rows
