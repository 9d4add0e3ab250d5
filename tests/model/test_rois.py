"""Organ masks: Dice against the synthetic cohort's exported organ maps, plausibility on a real
CT, the label-file path and its errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model import find_rois, read_roi_labels
from model.ct.io import read_ct, write_ct
from model.ct.rois import ROI_NAMES, parse_name_map, rois_for
from model.ct.volume import CTVolume, canonical_affine


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from annotation.synth.cohort import write_cohort

    out = tmp_path_factory.mktemp("rois_cohort")
    write_cohort(out, patients=2, seed=3, valid_frac=0.0, workers=1)
    return out


def test_find_rois_matches_the_phantoms_organs(cohort: Path) -> None:
    assert json.loads((cohort / "rois" / "labels.json").read_text())["labels"]["mediastinum"] == 4
    volumes = sorted((cohort / "volumes").glob("*.nii.gz"))
    assert len(volumes) >= 4
    for path in volumes:
        ct = read_ct(path)
        truth = read_roi_labels(cohort / "rois" / path.name, "synth", like=ct)
        found = find_rois(ct)
        assert set(found) == set(ROI_NAMES) and all(m.shape == ct.array.shape and m.dtype == bool for m in found.values())
        scores = {name: dice(found[name], truth[name]) for name in ROI_NAMES}
        assert scores["lung_left"] >= 0.9 and scores["lung_right"] >= 0.9, (path.name, scores)
        assert scores["mediastinum"] >= 0.8 and scores["body"] >= 0.95, (path.name, scores)


def test_real_ct_lungs_are_plausible_and_not_swapped(shared_data: Path) -> None:
    ct = read_ct(shared_data / "ct" / "totalsegmentator_example_ct.nii.gz")  # abdomen with the lung bases on top
    masks = find_rois(ct)
    ml = float(np.prod(ct.spacing)) / 1000.0
    volumes = {name: float(mask.sum()) * ml for name, mask in masks.items()}
    assert 10_000 < volumes["body"] < 60_000
    for side in ("lung_left", "lung_right"):
        assert 20 < volumes[side] < 3_000, volumes  # lung bases only: tens to hundreds of mL, not bowel gas
        z = np.nonzero(masks[side])[0]
        assert z.min() > ct.array.shape[0] * 0.6, "lung found low in the abdomen (bowel gas?)"
        assert np.median(ct.array[masks[side]]) > -950  # aerated lung, not pure air
    columns = {side: np.nonzero(masks[side])[2].mean() for side in ("lung_left", "lung_right")}
    assert columns["lung_right"] < ct.array.shape[2] / 2 < columns["lung_left"]  # columns run patient right -> left


def test_no_lungs_and_bad_input() -> None:
    abdomen = np.full((12, 40, 40), -1000.0, np.float32)
    abdomen[:, 5:35, 5:35] = 40.0
    abdomen[4:8, 10:16, 10:16] = -1000.0  # bowel gas: pure air, not lung
    masks = find_rois(abdomen)
    assert masks["body"].sum() > 0 and not masks["lung_left"].any() and not masks["mediastinum"].any()
    with pytest.raises(ValueError, match="3-D"):
        find_rois(np.zeros((4, 4)))
    normalised = CTVolume(np.zeros((4, 8, 8), np.float32), (1.0, 1.0, 1.0), canonical_affine((1.0, 1.0, 1.0)),
                          {"normalised": True})
    with pytest.raises(ValueError, match="Hounsfield"):
        find_rois(normalised)


def test_label_files_and_name_maps(tmp_path: Path) -> None:
    spacing = (2.0, 2.0, 2.0)
    labels = np.zeros((6, 10, 12), np.int16)
    labels[1:5, 2:8, 1:5] = 12
    labels[1:5, 2:8, 7:11] = 10
    labels[2, 3, 2] = 14
    path = write_ct(CTVolume(labels, spacing, canonical_affine(spacing), {}), tmp_path / "seg.nii.gz")
    masks = read_roi_labels(path, "totalsegmentator")
    assert masks["lung_right"].sum() == 4 * 6 * 4 and masks["lung_left"].sum() == 4 * 6 * 4
    assert parse_name_map("heart=51; aorta=52,53") == {"heart": (51,), "aorta": (52, 53)}
    for bad in ("heart", "heart=", "=3", "heart=x"):
        with pytest.raises(ValueError, match="bad organ entry"):
            parse_name_map(bad)
    with pytest.raises(ValueError, match="differs from the CT"):
        read_roi_labels(path, "totalsegmentator", like=np.zeros((6, 10, 11)))
    ct = np.full(labels.shape, 40.0, np.float32)
    combined = rois_for(ct, ["lung_left", "mediastinum"], masks)  # the file's lungs, the rest found
    assert combined["lung_left"].sum() == masks["lung_left"].sum() and combined["mediastinum"].dtype == bool
    with pytest.raises(ValueError, match="no mask for organ"):
        rois_for(ct, ["liver"], masks)
