"""A small CT phantom with one bright marker at the patient's anterior, right and superior sides.

Shared by the registration test (an asymmetric body to register) and the reading room's
orientation test (each marker must land on the screen side the radiological convention puts it).
Canonical layout (model/ct/volume.py): k inferior->superior, j anterior->posterior, i right->left.
"""
from __future__ import annotations

import numpy as np

from model.ct.volume import CTVolume, canonical_affine

SHAPE = (40, 80, 72)
SPACING = (4.0, 2.5, 2.5)
MARKER_HU = 2000.0
#: Marker centres (k, j, i): anterior = small j, right = small i, superior = large k; no two share
#: an axial, coronal or sagittal slice, so each view through one marker shows that marker alone.
MARKERS = {"anterior": (12, 12, 48), "right": (20, 44, 10), "superior": (33, 30, 30)}


def marker_phantom(origin_ras: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> CTVolume:
    """Air around an elliptic soft-tissue body with two unequal lungs, a spine and the markers."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    array = np.full(SHAPE, -1000.0, dtype=np.float32)
    body = ((j - 40) / 30) ** 2 + ((i - 36) / 30) ** 2 <= 1.0
    array[body & (k >= 4) & (k <= 36)] = 40.0
    right_lung = ((j - 38) / 14) ** 2 + ((i - 24) / 8) ** 2 + ((k - 20) / 14) ** 2 <= 1.0
    left_lung = ((j - 42) / 11) ** 2 + ((i - 49) / 7) ** 2 + ((k - 18) / 10) ** 2 <= 1.0
    array[right_lung | left_lung] = -850.0
    spine = ((j - 62) / 5) ** 2 + ((i - 36) / 5) ** 2 <= 1.0
    array[spine & (k >= 4) & (k <= 36)] = 700.0
    for kc, jc, ic in MARKERS.values():
        array[kc - 2:kc + 3, jc - 3:jc + 4, ic - 3:ic + 4] = MARKER_HU
    return CTVolume(array, SPACING, canonical_affine(SPACING, origin_ras), {"source": "marker phantom"})
