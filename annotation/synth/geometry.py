"""Millimetre coordinates of a phantom grid and soft-edged shapes drawn inside small boxes.

Shapes are evaluated only inside their bounding box and blended with a soft edge one voxel wide,
which stands for the partial-volume effect of a real scanner and keeps painting cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Voxel centres in mm, centred on the volume: z superior+, y posterior+, x patient-left+.

    Matches the canonical array layout of `model.ct` (k inferior->superior, rows
    anterior->posterior, columns patient right->left)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def axis(self, n: int) -> np.ndarray:
        size, step = self.shape[n], self.spacing[n]
        return ((np.arange(size, dtype=np.float32) - (size - 1) / 2) * step).astype(np.float32)

    def coords(self, box: Box | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinate arrays of shape (Z,1,1), (1,Y,1), (1,1,X)."""
        box = box or (slice(None),) * 3
        z, y, x = (self.axis(n)[box[n]] for n in range(3))
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> Box | None:
        """The voxel box covering [lo, hi] mm (z, y, x), clipped; None when it misses the grid."""
        slices = []
        for n in range(3):
            size, step = self.shape[n], self.spacing[n]
            start = int(np.floor(lo_mm[n] / step + (size - 1) / 2))
            stop = int(np.ceil(hi_mm[n] / step + (size - 1) / 2)) + 1
            start, stop = max(start, 0), min(stop, size)
            if start >= stop:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)  # type: ignore[return-value]

    def to_voxel(self, point_mm: np.ndarray) -> np.ndarray:
        """Fractional voxel index (z, y, x) of a point in mm."""
        return np.asarray(point_mm) / np.asarray(self.spacing) + (np.asarray(self.shape) - 1) / 2

    def to_mm(self, index: np.ndarray) -> np.ndarray:
        return (np.asarray(index, dtype=float) - (np.asarray(self.shape) - 1) / 2) * np.asarray(self.spacing)

    @property
    def soft(self) -> float:
        """Edge width (mm) of soft shapes: one in-plane voxel."""
        return float(min(self.spacing[1:]))


def soft_edge(signed_inside_mm: np.ndarray, soft: float) -> np.ndarray:
    """Weight 1 deep inside, 0 outside, a linear ramp one `soft` wide across the boundary."""
    return np.clip(signed_inside_mm * np.float32(1 / soft) + np.float32(0.5), 0.0, 1.0).astype(np.float32, copy=False)


def ellipsoid(grid: Grid, centre: np.ndarray, radii: np.ndarray,
              rotation: np.ndarray | None = None) -> tuple[Box | None, np.ndarray]:
    """Soft ellipsoid (z, y, x radii in mm, optional 3x3 rotation of its axes) inside its box."""
    centre, radii = np.asarray(centre, np.float32), np.asarray(radii, np.float32)
    reach = float(radii.max()) + 2 * max(grid.spacing)
    box = grid.box(centre - reach, centre + reach)
    if box is None:
        return None, np.zeros((0, 0, 0), np.float32)
    z, y, x = grid.coords(box)
    d = (z - centre[0], y - centre[1], x - centre[2])
    if rotation is not None:
        rotation = rotation.astype(np.float32)
        d = tuple(rotation[i, 0] * d[0] + rotation[i, 1] * d[1] + rotation[i, 2] * d[2] for i in range(3))
    r = np.sqrt((d[0] / radii[0]) ** 2 + (d[1] / radii[1]) ** 2 + (d[2] / radii[2]) ** 2)
    return box, soft_edge((1.0 - r) * radii.mean(), grid.soft)  # (1 - r) * radius ~ distance to surface


def tube(grid: Grid, p0: np.ndarray, p1: np.ndarray, radius: float) -> tuple[Box | None, np.ndarray]:
    """Soft cylinder with round caps from p0 to p1 (mm, z y x)."""
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    reach = radius + 2 * max(grid.spacing[1:])
    box = grid.box(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
    if box is None:
        return None, np.zeros((0, 0, 0), np.float32)
    return box, soft_edge(radius - segment_distance(grid, box, p0, p1), grid.soft)


def segment_distance(grid: Grid, box: Box, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance (mm) of every voxel of `box` to the segment p0-p1."""
    z, y, x = grid.coords(box)
    axis = p1 - p0
    length2 = float(axis @ axis) or 1e-9
    rel = (z - p0[0], y - p0[1], x - p0[2])
    t = np.clip((rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]) / length2, 0.0, 1.0)
    return np.sqrt((rel[0] - t * axis[0]) ** 2 + (rel[1] - t * axis[1]) ** 2 + (rel[2] - t * axis[2]) ** 2)


def blend(volume: np.ndarray, box: Box | None, weight: np.ndarray, hu: float | np.ndarray) -> None:
    """Mix `hu` into `volume` in place with the given weight (partial volume)."""
    if box is None:
        return
    region = volume[box]
    region += weight * (hu - region)


def rotation_yx(angle: float) -> np.ndarray:
    """Rotation about the z axis (in the axial plane) by `angle` radians, as a 3x3 (z, y, x) matrix."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def bounding_box(mask: np.ndarray, box: Box) -> tuple[list[int], list[int]] | None:
    """(start, stop-exclusive) voxel indices of the true voxels of a box-local mask."""
    if not mask.any():
        return None
    lo, hi = [], []
    for n in range(3):
        other = tuple(a for a in range(3) if a != n)
        hits = np.flatnonzero(mask.any(axis=other))
        lo.append(int(hits[0]) + (box[n].start or 0))
        hi.append(int(hits[-1]) + 1 + (box[n].start or 0))
    return lo, hi
