"""A CT-RATE-like raw volume: stored values (HU + 1024) in a NIfTI with an identity affine, and
the metadata row that calibrates it, beside the original it was made from."""
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

from model.ct.io import write_ct
from model.ct.volume import CTVolume, canonical_affine
from tests.model.dicom_phantoms import chest_phantom

SPACING = (1.5, 0.75, 0.8)  # z, y, x mm
ORIGIN_RAS = (19.0, 14.5, -17.25)
NAME = "train_1_a_1.nii.gz"


def original_volume(shape: tuple[int, int, int] = (24, 40, 48)) -> CTVolume:
    affine = canonical_affine(SPACING, ORIGIN_RAS)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ras = np.einsum("ab,bxyz->axyz", affine[:3, :3], np.stack([k, j, i]).astype(float)) + affine[:3, 3, None, None, None]
    lps = np.moveaxis(ras, 0, -1) * np.array([-1.0, -1.0, 1.0])
    return CTVolume(np.rint(chest_phantom(lps)).astype(np.float32), SPACING, affine, {})


def metadata_row(name: str = NAME) -> dict[str, str]:
    """The row as CT-RATE's metadata.csv has it (DICOM-derived columns among others)."""
    r, a, s = ORIGIN_RAS
    return {"VolumeName": name, "Manufacturer": "SIEMENS", "PatientSex": "M", "PatientAge": "061Y",
            "RescaleSlope": "1", "RescaleIntercept": "-1024", "XYSpacing": f"[{SPACING[1]}, {SPACING[2]}]",
            "ZSpacing": str(SPACING[0]), "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
            "ImagePositionPatient": f"[{-r}, {-a}, {s}]", "StudyDate": "20240305"}


def write_ctrate_like(folder: Path, name: str = NAME) -> tuple[Path, Path, Path]:
    """(original HU NIfTI, raw CT-RATE-like NIfTI named `name`, metadata.csv with its row)."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = original_volume()
    original = write_ct(volume, folder / "original" / name)
    stored = (volume.array + 1024).astype(np.int16).transpose(2, 1, 0)  # i, j, k as DICOM stores them
    raw = folder / "volumes" / name
    raw.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(stored, np.eye(4)), raw)
    table = folder / "metadata.csv"
    row = metadata_row(name)
    with table.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row), lineterminator="\n")
        writer.writeheader()
        writer.writerow(row)
    return original, raw, table
