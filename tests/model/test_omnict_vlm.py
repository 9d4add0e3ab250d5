"""A tiny OmniCT-family model end to end: save, `load_vlm`, volume and slice questions through
`VLM` and `ctvqa ask`, organ masks found or read from a label file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model.ct.io import read_ct, write_ct
from model.ct.preprocess import slice_input_with_crop
from model.ct.volume import CTVolume, canonical_affine
from model.inference.loading import load_vlm
from napari_ctvqa.cli import app
from tests.model.conftest import TINY_OMNICT_TOKENS

runner = CliRunner()
SPACING = (4.0, 4.0, 4.0)


def chest(shape=(24, 64, 64)) -> np.ndarray:
    """Air, an elliptic body, two lungs either side of a soft-tissue mediastinum."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    vol = np.full(shape, -1000.0, np.float32)
    vol[np.broadcast_to(((y - 32) / 26) ** 2 + ((x - 32) / 30) ** 2 < 1, shape)] = 40.0
    for cx in (18, 46):
        lung = ((y - 30) / 16) ** 2 + ((x - cx) / 10) ** 2 + ((z - 12) / 14) ** 2 < 1
        vol[lung] = -850.0
    return vol


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("omnict_ask")
    return write_ct(CTVolume(chest(), SPACING, canonical_affine(SPACING), {}), folder / "chest.nii.gz")


@pytest.fixture(scope="module")
def vlm(tiny_omnict_dir: Path):
    return load_vlm(tiny_omnict_dir)


def test_save_and_load_round_trip(tiny_omnict_dir: Path, vlm) -> None:
    config = json.loads((tiny_omnict_dir / "config.json").read_text())
    assert config["vision_family"] == "omnict" and config["organ_tokens"] == 2
    again = load_vlm(tiny_omnict_dir)
    for (name, a), (_, b) in zip(vlm.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert vlm.supports_slices and vlm.organ_names == ["lung_left", "lung_right", "mediastinum"]
    assert (vlm.num_image_tokens, vlm.model.config.num_slice_tokens) == (TINY_OMNICT_TOKENS["volume"],
                                                                         TINY_OMNICT_TOKENS["slice"])


def test_volume_and_slice_inputs_give_the_configured_token_counts(vlm, ct_file: Path) -> None:
    ct = read_ct(ct_file)
    whole = vlm.prepare(ct)
    one = vlm.prepare(ct, slice_index=12)
    assert whole.features.shape[1] == TINY_OMNICT_TOKENS["volume"] and whole.pixels.shape == (1, 1, 9, 32, 32)
    assert one.features.shape[1] == TINY_OMNICT_TOKENS["slice"] and one.pixels.shape == (1, 1, 1, 32, 32)
    assert one.slice_index == 12 and one.geometry.crop[0::3] == (12, 13)
    expected, _ = slice_input_with_crop(ct, 12, (32, 32))
    assert torch.equal(one.pixels[0], expected)
    assert vlm.prepare(ct, slice_index=12) is one  # cached per slice
    ids = vlm.prompt_ids("Is there a lung nodule?", one.num_tokens)
    assert int((ids == vlm.image_token_id).sum()) == TINY_OMNICT_TOKENS["slice"]


def test_organ_tokens_follow_the_masks(vlm, ct_file: Path) -> None:
    ct = read_ct(ct_file)
    found = vlm.prepare(ct)
    empty = {name: np.zeros(ct.array.shape, bool) for name in vlm.organ_names}
    none = vlm.prepare(ct, rois=empty)
    n_global = TINY_OMNICT_TOKENS["volume"] - 6
    assert torch.equal(found.features[:, :n_global], none.features[:, :n_global])  # global tokens unchanged
    absent = vlm.model.vision.organ_aggregation.absent.reshape(1, 6, -1)
    assert torch.allclose(none.features[:, n_global:], absent)
    assert not torch.allclose(found.features[:, n_global:], absent)


def test_answers_about_volume_and_slice(vlm, ct_file: Path) -> None:
    ct = read_ct(ct_file)
    whole = vlm.answer(ct, "Is there a lung nodule?", choices=["Yes", "No"], max_new_tokens=3)
    one = vlm.answer(ct, "Is there a lung nodule?", choices=["Yes", "No"], max_new_tokens=3, slice_index=-1)
    for answer in (whole, one):
        assert answer.choice in ("A", "B") and sum(answer.choice_scores.values()) == pytest.approx(1.0)
    assert "".join(vlm.stream(ct, "What abnormalities are seen?", max_new_tokens=2, slice_index=3)) is not None
    with pytest.raises(ValueError, match="outside this scan"):
        vlm.prepare(ct, slice_index=24)


def test_m3d_models_refuse_slice_questions(tiny_vlm_dir: Path, ct_file: Path) -> None:
    m3d = load_vlm(tiny_vlm_dir)
    assert not m3d.supports_slices and m3d.organ_names == []
    with pytest.raises(ValueError, match="whole scans only"):
        m3d.prepare(read_ct(ct_file), slice_index=3)


def test_ctvqa_ask_volume_and_slice(tiny_omnict_dir: Path, tiny_vlm_dir: Path, ct_file: Path) -> None:
    base = ["ask", str(ct_file), "Is there a lung nodule?", "--choices", "Yes|No", "--model", str(tiny_omnict_dir),
            "--max-new-tokens", "3", "--json"]
    for extra in ([], ["--slice", "10"]):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 0, result.output
        last = json.loads(result.stdout.strip().splitlines()[-1])
        assert last["choice"] in ("A", "B")
    outside = runner.invoke(app, base + ["--slice", "99"])
    assert outside.exit_code != 0 and "outside this scan" in outside.output and "Traceback" not in outside.output
    m3d = runner.invoke(app, ["ask", str(ct_file), "Q?", "--model", str(tiny_vlm_dir), "--slice", "3"])
    assert m3d.exit_code != 0 and "whole scans only" in m3d.output


def test_ctvqa_ask_with_a_label_file(tiny_omnict_dir: Path, ct_file: Path, tmp_path: Path) -> None:
    ct = read_ct(ct_file)
    labels = np.zeros(ct.array.shape, np.int16)
    labels[4:20, 20:40, 10:26] = 12  # a "right lung" in TotalSegmentator's numbering
    labels[4:20, 20:40, 38:54] = 10
    label_file = write_ct(CTVolume(labels, SPACING, canonical_affine(SPACING), {}), tmp_path / "seg.nii.gz")
    base = ["ask", str(ct_file), "What abnormalities are seen?", "--model", str(tiny_omnict_dir),
            "--max-new-tokens", "2", "--rois", str(label_file)]
    assert runner.invoke(app, base).exit_code == 0
    own = runner.invoke(app, base + ["--roi-names", "lung_left=10;lung_right=12;mediastinum=12"])
    assert own.exit_code == 0, own.output
    bad = runner.invoke(app, base + ["--roi-names", "lung_left=ten"])
    assert bad.exit_code != 0 and "bad organ entry 'lung_left=ten'" in bad.output
    small = write_ct(CTVolume(labels[:10], SPACING, canonical_affine(SPACING), {}), tmp_path / "small.nii.gz")
    wrong = runner.invoke(app, base[:-1] + [str(small)])
    assert wrong.exit_code != 0 and "small.nii.gz" in wrong.output and "differs from the CT" in wrong.output


def test_the_published_layout_refuses_an_omnict_model(vlm) -> None:
    from model.nets.published import published_config

    with pytest.raises(ValueError, match="M3D-family models only"):
        published_config(vlm.model.config)
