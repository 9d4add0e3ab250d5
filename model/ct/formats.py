"""Single-file formats: NIfTI (read here, strict about truncation), NRRD/MetaImage via ITK, M3D .npy.

Each reader checks what a header promises against what the file holds before allocating, so a
lying header cannot exhaust memory.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from model.ct.metadata import (
    PLACEHOLDER_ITK,
    PLACEHOLDER_NIFTI,
    ScanMetadata,
    apply_rescale,
    rescale_from_row,
    resolve_geometry,
)
from model.ct.values import check_budget, finish_values
from model.ct.volume import (
    CTReadError,
    CTVolume,
    canonical_affine,
    canonicalise,
    check_affine,
    affine_from_itk,
    check_shape,
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



def read_nifti(path: Path, metadata: ScanMetadata | None = None) -> CTVolume:
    """NIfTI: nibabel parses the header (a few hundred bytes), the voxels are inflated here in
    one whole-buffer pass: faster than nibabel's streamed gzip reads (bench/io.py) and strict
    about truncation (ITK's NIfTI reader pads a short gzip stream with zeros instead).
    `metadata` fills in what the header lacks (model/ct/metadata.py)."""
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
    check_budget(path, size, dtype.itemsize)
    offset = int(image.dataobj.offset)
    needed = offset + math.prod(size) * dtype.itemsize
    compressed = suffix_of(path) == ".nii.gz"
    _check_data_fits(path, needed, compressed)
    data = path.read_bytes()
    if compressed:
        data = _gunzip(path, data, needed)
    if len(data) < needed:
        raise CTReadError(path, f"truncated file: {len(data)} bytes of data, the header needs {needed}")
    raw = np.frombuffer(data, dtype=dtype, count=math.prod(size), offset=offset).reshape(size, order="F")
    resolved = resolve_geometry(path, image.affine, PLACEHOLDER_NIFTI, metadata, _raw_voxel_sizes(path, image))
    check_affine(path, resolved.affine)
    slope, inter = image.dataobj.slope, image.dataobj.inter
    header_scaled = (slope not in (None, 1) and np.isfinite(slope) and slope != 0) or (inter not in (None, 0) and np.isfinite(inter))
    rescale = rescale_from_row(raw, metadata, header_scaled)
    array, affine = canonicalise(raw, resolved.affine)
    if slope not in (None, 1) and np.isfinite(slope) and slope != 0:
        array *= np.float32(slope)
    if inter not in (None, 0) and np.isfinite(inter):
        array += np.float32(inter)
    if rescale is not None:
        apply_rescale(array, rescale)
    elif metadata is not None and metadata.has_rescale and (metadata.slope, metadata.intercept) not in ((1, 0), (None, 0), (1, None)):
        resolved.conflicts.append("metadata rescale not applied: " + ("the header has its own scaling" if header_scaled
                                                                       else "the values are already in HU"))
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
    resolved.record(meta, rescale)
    finish_values(path, array, meta, stored_as_float=dtype.kind == "f" or bool(header_scaled) or rescale is not None)
    return CTVolume(array=array, spacing=spacing_of(affine), affine=affine, meta=meta)



def _raw_voxel_sizes(path: Path, image: Any) -> tuple[float, ...] | None:
    """pixdim[1:4] as written, when the affine is built from them (no sform): nibabel replaces a
    zero by 1 on load, which would turn a missing voxel size into a wrong one."""
    from nibabel.openers import ImageOpener

    if int(image.header["sform_code"]) > 0:
        return None
    with ImageOpener(path) as handle:
        raw = type(image.header).from_fileobj(handle, check=False)
    return tuple(float(v) for v in raw["pixdim"][1:4])



def _gunzip(path: Path, data: bytes, limit: int) -> bytes:
    """Inflate a whole (possibly multi-member) gzip buffer up to `limit` bytes (what the header
    needs: a stream that would inflate further is never inflated past it); truncation and
    corruption raise.

    ISA-L's inflate (python-isal, zlib-compatible) takes ~60% of zlib's time on CT data, which
    keeps `read_ct` level with SimpleITK's reader (bench/io.py).
    """
    from isal import isal_zlib

    parts, have = [], 0
    while data and have < limit:
        inflater = isal_zlib.decompressobj(wbits=31)
        try:
            parts.append(inflater.decompress(data, limit - have))
        except isal_zlib.error as exc:
            raise CTReadError(path, f"corrupt gzip data ({exc})") from None
        have += len(parts[-1])
        if have >= limit:
            break
        if not inflater.eof:
            raise CTReadError(path, "truncated gzip file (the compressed stream ends early)")
        data = inflater.unused_data
        if not data.strip(b"\0"):  # zero padding after the last member is harmless
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)



def read_itk_file(path: Path, metadata: ScanMetadata | None = None) -> CTVolume:
    """NRRD and MetaImage through SimpleITK (whose readers refuse short data themselves);
    `metadata` fills in what the header lacks (model/ct/metadata.py)."""
    import SimpleITK as sitk

    suffix = suffix_of(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # header only: decide before allocating or decompressing
    except RuntimeError as exc:
        raise CTReadError(path, f"not a readable {suffix} file ({itk_reason(exc)})") from None
    size = check_shape(path, reader.GetSize())
    check_budget(path, size, itk_itemsize(reader.GetPixelID()) * reader.GetNumberOfComponents())
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
    kji = affine_from_itk(image)
    resolved = resolve_geometry(path, _swap_ik(kji), PLACEHOLDER_ITK, metadata)
    rescale = rescale_from_row(sitk.GetArrayViewFromImage(image), metadata, header_scaled=False)
    volume = volume_from_itk(image, path, meta, affine=_swap_ik(resolved.affine))
    if rescale is not None:
        apply_rescale(volume.array, rescale)
    resolved.record(volume.meta, rescale)
    finish_values(path, volume.array, volume.meta, stored_as_float=sitk.GetArrayViewFromImage(image).dtype.kind == "f")
    return volume



def _swap_ik(affine: np.ndarray) -> np.ndarray:
    """Between our (k, j, i) -> RAS affine and the (i, j, k) one (the same columns reversed)."""
    out = np.array(affine, dtype=float)
    out[:3, :3] = out[:3, :3][:, ::-1]
    return out



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
    notes: dict[str, Any] = {}
    finish_values(path, data, notes)
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
        **notes,
    }
    return CTVolume(array=data, spacing=(1.0, 1.0, 1.0), affine=affine, meta=meta)
