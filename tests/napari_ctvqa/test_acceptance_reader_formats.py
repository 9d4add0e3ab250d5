"""Issue 2: every file format the README promises is offered to our reader by napari (npe2 matches
the manifest's filename patterns, which is what drag and drop and File > Open consult) and opens
in millimetres and Hounsfield units.

napari's builtin reader also claims these extensions (through imageio/SimpleITK, without spacing),
so napari's GUI asks the user which reader to use unless a preference is saved; the tests check
that ours is among the offered readers and what choosing it gives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model.ct.volume import CTVolume, canonical_affine
from model.ct.io import write_ct
from npe2 import PluginManager

SPACING = (2.5, 0.8, 0.7)


def _offered_readers(path: Path) -> list[str]:
    return [r.plugin_name for r in PluginManager.instance().iter_compatible_readers([str(path)])]


def _ct() -> CTVolume:
    array = np.full((6, 10, 12), -1000.0, np.float32)
    array[1:5, 3:7, 3:9] = 40.0
    array[2:4, 4:6, 5:7] = 700.0
    return CTVolume(array, SPACING, canonical_affine(SPACING, (0.0, 0.0, 0.0)))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_each_promised_format_is_offered_to_our_reader_and_opens(make_napari_viewer, tmp_path: Path,
                                                                  suffix: str) -> None:
    path = write_ct(_ct(), tmp_path / f"scan{suffix}")
    viewer = make_napari_viewer()
    assert "napari-ctvqa" in _offered_readers(path)
    viewer.open(str(path), plugin="napari-ctvqa")
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    np.testing.assert_allclose(layer.scale, SPACING, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(layer.data), _ct().array)
    assert layer.metadata["ct_meta"]["source_format"] == suffix.lstrip(".")


def test_m3d_npy_and_dicom_folder_are_offered_to_our_reader_and_open(make_napari_viewer, tmp_path: Path,
                                                                     shared_data: Path) -> None:
    npy = tmp_path / "m3d.npy"
    np.save(npy, np.linspace(0, 1, 32 * 16 * 16, dtype=np.float32).reshape(1, 32, 16, 16))
    dicom = shared_data / "ct" / "totalsegmentator_example_ct_dicom"
    viewer = make_napari_viewer()
    for path in (npy, dicom):
        assert "napari-ctvqa" in _offered_readers(path), path
    viewer.open(str(npy), plugin="napari-ctvqa")
    viewer.open(str(dicom), plugin="napari-ctvqa")
    assert [layer.data.shape for layer in viewer.layers] == [(32, 16, 16), (20, 512, 512)]
    assert viewer.layers[0].metadata["ct_meta"]["normalised"] is True
    assert float(viewer.layers[1].data.min()) < -900  # DICOM rescale applied: HU, not raw values
