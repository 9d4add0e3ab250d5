"""Single-file formats: NIfTI (read here, strict about truncation), NRRD/MetaImage via ITK, M3D .npy.

Each reader checks what a header promises against what the file holds before allocating, so a
lying header cannot exhaust memory.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from model.ct.volume import (
    CTReadError,
    CTVolume,
    canonical_affine,
    canonicalise,
    check_affine,
    check_shape,
    check_values,
    first_line,
    itk_itemsize,
    itk_meta,
    itk_reason,
    spacing_of,
    suffix_of,
    volume_from_itk,
)

#: zlib cannot compress better than about 1032:1, so a gzip header claiming more data is lying.
_MAX_GZIP_RATIO = 1100



def read_nifti(path: Path) -> CTVolume:
    """NIfTI: nibabel parses the header (a few hundred bytes), the voxels are inflated here in
    one whole-buffer pass: faster than nibabel's streamed gzip reads (bench/io.py) and strict
    about truncation (ITK's NIfTI reader pads a short gzip stream with zeros instead)."""
    import nibabel as nib

    try:
        image = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel/gzip raise many types for bad headers
        raise CTReadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise CTReadError(path, f"not a NIfTI-1/2 image ({type(image).__name__})")
    size = check_shape(path, image.shape)
    dtype = image.dataobj.dtype  # with the file's byte order
    if dtype.kind not in "iuf":
        raise CTReadError(path, f"unsupported voxel type {dtype} (CT needs integer or real values)")
    offset = int(image.dataobj.offset)
    needed = offset + math.prod(size) * dtype.itemsize
    compressed = suffix_of(path) == ".nii.gz"
    _check_data_fits(path, needed, compressed)
    data = path.read_bytes()
    if compressed:
        data = _gunzip(path, data)
    if len(data) < needed:
        raise CTReadError(path, f"truncated file: {len(data)} bytes of data, the header needs {needed}")
    raw = np.frombuffer(data, dtype=dtype, count=math.prod(size), offset=offset).reshape(size, order="F")
    check_affine(path, image.affine)
    array, affine = canonicalise(raw, image.affine)
    slope, inter = image.dataobj.slope, image.dataobj.inter
    if slope not in (None, 1) and np.isfinite(slope) and slope != 0:
        array *= np.float32(slope)
    if inter not in (None, 0) and np.isfinite(inter):
        array += np.float32(inter)
    check_values(path, array)
    description = image.header["descrip"].item().decode("latin-1").strip() or None
    meta = {
        "source_format": suffix_of(path).lstrip("."),
        "modality": "CT",
        "series_description": description,
        "study_date": None,
        "shape": tuple(int(n) for n in array.shape),
        "units": "HU",
        "normalised": False,
    }
    return CTVolume(array=array, spacing=spacing_of(affine), affine=affine, meta=meta)



def _gunzip(path: Path, data: bytes) -> bytes:
    """Inflate a whole (possibly multi-member) gzip buffer; truncation and corruption raise.

    ISA-L's inflate (python-isal, zlib-compatible) takes ~60% of zlib's time on CT data, which
    keeps `read_ct` level with SimpleITK's reader (bench/io.py).
    """
    from isal import isal_zlib

    parts = []
    while data:
        inflater = isal_zlib.decompressobj(wbits=31)
        try:
            parts.append(inflater.decompress(data))
        except isal_zlib.error as exc:
            raise CTReadError(path, f"corrupt gzip data ({exc})") from None
        if not inflater.eof:
            raise CTReadError(path, "truncated gzip file (the compressed stream ends early)")
        data = inflater.unused_data
        if not data.strip(b"\0"):  # zero padding after the last member is harmless
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)



def read_itk_file(path: Path) -> CTVolume:
    """NRRD and MetaImage through SimpleITK (whose readers refuse short data themselves)."""
    import SimpleITK as sitk

    suffix = suffix_of(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # header only: decide before allocating or decompressing
    except RuntimeError as exc:
        raise CTReadError(path, f"not a readable {suffix} file ({itk_reason(exc)})") from None
    check_shape(path, reader.GetSize())
    if suffix in (".mha", ".nrrd"):  # detached headers (.mhd/.nhdr) point at another file
        needed = math.prod(reader.GetSize()) * itk_itemsize(reader.GetPixelID()) * reader.GetNumberOfComponents()
        _check_data_fits(path, needed, compressed=True)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CTReadError(path, f"image data unreadable, truncated or corrupt ({itk_reason(exc)})") from None
    if image.GetDimension() > 3:
        image = image[(slice(None),) * 3 + (0,) * (image.GetDimension() - 3)]
    modality = itk_meta(reader, "Modality")
    meta = {
        "source_format": suffix.lstrip("."),
        "modality": None if modality in (None, "MET_MOD_UNKNOWN") else modality.removeprefix("MET_MOD_"),
        "series_description": itk_meta(reader, "SeriesDescription"),
        "study_date": itk_meta(reader, "StudyDate"),
        "units": "HU",
        "normalised": False,
    }
    return volume_from_itk(image, path, meta)



def _check_data_fits(path: Path, needed: int, compressed: bool) -> None:
    """Refuse headers that claim more data than the file can hold (garbage headers, truncation)
    before anything is allocated, so a corrupt header cannot exhaust memory."""
    available = path.stat().st_size
    limit = available * _MAX_GZIP_RATIO if compressed else available
    if needed > limit:
        raise CTReadError(path, f"header promises {needed} bytes but the file holds {available} bytes (truncated or corrupt)")



def read_m3d_npy(path: Path) -> CTVolume:
    """M3D's preprocessed arrays: (1, 32, 256, 256) or (32, 256, 256), values already in [0, 1]."""
    with path.open("rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise CTReadError(path, "not a .npy array file (no NumPy header)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CTReadError(path, f"not a readable .npy array ({first_line(exc)})") from None
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or min(array.shape) < 2:
        raise CTReadError(path, f"M3D .npy must have shape (1, D, H, W) or (D, H, W), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise CTReadError(path, f"M3D .npy must hold real numbers, got dtype {array.dtype}")
    data = np.array(array, dtype=np.float32, order="C")
    check_values(path, data)
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise CTReadError(path, f"M3D .npy values must lie in [0, 1] (normalised), got {lo:.4g}..{hi:.4g}")
    affine = canonical_affine((1.0, 1.0, 1.0))
    meta = {
        "source_format": "npy",
        "modality": "CT",
        "series_description": None,
        "study_date": None,
        "shape": tuple(int(n) for n in data.shape),
        "units": "normalised [0, 1]",
        "normalised": True,
        "note": "M3D preprocessed array: intensities min-max normalised (not HU), spacing unknown (1 mm assumed), orientation as stored",
    }
    return CTVolume(array=data, spacing=(1.0, 1.0, 1.0), affine=affine, meta=meta)
