"""Organ masks without a download: body, lungs (left and right) and mediastinum from HU thresholds,
connected components and morphology, or from a label file the user already has.

OmniCT's organ tokens need a mask per organ in the volume's grid. TotalSegmentator gives 117
structures but is a download and minutes per scan; the chest organs the organ tokens use stand
out by density alone, so they are found here in well under a second. The work is done on a
strided copy of the volume (at most ~128 x 128 in-plane), whose masks are then repeated back to
full resolution: the masks are coarse regional priors, not segmentations to measure.

Left and right follow the canonical orientation of `model.ct.volume`: columns run from the
patient's right (index 0) to the patient's left.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from model.ct.io import read_ct

ROI_NAMES = ("body", "lung_left", "lung_right", "mediastinum")
BODY_HU = -500.0  # above: the patient (and the table, removed by its shape)
LUNG_HU = -400.0  # below, inside the body: aerated lung (and airways, bowel gas)
MIN_LUNG_ML = 20.0  # smaller air pockets inside the body are not lung
AIR_HU = -950.0
#: A region with more of its voxels below AIR_HU is bowel gas or airway, not lung: aerated lung
#: has vessels and septa (a median near -850 HU, a few % below -950 even in emphysema of moderate
#: degree); bowel gas on a real abdominal CT had 60-70 %. Very severe emphysema would be missed.
MAX_AIR_FRACTION = 0.45
_COARSE_IN_PLANE = 128
_COARSE_DEPTH = 160
MAX_MEDIASTINUM_WIDTH = 0.5
_SPLIT_WINDOW = 0.3  # the left/right split is looked for within this fraction of the body's width around its centre
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
#: The label map `ctvqa synth` writes beside each volume (rois/<VolumeName>): value -> organ.
SYNTH_LABELS = {"body": (1, 2, 3, 4), "lung_right": (2,), "lung_left": (3,), "mediastinum": (4,)}
#: TotalSegmentator v2 ("total" task) label values of the organs here (no mediastinum class).
TOTALSEGMENTATOR_LABELS = {"lung_left": (10, 11), "lung_right": (12, 13, 14)}
NAME_MAPS = {"synth": SYNTH_LABELS, "totalsegmentator": TOTALSEGMENTATOR_LABELS}


def _hu_array(volume: Any) -> tuple[np.ndarray, tuple[float, float, float]]:
    array = np.asarray(getattr(volume, "array", volume))
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"organ masks need a 3-D (z, y, x) volume, got shape {array.shape}")
    if bool((getattr(volume, "meta", None) or {}).get("normalised", False)):
        raise ValueError("organ masks need Hounsfield units; this volume is normalised to [0, 1] (M3D .npy)")
    spacing = tuple(float(s) for s in getattr(volume, "spacing", (1.0, 1.0, 1.0)))
    return array, spacing  # type: ignore[return-value]


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _body(coarse: np.ndarray) -> np.ndarray:
    """The patient: the largest region above BODY_HU after an in-plane opening (which cuts the thin
    shells of a table touching the back), with every enclosed hole of each slice filled."""
    solid = ndimage.binary_opening(coarse > BODY_HU, structure=_IN_PLANE, iterations=2)
    if not solid.any():
        return solid
    return ndimage.binary_fill_holes(_largest(solid), structure=_IN_PLANE)


def _lung_components(coarse: np.ndarray, body: np.ndarray, voxel_ml: float) -> tuple[np.ndarray, int]:
    """Label the low-density regions inside the body that look like lung: large enough, not pure
    air (bowel gas, airways), and not tiny beside the largest such region."""
    labels, count = ndimage.label((coarse < LUNG_HU) & body)
    if count == 0:
        return labels, 0
    index = np.arange(count + 1)
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * voxel_ml
    air = ndimage.mean(coarse < AIR_HU, labels, index)
    sizes[0] = 0
    sizes[air > MAX_AIR_FRACTION] = 0
    keep = (sizes >= MIN_LUNG_ML) & (sizes >= 0.2 * sizes.max())
    relabel = np.zeros(count + 1, np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[labels], int(keep.sum())


def _split_columns(lungs: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Per slice, the column between the lungs: the one with the fewest lung voxels near the body's
    centre (where they touch, e.g. at the anterior junction or through the trachea), smoothed over z."""
    n_z, _, n_x = lungs.shape
    columns = np.arange(n_x)
    body_cols = body.any(axis=1)  # (z, x)
    has = body_cols.any(axis=1)
    first = np.where(has, body_cols.argmax(axis=1), 0)
    last = np.where(has, n_x - 1 - body_cols[:, ::-1].argmax(axis=1), n_x - 1)
    centre, half = (first + last) / 2.0, np.maximum((last - first) * _SPLIT_WINDOW / 2.0, 1.0)
    profile = ndimage.uniform_filter1d(lungs.sum(axis=1).astype(np.float32), 3, axis=1)
    distance = np.abs(columns[None] - centre[:, None])
    cost = np.where(distance <= half[:, None], profile + 1e-3 * distance, np.inf)
    split = cost.argmin(axis=1).astype(np.float32)
    valid = lungs.any(axis=(1, 2))
    if not valid.any():
        return np.full(n_z, n_x / 2.0, np.float32)
    split = np.interp(np.arange(n_z), np.flatnonzero(valid), split[valid])
    return ndimage.median_filter(split, size=5, mode="nearest")


