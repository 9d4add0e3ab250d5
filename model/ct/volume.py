"""Read and write CT volumes in one canonical orientation, in Hounsfield units.

Every reader in the project (napari reader, preprocessing, importers, the synthetic cohort's
round trip) goes through `read_ct`, so a scan looks the same on screen and to the model whatever
format it came in.

Canonical orientation (applied on every read)
---------------------------------------------
``CTVolume.array`` is float32 with axes ``(z, y, x)`` = ``(k, j, i)``:

* ``array[k]`` is an axial slice; ``k`` increases from inferior to superior;
* rows (``j``) run from anterior to posterior, so anterior is at the top of the screen;
* columns (``i``) run from the patient's right to the patient's left (radiological convention:
  the patient's right appears on the viewer's left).

This is the DICOM/ITK "LPS with identity direction" layout, the way radiology workstations show
axial slices. Obliquely acquired volumes are permuted/flipped to the *nearest* such layout and
the remaining rotation is kept in the affine (never resampled).

``CTVolume.affine`` follows the nibabel convention applied to ``array``: it maps homogeneous
array indices in array-axis order, ``(k, j, i, 1)``, to RAS+ millimetres ``(x, y, z, 1)``
(+x towards the patient's right, +y anterior, +z superior). For a canonical
axis-aligned scan its 3x3 part is ``[[0, 0, -sx], [0, -sy, 0], [sz, 0, 0]]`` and its last column
is the RAS position of voxel ``(0, 0, 0)``. ``nibabel.Nifti1Image(v.array, v.affine)`` is
therefore a correct NIfTI of the volume. ``CTVolume.spacing`` is ``(sz, sy, sx)`` in mm, the
column norms of that 3x3 part.

Formats: NIfTI (.nii/.nii.gz), DICOM series (folder, or one .dcm file meaning its series),
NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd), and M3D's preprocessed .npy (already normalised to
[0, 1], not HU; ``meta["normalised"]`` says so).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Array-axis orientation codes (nibabel's RAS+ letters) of the canonical layout.
CANONICAL_AXCODES = ("S", "P", "L")
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class CTVolume:
    """One CT scan: HU voxels in canonical (z, y, x) order plus geometry and safe metadata.

    ``array``: float32 HU (or [0, 1] for M3D .npy input), axes (z, y, x), canonical orientation.
    ``spacing``: (z, y, x) voxel size in mm.
    ``affine``: 4x4 mapping (k, j, i, 1) array indices to RAS+ mm (see the module docstring).
    ``meta``: modality, series description, study date, shape, source format, ... (never
    patient name, ID or birth date).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


class CTReadError(Exception):
    """A CT file could not be read; the message names the file and says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read CT {self.path}: {reason}")


def suffix_of(path: str | Path) -> str:
    """The format-deciding ending of a file name (``.nii.gz`` counts as one), lower case."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def canonical_affine(spacing: tuple[float, float, float], origin_ras: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """The affine of an axis-aligned canonical volume (for arrays built in code, e.g. phantoms)."""
    sz, sy, sx = spacing
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, -sx], [0.0, -sy, 0.0], [sz, 0.0, 0.0]]
    affine[:3, 3] = origin_ras
    return affine


def itk_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """ITK (spacing, direction, origin) in LPS for an affine of our (k, j, i) -> RAS convention."""
    affine = np.asarray(affine, dtype=float)
    matrix = _LPS_FROM_RAS @ affine[:3, :3][:, ::-1]  # columns now in ITK (i, j, k) order, LPS
    spacing = np.linalg.norm(matrix, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length axis: {affine.tolist()}")
    direction = matrix / spacing
    origin = _LPS_FROM_RAS @ affine[:3, 3]
    return tuple(spacing.tolist()), tuple(direction.flatten().tolist()), tuple(origin.tolist())


def itk_image(array: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image of a (z, y, x) array placed by our affine (ITK's index order is the reverse)."""
    import SimpleITK as sitk  # deferred: ITK loads only when an image is handed to it

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    spacing, direction, origin = itk_geometry(affine)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return image


