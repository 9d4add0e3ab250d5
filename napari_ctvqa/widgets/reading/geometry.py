"""Where a point of the viewer is on the patient, in millimetres, and which layers are scans.

Why apart: the crosshair, the ruler and the compare view all speak the patient's coordinates
(RAS mm from the scan's affine, the position a radiologist reads off a workstation), whatever
translate the viewer gave the layer to keep scans of different patients in one box.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from model.ct.volume import CTVolume, canonical_affine

#: Layers the panels add themselves start with these and are never treated as scans (the last is
#: the rating panel's own layer, `widgets.rating.LAYER_NAME`: it swaps scans as the rater moves on).
OWN_PREFIXES = ("model input", "ruler", "prior", "difference", "ct (rating)")


def is_scan(layer: Any) -> bool:
    """A 3-D grey-value image that is a scan (not an overlay the panels add)."""
    # deferred: napari is heavy; this module is imported by code that must not load it first
    from napari.layers import Image

    return (isinstance(layer, Image) and not layer.rgb and layer.ndim == 3
            and not layer.name.lower().startswith(OWN_PREFIXES))


def affine_of(layer: Any) -> np.ndarray:
    """The scan's (k, j, i) -> RAS affine: the reader's, else the canonical one of its scale."""
    affine = (layer.metadata or {}).get("affine")
    if affine is not None:
        return np.asarray(affine, dtype=float)
    return canonical_affine(tuple(float(s) for s in layer.scale))


def index_of(layer: Any, world: Any) -> np.ndarray:
    """Continuous voxel index (k, j, i) of a world point (napari's coordinates) in `layer`."""
    world = np.asarray(world, dtype=float)[-3:]
    return (world - np.asarray(layer.translate, dtype=float)) / np.asarray(layer.scale, dtype=float)


def ras_of(layer: Any, world: Any) -> np.ndarray:
    """The patient position (RAS+ mm: +x right, +y anterior, +z superior) of a world point."""
    return (affine_of(layer) @ np.append(index_of(layer, world), 1.0))[:3]


def format_ras(ras: Any) -> str:
    """"R 12.3  A 4.5  S 100.0 mm", the way workstations label a position."""
    x, y, z = (float(v) for v in ras)
    return f"{'R' if x >= 0 else 'L'} {abs(x):.1f}  {'A' if y >= 0 else 'P'} {abs(y):.1f}  {'S' if z >= 0 else 'I'} {abs(z):.1f} mm"


def value_at(layer: Any, world: Any) -> float | None:
    """The voxel value under a world point (nearest voxel), None outside the scan."""
    index = np.round(index_of(layer, world)).astype(int)
    data = layer.data[0] if layer.multiscale else layer.data
    if np.any(index < 0) or np.any(index >= np.asarray(data.shape)):
        return None
    return float(data[tuple(index)])


def volume_of(layer: Any) -> CTVolume:
    """The layer's scan as a CTVolume (its data, spacing and affine), for registration."""
    data = layer.data[0] if layer.multiscale else layer.data
    return CTVolume(np.asarray(data, dtype=np.float32), tuple(float(s) for s in layer.scale), affine_of(layer),
                    dict((layer.metadata or {}).get("ct_meta") or {}))
