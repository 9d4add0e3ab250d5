"""A ruler on the axial (or any) view that reports lengths in millimetres.

Why a Shapes layer of lines: napari's own line tool draws and edits lines with the keyboard and
mouse a user already knows. The layer takes the shown scan's scale (its voxel spacing), so the
slider keeps stepping by slices, and a line's length in mm is its data length times that scale.
Each line is labelled with its length, and the reading-room panel lists them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari

RULER = "ruler (mm)"


def lengths_mm(layer: Any) -> list[float]:
    """The length of every line (or path) of a ruler layer, in mm."""
    scale = np.asarray(layer.scale, dtype=float)
    return [float(np.linalg.norm(np.diff(np.asarray(shape, dtype=float) * scale, axis=0), axis=1).sum())
            for shape in layer.data]


def _label(layer: Any) -> None:
    layer.features = {"length_mm": np.asarray(lengths_mm(layer), dtype=float)}
    layer.text = {"string": "{length_mm:.1f} mm", "color": "#7fe3ff", "size": 11, "anchor": "upper_left"}


def ruler_layer(viewer: napari.viewer.Viewer, scan: Any = None) -> Any:
    """The ruler layer (made on first use, in `scan`'s grid), selected and in line mode, ready to draw."""
    if RULER in viewer.layers:
        layer = viewer.layers[RULER]
    else:
        place = {"scale": scan.scale, "translate": scan.translate} if scan is not None else {}
        layer = viewer.add_shapes(ndim=3, name=RULER, edge_color="#7fe3ff", edge_width=0.5, shape_type="line",
                                  **place)
        layer.events.data.connect(lambda _event: _label(layer))
        layer.events.set_data.connect(lambda _event: _label(layer))
    viewer.layers.selection.active = layer
    layer.mode = "add_line"
    return layer


def measure(viewer: napari.viewer.Viewer, start: Any, end: Any) -> float:
    """Add a ruler line between two world points (scripts, tests); its length in mm."""
    layer = ruler_layer(viewer)
    world = np.stack([np.asarray(start, dtype=float), np.asarray(end, dtype=float)])
    layer.add_lines((world - np.asarray(layer.translate)) / np.asarray(layer.scale))
    _label(layer)
    return lengths_mm(layer)[-1]
