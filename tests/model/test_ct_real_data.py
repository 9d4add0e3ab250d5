"""Real CT as users have it (issue 18): tilted and uneven DICOM, missing and unreadable slices,
MR and enhanced multi-frame series, non-finite values, zero voxel sizes, gzip bombs and
CT-RATE volumes calibrated by their metadata row. Every case is generated here."""
from __future__ import annotations

import gzip
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from model.ct.dicom import looks_like_dicom_folder
from model.ct.io import read_ct
from model.ct.metadata import read_metadata_table
from model.ct.modality import NotCTError, require_ct
from model.ct.preprocess import to_model_input
from model.ct.registration import to_itk
from model.ct.volume import CTReadError, CTVolume, canonical_affine
from tests.model.ctrate_like import metadata_row, write_ctrate_like
from tests.model.dicom_phantoms import chest_phantom, write_enhanced_ct, write_phantom_series

TILT = 18.5


def _voxel_lps(volume: CTVolume) -> np.ndarray:
    """LPS mm of every voxel of a canonical volume, (z, y, x, 3)."""
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in volume.array.shape), indexing="ij"), -1).astype(float)
    ras = idx @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return ras * np.array([-1.0, -1.0, 1.0])


# --- gantry tilt and uneven gaps ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tilted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tilt") / "dicom"
    write_phantom_series(folder, np.arange(24) * 2.5 - 30, tilt_degrees=TILT)
    return folder


def test_tilted_series_is_resampled_and_says_so(tilted: Path) -> None:
    volume = read_ct(tilted)
    done = volume.meta["resampled"]
    assert done["tilt_degrees"] == pytest.approx(TILT, abs=0.05) and not done["uneven_gaps"]
    assert any("gantry tilt of 18.5 degrees corrected" in note for note in volume.meta["notes"])
    assert volume.spacing[0] == pytest.approx(2.5 * np.cos(np.radians(TILT)), rel=1e-3)
    body = volume.array > -500  # the resampled voxels hold the phantom at their own positions
    truth = chest_phantom(_voxel_lps(volume))
    assert np.mean(np.abs(volume.array - truth)[body & (truth > -500)]) < 60


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed (scripts/setup.sh installs it)")
def test_tilted_series_matches_dcm2niix(tilted: Path, tmp_path: Path) -> None:
    subprocess.run(["dcm2niix", "-z", "n", "-f", "ref", "-o", str(tmp_path), str(tilted)], check=True,
                   capture_output=True)
    reference = read_ct(next(tmp_path.glob("ref*Tilt*.nii")))
    ours = read_ct(tilted)
    assert all(abs(a - b) <= 1 for a, b in zip(ours.array.shape, reference.array.shape, strict=True))
    to_reference = np.linalg.inv(reference.affine) @ ours.affine  # our voxel index -> theirs
    for corner in itertools.product(*((0, n - 1) for n in ours.array.shape)):
        theirs = (to_reference @ [*corner, 1])[:3]
        assert np.abs(theirs - corner).max() <= 1.0, (corner, theirs)
    on_ours = sitk.GetArrayFromImage(sitk.Resample(to_itk(reference), to_itk(ours), sitk.Transform(),
                                                   sitk.sitkLinear, -1000.0))
    body = (ours.array > -500) & (on_ours > -500)
    assert body.sum() > 1000
    assert np.mean(np.abs(ours.array - on_ours)[body]) < 5


def test_uneven_gaps_are_resampled_to_the_finest_spacing(tmp_path: Path) -> None:
    z = np.r_[np.arange(0, 10, 2.0), np.arange(10, 30.1, 2.5)] + np.tile([0, 0.05, -0.05], 5)[:14]
    write_phantom_series(tmp_path / "s", z)
    volume = read_ct(tmp_path / "s")
    assert volume.meta["resampled"]["uneven_gaps"] and volume.meta["resampled"]["tilt_degrees"] < 0.1
    assert volume.spacing[0] == pytest.approx(np.diff(np.sort(z)).min())
    assert volume.array.shape[0] == int((z.max() - z.min()) / volume.spacing[0] + 1e-6) + 1
    assert "uneven slice gaps" in volume.meta["notes"][-1]
    truth = chest_phantom(_voxel_lps(volume))
    assert np.median(np.abs(volume.array - truth)) < 1  # exact away from the lungs' edges


