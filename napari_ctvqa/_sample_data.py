"""napari sample data: two timepoints of one small synthetic patient, made on the fly.

The findings are fixed so that the sample always shows something to ask about: a nodule that
grows, an effusion that is new at the follow-up, a consolidation that resolves, and aortic
calcification that persists (one of each 3D-RAD temporal category).
"""
from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_SIZE = (48, 160, 160)
SAMPLE_FINDINGS = {
    "Lung nodule": (1.0, 1.3),
    "Pleural effusion": (0.0, 1.0),
    "Consolidation": (1.0, 0.0),
    "Arterial wall calcification": (1.0, 1.0),
}
LUNG_WINDOW = (-1350.0, 150.0)  # contrast limits = level -600, width 1500


def make_phantom_sample(seed: int = 7) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Layer data tuples (scan a, scan b) with scale = spacing and the ground truth in metadata."""
    # deferred: the phantom generator (scipy) loads when sample data is opened, not when napari scans plugins
    from annotation.synth import Grid, default_spacing, synthesize_patient

    spacing = default_spacing(SAMPLE_SIZE)
    patient = synthesize_patient(Grid(SAMPLE_SIZE, spacing), np.random.default_rng(seed), 2,
                                 findings=SAMPLE_FINDINGS)
    layers = []
    for scan in patient.scans:
        name = f"sample_1_{scan.letter}_1.nii.gz"
        meta = {"volume_name": name, "spacing": spacing, "labels": scan.labels,
                "ground_truth": [p.record for p in scan.painted], "synthetic": True}
        layers.append((scan.hu, {"name": f"phantom {name}", "scale": spacing, "contrast_limits": LUNG_WINDOW,
                                 "colormap": "gray", "metadata": meta, "visible": scan.letter == "b"}, "image"))
    return layers
