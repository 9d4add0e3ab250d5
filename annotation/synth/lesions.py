"""Lesions that stand for CT-RATE labels, drawn into a patient's anatomy with a location and a
size in mm, and measured back from what was actually painted (so every stated measurement is
true of the volume, voxel for voxel).

Labels the phantom cannot show at 1.4 x 5 mm (peribronchial thickening, interlobular septal
thickening, mosaic attenuation pattern) are never generated: their label stays 0.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from annotation.synth.anatomy import AIR, BLOOD, FLUID, LOBES, MYOCARDIUM, Anatomy, paint_heart
from annotation.synth.geometry import Box, blend, bounding_box, ellipsoid, soft_edge, tube

Pieces = list[tuple[Box | None, np.ndarray]]


@dataclass
class Lesion:
    """One finding of one patient: where it is and how big it is at scale 1 (`size` is the kind's
    main dimension: diameter or thickness in mm, or the heart's enlargement factor). Its timeline
    (`scales`, one per scan, 0 = absent) says when it is present and how it grows."""

    label: str
    kind: str
    side: str
    location: str
    lobe: int | None = None
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    size: float = 10.0
    params: dict = field(default_factory=dict)
    scales: list[float] = field(default_factory=list)


@dataclass
class Painted:
    """What one lesion became in one scan: its mask (box-local) and measurements."""

    lesion: Lesion
    box: Box
    mask: np.ndarray  # bool, shape of the box
    record: dict


def _union(pieces: Pieces) -> tuple[Box, np.ndarray] | None:
    """Merge box-local weights into one box-local boolean mask (weight > 0.5)."""
    pieces = [(b, w) for b, w in pieces if b is not None]
    if not pieces:
        return None
    lo = [min(b[n].start for b, _ in pieces) for n in range(3)]
    hi = [max(b[n].stop for b, _ in pieces) for n in range(3)]
    box = tuple(slice(lo[n], hi[n]) for n in range(3))
    mask = np.zeros([hi[n] - lo[n] for n in range(3)], bool)
    for b, w in pieces:
        local = tuple(slice(b[n].start - lo[n], b[n].stop - lo[n]) for n in range(3))
        mask[local] |= w > 0.5
    return box, mask  # type: ignore[return-value]


def _lung(an: Anatomy, box: Box | None, lobe: int | None = None, side: str | None = None) -> np.ndarray:
    if box is None:
        return np.zeros((0, 0, 0), np.float32)
    lobes = an.lobes[box]
    if lobe is not None:
        return (lobes == lobe).astype(np.float32)
    if side is not None:
        ids = [k for k, (s, _) in LOBES.items() if s == side]
        return np.isin(lobes, ids).astype(np.float32)
    return (lobes > 0).astype(np.float32)


def _nodule(vol, an, lesion, scale) -> Pieces:
    r = lesion.size * scale / 2
    radii = np.array([r * 0.9, r, r * lesion.params["aspect"]])
    box, w = ellipsoid(an.grid, lesion.centre, radii)
    w = w * np.maximum(_lung(an, box), w > 0.9)
    blend(vol, box, w, 32.0)
    return [(box, w)]


def _blob(vol, an, lesion, scale, hu) -> Pieces:
    """A few overlapping ellipsoids, clipped to the lesion's lobe (fissures bound real disease)."""
    pieces = []
    for offset, radius in lesion.params["parts"]:
        box, w = ellipsoid(an.grid, lesion.centre + np.asarray(offset) * scale, np.asarray(radius) * scale)
        if box is None:
            continue
        w = w * _lung(an, box, lesion.lobe)
        blend(vol, box, w, hu)
        pieces.append((box, w))
    return pieces


def _consolidation(vol, an, lesion, scale) -> Pieces:
    pieces = _blob(vol, an, lesion, scale, 38.0)
    c = lesion.centre
    for direction in lesion.params["bronchi"]:  # air bronchograms inside the consolidated lobe
        d = np.asarray(direction) * lesion.size * scale * 0.4
        box, w = tube(an.grid, c - d, c + d, 1.6)
        if box is not None:
            blend(vol, box, w * _lung(an, box, lesion.lobe) * (vol[box] > -150) * 0.8, AIR)
    return pieces


def _opacity(vol, an, lesion, scale) -> Pieces:
    return _blob(vol, an, lesion, scale, -560.0)


def _atelectasis(vol, an, lesion, scale) -> Pieces:
    return _blob(vol, an, lesion, scale, 30.0)


def _emphysema(vol, an, lesion, scale) -> Pieces:
    """Clustered low-attenuation holes in the upper lobes (centrilobular pattern)."""
    pieces = []
    for centre, radius in lesion.params["holes"]:
        box, w = ellipsoid(an.grid, np.asarray(centre), np.full(3, radius * scale))
        if box is None:
            continue
        w = w * _lung(an, box)
        blend(vol, box, w, -990.0)
        pieces.append((box, w))
    return pieces


def _pleural_effusion(vol, an, lesion, scale) -> Pieces:
    """Dependent fluid layering along the posterior chest wall, thickest at the base."""
    pieces = []
    grid = an.grid
    sides = ("right", "left") if lesion.side == "bilateral" else (lesion.side,)
    for side in sides:
        ids = [k for k, (s, _) in LOBES.items() if s == side]
        lung = np.isin(an.lobes, ids)
        zs = np.flatnonzero(lung.any(axis=(1, 2)))
        if zs.size == 0:
            continue
        box = (slice(int(zs[0]), int(zs[-1]) + 1), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
        lung = lung[box]
        z, y, x = grid.coords(box)
        ny = lung.shape[1]
        last = ny - 1 - np.argmax(lung[:, ::-1, :], axis=1)  # most posterior lung row per (z, x)
        y_post = grid.axis(1)[last][:, None, :]
        thick = lesion.size * scale * np.sqrt(np.clip((lesion.params["top"] - z) / (lesion.params["top"] - an.dome[0] + 40), 0, 1))
        w = soft_edge(y - (y_post - thick), grid.soft) * lung * (thick > 2)
        blend(vol, box, w, FLUID)
        pieces.append((box, w.astype(np.float32)))
    return pieces


def _cardiomegaly(vol, an, lesion, scale) -> Pieces:
    return [paint_heart(vol, an, lesion.size * min(scale, 1.15))]


def _pericardial_effusion(vol, an, lesion, scale) -> Pieces:
    rot = an.heart_rotation
    radii = an.heart_radii
    outer = ellipsoid(an.grid, an.heart_centre, radii + 1.5 + lesion.size * scale, rot)
    blend(vol, *outer, FLUID + 4)
    heart_box, heart_w = _paint_heart_core(vol, an)
    box, w = outer
    if box is None or heart_box is None:
        return [outer]
    local = tuple(slice(heart_box[n].start - box[n].start, heart_box[n].stop - box[n].start) for n in range(3))
    fluid = w.copy()
    fluid[local] = np.minimum(fluid[local], 1 - heart_w)
    return [(box, fluid)]


def _paint_heart_core(vol, an):
    """Myocardium and blood pools only (the pericardial sac is then filled with fluid)."""
    rot = an.heart_rotation
    box, w = ellipsoid(an.grid, an.heart_centre, an.heart_radii + 1.5, rot)
    blend(vol, *ellipsoid(an.grid, an.heart_centre, an.heart_radii, rot), MYOCARDIUM)
    blend(vol, *ellipsoid(an.grid, an.heart_centre, an.heart_radii - 9, rot), BLOOD)
    return box, w


def _spots(vol, an, lesion, scale, hu: float) -> Pieces:
    pieces = []
    for centre, radius in lesion.params["spots"]:
        box, w = ellipsoid(an.grid, np.asarray(centre), np.array([radius * 1.3, radius, radius]) * max(scale, 0.8))
        blend(vol, box, w, hu)
        pieces.append((box, w))
    return pieces


def _arterial_calcification(vol, an, lesion, scale) -> Pieces:
    return _spots(vol, an, lesion, scale, 750.0)


def _coronary_calcification(vol, an, lesion, scale) -> Pieces:
    return _spots(vol, an, lesion, scale, 650.0)


def _lymphadenopathy(vol, an, lesion, scale) -> Pieces:
    pieces = []
    for centre, radii in lesion.params["nodes"]:
        box, w = ellipsoid(an.grid, np.asarray(centre), np.asarray(radii) * scale)
        blend(vol, box, w, 42.0)
        pieces.append((box, w))
    return pieces


def _medical_material(vol, an, lesion, scale) -> Pieces:
    p = lesion.params
    box, w = ellipsoid(an.grid, np.asarray(p["device"]), np.asarray(p["device_radii"]))
    blend(vol, box, w, p["device_hu"])
    pieces = [(box, w)]
    for a, b in zip(p["path"], p["path"][1:]):
        tb, tw = tube(an.grid, np.asarray(a), np.asarray(b), 1.8)
        blend(vol, tb, tw, 900.0)
        pieces.append((tb, tw))
    return pieces


def _hiatal_hernia(vol, an, lesion, scale) -> Pieces:
    c = lesion.centre
    radii = np.array([0.9, 0.85, 1.0]) * lesion.size * scale / 2
    box, w = ellipsoid(an.grid, c, radii)
    blend(vol, box, w, 30.0)
    inner_box, inner = ellipsoid(an.grid, c + [0, -radii[1] * 0.45, 0], radii * 0.55)
    blend(vol, inner_box, inner, AIR)
    return [(box, w)]


def _bronchiectasis(vol, an, lesion, scale) -> Pieces:
    pieces = []
    for a, b in lesion.params["bronchi"]:
        a, b = np.asarray(a), np.asarray(b)
        tb, tw = tube(an.grid, a, b, lesion.size * scale / 2 + 1.8)
        if tb is None:
            continue
        tw = tw * _lung(an, tb, side=lesion.side)
        blend(vol, tb, tw, 45.0)
        lb, lw = tube(an.grid, a, b, lesion.size * scale / 2)
        blend(vol, lb, lw * _lung(an, lb, side=lesion.side), AIR)
        pieces.append((tb, tw))
    return pieces


def _fibrotic_sequela(vol, an, lesion, scale) -> Pieces:
    pieces = []
    for a, b in lesion.params["bands"]:
        tb, tw = tube(an.grid, np.asarray(a), np.asarray(b), 1.6)
        if tb is None:
            continue
        tw = tw * _lung(an, tb)
        blend(vol, tb, tw, 10.0)
        pieces.append((tb, tw))
    return pieces


PAINTERS: dict[str, Callable[..., Pieces]] = {
    "cardiomegaly": _cardiomegaly, "pericardial_effusion": _pericardial_effusion,
    "emphysema": _emphysema, "nodule": _nodule, "consolidation": _consolidation,
    "lung_opacity": _opacity, "atelectasis": _atelectasis, "pleural_effusion": _pleural_effusion,
    "arterial_calcification": _arterial_calcification, "coronary_calcification": _coronary_calcification,
    "lymphadenopathy": _lymphadenopathy, "hiatal_hernia": _hiatal_hernia,
    "bronchiectasis": _bronchiectasis, "fibrotic_sequela": _fibrotic_sequela,
    "medical_material": _medical_material,
}
# Painting order: the heart first (others sit on or around it), devices last (metal on top).
PAINT_ORDER = tuple(PAINTERS)


def paint_lesion(vol: np.ndarray, an: Anatomy, lesion: Lesion, scale: float) -> Painted | None:
    """Draw `lesion` at `scale` into `vol`; None when nothing of it landed inside the volume."""
    pieces = PAINTERS[lesion.kind](vol, an, lesion, scale)
    merged = _union(pieces)
    if merged is None or not merged[1].any():
        return None
    box, mask = merged
    record = measure(an, lesion, box, mask)
    parts = [m for m in (_union([p]) for p in pieces) if m is not None and m[1].any()]
    if lesion.kind == "lymphadenopathy":  # the largest node is the one reported
        largest = max(parts, key=lambda m: m[1].sum())
        record["size_mm"] = measure(an, lesion, *largest)["size_mm"]
    if len(parts) > 1:
        # Why: the box of scattered spots, clusters or bands is mostly normal tissue (the coronary
        # calcifications' box is 99 % myocardium and fat); a detector trained on it learns the region
        record["parts_bbox_voxel"] = [[*lo, *hi] for lo, hi in (bounding_box(m, b) for b, m in parts)]
    return Painted(lesion, box, mask, record)


def measure(an: Anatomy, lesion: Lesion, box: Box, mask: np.ndarray) -> dict:
    """Ground truth of one painted lesion: where (voxel and mm) and how big, from the mask."""
    grid = an.grid
    lo, hi = bounding_box(mask, box)
    local = np.argwhere(mask)
    centre_vox = local.mean(axis=0) + [box[n].start for n in range(3)]
    spacing = np.asarray(grid.spacing)
    extent = (np.asarray(hi) - np.asarray(lo)) * spacing
    axial = sorted((round(float(extent[1])), round(float(extent[2]))), reverse=True)
    record = {
        "label": lesion.label, "type": lesion.kind, "side": lesion.side, "location": lesion.location,
        "lobe": an.lobe_name(lesion.lobe) if lesion.lobe else None,
        "centre_voxel": [round(float(v), 1) for v in centre_vox],
        "centre_mm": [round(float(v), 1) for v in centre_vox * spacing],
        "bbox_voxel": [*lo, *hi],
        "bbox_mm": [round(float(v), 1) for v in (*(np.asarray(lo) * spacing), *(np.asarray(hi) * spacing))],
        "bbox_norm": [round(float(v), 4) for v in (*(np.asarray(lo) / grid.shape), *(np.asarray(hi) / grid.shape))],
        "size_mm": {"axial": axial, "craniocaudal": round(float(extent[0]))},
    }
    kind = lesion.kind
    if kind == "pleural_effusion":
        record["size_mm"]["thickness"] = round(float(mask.sum(axis=1).max() * spacing[1]))
    elif kind == "pericardial_effusion":
        record["size_mm"]["thickness"] = _anterior_thickness(an, box, mask)
    elif kind == "cardiomegaly":
        record["size_mm"]["transverse"] = round(float(extent[2]))
    elif kind == "lymphadenopathy":
        record["size_mm"]["short_axis"] = axial[1]
    elif kind == "nodule":
        record["size_mm"]["diameter"] = axial[0]
    return record


def _anterior_thickness(an: Anatomy, box: Box, mask: np.ndarray) -> int:
    """Fluid depth in front of the heart, along y through the heart's centre column."""
    k, _, i = (int(round(v)) for v in an.grid.to_voxel(an.heart_centre))
    k, i = k - box[0].start, i - box[2].start
    j_centre = int(round(an.grid.to_voxel(an.heart_centre)[1])) - box[1].start
    column = mask[min(max(k, 0), mask.shape[0] - 1), : max(j_centre, 1), min(max(i, 0), mask.shape[2] - 1)]
    return round(float(column.sum() * an.grid.spacing[1]))
