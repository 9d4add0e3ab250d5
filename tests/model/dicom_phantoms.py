"""DICOM series with any geometry, written with pydicom from a phantom defined in patient space.

The phantom is a function of LPS millimetres, so a tilted or unevenly spaced series samples the
same body as the orthogonal grid it must be resampled onto, and the expected HU of every output
voxel is known exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


def chest_phantom(points_lps: np.ndarray) -> np.ndarray:
    """HU at LPS points (..., 3): air, an elliptic body of soft tissue, two lungs, a bony spine."""
    x, y, z = points_lps[..., 0], points_lps[..., 1], points_lps[..., 2]
    hu = np.full(x.shape, -1000.0)
    body = (x / 60.0) ** 2 + (y / 40.0) ** 2 <= 1.0
    hu[body] = 40.0
    for side in (-1, 1):
        lung = ((x - side * 28.0) / 20.0) ** 2 + ((y + 2.0) / 22.0) ** 2 + ((z - 10.0) / 45.0) ** 2 <= 1.0
        hu[lung & body] = -850.0
    spine = (x / 9.0) ** 2 + ((y - 28.0) / 9.0) ** 2 <= 1.0
    hu[spine] = 700.0
    return hu


def slice_grid(origin: Sequence[float], row_dir: Sequence[float], col_dir: Sequence[float], rows: int, cols: int,
               pixel_spacing: tuple[float, float]) -> np.ndarray:
    """LPS position (rows, cols, 3) of every pixel of one slice (DICOM: columns run along row_dir)."""
    r = np.arange(rows)[:, None, None] * pixel_spacing[0] * np.asarray(col_dir, float)
    c = np.arange(cols)[None, :, None] * pixel_spacing[1] * np.asarray(row_dir, float)
    return np.asarray(origin, float) + r + c


def _base_dataset(sop_class: str, modality: str, series_uid: str, rows: int, cols: int, intercept: float):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Phantom^Test", "PH-1"
    ds.StudyDate = "20240102"
    ds.SeriesDescription = f"{modality} phantom"
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.98"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
    return ds


def write_phantom_series(folder: Path, z_positions: Sequence[float], *, tilt_degrees: float = 0.0,
                         rows: int = 48, cols: int = 64, pixel_spacing: tuple[float, float] = (2.0, 2.0),
                         modality: str = "CT", orientation: Sequence[float] | None = None,
                         series_uid: str = "1.2.826.0.1.3680043.8.498.7", intercept: float = -1024.0,
                         phantom=chest_phantom) -> list[Path]:
    """One file per slice; slice k lies at table position z_positions[k] (mm, LPS z). A gantry
    tilt turns the image plane about the patient's left-right axis, as a scanner does; the table
    still moves along z, so the stack is sheared."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.radians(tilt_degrees)
    row_dir = (1.0, 0.0, 0.0)
    col_dir = (0.0, float(np.cos(t)), float(-np.sin(t)))
    iop = list(orientation) if orientation is not None else [*row_dir, *col_dir]
    row_dir, col_dir = iop[:3], iop[3:]
    x0, y0 = -(cols - 1) * pixel_spacing[1] / 2, -(rows - 1) * pixel_spacing[0] / 2
    paths = []
    normal = np.cross(row_dir, col_dir)
    for k, z in enumerate(z_positions):
        if orientation is None:
            origin = np.array([x0, y0 * np.cos(t), z - y0 * np.sin(t)])
        else:  # centred on the isocentre, slices along the normal
            origin = x0 * np.asarray(row_dir) + y0 * np.asarray(col_dir) + z * normal
        hu = phantom(slice_grid(origin, row_dir, col_dir, rows, cols, pixel_spacing))
        stored = hu - (intercept if modality == "CT" else -1000.0)
        sop = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
        ds = _base_dataset(sop, modality, series_uid, rows, cols, intercept)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in origin]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = 2.0
        if tilt_degrees:
            ds.GantryDetectorTilt = tilt_degrees
        ds.PixelData = np.rint(stored).astype(np.int16).tobytes()
        path = folder / f"IM{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_ct(path: Path, z_positions: Sequence[float], rows: int = 32, cols: int = 40,
                      pixel_spacing: tuple[float, float] = (2.0, 2.0), intercept: float = -1024.0) -> Path:
    """One Enhanced CT file (multi-frame) with per-frame positions in functional groups."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ds = _base_dataset(ENHANCED_CT_STORAGE, "CT", "1.2.826.0.1.3680043.8.498.8", rows, cols, intercept)
    del ds.RescaleIntercept, ds.RescaleSlope  # enhanced CT keeps them in the functional groups
    x0, y0 = -(cols - 1) * pixel_spacing[1] / 2, -(rows - 1) * pixel_spacing[0] / 2
    shared = Dataset()
    measures, orient, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = list(pixel_spacing), 2.0
    orient.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = intercept, 1, "HU"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orient])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames, pixels = [], []
    for z in z_positions:
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = [x0, y0, float(z)]
        frame.PlanePositionSequence = DicomSequence([position])
        frames.append(frame)
        hu = chest_phantom(slice_grid((x0, y0, z), (1, 0, 0), (0, 1, 0), rows, cols, pixel_spacing))
        pixels.append(np.rint(hu - intercept).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
