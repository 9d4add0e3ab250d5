"""read_ct/write_ct on real CTs, synthetic DICOM series and the canonical orientation."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from model.ct.volume import CTReadError, CTVolume, canonical_affine
from model.ct.io import read_ct, write_ct

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
FORBIDDEN_META = {"PatientName", "PatientID", "PatientBirthDate", "patient_name", "patient_id", "birth_date"}


def write_dicom_series(
    folder: Path,
    slices: np.ndarray,
    spacing: tuple[float, float, float] = (2.0, 0.5, 0.5),
    origin_lps: tuple[float, float, float] = (-10.0, -20.0, -30.0),
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    names: Sequence[str] | None = None,
    intercept: float = -1024.0,
    positions: Sequence[float] | None = None,
) -> list[Path]:
    """Write `slices` (z, rows, cols of stored values) as an axial CT series, slice k at
    z = origin + k * spacing (inferior to superior), rows posterior-wards, columns leftwards."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k, pixels in enumerate(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientName = "Secret^Person"
        ds.PatientID = "ID-123"
        ds.PatientBirthDate = "19700101"
        ds.StudyDate = "20240102"
        ds.SeriesDescription = "test series"
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
        ds.InstanceNumber = k + 1
        z = origin_lps[2] + (positions[k] if positions is not None else k * spacing[0])
        ds.ImagePositionPatient = [origin_lps[0], origin_lps[1], z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = 1
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
        name = names[k] if names is not None else f"slice{k:03d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        written.append(folder / name)
    return written


def ramp_slices(n: int = 4, rows: int = 6, cols: int = 8) -> np.ndarray:
    """Slices whose every voxel encodes its own (k, row, col), so any flip or shuffle shows."""
    k, r, c = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    return (k * 100 + r * 10 + c).astype(np.int16)


# --- real data -------------------------------------------------------------------------------


def test_real_nifti_reads_hu_in_canonical_orientation(shared_data: Path) -> None:
    volume = read_ct(shared_data / "ct" / "totalsegmentator_example_ct.nii.gz")
    assert volume.array.shape == (112, 101, 122)
    assert volume.array.dtype == np.float32 and volume.array.flags.c_contiguous
    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert nib.aff2axcodes(volume.affine) == ("S", "P", "L")
    assert -1300 < volume.array.min() < -900 and 1000 < volume.array.max() < 4000
    assert np.median(volume.array[:, :3, :3]) == pytest.approx(-1000, abs=150)  # air in a corner
    assert volume.meta["source_format"] == "nii.gz" and volume.meta["shape"] == (112, 101, 122)
    assert volume.meta["units"] == "HU" and not volume.meta["normalised"]


def test_real_nifti_anatomy_is_where_a_radiologist_expects_it(shared_data: Path) -> None:
    """Spine at the bottom of an axial slice, liver on the screen's left at the upper abdomen."""
    array = read_ct(shared_data / "ct" / "totalsegmentator_example_ct.nii.gz").array
    axial = array[100]
    rows, cols = axial.shape
    spine = axial[:, cols // 2 - 5 : cols // 2 + 5] > 300
    assert np.median(np.nonzero(spine)[0]) > rows / 2  # midline bone is posterior (bottom)
    soft_tissue = (axial[15:60] > 40) & (axial[15:60] < 200)  # anterior half: liver vs stomach
    assert soft_tissue[:, : cols // 2].sum() > 1.5 * soft_tissue[:, cols // 2 :].sum()


def test_real_dicom_folder_reads_jpeg2000_series(shared_data: Path) -> None:
    folder = shared_data / "ct" / "totalsegmentator_example_ct_dicom"
    volume = read_ct(folder)
    assert volume.array.shape == (20, 512, 512)
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert -1100 <= volume.array.min() <= -900 and np.median(volume.array[:, :20, :20]) < -900
    assert volume.affine[2, 3] == pytest.approx(-804.5)  # first slice is the most inferior
    assert volume.meta["modality"] == "CT" and volume.meta["n_slices"] == 20
    assert volume.meta["source_format"] == "dicom" and volume.meta["study_date"] == "20221208"
    assert not FORBIDDEN_META & set(volume.meta)


def test_single_dicom_file_means_its_series(shared_data: Path) -> None:
    folder = shared_data / "ct" / "totalsegmentator_example_ct_dicom"
    one_file = sorted(folder.iterdir())[5]
    assert read_ct(one_file).array.shape == (20, 512, 512)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd", ".nii", ".nii.gz"])
def test_real_volume_round_trips(shared_data: Path, tmp_path: Path, suffix: str) -> None:
    volume = read_ct(shared_data / "ct" / "totalsegmentator_example_ct.nii.gz")
    back = read_ct(write_ct(volume, tmp_path / f"copy{suffix}"))
    assert np.array_equal(back.array, volume.array)
    assert back.spacing == volume.spacing
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-6)


def test_non_integer_values_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volume = CTVolume(rng.normal(size=(3, 4, 5)).astype(np.float32), (2.0, 1.0, 0.5), canonical_affine((2.0, 1.0, 0.5), (5, 6, 7)))
    back = read_ct(write_ct(volume, tmp_path / "v.mha"))
    assert np.array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine)


# --- orientation: one patient point must land on one voxel whatever the storage ------------


def _marked(shape: tuple[int, int, int] = (5, 6, 7)) -> np.ndarray:
    array = np.full(shape, -1000, dtype=np.int16)
    array[-1, 0, 0] = 1000  # superior, anterior, patient's right in canonical layout
    return array


def test_ras_stored_nifti_is_reoriented(tmp_path: Path) -> None:
    """NIfTI stored RAS (x from right to left *reversed*, y posterior->anterior): the marker at
    the superior-anterior-right corner must come back at array[-1, 0, 0]."""
    canonical = _marked()
    stored = np.transpose(canonical, (2, 1, 0))[::-1, ::-1, :]  # axes now run towards R, A, S
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    path = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(stored.copy(), affine), path)
    volume = read_ct(path)
    assert volume.array.shape == (5, 6, 7)
    assert volume.array[-1, 0, 0] == 1000 and (volume.array == 1000).sum() == 1
    assert volume.spacing == pytest.approx((3.0, 2.0, 1.5))
    np.testing.assert_allclose((volume.affine @ [4, 0, 0, 1])[:3], (affine @ [6, 5, 4, 1])[:3])  # same RAS point


