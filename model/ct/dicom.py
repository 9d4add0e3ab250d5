"""DICOM series: pick the series, check its slices form one regular stack, read it with ITK/GDCM.

pydicom reads the headers only (cheap, tolerant of odd files); SimpleITK/GDCM decodes the pixels
(JPEG-2000 and the other transfer syntaxes) so one library does not have to do both.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.ct.dicom_geometry import StackPlan, plan_stack, regular_grid_image
from model.ct.modality import mark_modality
from model.ct.values import check_budget, finish_values
from model.ct.volume import (
    CTReadError,
    CTVolume,
    add_note,
    first_line,
    itk_reason,
    volume_from_itk,
)

log = logging.getLogger(__name__)

_DICOM_TAGS = (
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "StudyDate", "Rows", "Columns",
    "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "NumberOfFrames", "GantryDetectorTilt",
    "SamplesPerPixel", "SOPClassUID",
)



def looks_like_dicom_folder(path: str | Path) -> bool:
    """True when `path` is a folder holding a file with the DICOM 'DICM' marker (any number of
    other files may sort before it). Cheap: 132 bytes per file, `.dcm` files first, stopping at
    the first hit, so the napari reader can claim folders."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        children = sorted(path.iterdir(), key=lambda c: (c.suffix.lower() != ".dcm", c.name))
    except OSError:
        return False
    return any(child.is_file() and has_dicom_preamble(child) for child in children)



def has_dicom_preamble(path: Path) -> bool:
    try:
        return _preamble(path)
    except OSError:
        return False



def _preamble(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:132] == b"DICM"



@dataclass
class _Slice:
    path: Path
    header: Any  # pydicom Dataset without pixel data



def read_dicom_series(path: Path) -> CTVolume:
    """A DICOM folder (the series with most slices), or one file (its own series in its folder)."""
    folder = path if path.is_dir() else path.parent
    slices = _scan_dicom_headers(path, folder)
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
        add_note(meta, note)
    first = chosen[0].header
    frames = int(first.get("NumberOfFrames", 1) or 1)
    if len(chosen) == 1 and frames > 1:
        volume = read_multiframe(path, chosen[0].path, meta)
    else:
        volume = _read_slices(path, chosen, meta)
    modality = _text(first.get("Modality"))
    volume.meta.update(
        source_format="dicom",
        modality=modality,
        series_description=_text(first.get("SeriesDescription")),
        study_date=_text(first.get("StudyDate")),
        series_uid=uid or None,
        series_number=_text(first.get("SeriesNumber")),
        n_slices=len(chosen) if frames == 1 else frames,
        units="HU" if modality in (None, "CT") else f"{modality} signal (not HU)",
        normalised=False,
    )
    mark_modality(volume.meta)
    finish_values(path, volume.array, volume.meta)
    return volume



def _read_slices(path: Path, chosen: list[_Slice], meta: dict[str, Any]) -> CTVolume:
    """One file per slice: a regular stack is read by ITK as is, an irregular one resampled."""
    if len(chosen) == 1:
        raise CTReadError(path, "the series has a single slice, which is not a volume")
    sizes = {(int(s.header.Rows), int(s.header.Columns)) for s in chosen}
    if len(sizes) > 1:
        raise CTReadError(path, f"slices of the series have different sizes (rows x columns: {sorted(sizes)})")
    missing = [s.path.name for s in chosen if "ImagePositionPatient" not in s.header or "ImageOrientationPatient" not in s.header]
    if missing:
        raise CTReadError(path, f"{len(missing)} slice(s) lack position/orientation, e.g. {missing[0]}")
    orientations = np.array([[float(v) for v in s.header.ImageOrientationPatient] for s in chosen])
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        raise CTReadError(path, "slices of the series have different orientations")
    spacings = {tuple(round(float(v), 4) for v in s.header.get("PixelSpacing", ()) or ()) for s in chosen}
    if len(spacings) > 1:
        raise CTReadError(path, f"slices of the series have different pixel spacings {sorted(spacings)}")
    check_budget(path, (*sizes.pop(), len(chosen)), 2 * int(chosen[0].header.get("SamplesPerPixel", 1) or 1))
    positions = np.array([[float(v) for v in s.header.ImagePositionPatient] for s in chosen])
    pixel_spacing = next(iter(spacings))
    if not pixel_spacing:
        pixel_spacing = (1.0, 1.0)
        add_note(meta, "the slices have no PixelSpacing: 1 mm pixels assumed, so measurements are not in mm")
    plan = plan_stack(path, [s.path.name for s in chosen], positions, orientations[0], pixel_spacing)
    files = [str(chosen[i].path) for i in plan.order]
    image = _itk_read_series(path, files)
    if plan.regular:
        return volume_from_itk(image, path, meta)
    return _regularised(path, plan, image, meta)



