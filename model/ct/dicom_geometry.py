"""Where a DICOM stack's slices lie, and resampling an irregular one onto an orthogonal grid.

A scanner's series is not always a box of voxels: with gantry tilt the image planes are tilted
while the table moves along the body axis, so the stack is sheared; some protocols change the
slice increment part-way (head CT: thin slices at the skull base, thicker above). Like
dcm2niix, dicom2nifti and Slicer, such a stack is resampled (SimpleITK, trilinear) onto an
equidistant grid whose slice axis is perpendicular to the image planes, and the volume's meta
says what was done. Only what cannot be trusted is refused: a gap much larger than the
neighbouring ones means slices are missing, and the files either side are named.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.ct.volume import CTReadError

#: Largest gantry tilt (degrees) still read as an ordinary axis-aligned stack.
MAX_TILT_DEGREES = 0.1
#: Slice gaps may differ from their median by this fraction and still count as even.
SLICE_GAP_TOLERANCE = 0.1
#: A gap this many times larger than both neighbouring gaps means missing slices.
MISSING_SLICE_FACTOR = 1.5


@dataclass(frozen=True)
class StackPlan:
    """A stack sorted along its slice normal: `order` indexes the input slices."""

    order: list[int]
    along: np.ndarray  # sorted positions along the normal, mm
    positions: np.ndarray  # sorted ImagePositionPatient, LPS mm (n, 3)
    row: np.ndarray  # direction of increasing column index (LPS unit vector)
    col: np.ndarray  # direction of increasing row index
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    tilt_degrees: float
    uneven: bool

    @property
    def regular(self) -> bool:
        return not self.uneven and self.tilt_degrees <= MAX_TILT_DEGREES

    def description(self, n_out: int, spacing: float) -> str:
        """What resampling did, in the words the viewer shows."""
        done = []
        if self.tilt_degrees > MAX_TILT_DEGREES:
            done.append(f"gantry tilt of {self.tilt_degrees:.1f} degrees corrected")
        if self.uneven:
            gaps = np.diff(self.along)
            done.append(f"uneven slice gaps ({gaps.min():.3g}..{gaps.max():.3g} mm) made even")
        return (f"resampled onto an orthogonal grid ({', '.join(done)}): {len(self.order)} slices became {n_out} "
                f"at {spacing:.3g} mm (trilinear)")


def plan_stack(path: Path, names: Sequence[str], positions: np.ndarray, orientation: Sequence[float],
               pixel_spacing: Sequence[float]) -> StackPlan:
    """Sort slices along their normal; refuse duplicates and missing slices (naming the files)."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.5 or min(np.linalg.norm(row), np.linalg.norm(col)) < 0.5:
        raise CTReadError(path, f"invalid ImageOrientationPatient {list(orientation)}")
    row, col, normal = row / np.linalg.norm(row), col / np.linalg.norm(col), normal / np.linalg.norm(normal)
    if len(pixel_spacing) != 2 or not all(math.isfinite(float(s)) and float(s) > 0 for s in pixel_spacing):
        raise CTReadError(path, f"zero, negative or missing PixelSpacing {list(pixel_spacing)}")
    positions = np.asarray(positions, float)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    gaps = np.diff(along)
    if len(gaps) and gaps.min() < 1e-3:
        k = int(np.argmin(gaps))
        raise CTReadError(path, f"two slices share one position ({names[order[k]]} and {names[order[k + 1]]}: duplicate "
                                "slices or several acquisitions in one series)")
    _refuse_missing_slices(path, [names[i] for i in order], gaps)
    median = float(np.median(gaps)) if len(gaps) else 1.0
    uneven = bool(len(gaps) and np.abs(gaps - median).max() > SLICE_GAP_TOLERANCE * median)
    span = positions[-1] - positions[0]
    off_normal = float(np.linalg.norm(span - (span @ normal) * normal))
    tilt = math.degrees(math.atan2(off_normal, float(span @ normal))) if len(gaps) else 0.0
    return StackPlan([int(i) for i in order], along, positions, row, col, normal,
                     (float(pixel_spacing[0]), float(pixel_spacing[1])), tilt, uneven)


