"""Viewer layers the chat panel adds next to a CT: answer boxes and "what the model sees".

Every layer shares the CT layer's world transform (scale, translate, affine), so a box given in
voxels of the CT lands on the same millimetres as the CT, whatever the scan's spacing or origin.
Box corners are voxel-edge positions (0 = outer edge of the first voxel, `model.inference.boxes`), and napari
puts voxel i's centre at data coordinate i, hence the half-voxel shift.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BOX_COLOR = "yellow"
#: At most this many rectangles per box (one per slice it spans); more slices share rectangles.
MAX_BOX_SLICES = 128


def _check_box(box: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in box)
    if len(values) != 6:
        raise ValueError(f"a box has 6 numbers (z1, y1, x1, z2, y2, x2), got {len(values)}")
    return values


def box_slices(box: Sequence[float]) -> list[int]:
    """The axial slices (voxel indices) whose centres lie inside the box; at least the middle one."""
    z1, _, _, z2, _, _ = _check_box(box)
    first, last = int(np.ceil(z1 - 0.5)), int(np.floor(z2 - 0.5))
    if last < first:
        return [int(round((z1 + z2) / 2 - 0.5))]
    step = max(1, (last - first + 1 + MAX_BOX_SLICES - 1) // MAX_BOX_SLICES)
    return list(range(first, last + 1, step))


def box_rectangles(box: Sequence[float]) -> list[np.ndarray]:
    """One (4, 3) rectangle in CT data coordinates (z, y, x) per slice the box spans."""
    _, y1, x1, _, y2, x2 = _check_box(box)
    ys, xs = (y1 - 0.5, y2 - 0.5), (x1 - 0.5, x2 - 0.5)
    corners = [(ys[0], xs[0]), (ys[0], xs[1]), (ys[1], xs[1]), (ys[1], xs[0])]
    return [np.array([[z, y, x] for y, x in corners], dtype=float) for z in box_slices(box)]


def box_centre(box: Sequence[float]) -> np.ndarray:
    """Centre of the box in CT data coordinates (z, y, x)."""
    values = _check_box(box)
    return np.array([(values[i] + values[i + 3]) / 2 - 0.5 for i in range(3)])


def _transform(ct_layer: Any) -> dict[str, Any]:
    return {"scale": tuple(ct_layer.scale), "translate": tuple(ct_layer.translate),
            "affine": ct_layer.affine.affine_matrix}


def add_box_layer(viewer: Any, ct_layer: Any, box: Sequence[float], name: str) -> Any:
    """A Shapes layer outlining `box` (CT voxels) on every slice it spans, aligned with `ct_layer`.

    Replaces an earlier layer of the same name, so re-showing a turn's box does not pile up layers.
    """
    rectangles = box_rectangles(box)
    if name in viewer.layers:
        viewer.layers.remove(name)
    return viewer.add_shapes(
        rectangles, shape_type="rectangle", name=name, edge_color=BOX_COLOR, face_color="transparent",
        edge_width=1, opacity=1.0, metadata={"box_voxels": tuple(float(v) for v in box)}, **_transform(ct_layer),
    )


def jump_to(viewer: Any, ct_layer: Any, point_data: Sequence[float]) -> None:
    """Move the viewer's slider (and the 2D camera) to a point given in CT data coordinates."""
    world = np.asarray(ct_layer.data_to_world(np.asarray(point_data, dtype=float)), dtype=float)
    offset = viewer.dims.ndim - world.size
    for axis, value in enumerate(world):
        viewer.dims.set_point(axis + offset, float(value))
    displayed = list(viewer.dims.displayed)
    viewer.scene.camera.center = tuple(float(world[a - offset]) for a in displayed if a - offset >= 0)


def model_input_transform(ct_layer: Any, scale_vox: Sequence[float], offset_vox: Sequence[float]) -> dict[str, Any]:
    """World transform of the model input: one input voxel covers `scale_vox` CT voxels and input
    voxel 0's centre sits at CT voxel `offset_vox` (`model.ct.preprocess.InputGeometry`)."""
    ct_scale = np.asarray(ct_layer.scale, dtype=float)
    return {
        "scale": tuple(ct_scale * np.asarray(scale_vox, dtype=float)),
        "translate": tuple(np.asarray(ct_layer.translate, dtype=float) + ct_scale * np.asarray(offset_vox, dtype=float)),
        "affine": ct_layer.affine.affine_matrix,
    }


def show_model_input(viewer: Any, ct_layer: Any, image: np.ndarray, scale_vox: Sequence[float],
                     offset_vox: Sequence[float], name: str) -> Any:
    """Overlay the preprocessed input (uint8 0-255) on the CT, replacing an earlier one."""
    if name in viewer.layers:
        viewer.layers.remove(name)
    return viewer.add_image(image, name=name, colormap="magma", contrast_limits=(0, 255), opacity=0.6,
                            blending="additive", **model_input_transform(ct_layer, scale_vox, offset_vox))