def read_multiframe(path: Path, file: Path, meta: dict[str, Any]) -> CTVolume:
    """One multi-frame file (enhanced CT): per-frame positions from the functional groups, pixels
    (rescaled) by ITK/GDCM; frames are sorted and checked like a series of files."""
    import pydicom
    import SimpleITK as sitk

    header = pydicom.dcmread(file, stop_before_pixels=True)
    frames = int(header.NumberOfFrames)
    check_budget(path, (int(header.Rows), int(header.Columns), frames), 2)
    try:
        image = sitk.ReadImage(str(file), outputPixelType=sitk.sitkFloat32, imageIO="GDCMImageIO")
    except RuntimeError as exc:
        raise CTReadError(path, f"DICOM pixel data unreadable ({itk_reason(exc)})") from None
    geometry = frame_geometry(header)
    if geometry is None:  # no per-frame positions: ITK's own geometry is all there is
        return volume_from_itk(image, path, meta)
    positions, orientation, spacing = geometry
    names = [f"{file.name} frame {k + 1}" for k in range(frames)]
    plan = plan_stack(path, names, positions, orientation, spacing)
    sorted_frames = sitk.GetArrayFromImage(image)[plan.order]
    grid = sitk.GetImageFromArray(sorted_frames)
    grid.SetSpacing((spacing[1], spacing[0], float(np.median(np.diff(plan.along))) if frames > 1 else 1.0))
    grid.SetOrigin(tuple(float(v) for v in plan.positions[0]))
    grid.SetDirection(tuple(np.column_stack([plan.row, plan.col, plan.normal]).flatten().tolist()))
    if plan.regular:
        return volume_from_itk(grid, path, meta)
    return _regularised(path, plan, grid, meta)



def frame_geometry(header: Any) -> tuple[np.ndarray, list[float], list[float]] | None:
    """(positions, orientation, pixel spacing) of an enhanced multi-frame header, or None."""
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return None
    shared = (header.get("SharedFunctionalGroupsSequence") or [None])[0]

    def item(frame: Any, sequence: str, key: str) -> Any:
        for group in (frame, shared):
            if group is not None and sequence in group and group[sequence].value and key in group[sequence][0]:
                return group[sequence][0].get(key)
        return header.get(key)

    positions, orientation, spacing = [], None, None
    for frame in per_frame:
        position = item(frame, "PlanePositionSequence", "ImagePositionPatient")
        if position is None:
            return None
        positions.append([float(v) for v in position])
        orientation = orientation or item(frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = spacing or item(frame, "PixelMeasuresSequence", "PixelSpacing")
    if orientation is None:
        return None
    return np.array(positions), [float(v) for v in orientation], [float(v) for v in (spacing or (1.0, 1.0))]



def _regularised(path: Path, plan: StackPlan, image: Any, meta: dict[str, Any]) -> CTVolume:
    import SimpleITK as sitk

    sorted_slices = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    grid, n_out, spacing = regular_grid_image(plan, sorted_slices)
    note = plan.description(n_out, spacing)
    log.info("%s: %s", path, note)
    meta["resampled"] = {"tilt_degrees": round(plan.tilt_degrees, 3), "uneven_gaps": plan.uneven,
                         "slice_gaps_mm": [round(float(g), 4) for g in np.diff(plan.along)],
                         "slices_in": len(plan.order), "slices_out": n_out, "slice_spacing_mm": round(spacing, 4)}
    add_note(meta, note)
    return volume_from_itk(grid, path, meta)



def _scan_dicom_headers(path: Path, folder: Path) -> list[_Slice]:
    """Headers (no pixel data) of every DICOM image file in `folder`; files without the DICOM
    marker are skipped, but a DICOM file that cannot be read is refused, naming it: a series
    silently one slice short is worse than no series."""
    import pydicom

    slices, unreadable = [], []
    for child in sorted(folder.iterdir()):
        if not child.is_file():
            continue
        try:
            if not _preamble(child):
                continue
            header = pydicom.dcmread(child, stop_before_pixels=True, specific_tags=list(_DICOM_TAGS))
            rows, cols = header.get("Rows"), header.get("Columns")
        except PermissionError:
            unreadable.append(f"{child.name} (no read permission)")
            continue
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt headers
            unreadable.append(f"{child.name} (corrupt header: {first_line(exc)})")
            continue
        if rows and cols:
            slices.append(_Slice(child, header))
        elif not _is_non_image_object(header):  # an image file whose header broke off
            unreadable.append(f"{child.name} (corrupt header: no image size)")
    if unreadable:
        more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
        raise CTReadError(path, f"DICOM file {unreadable[0]}{more} cannot be read; the series would be incomplete "
                                "(fix or remove the file)")
    return slices



def _is_non_image_object(header: Any) -> bool:
    """A structured report, presentation state, DICOMDIR...: DICOM files that hold no image."""
    meta = getattr(header, "file_meta", None)
    uid = header.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    name = getattr(uid, "name", "") or ""
    return bool(uid) and name != str(uid) and "Image" not in name



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