def _refuse_missing_slices(path: Path, names: list[str], gaps: np.ndarray) -> None:
    """A gap larger than MISSING_SLICE_FACTOR times both neighbours is a hole, not a protocol."""
    for k, gap in enumerate(gaps):
        neighbours = [gaps[j] for j in (k - 1, k + 1) if 0 <= j < len(gaps)]
        if neighbours and gap > MISSING_SLICE_FACTOR * max(neighbours):
            raise CTReadError(path, f"missing slices: a {gap:.3g} mm gap between {names[k]} and {names[k + 1]} where "
                                    f"the series' spacing is {max(neighbours):.3g} mm")


def output_spacing(plan: StackPlan) -> float:
    """The even slice spacing: the median gap, or for uneven gaps the smallest one (no detail
    lost), but never below half the median (a memory bound)."""
    gaps = np.diff(plan.along)
    median = float(np.median(gaps))
    return max(float(gaps.min()), median / 2) if plan.uneven else median


def regular_grid_image(plan: StackPlan, sorted_slices: np.ndarray) -> tuple[Any, int, float]:
    """`sorted_slices` (n, rows, cols; HU, in `plan` order) resampled onto an orthogonal grid.

    Returns (SimpleITK image, slices, slice spacing); the image's direction is (row, col, normal): the planes keep their
    orientation and the slice axis becomes perpendicular to them; the grid covers every slice."""
    import SimpleITK as sitk

    dz = output_spacing(plan)
    n_out = int(math.floor((plan.along[-1] - plan.along[0]) / dz + 1e-6)) + 1
    targets = plan.along[0] + dz * np.arange(n_out)
    stack, origins = sorted_slices, plan.positions
    if plan.uneven:
        from scipy.interpolate import interp1d

        stack = interp1d(plan.along, sorted_slices, axis=0, assume_sorted=True, copy=False)(targets).astype(np.float32)
        origins = interp1d(plan.along, plan.positions, axis=0, assume_sorted=True)(targets)
    sy, sx = plan.pixel_spacing
    direction = np.column_stack([plan.row, plan.col, plan.normal])
    image = sitk.GetImageFromArray(np.ascontiguousarray(stack, dtype=np.float32))
    image.SetSpacing((sx, sy, dz))
    image.SetOrigin(tuple(float(v) for v in origins[0]))
    image.SetDirection(tuple(direction.flatten().tolist()))
    fill = float(sorted_slices.min())
    # In-plane shift of each slice's origin against the first one (gantry tilt: a straight line).
    shifts = (origins - origins[0]) @ np.column_stack([plan.row, plan.col])
    index = np.arange(n_out)
    per_slice = shifts[1:].T @ index[1:] / max(float(index[1:] @ index[1:]), 1.0) if n_out > 1 else np.zeros(2)
    shear = per_slice[0] * plan.row + per_slice[1] * plan.col
    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(float(v) for v in origins[0]))
    transform.SetMatrix(tuple((np.eye(3) - np.outer(shear, plan.normal) / dz).flatten().tolist()))
    rows, cols = sorted_slices.shape[1:]
    pixel = np.array([sx, sy])  # whole pixels of the first slice's lattice, as dcm2niix keeps it
    lo = np.floor(np.minimum(shifts.min(axis=0), 0.0) / pixel - 1e-6) * pixel
    hi = np.ceil((shifts.max(axis=0) + np.array([(cols - 1) * sx, (rows - 1) * sy])) / pixel - 1e-6) * pixel
    out_cols, out_rows = (int(round((hi[0] - lo[0]) / sx)) + 1), (int(round((hi[1] - lo[1]) / sy)) + 1)
    reference = sitk.Image([out_cols, out_rows, n_out], sitk.sitkFloat32)
    reference.SetSpacing((sx, sy, dz))
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(tuple(float(v) for v in origins[0] + lo[0] * plan.row + lo[1] * plan.col))
    return sitk.Resample(image, reference, transform, sitk.sitkLinear, fill, sitk.sitkFloat32), n_out, dz