def test_missing_slices_are_refused_naming_the_files_either_side(tmp_path: Path) -> None:
    z = [0, 2.5, 5, 7.5, 10, 17.5, 20, 22.5]
    write_phantom_series(tmp_path / "s", z)
    with pytest.raises(CTReadError, match=r"missing slices: a 7.5 mm gap between IM0004.dcm and IM0005.dcm"):
        read_ct(tmp_path / "s")


def test_a_regular_series_is_read_unchanged(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "s", np.arange(8) * 2.0)
    volume = read_ct(tmp_path / "s")
    assert "resampled" not in volume.meta and "notes" not in volume.meta
    assert np.array_equal(volume.array, chest_phantom(_voxel_lps(volume)).astype(np.float32))


# --- other modalities, multi-frame, bad files ------------------------------------------------


def test_sagittal_mr_series_is_viewable_but_not_hu_and_refused_by_the_model(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "mr", [0.0, 3.0], modality="MR", orientation=[0, 1, 0, 0, 0, -1], rows=40, cols=48)
    volume = read_ct(tmp_path / "mr")
    assert volume.meta["modality"] == "MR" and volume.meta["hu"] is False and "not HU" in volume.meta["units"]
    assert volume.array.shape[2] == 2  # sagittal slices become the left-right axis
    assert any("MR series, not CT" in note for note in volume.meta["notes"])
    with pytest.raises(NotCTError, match="MR series, not CT"):
        require_ct(volume)
    require_ct(volume, allow_non_ct=True)


def test_enhanced_multiframe_ct_reads_like_the_series(tmp_path: Path) -> None:
    z = np.arange(10) * 2.0
    frames = read_ct(write_enhanced_ct(tmp_path / "enhanced.dcm", z))
    assert frames.array.shape == (10, 32, 40) and frames.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert np.array_equal(frames.array, chest_phantom(_voxel_lps(frames)).astype(np.float32))
    assert frames.meta["modality"] == "CT" and frames.meta["n_slices"] == 10


def test_enhanced_multiframe_with_uneven_frames_is_resampled(tmp_path: Path) -> None:
    volume = read_ct(write_enhanced_ct(tmp_path / "e.dcm", [0, 2, 4, 6, 8.5, 11, 13.5, 16]))
    assert volume.meta["resampled"]["uneven_gaps"] and volume.spacing[0] == pytest.approx(2.0)


def test_a_corrupt_slice_is_refused_naming_it(tmp_path: Path) -> None:
    paths = write_phantom_series(tmp_path / "s", np.arange(6) * 2.0)
    paths[3].write_bytes(paths[3].read_bytes()[:140] + b"\xff\xfe\x00\x01garbage" * 5)
    with pytest.raises(CTReadError, match=r"DICOM file IM0003.dcm \(corrupt header"):
        read_ct(tmp_path / "s")


def _read_error(path: Path) -> str:
    """`read_ct`'s message for `path`; under root (who reads every file) in a forked child that
    has dropped to `nobody` first (the libraries are loaded before, so it needs no other file)."""
    def message() -> str:
        try:
            read_ct(path)
        except CTReadError as exc:
            return str(exc)
        return "read without error"

    if os.geteuid() != 0:
        return message()
    read_ct(path.parent / "readable")  # loads every module the read needs
    out, child_in = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(out)
            os.setgid(65534)
            os.setuid(65534)
            os.write(child_in, message().encode())
        finally:
            os._exit(0)
    os.close(child_in)
    with os.fdopen(out, "rb") as handle:
        text = handle.read().decode()
    os.waitpid(pid, 0)
    return text


