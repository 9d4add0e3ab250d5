"""Box questions answered by the model's box head (nets.findings.FindingBoxes) rather than by its
language model, for the findings the head locates: the LM reads 32 coarse image tokens and cannot
place a nodule; the finding readout marks it at eight times their resolution in plane.

A model without a box head (every published checkpoint) answers box questions as before, in text.
"""
from __future__ import annotations

import time
from typing import Any

from model.evaluation.findings import finding_asked
from model.inference import boxes
from model.inference.answer_checks import asks_for_box
from model.inference.prompts import BOX_END, BOX_START


def located_finding(model: Any, question: str) -> str | None:
    """The finding a box question names that the model's box head locates, else None (no head,
    no box asked for, or a finding the head does not locate). Cheap: it reads the text only, so
    a model without a head pays nothing per question."""
    names = list(getattr(model.config, "vision_box_findings", None) or [])
    if not names or not asks_for_box(question):
        return None
    return finding_asked(question, names)


def located_answer(vlm: Any, prepared: Any, finding: str) -> dict[str, Any]:
    """The box head's answer about `finding` (from `located_finding`) for a prepared whole scan,
    as `Answer`'s fields: `VLM.prepare` found every located finding's box when it encoded the scan."""
    start = time.perf_counter()
    written = boxes.format_box(prepared.boxes[finding])
    # the box is what the answer says, to its 3 decimals (1/1000 of the input: under a voxel), so
    # a figure does not move with the last float digits of the head, which depend on the threads
    normalized = boxes.parse_box(written)
    text = written.removeprefix(BOX_START).removesuffix(BOX_END)
    voxels = boxes.to_voxels(normalized, prepared.geometry) if prepared.geometry is not None else None
    seconds = time.perf_counter() - start
    return {"text": text, "box": voxels, "box_normalized": normalized, "latency_first_token_s": seconds,
            "total_s": seconds}
