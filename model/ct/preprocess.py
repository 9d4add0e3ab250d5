"""CT volume to model input, M3D style: optional CT window, min-max to [0, 1], crop to the body,
trilinear resize to the model's input size.

It is one of the hot paths of the chat panel (every new scan goes through it), so it works on
whole arrays: the body box comes from a strided copy of the volume, and the window and min-max
are applied after the resize (they commute with trilinear interpolation: clipping is done on the
cropped full-resolution data first, min-max is affine). The crop box is returned with the tensor so
boxes the model draws can be mapped back to voxels of the original volume.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.ct.values import replace_nonfinite
from model.ct.volume import CTReadError
from model.ct.windows import WINDOW_NAMES, WINDOW_PRESETS

BODY_THRESHOLD_HU = -500.0  # air is -1000, fat -100: everything of the patient lies above this
_BOX_STRIDE = (2, 4, 4)  # z, y, x stride of the copy the body box is found on


@dataclass(frozen=True)
class InputGeometry:
    """Where the model input came from: the crop box (z0, y0, x0, z1, y1, x1; ends exclusive) in
    voxels of the original array, the original shape and the model input size (d, h, w)."""

    crop: tuple[int, int, int, int, int, int]
    original_shape: tuple[int, int, int]
    size: tuple[int, int, int]

    @property
    def scale(self) -> tuple[float, float, float]:
        """Original voxels per model-input voxel along z, y, x."""
        return tuple((self.crop[i + 3] - self.crop[i]) / self.size[i] for i in range(3))  # type: ignore[return-value]

    @property
    def offset(self) -> tuple[float, float, float]:
        """Original voxel index of model-input voxel 0's centre (for overlaying the input on the CT)."""
        return tuple(self.crop[i] + 0.5 * s - 0.5 for i, s in enumerate(self.scale))  # type: ignore[return-value]


def resolve_window(window: str | Sequence[float] | None) -> tuple[float, float] | None:
    """A preset name from `model.ct.windows` or a (width, level) pair; None or "full" = the data's range."""
    if window is None:
        return None
    if isinstance(window, str):

        key = window.lower()
        if key == "full":
            return None
        if key not in WINDOW_PRESETS:
            raise ValueError(f"unknown CT window {window!r}; choose one of {', '.join(WINDOW_NAMES)}")
        window = WINDOW_PRESETS[key]
    values = tuple(float(v) for v in window)
    if len(values) != 2 or values[0] <= 0:
        raise ValueError(f"a CT window is (width, level) with width > 0, got {window!r}")
    return values  # type: ignore[return-value]