def test_an_unreadable_slice_is_refused_naming_it() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ctvqa-perm-"))  # tmp_path is root-only: nobody could not enter it
    try:
        os.chmod(folder, 0o755)
        write_phantom_series(folder / "readable", np.arange(3) * 2.0)
        paths = write_phantom_series(folder / "s", np.arange(5) * 2.0)
        for sub in ("s", "readable"):
            os.chmod(folder / sub, 0o755)
        for p in [*paths, *(folder / "readable").iterdir()]:
            os.chmod(p, 0o644)
        os.chmod(paths[2], 0o000)
        assert "DICOM file IM0002.dcm (no read permission) cannot be read" in _read_error(folder / "s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_dicom_folder_with_many_other_files_first_is_recognised(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    for k in range(120):
        (folder / f"a{k:03d}_notes.txt").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"a{k:03d}_notes.txt").write_text("not an image")
    write_phantom_series(folder, np.arange(4) * 2.0)
    for p in folder.glob("IM*.dcm"):
        p.rename(folder / f"z_{p.stem}")  # no extension, sorted last
    assert looks_like_dicom_folder(folder)
    assert read_ct(folder).array.shape[0] == 4


# --- values ----------------------------------------------------------------------------------


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([-1.0, -1.0, 2.0, 1.0]) if affine is None else affine), path)
    return path


def _phantom_array() -> np.ndarray:
    array = np.full((32, 32, 12), -1000.0, np.float32)
    array[6:26, 8:24, 2:10] = 40.0
    array[10:14, 10:14, 4:8] = 300.0
    return array


def test_one_nan_voxel_is_replaced_and_the_model_input_stays_visible(tmp_path: Path) -> None:
    array = _phantom_array()
    array[16, 16, 6] = np.nan
    volume = read_ct(_nifti(tmp_path / "nan.nii.gz", array))
    assert np.isfinite(volume.array).all() and volume.array.min() == -1000.0
    assert "1 non-finite voxel(s) (1 NaN, 0 infinite) replaced" in volume.meta["notes"][0]
    pixels = to_model_input(volume, size=(8, 32, 32))
    assert torch_finite(pixels) and float(pixels.max()) == pytest.approx(1.0)


def torch_finite(tensor) -> bool:  # noqa: ANN001
    return bool(tensor.isfinite().all())


def test_model_input_of_an_array_with_nan_is_not_black() -> None:
    """Arrays that never went through read_ct (a layer made in code) get the same rule."""
    array = np.transpose(_phantom_array(), (2, 1, 0)).copy()
    array[3, 5, 5] = np.nan
    array[4, 6, 6] = np.inf
    pixels = to_model_input(CTVolume(array, (2.0, 1.0, 1.0), canonical_affine((2.0, 1.0, 1.0))), size=(8, 32, 32))
    assert torch_finite(pixels) and float(pixels.max()) > 0.9


def test_all_infinite_volume_is_refused(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "inf.nii.gz", np.full((4, 4, 4), np.inf, np.float32))
    with pytest.raises(CTReadError, match=r"inf.nii.gz: no finite voxel"):
        read_ct(path)


def test_zero_voxel_size_is_refused_not_made_1_mm(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), None)
    image.header["pixdim"][1:4] = [0.0, 0.8, 2.0]
    path = tmp_path / "zero.nii.gz"
    nib.save(image, path)
    with pytest.raises(CTReadError, match=r"zero.nii.gz: zero or negative voxel size \[0.0, 0.8"):
        read_ct(path)
    row = {"XYSpacing": "[0.8, 0.8]", "ZSpacing": "2.0"}
    assert read_ct(path, metadata=row).spacing == pytest.approx((2.0, 0.8, 0.8))


def test_zero_spacing_in_an_mha_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementSpacing = 1 0 1\n"
                     b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + bytes(128))
    with pytest.raises(CTReadError, match="flat.mha"):
        read_ct(path)


def _bomb(path: Path, shape: tuple[int, int, int], inflated_gib: float) -> Path:
    """A .nii.gz whose header claims `shape` int16 and whose gzip members inflate to that size."""
    header = nib.Nifti1Image(np.zeros((1, 1, 1), np.int16), np.eye(4)).header
    header.set_data_shape(shape)
    member = gzip.compress(bytes(64 << 20), compresslevel=9)  # 64 MiB of zeros in ~64 KiB
    with path.open("wb") as fh:
        fh.write(gzip.compress(header.binaryblock + bytes(4)))
        for _ in range(int(inflated_gib * 16)):
            fh.write(member)
    return path


