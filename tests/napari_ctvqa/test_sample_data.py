"""File > Open Sample > napari-ctvqa: what a user gets is two CT layers in millimetres and HU."""
from __future__ import annotations

import numpy as np
import pytest

from napari_ctvqa._sample_data import LUNG_WINDOW, SAMPLE_SIZE


def test_open_sample_gives_two_hu_layers_scaled_by_spacing(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-ctvqa", "chest_phantom")

    assert len(layers) == 2 and len(viewer.layers) == 2
    assert [layer._type_string for layer in viewer.layers] == ["image", "image"]
    names = [layer.name for layer in viewer.layers]
    assert "sample_1_a_1" in names[0] and "sample_1_b_1" in names[1]
    for layer in viewer.layers:
        spacing = layer.metadata["spacing"]
        np.testing.assert_allclose(layer.scale, spacing)
        assert spacing[0] > spacing[1] == spacing[2]  # thick axial slices, square in-plane pixels
        assert layer.data.shape == SAMPLE_SIZE
        # Hounsfield units: air outside the body, bone above soft tissue, no [0, 1] normalisation.
        low, high = float(layer.data.min()), float(layer.data.max())
        assert -1100 <= low <= -900
        assert 300 <= high <= 3000
        assert np.median(layer.data) < -200  # mostly air and lung in a chest field of view
        assert tuple(layer.contrast_limits) == pytest.approx(LUNG_WINDOW)
        assert layer.metadata["synthetic"] is True
    # The follow-up scan is the one shown; the baseline is there to toggle to.
    assert [layer.visible for layer in viewer.layers] == [False, True]
    # Physical extent: first-to-last slice centre in world units is mm, not a voxel count.
    extent = viewer.layers[1].extent.world
    assert extent[1][0] - extent[0][0] == pytest.approx((SAMPLE_SIZE[0] - 1) * viewer.layers[1].scale[0])