def canonicalise(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip `array` (any array-axis order, affine in our convention) to the canonical
    layout; returns float32 C-contiguous data (one copy) and the matching affine.
    """
    from nibabel.orientations import (
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    transform = ornt_transform(io_orientation(affine), axcodes2ornt(CANONICAL_AXCODES))
    out = array
    for axis, flip in enumerate(transform[:, 1]):
        if flip == -1:
            out = np.flip(out, axis=axis)
    out = out.transpose(np.argsort(transform[:, 0]).astype(int))
    out_affine = affine @ inv_ornt_aff(transform, array.shape)
    return np.array(out, dtype=np.float32, order="C"), out_affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """(z, y, x) voxel size in mm of a canonical volume's affine."""
    norms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def affine_from_itk(image: Any) -> np.ndarray:
    """Our (k, j, i) -> RAS affine of a SimpleITK image (whose numpy array is indexed [k, j, i])."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    matrix = direction @ np.diag(image.GetSpacing()[:3])
    affine = np.eye(4)
    affine[:3, :3] = (_LPS_FROM_RAS @ matrix)[:, ::-1]
    affine[:3, 3] = _LPS_FROM_RAS @ np.asarray(image.GetOrigin()[:3], dtype=float)
    return affine


def volume_from_itk(image: Any, path: Path, meta: dict[str, Any], affine: np.ndarray | None = None) -> CTVolume:
    """Turn a 3D SimpleITK image (rescale already applied by ITK) into a canonical CTVolume;
    `affine` ((k, j, i) -> RAS) replaces the image's own geometry where the caller knows better."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(path, f"{image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image), not a CT")
    view = sitk.GetArrayViewFromImage(image)
    affine = affine_from_itk(image) if affine is None else affine
    check_affine(path, affine)
    array, affine = canonicalise(view, affine)
    meta = {**meta, "shape": tuple(int(n) for n in array.shape)}
    return CTVolume(array=array, spacing=spacing_of(affine), affine=affine, meta=meta)


def check_affine(path: Path, affine: np.ndarray) -> None:
    """Refuse geometry that cannot place a voxel in space (zero/NaN spacing or direction)."""
    matrix = affine[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(matrix)) < 1e-9:
        norms = np.linalg.norm(matrix, axis=0) if np.all(np.isfinite(matrix)) else None
        if norms is not None and norms.min() < 1e-6:
            raise CTReadError(path, f"zero voxel size (spacing {np.round(norms, 4).tolist()} mm along the stored axes)")
        raise CTReadError(path, f"degenerate geometry (spacing/direction): {np.round(matrix, 4).tolist()}")


def add_note(meta: dict[str, Any], text: str) -> None:
    """Something the user must be told about this read (shown by the viewer, printed by the CLI)."""
    meta.setdefault("notes", []).append(text)


def check_shape(path: Path, size_xyz: tuple[int, ...]) -> tuple[int, ...]:
    """Accept 3D (or 4D+ with trailing singletons) sizes; return the 3 spatial sizes (x, y, z)."""
    size = tuple(int(n) for n in size_xyz)
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    if len(size) < 3:
        raise CTReadError(path, f"{len(size)}D image of size {size}, a CT volume needs 3 dimensions")
    if len(size) > 3:
        raise CTReadError(path, f"{len(size)}D image of size {size} (x, y, z, ...), a CT volume needs exactly 3 dimensions")
    if min(size) < 1:
        raise CTReadError(path, f"zero-length axis in size {size} (x, y, z)")
    if size[2] == 1:
        raise CTReadError(path, f"a single slice of size {size} (x, y, z) is not a volume")
    return size


def itk_itemsize(pixel_id: int) -> int:
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).dtype.itemsize


def itk_meta(reader: Any, key: str) -> str | None:
    if key in reader.GetMetaDataKeys():
        value = reader.GetMetaData(key).strip()
        return value or None
    return None


def itk_reason(exc: Exception) -> str:
    """The informative line of an ITK exception, without its source-file and object-address noise."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    nrrd = [line for line in lines if line.startswith("[nrrd]")]
    if nrrd:
        return nrrd[-1].removeprefix("[nrrd] ")  # teem's last line is the specific one
    for line in lines:
        if "ERROR" in line:
            return re.sub(r"^.*?ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", line)
    return lines[-1] if lines else type(exc).__name__


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