def test_gzip_bomb_is_refused_by_the_memory_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTVQA_MEMORY_BUDGET", "2G")
    path = _bomb(tmp_path / "bomb.nii.gz", (1024, 1024, 2048), 4.0)  # 4 GiB at ~1000:1
    assert path.stat().st_size < 8 << 20
    with pytest.raises(CTReadError, match=r"bomb.nii.gz: 1024x1024x2048 voxels need 12.00 GiB .* memory budget of 2.00 GiB"):
        read_ct(path)


def test_inflation_stops_at_what_the_header_claims(tmp_path: Path) -> None:
    import tracemalloc

    path = _bomb(tmp_path / "small.nii.gz", (16, 16, 16), 0.25)  # the stream goes on for 256 MiB
    tracemalloc.start()
    volume = read_ct(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert volume.array.shape == (16, 16, 16) and peak < 32 << 20


# --- CT-RATE metadata ------------------------------------------------------------------------


def test_ctrate_like_volume_with_its_row_equals_the_original(tmp_path: Path) -> None:
    original, raw, table = write_ctrate_like(tmp_path)
    truth = read_ct(original)
    row = read_metadata_table(table)[raw.name]
    calibrated = read_ct(raw, metadata=row)
    assert np.array_equal(calibrated.array, truth.array)
    assert calibrated.spacing == pytest.approx(truth.spacing)
    np.testing.assert_allclose(calibrated.affine, truth.affine, atol=1e-5)
    assert calibrated.meta["metadata_applied"][:3] == ["spacing", "orientation", "position"]
    assert "rescale (slope 1, intercept -1024)" in calibrated.meta["metadata_applied"][3]
    uncalibrated = read_ct(raw)
    assert uncalibrated.spacing == (1.0, 1.0, 1.0) and uncalibrated.array.min() > -100  # what users saw before


def test_header_wins_over_a_row_that_disagrees(tmp_path: Path) -> None:
    original, _, _ = write_ctrate_like(tmp_path)
    truth = read_ct(original)
    stale = {**metadata_row(), "XYSpacing": "[0.5, 0.5]"}
    volume = read_ct(original, metadata=stale)  # already HU, real geometry: nothing applied
    assert np.array_equal(volume.array, truth.array) and volume.spacing == truth.spacing
    conflicts = " | ".join(volume.meta["metadata_conflicts"])
    assert "differs from the header" in conflicts and "already in HU" in conflicts
    assert "metadata_applied" not in volume.meta


def test_a_malformed_row_names_the_key(tmp_path: Path) -> None:
    _, raw, _ = write_ctrate_like(tmp_path)
    with pytest.raises(CTReadError, match=r"train_1_a_1.nii.gz: metadata row: XYSpacing 'wide' is not a list of 2"):
        read_ct(raw, metadata={"XYSpacing": "wide", "ZSpacing": "1"})
    bad = tmp_path / "bad.csv"
    bad.write_text("VolumeName,ZSpacing,XYSpacing\na.nii.gz,1.5,\"[0.7, 0.7]\"\nb.nii.gz,-1,\"[0.7, 0.7]\"\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: spacing must be positive"):
        read_metadata_table(bad)


def test_finetuning_features_use_the_table_beside_the_data(tmp_path: Path, tiny_vlm_dir: Path) -> None:
    """The metadata.csv `ctvqa finetune --from-db` writes beside train.jsonl calibrates the scans."""
    import torch

    from model.ct.metadata import TABLE_FILE, table_beside, write_metadata_table
    from model.inference.loading import load_vlm
    from model.training.finetune.samples import FeatureCache

    original, raw, _ = write_ctrate_like(tmp_path / "c")
    store_row = {"ZSpacing": 1.5, "XYSpacing": [0.75, 0.8], "RescaleSlope": 1.0, "RescaleIntercept": -1024.0,
                 "ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}  # what ScanRecord.ct_metadata gives
    write_metadata_table(tmp_path / "data" / TABLE_FILE, {raw.name: store_row})
    vlm = load_vlm(tiny_vlm_dir)
    calibrated = FeatureCache(vlm, table_beside(tmp_path / "data"))(str(raw))
    assert torch.allclose(calibrated, FeatureCache(vlm)(str(original)), atol=1e-5)
    assert not torch.allclose(FeatureCache(vlm)(str(raw)), calibrated, atol=1e-3)
