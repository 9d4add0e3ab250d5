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

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Array-axis orientation codes (nibabel's RAS+ letters) of the canonical layout.
CANONICAL_AXCODES = ("S", "P", "L")
#: File name endings `write_ct` writes; `read_ct` reads these, SUPPORTED_SUFFIXES and DICOM folders.
WRITABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_SUFFIXES = WRITABLE_SUFFIXES + (".npy", ".dcm")
#: zlib cannot compress better than about 1032:1, so a gzip header claiming more data is lying.
_MAX_GZIP_RATIO = 1100
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


def read_ct(path: str | Path) -> CTVolume:
    """Read any supported CT file or DICOM folder into a canonical `CTVolume` (see module doc).

    Raises `CTReadError` (naming the path and the reason) for anything that is not a readable 3D
    volume; library exceptions never leak out.
    """
    path = Path(path)
    if not path.exists():
        raise CTReadError(path, "no such file or directory")
    try:
        suffix = suffix_of(path)
        if path.is_dir() or suffix == ".dcm" or (suffix not in SUPPORTED_SUFFIXES and _has_dicom_preamble(path)):
            return _read_dicom_series(path)  # DICOM files often have no extension at all
        if suffix == ".npy":
            return _read_m3d_npy(path)
        if suffix in (".nii", ".nii.gz"):
            return _read_nifti(path)
        if suffix in WRITABLE_SUFFIXES:
            return _read_itk_file(path)
    except CTReadError:
        raise
    except MemoryError:
        raise CTReadError(path, "not enough memory to hold the volume") from None
    except Exception as exc:  # noqa: BLE001 - any library failure becomes one clear error
        raise CTReadError(path, f"{type(exc).__name__}: {_first_line(exc)}") from exc
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
    image = sitk.GetImageFromArray(np.ascontiguousarray(_storage_array(array)))
    spacing, direction, origin = itk_geometry(volume.affine)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
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


def canonicalise(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip `array` (any array-axis order, affine in our convention) to the canonical
    layout; returns float32 C-contiguous data (one copy) and the matching affine.
    """
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

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


def volume_from_itk(image: Any, path: Path, meta: dict[str, Any]) -> CTVolume:
    """Turn a 3D SimpleITK image (rescale already applied by ITK) into a canonical CTVolume."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(path, f"{image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image), not a CT")
    view = sitk.GetArrayViewFromImage(image)
    affine = affine_from_itk(image)
    check_affine(path, affine)
    array, affine = canonicalise(view, affine)
    check_values(path, array)
    meta = {**meta, "shape": tuple(int(n) for n in array.shape)}
    return CTVolume(array=array, spacing=spacing_of(affine), affine=affine, meta=meta)


def check_affine(path: Path, affine: np.ndarray) -> None:
    """Refuse geometry that cannot place a voxel in space (zero/NaN spacing or direction)."""
    matrix = affine[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(matrix)) < 1e-9:
        raise CTReadError(path, f"degenerate geometry (spacing/direction): {np.round(matrix, 4).tolist()}")


def check_values(path: Path, array: np.ndarray) -> None:
    """Refuse data with nothing to show. Cheap: the full NaN scan runs only if voxel 0 is NaN."""
    if array.size == 0:
        raise CTReadError(path, f"empty volume (shape {array.shape})")
    if np.isnan(array.flat[0]) and np.isnan(array).all():
        raise CTReadError(path, "every voxel is NaN")


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


def _read_nifti(path: Path) -> CTVolume:
    """NIfTI: nibabel parses the header (a few hundred bytes), the voxels are inflated here in
    one whole-buffer pass: faster than nibabel's streamed gzip reads (bench/io.py) and strict
    about truncation (ITK's NIfTI reader pads a short gzip stream with zeros instead)."""
    import nibabel as nib

    try:
        image = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel/gzip raise many types for bad headers
        raise CTReadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {_first_line(exc)})") from None
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


def _read_itk_file(path: Path) -> CTVolume:
    """NRRD and MetaImage through SimpleITK (whose readers refuse short data themselves)."""
    import SimpleITK as sitk

    suffix = suffix_of(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # header only: decide before allocating or decompressing
    except RuntimeError as exc:
        raise CTReadError(path, f"not a readable {suffix} file ({_itk_reason(exc)})") from None
    check_shape(path, reader.GetSize())
    if suffix in (".mha", ".nrrd"):  # detached headers (.mhd/.nhdr) point at another file
        needed = math.prod(reader.GetSize()) * _itk_itemsize(reader.GetPixelID()) * reader.GetNumberOfComponents()
        _check_data_fits(path, needed, compressed=True)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CTReadError(path, f"image data unreadable, truncated or corrupt ({_itk_reason(exc)})") from None
    if image.GetDimension() > 3:
        image = image[(slice(None),) * 3 + (0,) * (image.GetDimension() - 3)]
    modality = _itk_meta(reader, "Modality")
    meta = {
        "source_format": suffix.lstrip("."),
        "modality": None if modality in (None, "MET_MOD_UNKNOWN") else modality.removeprefix("MET_MOD_"),
        "series_description": _itk_meta(reader, "SeriesDescription"),
        "study_date": _itk_meta(reader, "StudyDate"),
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


def _itk_itemsize(pixel_id: int) -> int:
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).dtype.itemsize


def _itk_meta(reader: Any, key: str) -> str | None:
    if key in reader.GetMetaDataKeys():
        value = reader.GetMetaData(key).strip()
        return value or None
    return None


def _itk_reason(exc: Exception) -> str:
    """The informative line of an ITK exception, without its source-file and object-address noise."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    nrrd = [line for line in lines if line.startswith("[nrrd]")]
    if nrrd:
        return nrrd[-1].removeprefix("[nrrd] ")  # teem's last line is the specific one
    for line in lines:
        if "ERROR" in line:
            return re.sub(r"^.*?ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", line)
    return lines[-1] if lines else type(exc).__name__


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def _read_m3d_npy(path: Path) -> CTVolume:
    """M3D's preprocessed arrays: (1, 32, 256, 256) or (32, 256, 256), values already in [0, 1]."""
    with path.open("rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise CTReadError(path, "not a .npy array file (no NumPy header)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CTReadError(path, f"not a readable .npy array ({_first_line(exc)})") from None
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


# --- DICOM series ---------------------------------------------------------------------------

_DICOM_TAGS = (
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "StudyDate", "Rows", "Columns",
    "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "NumberOfFrames", "GantryDetectorTilt",
)
#: Largest gantry tilt (degrees) still read as an ordinary axis-aligned stack.
MAX_TILT_DEGREES = 0.1
#: Slice gaps may differ from their median by this fraction before the series counts as broken.
SLICE_GAP_TOLERANCE = 0.1


def looks_like_dicom_folder(path: str | Path, max_files: int = 64) -> bool:
    """True when `path` is a folder whose first files include one with the DICOM 'DICM' marker.

    Cheap (reads 132 bytes of at most `max_files` files) so the napari reader can claim folders.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    checked = 0
    for child in sorted(path.iterdir()):
        if not child.is_file():
            continue
        if _has_dicom_preamble(child):
            return True
        checked += 1
        if checked >= max_files:
            break
    return False


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


@dataclass
class _Slice:
    path: Path
    header: Any  # pydicom Dataset without pixel data


def _read_dicom_series(path: Path) -> CTVolume:
    """A DICOM folder (the series with most slices), or one file (its own series in its folder)."""
    folder = path if path.is_dir() else path.parent
    slices = _scan_dicom_headers(folder)
    if not slices:
        raise CTReadError(path, "no DICOM image files found" + (" in the folder" if path.is_dir() else " beside this file"))
    series: dict[str, list[_Slice]] = {}
    for item in slices:
        series.setdefault(str(item.header.get("SeriesInstanceUID", "") or ""), []).append(item)
    if path.is_dir():
        uid = max(series, key=lambda key: len(series[key]))
    else:
        match = [s for s in slices if s.path.resolve() == path.resolve()]
        if not match:
            raise CTReadError(path, "not a DICOM image file (no pixel data header)")
        uid = str(match[0].header.get("SeriesInstanceUID", "") or "")
    chosen = series[uid]
    meta: dict[str, Any] = {"series_in_folder": len(series)}
    if len(series) > 1:
        others = sorted((len(v) for k, v in series.items() if k != uid), reverse=True)
        note = f"folder holds {len(series)} series; read {uid or '(no UID)'} with {len(chosen)} slices (others: {others})"
        log.info("%s: %s", folder, note)
        meta["note"] = note
    files = _check_and_sort_slices(path, chosen)
    image = _itk_read_series(path, files)
    first = chosen[0].header
    meta.update(
        source_format="dicom",
        modality=_text(first.get("Modality")),
        series_description=_text(first.get("SeriesDescription")),
        study_date=_text(first.get("StudyDate")),
        series_uid=uid or None,
        series_number=_text(first.get("SeriesNumber")),
        n_slices=len(files),
        units="HU",
        normalised=False,
    )
    return volume_from_itk(image, path, meta)


def _scan_dicom_headers(folder: Path) -> list[_Slice]:
    """Headers (no pixel data) of every DICOM image file in `folder`; other files are skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    slices = []
    for child in sorted(folder.iterdir()):
        if not child.is_file() or not _has_dicom_preamble(child):
            continue
        try:
            header = pydicom.dcmread(child, stop_before_pixels=True, specific_tags=list(_DICOM_TAGS))
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            log.warning("%s: skipped unreadable DICOM file (%s)", child, _first_line(exc))
            continue
        if header.get("Rows") and header.get("Columns"):
            slices.append(_Slice(child, header))
    return slices


def _check_and_sort_slices(path: Path, slices: list[_Slice]) -> list[str]:
    """Refuse anything that is not one regular stack; return file names sorted along the normal.

    Sorting is by position along the slice normal (never by file name or instance number), and
    a sheared stack (gantry tilt) or a gap (missing slices) is refused rather than read skewed.
    """
    frames = int(slices[0].header.get("NumberOfFrames", 1) or 1)
    if len(slices) == 1:
        if frames > 1:
            return [str(slices[0].path)]
        raise CTReadError(path, "the series has a single slice, which is not a volume")
    sizes = {(int(s.header.Rows), int(s.header.Columns)) for s in slices}
    if len(sizes) > 1:
        raise CTReadError(path, f"slices of the series have different sizes (rows x columns: {sorted(sizes)})")
    missing = [s.path.name for s in slices if "ImagePositionPatient" not in s.header or "ImageOrientationPatient" not in s.header]
    if missing:
        raise CTReadError(path, f"{len(missing)} slice(s) lack position/orientation, e.g. {missing[0]}")
    orientations = np.array([[float(v) for v in s.header.ImageOrientationPatient] for s in slices])
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        raise CTReadError(path, "slices of the series have different orientations")
    spacings = {tuple(round(float(v), 4) for v in s.header.get("PixelSpacing", ()) or ()) for s in slices}
    if len(spacings) > 1:
        raise CTReadError(path, f"slices of the series have different pixel spacings {sorted(spacings)}")
    row, col = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.5:
        raise CTReadError(path, f"invalid ImageOrientationPatient {orientations[0].tolist()}")
    normal /= np.linalg.norm(normal)
    positions = np.array([[float(v) for v in s.header.ImagePositionPatient] for s in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    gaps = np.diff(along)
    if gaps.min() < 1e-3:
        raise CTReadError(path, "two slices share one position (duplicate slices or several acquisitions in one series)")
    median = float(np.median(gaps))
    if np.abs(gaps - median).max() > SLICE_GAP_TOLERANCE * median:
        raise CTReadError(path, f"uneven slice spacing ({gaps.min():.3g}..{gaps.max():.3g} mm, median {median:.3g}): missing slices?")
    span = positions[-1] - positions[0]
    tilt = math.degrees(math.atan2(float(np.linalg.norm(span - (span @ normal) * normal)), float(span @ normal)))
    if tilt > MAX_TILT_DEGREES:
        raise CTReadError(path, f"gantry tilt of {tilt:.1f} degrees (slices are sheared); resample to an orthogonal grid first")
    return [str(slices[i].path) for i in order]


def _itk_read_series(path: Path, files: list[str]) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise CTReadError(path, f"DICOM pixel data unreadable ({_itk_reason(exc)})") from None


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
