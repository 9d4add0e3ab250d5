"""`read_ct` / `write_ct`: the one door for CT files, dispatching by format (see model/ct/volume.py
for the canonical orientation every reader returns)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from model.ct.dicom import has_dicom_preamble, read_dicom_series
from model.ct.formats import read_itk_file, read_m3d_npy, read_nifti
from model.ct.metadata import ScanMetadata, metadata_for
from model.ct.volume import CTReadError, CTVolume, first_line, itk_image, suffix_of

#: File name endings `write_ct` writes; `read_ct` reads these, SUPPORTED_SUFFIXES and DICOM folders.
WRITABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")



SUPPORTED_SUFFIXES = WRITABLE_SUFFIXES + (".npy", ".dcm")



def read_ct(path: str | Path, metadata: Mapping[str, Any] | ScanMetadata | None = None) -> CTVolume:
    """Read any supported CT file or DICOM folder into a canonical `CTVolume` (orientation: model/ct/volume.py).

    `metadata`: the scan's CT-RATE `metadata.csv` row (a mapping with CT-RATE's column names:
    RescaleSlope, RescaleIntercept, XYSpacing, ZSpacing, ImageOrientationPatient,
    ImagePositionPatient); it applies where the file lacks them (model/ct/metadata.py says which
    wins), and ``meta["metadata_applied"]`` lists what it changed.

    Raises `CTReadError` (naming the path and the reason) for anything that is not a readable 3D
    volume; library exceptions never leak out.
    """
    path = Path(path)
    if not path.exists():
        raise CTReadError(path, "no such file or directory")
    row = metadata_for(path, metadata)
    try:
        suffix = suffix_of(path)
        if path.is_dir() or suffix == ".dcm" or (suffix not in SUPPORTED_SUFFIXES and has_dicom_preamble(path)):
            return read_dicom_series(path)  # DICOM files often have no extension at all; headers win over a row
        if suffix == ".npy":
            return read_m3d_npy(path)
        if suffix in (".nii", ".nii.gz"):
            return read_nifti(path, row)
        if suffix in WRITABLE_SUFFIXES:
            return read_itk_file(path, row)
    except CTReadError:
        raise
    except MemoryError:
        raise CTReadError(path, "not enough memory to hold the volume") from None
    except Exception as exc:  # noqa: BLE001 - any library failure becomes one clear error
        raise CTReadError(path, f"{type(exc).__name__}: {first_line(exc)}") from exc
    raise CTReadError(path, f"unknown format {suffix!r} (supported: {', '.join(SUPPORTED_SUFFIXES)} or a DICOM folder)")



def write_ct(volume: CTVolume, path: str | Path) -> Path:
    """Write `volume` by extension (.nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd) so that `read_ct` returns
    the same array, spacing and affine. Compresses where the format allows (CT compresses ~4x).
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in WRITABLE_SUFFIXES:
        raise ValueError(f"cannot write CT {path}: unsupported extension {suffix!r} (use one of {', '.join(WRITABLE_SUFFIXES)})")
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise ValueError(f"cannot write CT {path}: array must be 3D (z, y, x), got shape {array.shape}")
    image = itk_image(_storage_array(array), volume.affine)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=suffix in (".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"))
    return path



def _storage_array(array: np.ndarray) -> np.ndarray:
    """int16 when every value is a whole HU number in range (half the disk, still exact)."""
    if array.dtype.kind == "f" and array.size:
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        if -32768 <= lo and hi <= 32767 and np.array_equal(array, np.rint(array)):
            return array.astype(np.int16)
    return array
