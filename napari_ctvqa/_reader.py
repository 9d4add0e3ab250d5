"""napari reader: every CT format `model.read_ct` understands becomes one grey Image layer in mm.

A file that cannot be read shows napari's error notification with `read_ct`'s message (which
names the file and the reason) instead of napari's "choose another reader" dialog with a
traceback; the reader then returns napari's "no data" sentinel.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.ct.io import SUPPORTED_SUFFIXES, read_ct
from model.ct.volume import CTReadError, CTVolume, suffix_of
from model.ct.dicom import looks_like_dicom_folder
from model.ct.modality import shows_hu
from model.ct.windows import window_limits

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]
#: Off-diagonal affine terms (relative) below which a volume counts as axis-aligned.
_OBLIQUE_TOLERANCE = 1e-3


def get_reader(path: str | Path | list) -> ReaderFunction | None:
    """Return `read_ct_layers` for a CT file or a folder holding DICOM files, else None.

    Never raises: napari asks every plugin about every path, so anything unsupported (or odd,
    like a list of several paths) simply gets None.
    """
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        candidate = Path(path)
        if candidate.is_dir():
            return read_ct_layers if looks_like_dicom_folder(candidate) else None
        return read_ct_layers if suffix_of(candidate) in SUPPORTED_SUFFIXES else None
    except (TypeError, ValueError, OSError):
        return None


def read_ct_layers(path: str | Path | list) -> list[LayerData]:
    """Read one CT into napari layer data; a bad file becomes an error notification."""
    if isinstance(path, list | tuple):
        path = path[0]
    try:
        volume = read_ct(path)
    except CTReadError as exc:
        from napari.utils.notifications import show_error

        log.warning("%s", exc)
        show_error(str(exc))
        return [(None,)]  # type: ignore[list-item]  # napari's documented "nothing to add" value
    if volume.meta.get("notes"):
        from napari.utils.notifications import show_info

        show_info(f"{Path(path).name}: " + "; ".join(volume.meta["notes"]))
    return [layer_data(volume, Path(path))]


def layer_data(volume: CTVolume, path: Path) -> LayerData:
    """Image layer data for `volume`: mm scale, world position, mediastinal window (the full
    range for values that are not HU), metadata (its `notes` are what the viewer tells the user)."""
    window = "mediastinum" if shows_hu(volume.meta) else "full"
    kwargs = {
        "name": layer_name(path),
        "scale": tuple(volume.spacing),
        "translate": world_origin(volume.affine),
        "axis_labels": ("z", "y", "x"),
        "colormap": "gray",
        "contrast_limits": window_limits(window, volume.array),
        "metadata": {"ct_meta": volume.meta, "affine": volume.affine, "path": str(path)},
    }
    return (volume.array, kwargs, "image")


def layer_name(path: Path) -> str:
    """File name without its (possibly double) extension; a DICOM folder keeps its name."""
    if path.is_dir():
        return path.name
    suffix = suffix_of(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.name


def world_origin(affine: np.ndarray) -> tuple[float, float, float]:
    """Position of voxel (0, 0, 0) along the layer's own axes (S, P, L in mm), so scans of one
    patient overlay where they were acquired; (0, 0, 0) for oblique volumes, whose axes are not
    world axes.
    """
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    off_diagonal = np.abs(matrix[::-1] - np.diag(np.diag(matrix[::-1])))  # rows S, A, R vs axes k, j, i
    if off_diagonal.max() > _OBLIQUE_TOLERANCE * np.abs(matrix).max():
        return (0.0, 0.0, 0.0)
    r, a, s = (float(v) for v in np.asarray(affine, dtype=float)[:3, 3])
    return (s, -a, -r)