def _sides(labels: np.ndarray, count: int, body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) lung masks: a component lying (95 %) on one side of the split goes to that side
    whole; one that crosses it (lungs joined by the airways or touching) is cut at the split."""
    lungs = labels > 0
    split = _split_columns(lungs, body)
    on_left = np.arange(lungs.shape[2])[None, None, :] >= split[:, None, None]
    right, left = lungs & ~on_left, lungs & on_left
    if count:
        index = np.arange(1, count + 1)
        left_share = ndimage.sum_labels(on_left & lungs, labels, index) / np.maximum(
            ndimage.sum_labels(lungs, labels, index), 1)
        side = np.zeros(count + 1, np.int8)  # 0 = cut at the split, 1 = right, 2 = left
        side[1:][left_share <= 0.05] = 1
        side[1:][left_share >= 0.95] = 2
        whole = side[labels]
        right = np.where(whole == 1, lungs, np.where(whole == 2, False, right))
        left = np.where(whole == 2, lungs, np.where(whole == 1, False, left))
    return right, left


def _solid_lung(mask: np.ndarray) -> np.ndarray:
    """Lung including its vessels and small lesions: an in-plane closing, then enclosed holes filled."""
    if not mask.any():
        return mask
    closed = ndimage.binary_closing(mask, structure=_IN_PLANE, iterations=2, border_value=0) | mask
    return ndimage.binary_fill_holes(closed, structure=_IN_PLANE)


def _mediastinum(right: np.ndarray, left: np.ndarray, body: np.ndarray) -> np.ndarray:
    """What lies between the lungs' medial edges in each axial row, where that gap is at most
    MAX_MEDIASTINUM_WIDTH of the body's width (at the lung bases the lungs are thin crescents
    around the upper abdomen, and what lies between them there is liver and stomach); the largest
    connected part of it."""
    n_x = right.shape[2]
    columns = np.arange(n_x)[None, None, :]
    right_last = np.where(right.any(axis=2), n_x - 1 - right[:, :, ::-1].argmax(axis=2), n_x)
    left_first = np.where(left.any(axis=2), left.argmax(axis=2), -1)
    body_cols = body.any(axis=1)
    width = np.where(body_cols.any(axis=1), body_cols.sum(axis=1), n_x).astype(np.float32)
    narrow = (left_first - right_last) <= MAX_MEDIASTINUM_WIDTH * width[:, None]
    between = (columns > right_last[..., None]) & (columns < left_first[..., None]) & narrow[..., None] & body
    between = ndimage.binary_opening(between, structure=_IN_PLANE, iterations=1)
    return _largest(between) if between.any() else between


def _upsample(mask: np.ndarray, strides: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Repeat each coarse voxel over the block it stands for (`np.take` per axis: several times
    faster than `np.repeat` or broadcasting for bool arrays; the last axis first, so that the
    big copies at the end move whole rows)."""
    for axis in (2, 1, 0):
        stride, n = strides[axis], shape[axis]
        mask = np.take(mask, np.minimum(np.arange(n) // stride, mask.shape[axis] - 1), axis=axis)
    return mask


def find_rois(volume: Any) -> dict[str, np.ndarray]:
    """Boolean masks `body`, `lung_left`, `lung_right`, `mediastinum` in the volume's own grid.

    `volume` is a `CTVolume` (its spacing sets the minimum lung size) or a (z, y, x) HU array in the
    canonical orientation. A scan without lungs (e.g. below the diaphragm) gets empty lung and
    mediastinum masks. Raises ValueError for non-3-D or normalised (non-HU) input."""
    array, spacing = _hu_array(volume)
    strides = (max(1, math.ceil(array.shape[0] / _COARSE_DEPTH)),
               *(max(1, math.ceil(n / _COARSE_IN_PLANE)) for n in array.shape[1:]))
    coarse = np.ascontiguousarray(array[:: strides[0], :: strides[1], :: strides[2]], dtype=np.float32)
    body = _body(coarse)
    voxel_ml = float(np.prod([s * t for s, t in zip(spacing, strides)])) / 1000.0
    labels, count = _lung_components(coarse, body, voxel_ml)
    right, left = _sides(labels, count, body)
    right, left = _solid_lung(right), _solid_lung(left)
    left &= ~right
    mediastinum = _mediastinum(right, left, body) if right.any() and left.any() else np.zeros_like(body)
    coarse_masks = {"body": body, "lung_left": left, "lung_right": right, "mediastinum": mediastinum}
    return {name: _upsample(coarse_masks[name], strides, array.shape) for name in ROI_NAMES}


def parse_name_map(text: str) -> dict[str, tuple[int, ...]]:
    """A name map as users type it: a preset (`synth`, `totalsegmentator`) or
    `lung_left=10,11;lung_right=12,13,14;mediastinum=51` (organ = label values)."""
    key = text.strip().lower()
    if key in NAME_MAPS:
        return dict(NAME_MAPS[key])
    result: dict[str, tuple[int, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, values = part.partition("=")
        try:
            labels = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError:
            labels = ()
        if not sep or not name.strip() or not labels:
            raise ValueError(f"bad organ entry {part!r} in the name map: write organ=label[,label...], "
                             f"entries separated by ';' (or a preset: {', '.join(NAME_MAPS)})")
        result[name.strip()] = labels
    if not result:
        raise ValueError("the organ name map is empty")
    return result


def read_roi_labels(path: str | Path, name_map: Mapping[str, Sequence[int]] | str, like: Any = None) -> dict[str, np.ndarray]:
    """Organ masks from a label image (e.g. TotalSegmentator's): organ -> the voxels whose label is
    one of its values. `like` (the CT) must have the same grid; raises ValueError naming the file."""
    labels = read_ct(path)
    names = parse_name_map(name_map) if isinstance(name_map, str) else {k: tuple(v) for k, v in name_map.items()}
    if like is not None:
        shape = np.asarray(getattr(like, "array", like)).shape
        if labels.array.shape != shape:
            raise ValueError(f"{path}: label grid {labels.array.shape} differs from the CT's {shape}")
    values = np.rint(labels.array).astype(np.int32)
    return {name: np.isin(values, list(ids)) for name, ids in names.items()}


def rois_for(volume: Any, names: Sequence[str], given: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The masks `names` of a volume: those `given` (a label file) first, the rest from `find_rois`;
    a name neither knows is an error listing what is known."""
    given = dict(given or {})
    missing = [n for n in names if n not in given]
    found = find_rois(volume) if missing else {}
    unknown = [n for n in missing if n not in found]
    if unknown:
        raise ValueError(f"no mask for organ(s) {unknown}: give them in the label file's name map "
                         f"(find_rois knows {list(ROI_NAMES)})")
    return {n: np.asarray(given[n] if n in given else found[n], dtype=bool) for n in names}