def body_box(array: np.ndarray, threshold: float) -> tuple[int, int, int, int, int, int]:
    """Bounding box of the largest connected region above `threshold` (the body, not the table),
    found on a strided copy and grown by one stride so it never cuts the body."""
    from scipy import ndimage

    shape = array.shape
    sz, sy, sx = (max(1, min(s, n // 64)) for s, n in zip(_BOX_STRIDE, shape))
    mask = array[::sz, ::sy, ::sx] > threshold
    if not mask.any():
        return (0, 0, 0, *shape)  # type: ignore[return-value]
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(sizes.argmax())
    box = []
    for axis, stride in enumerate((sz, sy, sx)):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((max(0, (hits[0] - 1) * stride), min(shape[axis], (hits[-1] + 2) * stride)))
    return (box[0][0], box[1][0], box[2][0], box[0][1], box[1][1], box[2][1])


def _as_array(volume: Any) -> tuple[np.ndarray, bool]:
    """The z,y,x array and whether it is already normalised to [0, 1] (M3D .npy input)."""
    array = getattr(volume, "array", volume)
    meta = getattr(volume, "meta", None) or {}
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"a CT volume must be 3-D (z, y, x), got shape {array.shape}")
    if min(array.shape) < 1:
        raise ValueError(f"empty CT volume, shape {array.shape}")
    return array, bool(meta.get("normalised", False))


def to_model_input_with_crop(
    volume: Any,
    size: Sequence[int] = (32, 256, 256),
    window: str | Sequence[float] | None = None,
) -> tuple[torch.Tensor, InputGeometry]:
    """The (1, D, H, W) float32 [0, 1] model input of a CTVolume or array, plus where it came from."""
    return _input_from_array(*_as_array(volume), size, window)


def _input_from_array(array: np.ndarray, normalised: bool, size: Sequence[int],
                      window: str | Sequence[float] | None) -> tuple[torch.Tensor, InputGeometry]:
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"model input size must be 3 positive ints (d, h, w), got {size}")
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    if normalised:
        crop = (0, 0, 0, *array.shape)
    else:
        sample_min = float(np.nanmin(array[::2, ::4, ::4]))
        crop = body_box(array, BODY_THRESHOLD_HU if sample_min < -200.0 else sample_min)
    z0, y0, x0, z1, y1, x1 = crop
    region = torch.from_numpy(array[z0:z1, y0:y1, x0:x1])  # a view: interpolate reads only what it needs
    if not normalised:
        bounds = resolve_window(window)
        if bounds is not None:
            width, level = bounds
            region = region.clamp(level - width / 2, level + width / 2)
    lo, hi = region.amin(), region.amax()  # (aminmax is several times slower on a strided view)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):  # an array not from read_ct: its rule, on a copy
        finite = region.numpy().copy()
        try:
            replace_nonfinite("the volume", finite)
        except CTReadError:
            raise ValueError("the volume has no finite voxel (all NaN or infinite): nothing to show the model") from None
        region = torch.from_numpy(finite)
        lo, hi = region.amin(), region.amax()
    resized = F.interpolate(region[None, None], size=size, mode="trilinear", align_corners=False)[0]
    if not normalised:
        span = float(hi - lo)
        resized = (resized - lo) / span if span > 0 else torch.zeros_like(resized)
    resized = resized.clamp_(0.0, 1.0)
    return resized.contiguous(), InputGeometry(crop=tuple(int(c) for c in crop), original_shape=array.shape, size=size)  # type: ignore[arg-type]


def to_model_input(
    volume: Any,
    size: Sequence[int] = (32, 256, 256),
    window: str | Sequence[float] | None = None,
) -> torch.Tensor:
    """The (1, D, H, W) float32 [0, 1] model input (see `to_model_input_with_crop` for the crop box)."""
    return to_model_input_with_crop(volume, size, window)[0]


def slice_input_with_crop(
    volume: Any,
    index: int,
    size: Sequence[int] = (256, 256),
    window: str | Sequence[float] | None = None,
) -> tuple[torch.Tensor, InputGeometry]:
    """The (1, 1, H, W) model input of axial slice `index` (cropped to the body in that slice,
    windowed and min-maxed like a volume) and its geometry in voxels of the whole volume."""
    array, normalised = _as_array(volume)
    depth = array.shape[0]
    if not -depth <= int(index) < depth:
        raise ValueError(f"slice {index} is outside this scan (it has slices 0..{depth - 1})")
    z = int(index) % depth
    tensor, geometry = _input_from_array(array[z : z + 1], normalised, (1, *(int(s) for s in size)), window)
    z0, y0, x0, z1, y1, x1 = geometry.crop
    return tensor, InputGeometry((z0 + z, y0, x0, z1 + z, y1, x1), array.shape, geometry.size)  # type: ignore[arg-type]


def masks_to_input(masks: Sequence[np.ndarray], geometry: InputGeometry) -> torch.Tensor:
    """(O, D, H, W) float masks in [0, 1] on the model input grid: each full-volume mask cut to the
    input's crop box and resized as the CT was (so a voxel holds the fraction of it inside)."""
    z0, y0, x0, z1, y1, x1 = geometry.crop
    out = torch.empty((len(masks), *geometry.size), dtype=torch.float32)
    for i, mask in enumerate(masks):
        if mask.shape != tuple(geometry.original_shape):
            raise ValueError(f"an organ mask of shape {mask.shape} does not fit the CT's {tuple(geometry.original_shape)}")
        # a strided copy first: the fraction of an input voxel inside the mask is estimated from
        # at most ~2 samples per axis and per input voxel, not from every CT voxel (300 MB of floats)
        steps = [max(1, (stop - start) // (2 * n)) for start, stop, n in zip((z0, y0, x0), (z1, y1, x1), geometry.size)]
        region = torch.from_numpy(np.ascontiguousarray(mask[z0:z1:steps[0], y0:y1:steps[1], x0:x1:steps[2]])).float()
        out[i] = F.interpolate(region[None, None], size=geometry.size, mode="area")[0, 0]
    return out