def test_orientation_agrees_across_formats(tmp_path: Path) -> None:
    """The same marked DICOM series, and its NRRD/MHA/NIfTI copies, give the same voxels."""
    slices = _marked((4, 6, 8))
    folder = tmp_path / "dicom"
    write_dicom_series(folder, slices + 1024)  # stored values; intercept -1024 gives HU back
    from_dicom = read_ct(folder)
    assert np.array_equal(from_dicom.array, slices.astype(np.float32))
    assert from_dicom.affine[2, 2] == 0 and from_dicom.affine[2, 0] == pytest.approx(2.0)
    for suffix in (".nrrd", ".mha", ".nii.gz"):
        copy = read_ct(write_ct(from_dicom, tmp_path / f"copy{suffix}"))
        assert np.array_equal(copy.array, from_dicom.array), suffix
        np.testing.assert_allclose(copy.affine, from_dicom.affine, atol=1e-6)


# --- DICOM series handling -------------------------------------------------------------------


def test_dicom_sorted_by_position_not_file_name(tmp_path: Path) -> None:
    slices = ramp_slices()
    names = ["z.dcm", "a.dcm", "m.dcm", "b.dcm"]  # alphabetical order is not positional order
    write_dicom_series(tmp_path / "s", slices, names=names, intercept=0)
    volume = read_ct(tmp_path / "s")
    assert np.array_equal(volume.array, slices.astype(np.float32))
    assert volume.spacing == pytest.approx((2.0, 0.5, 0.5))


def test_dicom_rescale_intercept_applied(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "s", np.zeros((3, 4, 4), np.int16), intercept=-1024)
    assert float(read_ct(tmp_path / "s").array.max()) == -1024.0


def test_dicom_folder_with_two_series_reads_the_larger(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "mixed"
    write_dicom_series(folder, ramp_slices(5), series_uid="1.2.3.5", names=[f"big{k}.dcm" for k in range(5)])
    small = write_dicom_series(folder, ramp_slices(3), series_uid="1.2.3.3", names=[f"small{k}.dcm" for k in range(3)])
    with caplog.at_level("INFO", logger="model.ct.dicom"):
        volume = read_ct(folder)
    assert volume.array.shape[0] == 5 and volume.meta["series_uid"] == "1.2.3.5"
    assert volume.meta["series_in_folder"] == 2 and "2 series" in volume.meta["note"]
    assert "2 series" in caplog.text
    assert read_ct(small[0]).array.shape[0] == 3  # a file path picks its own series


# --- M3D .npy and squeezable 4D ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 32, 64, 64), (32, 64, 64)])
def test_m3d_npy_is_marked_normalised(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "m3d.npy"
    np.save(path, np.random.default_rng(1).random(shape, dtype=np.float32))
    volume = read_ct(path)
    assert volume.array.shape == (32, 64, 64)
    assert volume.meta["normalised"] and volume.meta["units"] != "HU"
    assert volume.spacing == (1.0, 1.0, 1.0)


def test_4d_nifti_with_trailing_singleton_is_squeezed(tmp_path: Path) -> None:
    path = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 1), np.int16), np.eye(4)), path)
    assert read_ct(path).array.shape == (6, 5, 4)


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.full((3, 3, 3), 10, np.int16), np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "scaled.nii"
    nib.save(image, path)
    assert np.all(read_ct(path).array == 2.0 * 10 - 1024.0)


def test_write_refuses_unknown_extension(tmp_path: Path) -> None:
    volume = CTVolume(np.zeros((2, 2, 2), np.float32), (1.0, 1.0, 1.0), canonical_affine((1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match=r"\.png"):
        write_ct(volume, tmp_path / "v.png")


def test_error_carries_path_and_reason(tmp_path: Path) -> None:
    with pytest.raises(CTReadError) as info:
        read_ct(tmp_path / "absent.nii.gz")
    assert info.value.path == tmp_path / "absent.nii.gz" and "no such file" in info.value.reason
    assert str(tmp_path / "absent.nii.gz") in str(info.value)


def test_sitk_agrees_with_canonical_layout(tmp_path: Path) -> None:
    """ITK's identity direction (LPS) is our canonical layout: a plain SimpleITK image written
    without direction reads back unflipped."""
    data = ramp_slices(3, 4, 5)
    path = tmp_path / "plain.mha"
    sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
    assert np.array_equal(read_ct(path).array, data.astype(np.float32))


def test_multi_member_gzip_nifti_reads_whole(tmp_path: Path) -> None:
    """pigz/bgzip-style files are several gzip members back to back; all of them are data."""
    import gzip

    data = ramp_slices(4, 6, 8)
    plain = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(data.transpose(2, 1, 0).copy(), np.diag([-1.0, -1.0, 1.0, 1.0])), plain)
    raw = plain.read_bytes()
    split = tmp_path / "v.nii.gz"
    split.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]) + b"\0" * 16)
    assert np.array_equal(read_ct(split).array, read_ct(plain).array)
    assert np.array_equal(read_ct(plain).array, data.astype(np.float32))  # LPS-stored == canonical
