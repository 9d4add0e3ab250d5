"""One synthetic patient: base anatomy once, then each scan = anatomy + that scan's lesions +
scanner noise. Labels are read off what was actually painted, so a label is 1 only when the
finding is in the volume."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from annotation.qa_templates import CT_RATE_LABELS, SCAN_LETTERS
from annotation.synth.anatomy import REGION_LABELS, Anatomy, build_anatomy
from annotation.synth.geometry import Grid
from annotation.synth.lesions import PAINT_ORDER, Lesion, Painted, paint_lesion
from annotation.synth.timeline import draw_lesions, lesion_for

HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass
class Scan:
    letter: str
    hu: np.ndarray          # float32 HU (z, y, x), with noise, clipped to the 12-bit CT range
    painted: list[Painted]
    labels: dict[str, int]


@dataclass
class Patient:
    anatomy: Anatomy
    lesions: list[Lesion]
    scans: list[Scan]


def synthesize_patient(grid: Grid, rng: np.random.Generator, n_scans: int, noise_hu: float = 14.0,
                       findings: Mapping[str, Sequence[float]] | None = None) -> Patient:
    """Render all scans of one patient. `findings` (CT-RATE label -> size factor per scan, 0 =
    absent) replaces the random findings, for tests and sample data."""
    anatomy = build_anatomy(grid, rng)
    if findings is None:
        lesions = draw_lesions(anatomy, rng, n_scans)
    else:
        placed = (lesion_for(label, anatomy, rng, list(scales)) for label, scales in findings.items())
        lesions = sorted((l for l in placed if l is not None), key=lambda l: PAINT_ORDER.index(l.kind))
    scans = []
    for t in range(n_scans):
        hu = anatomy.hu.copy()
        painted = []
        for lesion in lesions:
            scale = lesion.scales[t] if t < len(lesion.scales) else 0.0
            if scale > 0:
                result = paint_lesion(hu, anatomy, lesion, scale)
                if result is not None:
                    painted.append(result)
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
        np.clip(hu, HU_MIN, HU_MAX, out=hu)
        labels = dict.fromkeys(CT_RATE_LABELS, 0)
        for p in painted:
            labels[p.lesion.label] = 1
        scans.append(Scan(SCAN_LETTERS[t], hu, painted, labels))
    return Patient(anatomy, lesions, scans)


#: Lesions that take space from the lungs, the region they give it to, and the margin (mm) of
#: what they push in beyond their mask: pleural fluid (pleural space, inside the body), an
#: enlarged heart (its 6 mm fat coat, painted outside the myocardium mask) or pericardial fluid.
_DISPLACES_LUNG = {"pleural_effusion": ("body", 0.0), "cardiomegaly": ("mediastinum", 7.0),
                   "pericardial_effusion": ("mediastinum", 1.0)}


def scan_regions(anatomy: Anatomy, painted: Sequence[Painted]) -> np.ndarray:
    """The organ map (REGION_LABELS) of one scan: the anatomy's, less the lung its effusions or
    enlarged heart displaced (what a lung mask of that scan should not cover)."""
    regions = anatomy.regions.copy()
    lung_values = (REGION_LABELS["lung_left"], REGION_LABELS["lung_right"])
    spacing = np.asarray(anatomy.grid.spacing)
    for p in painted:
        target, margin = _DISPLACES_LUNG.get(p.lesion.kind, (None, 0.0))
        if target is None:
            continue
        pad = np.ceil(margin / spacing).astype(int)
        box = tuple(slice(max(b.start - n, 0), min(b.stop + n, size))
                    for b, n, size in zip(p.box, pad, regions.shape))
        grown = np.zeros([b.stop - b.start for b in box], bool)
        grown[tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(p.box, box))] = p.mask
        if margin > 0:
            grown = ndimage.distance_transform_edt(~grown, sampling=spacing) <= margin
        local = regions[box]
        local[grown & np.isin(local, lung_values)] = REGION_LABELS[target]
    return regions
