"""DICOM series: pick the series, check its slices form one regular stack, read it with ITK/GDCM.

pydicom reads the headers only (cheap, tolerant of odd files); SimpleITK/GDCM decodes the pixels
(JPEG-2000 and the other transfer syntaxes) so one library does not have to do both.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.ct.volume import (
    CTReadError,
    CTVolume,
    first_line,
    itk_reason,
    volume_from_itk,
)

log = logging.getLogger(__name__)

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
        if has_dicom_preamble(child):
            return True
        checked += 1
        if checked >= max_files:
            break
    return False



def has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False



@dataclass
class _Slice:
    path: Path
    header: Any  # pydicom Dataset without pixel data



def read_dicom_series(path: Path) -> CTVolume:
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
        if not child.is_file() or not has_dicom_preamble(child):
            continue
        try:
            header = pydicom.dcmread(child, stop_before_pixels=True, specific_tags=list(_DICOM_TAGS))
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            log.warning("%s: skipped unreadable DICOM file (%s)", child, first_line(exc))
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
        raise CTReadError(path, f"DICOM pixel data unreadable ({itk_reason(exc)})") from None



def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
