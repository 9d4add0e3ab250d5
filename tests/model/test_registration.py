"""Rigid registration of a prior onto the current scan (issue 20): a known shift and rotation is recovered."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from model.ct.registration import (
    RegistrationCancelled,
    RegistrationError,
    difference,
    register_rigid,
    resample_onto,
    to_itk,
)
from model.ct.volume import CTVolume
from tests.marker_phantom import SPACING, marker_phantom

SHIFT_MM = (5.0, -8.0, 3.0)
ROTATION_DEG = 4.0


def moved_prior(current: CTVolume) -> tuple[CTVolume, sitk.Euler3DTransform]:
    """The current scan as a prior taken with the patient shifted by SHIFT_MM and turned by
    ROTATION_DEG about the body's long axis; returns the prior and the true current -> prior map."""
    image = to_itk(current)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    truth = sitk.Euler3DTransform(centre, 0.0, 0.0, math.radians(ROTATION_DEG), SHIFT_MM)
    prior_image = sitk.Resample(image, image, truth.GetInverse(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    prior = CTVolume(sitk.GetArrayFromImage(prior_image), current.spacing, current.affine.copy(), {})
    return prior, truth


def body_points(volume: CTVolume) -> np.ndarray:
    image = to_itk(volume)
    k, j, i = np.nonzero(volume.array > -500)
    picks = np.random.default_rng(0).choice(len(k), 300, replace=False)
    return np.array([image.TransformIndexToPhysicalPoint([int(i[p]), int(j[p]), int(k[p])]) for p in picks])


def test_a_shifted_and_rotated_prior_is_recovered_within_a_voxel_and_a_degree():
    current = marker_phantom()
    prior, truth = moved_prior(current)
    progress: list[float] = []
    result = register_rigid(current, prior, progress=progress.append)

    errors = [np.linalg.norm(np.subtract(result.transform.TransformPoint(p), truth.TransformPoint(p)))
              for p in body_points(current)]
    assert max(errors) <= min(SPACING), f"worst point off by {max(errors):.2f} mm"
    residual = (np.asarray(result.transform.GetMatrix()).reshape(3, 3)
                @ np.asarray(truth.GetMatrix()).reshape(3, 3).T)
    angle = math.degrees(math.acos(np.clip((np.trace(residual) - 1) / 2, -1, 1)))
    assert angle <= 1.0
    assert abs(result.rotation_deg - ROTATION_DEG) <= 1.0
    assert progress and progress[-1] == 1.0 and all(0 <= p <= 1 for p in progress)
    assert "shift" in result.describe()

    aligned = resample_onto(prior, current, result)
    assert aligned.array.shape == current.array.shape
    before = np.abs(difference(current, resample_onto(prior, current, None))).mean()
    after = np.abs(difference(current, aligned)).mean()
    assert after < 0.3 * before


def test_registration_can_be_cancelled():
    current = marker_phantom()
    prior, _ = moved_prior(current)
    with pytest.raises(RegistrationCancelled):
        register_rigid(current, prior, should_stop=lambda: True)


def test_scans_that_do_not_overlap_are_a_one_line_error():
    current = marker_phantom()
    far = marker_phantom(origin_ras=(0.0, 0.0, 5000.0))
    far.array[:] = -1000.0  # nothing to lock on to
    with pytest.raises(RegistrationError) as info:
        register_rigid(current, far)
    assert "\n" not in str(info.value) and "prior" in str(info.value)


def test_difference_needs_the_same_grid():
    current = marker_phantom()
    with pytest.raises(ValueError, match="grid"):
        difference(current, CTVolume(current.array[:-1], current.spacing, current.affine, {}))
