"""The napari sample data: two timepoints of one phantom, ready to be added as image layers."""
from __future__ import annotations

import numpy as np

from annotation.qa_templates import temporal_answer
from napari_ctvqa._sample_data import LUNG_WINDOW, SAMPLE_FINDINGS, SAMPLE_SIZE, make_phantom_sample


def test_sample_gives_two_scaled_timepoints_with_ground_truth() -> None:
    layers = make_phantom_sample()
    assert [kind for _, _, kind in layers] == ["image", "image"]
    (a, meta_a, _), (b, meta_b, _) = layers
    assert a.shape == b.shape == SAMPLE_SIZE and a.dtype == np.float32
    assert meta_a["scale"] == meta_b["scale"] and meta_a["scale"][0] > meta_a["scale"][1]  # thick slices
    assert meta_a["contrast_limits"] == LUNG_WINDOW
    assert "sample_1_a_1.nii.gz" in meta_a["name"] and "sample_1_b_1.nii.gz" in meta_b["name"]
    labels = [m["metadata"]["labels"] for m in (meta_a, meta_b)]
    categories = {label: temporal_answer([labels[0][label]], labels[1][label]) for label in SAMPLE_FINDINGS}
    assert sorted(categories.values()) == ["A", "A", "B", "C"]  # grows, persists, resolves, new
    nodule = next(r for r in meta_b["metadata"]["ground_truth"] if r["type"] == "nodule")
    k, j, i = (int(round(v)) for v in nodule["centre_voxel"])
    assert b[k, j, i] > -300
