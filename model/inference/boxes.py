"""Boxes in the model's text: `<bx_start>[z1, y1, x1, z2, y2, x2]<bx_end>`, normalised 0-1 over the
model input, mapped back to voxels of the original volume (undoing the resize and the body crop)
so the viewer can draw them on the CT the user opened.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from model.ct.preprocess import InputGeometry
from model.inference.prompts import BOX_END, BOX_START

_NUMBER = r"\s*(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)\s*"
BOX_PATTERN = re.compile(
    re.escape(BOX_START) + r"\s*\[" + ",".join([_NUMBER] * 6) + r"\]\s*" + re.escape(BOX_END)
)


def parse_box(text: str) -> tuple[float, ...] | None:
    """The first well-formed box in generated text (normalised, clipped to 0-1, corners ordered), or None."""
    match = BOX_PATTERN.search(text)
    if match is None:
        return None
    values = [min(1.0, max(0.0, float(v))) for v in match.groups()]
    lo = [min(values[i], values[i + 3]) for i in range(3)]
    hi = [max(values[i], values[i + 3]) for i in range(3)]
    return tuple(lo + hi)


def format_box(box: Sequence[float], digits: int = 3) -> str:
    """A normalised box as the model writes it (training targets use this)."""
    if len(box) != 6:
        raise ValueError(f"a box has 6 numbers (z1, y1, x1, z2, y2, x2), got {len(box)}")
    return BOX_START + "[" + ", ".join(f"{float(v):.{digits}f}" for v in box) + "]" + BOX_END


def to_voxels(box: Sequence[float], geometry: InputGeometry) -> tuple[float, ...]:
    """Normalised model-input box to (z1, y1, x1, z2, y2, x2) voxel coordinates of the original volume.

    Coordinates are continuous voxel-edge positions: 0 is the outer edge of the first cropped voxel
    and 1 the outer edge of the last (the convention of trilinear resizing without aligned corners).
    """
    crop = geometry.crop
    extent = [crop[i + 3] - crop[i] for i in range(3)]
    return tuple(crop[i % 3] + float(v) * extent[i % 3] for i, v in enumerate(box))


def to_normalized(box_voxels: Sequence[float], geometry: InputGeometry) -> tuple[float, ...]:
    """Inverse of `to_voxels`: a voxel box of the original volume to the model's 0-1 coordinates."""
    crop = geometry.crop
    extent = [crop[i + 3] - crop[i] for i in range(3)]
    return tuple(min(1.0, max(0.0, (float(v) - crop[i % 3]) / extent[i % 3])) for i, v in enumerate(box_voxels))
