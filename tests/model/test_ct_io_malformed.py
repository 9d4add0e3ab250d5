"""A corpus of broken inputs: each must raise CTReadError naming the file and the reason, fast."""
from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from model.ct.volume import CTReadError
from model.ct.io import read_ct
from tests.model.test_ct_io import ramp_slices, write_dicom_series

Case = Callable[[Path], Path]


def _nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(path: Path, writer: Callable[[Path], object], keep: float = 0.5) -> Path:
    writer(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _noise_volume() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1000, (16, 32, 32)).astype(np.int16)


def _itk(path: Path, compress: bool = True) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(_noise_volume()), str(path), useCompression=compress)
    return path


def _dicom(path: Path, **kwargs) -> Path:
    write_dicom_series(path, kwargs.pop("slices", ramp_slices()), **kwargs)
    return path


def _mixed_sizes(path: Path) -> Path:
    write_dicom_series(path, ramp_slices(3, 6, 8), names=["a.dcm", "b.dcm", "c.dcm"])
    write_dicom_series(path, ramp_slices(1, 4, 4), names=["d.dcm"], positions=[6.0])
    return path


def _non_dicom_folder(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("not an image\n")
    (path / "scan.dcm").write_bytes(b"\0" * 200)
    return path


def _empty_folder(path: Path) -> Path:
    path.mkdir()
    return path


#: name -> (builder of the broken input under tmp_path, a fragment the reason must contain)
CASES: dict[str, tuple[Case, str]] = {
    "missing file": (lambda d: d / "absent.nii.gz", "no such file"),
    "truncated gzip nifti": (lambda d: _truncated(d / "cut.nii.gz", lambda p: _nifti(p, _noise_volume())), "truncated"),
    "random bytes named .nii.gz": (lambda d: _bytes(d / "noise.nii.gz", np.random.default_rng(1).bytes(5000)), "nifti"),
    "random bytes named .nii": (lambda d: _bytes(d / "noise.nii", np.random.default_rng(2).bytes(5000)), "nifti"),
    "gzip of text named .nii.gz": (lambda d: _bytes(d / "text.nii.gz", gzip.compress(b"hello " * 200)), "nifti"),
    "truncated plain nifti": (lambda d: _truncated(d / "cut.nii", lambda p: _nifti(p, _noise_volume())), "truncated"),
    "2D nifti": (lambda d: _nifti(d / "flat.nii.gz", np.zeros((32, 32), np.int16)), "2D"),
    "single-slice nifti": (lambda d: _nifti(d / "one.nii.gz", np.zeros((32, 32, 1), np.int16)), "single slice"),
    "4D nifti": (lambda d: _nifti(d / "series.nii.gz", np.zeros((8, 8, 8, 3), np.int16)), "4D"),
    "5D nifti": (lambda d: _nifti(d / "five.nii.gz", np.zeros((4, 4, 4, 1, 2), np.int16)), "5D"),
    "all-NaN nifti": (lambda d: _nifti(d / "nan.nii.gz", np.full((4, 4, 4), np.nan, np.float32)), "NaN"),
    "zero-size axis nifti": (lambda d: _nifti(d / "empty.nii.gz", np.zeros((4, 0, 5), np.int16)), "zero-length"),
    "unknown extension": (lambda d: _bytes(d / "scan.png", b"\x89PNG\r\n\x1a\n"), "unknown format"),
    "text named .nrrd": (lambda d: _bytes(d / "text.nrrd", b"just some text\n"), "not a readable"),
    "text named .mha": (lambda d: _bytes(d / "text.mha", b"just some text\n"), "not a readable"),
    "truncated .nrrd": (lambda d: _truncated(d / "cut.nrrd", _itk), "truncated or corrupt"),
    "truncated .mha": (lambda d: _truncated(d / "cut.mha", _itk), "truncated or corrupt"),
    "truncated raw .mha": (lambda d: _truncated(d / "cut_raw.mha", lambda p: _itk(p, compress=False)), "truncated or corrupt"),
    ".mhd with missing data file": (lambda d: (_itk(d / "v.mhd", compress=False), (d / "v.raw").unlink())[0], "truncated or corrupt"),
    "wrong-shaped .npy": (lambda d: (np.save(d / "m3d.npy", np.zeros((2, 32, 256, 256), np.float32)), d / "m3d.npy")[1], "shape"),
    ".npy outside [0, 1]": (lambda d: (np.save(d / "hu.npy", np.full((32, 8, 8), -1000.0)), d / "hu.npy")[1], "[0, 1]"),
    "text named .npy": (lambda d: _bytes(d / "text.npy", b"not numpy"), "npy"),
    "empty folder": (lambda d: _empty_folder(d / "empty"), "no DICOM"),
    "folder of non-DICOM files": (lambda d: _non_dicom_folder(d / "junk"), "no DICOM"),
    "DICOM folder of one slice": (lambda d: _dicom(d / "one", slices=ramp_slices(1)), "single slice"),
    "DICOM mismatched slice sizes": (lambda d: _mixed_sizes(d / "mixed"), "different sizes"),
    "DICOM duplicate positions": (lambda d: _dicom(d / "dup", positions=[0.0, 2.0, 2.0, 4.0]), "share one position"),
    "DICOM missing slice": (lambda d: _dicom(d / "gap", positions=[0.0, 2.0, 6.0, 8.0]), "missing slices: a 4 mm gap between slice001.dcm and slice002.dcm"),
    "non-DICOM .dcm file": (lambda d: _bytes(d / "fake.dcm", b"plain text pretending\n"), "no DICOM"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input_raises_clear_error(tmp_path: Path, name: str) -> None:
    build, fragment = CASES[name]
    path = build(tmp_path)
    with pytest.raises(CTReadError) as info:
        read_ct(path)
    message = str(info.value)
    assert str(path) in message, message
    assert fragment.lower() in info.value.reason.lower(), message
    assert "Traceback" not in message and "\n" not in message.strip(), message


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 15
