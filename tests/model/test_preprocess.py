"""CT volume to model input: range, body crop, window, normalised input, real CT."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.inference import boxes
from model.ct.preprocess import InputGeometry, to_model_input, to_model_input_with_crop


def phantom(shape=(24, 64, 64)) -> np.ndarray:
    """Air around a soft-tissue block with a bone core, and a separate 'table' slab below it."""
    vol = np.full(shape, -1000.0, np.float32)
    vol[4:20, 10:40, 12:52] = 40.0
    vol[8:16, 20:30, 28:36] = 700.0
    vol[:, 52:56, 4:60] = 300.0  # the table: not connected to the body
    return vol


def test_shape_range_and_body_crop() -> None:
    tensor, geometry = to_model_input_with_crop(phantom(), size=(8, 16, 16))
    assert tensor.shape == (1, 8, 16, 16) and tensor.dtype == torch.float32
    # min-max happens at full resolution; the resize then blends edges, so the extremes stay inside [0, 1]
    assert 0.0 <= float(tensor.min()) < 0.2 and 0.5 < float(tensor.max()) <= 1.0
    z0, y0, x0, z1, y1, x1 = geometry.crop
    assert z0 <= 4 and z1 >= 20 and y0 <= 10 and y1 >= 40 and x0 <= 12 and x1 >= 52  # body kept
    assert y1 < 52  # table left out
    assert geometry.original_shape == (24, 64, 64)


def test_ndarray_and_volume_give_the_same_input() -> None:
    class Volume:  # duck-typed CTVolume: array + meta
        def __init__(self, array):
            self.array, self.meta = array, {"normalised": False}

    vol = phantom()
    torch.testing.assert_close(to_model_input(vol, (8, 16, 16)), to_model_input(Volume(vol), (8, 16, 16)))


def test_window_clips_before_normalising() -> None:
    vol = phantom()
    full = to_model_input(vol, (8, 16, 16))
    lung = to_model_input(vol, (8, 16, 16), window=(1500, -600))  # -1350 .. 150 HU
    same = to_model_input(vol, (8, 16, 16), window="lung")
    torch.testing.assert_close(lung, same)
    # bone (700 HU) saturates under the lung window, so soft tissue sits much higher than in the full range
    assert float(lung.median()) > float(full.median())
    with pytest.raises(ValueError, match="unknown CT window"):
        to_model_input(vol, window="brain-ish")


def test_normalised_npy_is_only_resized() -> None:
    class Npy:
        def __init__(self, array):
            self.array, self.meta = array, {"normalised": True}

    arr = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    tensor, geometry = to_model_input_with_crop(Npy(arr), size=(16, 32, 32))
    np.testing.assert_allclose(tensor[0].numpy(), arr, atol=1e-6)
    assert geometry.crop == (0, 0, 0, 16, 32, 32)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="3-D"):
        to_model_input(np.zeros((64, 64), np.float32))


def test_box_round_trip_through_geometry() -> None:
    geometry = InputGeometry(crop=(2, 10, 20, 22, 50, 60), original_shape=(24, 64, 64), size=(8, 16, 16))
    voxels = boxes.to_voxels((0.0, 0.25, 0.5, 1.0, 0.75, 1.0), geometry)
    assert voxels == (2.0, 20.0, 40.0, 22.0, 40.0, 60.0)
    assert boxes.to_normalized(voxels, geometry) == pytest.approx((0.0, 0.25, 0.5, 1.0, 0.75, 1.0))
    assert geometry.scale == (2.5, 2.5, 2.5)


def test_parse_box_from_generated_text() -> None:
    text = "The nodule is here <bx_start>[0.6, 0.1, 0.2, 0.4, 0.3, 0.5]<bx_end> in the right lung."
    assert boxes.parse_box(text) == (0.4, 0.1, 0.2, 0.6, 0.3, 0.5)  # corners ordered
    assert boxes.parse_box("no box [0.1, 0.2]") is None
    assert boxes.parse_box(boxes.format_box((0.1, 0.2, 0.3, 0.4, 0.5, 0.6))) == pytest.approx((0.1, 0.2, 0.3, 0.4, 0.5, 0.6))


def test_real_ct(shared_data: Path) -> None:
    from model import read_ct

    volume = read_ct(shared_data / "ct" / "totalsegmentator_example_ct.nii.gz")
    tensor, geometry = to_model_input_with_crop(volume)
    assert tensor.shape == (1, 32, 256, 256)
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    shape = volume.array.shape
    z0, y0, x0, z1, y1, x1 = geometry.crop
    assert 0 <= z0 < z1 <= shape[0] and 0 <= y0 < y1 <= shape[1] and 0 <= x0 < x1 <= shape[2]
    # the body fills most of the crop: air (0 after min-max of HU, about -1000) is not the majority
    assert float((tensor > 0.15).float().mean()) > 0.3
