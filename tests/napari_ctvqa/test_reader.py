"""The napari reader: which paths it claims, the layer it builds, and bad files as notifications."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model.ct.volume import CTVolume, canonical_affine
from model.ct.io import write_ct
from model.ct.windows import window_limits
from napari.utils.notifications import notification_manager

from napari_ctvqa._reader import get_reader, read_ct_layers


def _small_ct(tmp_path: Path, name: str = "small.nii.gz") -> Path:
    array = np.full((6, 10, 12), -1000.0, np.float32)
    array[:, 3:7, 3:9] = 40.0
    return write_ct(CTVolume(array, (2.5, 0.8, 0.7), canonical_affine((2.5, 0.8, 0.7), (100.0, 50.0, -300.0))), tmp_path / name)


def test_get_reader_claims_ct_files_and_dicom_folders_only(tmp_path: Path, shared_data: Path) -> None:
    ct = _small_ct(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("x")
    plain_folder = tmp_path / "folder"
    plain_folder.mkdir()
    (plain_folder / "a.txt").write_text("x")
    assert get_reader(str(ct)) is read_ct_layers
    assert get_reader([str(ct)]) is read_ct_layers
    assert get_reader(str(shared_data / "ct" / "totalsegmentator_example_ct_dicom")) is read_ct_layers
    for unsupported in (str(text), str(plain_folder), [str(ct), str(ct)], str(tmp_path / "missing.png"), 42):
        assert get_reader(unsupported) is None


def test_open_real_nifti_gives_mm_scaled_mediastinal_layer(make_napari_viewer, shared_data: Path) -> None:
    viewer = make_napari_viewer()
    path = shared_data / "ct" / "totalsegmentator_example_ct.nii.gz"
    layers = viewer.open(str(path), plugin="napari-ctvqa")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.name == "totalsegmentator_example_ct"
    np.testing.assert_allclose(layer.scale, (3.0, 3.0, 3.0))
    assert tuple(layer.contrast_limits) == pytest.approx(window_limits("mediastinum"))
    assert layer.colormap.name == "gray"
    assert layer.data.shape == (112, 101, 122)
    assert set(layer.metadata) == {"ct_meta", "affine", "path"}
    assert layer.metadata["ct_meta"]["source_format"] == "nii.gz"


def test_open_dicom_folder_and_world_position(make_napari_viewer, shared_data: Path) -> None:
    viewer = make_napari_viewer()
    layer = viewer.open(str(shared_data / "ct" / "totalsegmentator_example_ct_dicom"), plugin="napari-ctvqa")[0]
    np.testing.assert_allclose(layer.scale, (2.0, 0.9765625, 0.9765625))
    # voxel (0, 0, 0) sits at S=-804.5, P=-(A)=-437.5..., L=-(R): world axes follow the layer axes
    np.testing.assert_allclose(layer.translate, (-804.5, -437.51171875, -249.51171875))
    assert layer.metadata["ct_meta"]["n_slices"] == 20


def test_translate_matches_affine_origin(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    layer = viewer.open(str(_small_ct(tmp_path)), plugin="napari-ctvqa")[0]
    np.testing.assert_allclose(layer.scale, (2.5, 0.8, 0.7))
    np.testing.assert_allclose(layer.translate, (-300.0, -50.0, -100.0))  # (S, -A, -R) of the origin


def test_m3d_npy_uses_full_range(make_napari_viewer, tmp_path: Path) -> None:
    path = tmp_path / "m3d.npy"
    np.save(path, np.linspace(0, 1, 32 * 16 * 16, dtype=np.float32).reshape(1, 32, 16, 16))
    layer = make_napari_viewer().open(str(path), plugin="napari-ctvqa")[0]
    assert tuple(layer.contrast_limits) == pytest.approx((0.0, 1.0))
    assert layer.metadata["ct_meta"]["normalised"]


def test_corrupt_file_is_a_notification_not_a_traceback(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"definitely not gzip")
    before = len(notification_manager.records)
    layers = viewer.open(str(broken), plugin="napari-ctvqa")
    assert layers == [] and len(viewer.layers) == 0
    messages = [str(record.message) for record in notification_manager.records[before:]]
    assert any(str(broken) in message and "not a readable NIfTI" in message for message in messages), messages


def test_cli_view_refuses_bad_files_before_opening_napari(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from napari_ctvqa.cli import app

    broken = tmp_path / "broken.nrrd"
    broken.write_text("not an image")
    runner = CliRunner()
    result = runner.invoke(app, ["view", str(broken)])
    assert result.exit_code == 1 and "broken.nrrd" in result.output and "not a readable .nrrd" in result.output
    result = runner.invoke(app, ["view", str(tmp_path / "notes.txt")])
    assert result.exit_code == 1 and "no such file" in result.output
    result = runner.invoke(app, ["view", "--window", "soft", str(broken)])
    assert result.exit_code == 1 and "unknown window" in result.output
    assert runner.invoke(app, ["view", "--help"]).exit_code == 0
