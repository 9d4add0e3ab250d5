"""Rigid registration of a prior scan onto the current one, and resampling it into the current grid.

Why rigid and why SimpleITK: a radiologist comparing a prior with the current scan of the same
patient wants the same anatomy on the same slice; the patient lies a little differently on the
table (a few mm, a few degrees), which a rigid transform (3 rotations, 3 shifts) undoes without
inventing deformation. SimpleITK's registration framework (Mattes mutual information, regular
step gradient descent over a 3-level pyramid) is the kept library for it, and its iteration
events give progress and a way to stop.

Everything is in physical millimetres: each `CTVolume` becomes an ITK image with the spacing,
direction and origin of its affine (`volume.itk_geometry`), so two scans with different grids
register correctly. The result maps points of the current (fixed) scan to the prior (moving) scan,
in ITK's LPS millimetres, as ITK defines a registration transform.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from model.ct.volume import CTVolume, itk_image

#: Shrink factors and smoothing (in voxels) of the pyramid levels, coarse to fine.
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS = (2.0, 1.0, 0.0)
MAX_ITERATIONS = 150
#: Metric samples per pyramid level: enough for a rigid fit, few enough that a 512x512x300 scan
#: registers in seconds, not minutes (20 % of its voxels would be 16 million samples).
SAMPLES_PER_LEVEL = 30_000
MAX_SAMPLING_PERCENTAGE = 0.2
#: HU of voxels the prior does not cover once resampled (air).
OUTSIDE_HU = -1000.0


class RegistrationError(Exception):
    """The two scans could not be registered; the message says why."""


class RegistrationCancelled(RegistrationError):
    """`should_stop` asked the registration to stop."""


@dataclass(frozen=True)
class RigidResult:
    """A rigid transform current -> prior (ITK LPS mm), with how the optimiser ended."""

    transform: sitk.Euler3DTransform
    metric: float
    iterations: int
    stop_reason: str

    @property
    def rotation_deg(self) -> float:
        """The total rotation angle (axis-angle magnitude), in degrees."""
        matrix = np.asarray(self.transform.GetMatrix()).reshape(3, 3)
        cos = (np.trace(matrix) - 1.0) / 2.0
        return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))

    @property
    def translation_mm(self) -> tuple[float, float, float]:
        """How far the current scan's centre of rotation moves, in LPS mm."""
        return tuple(float(v) for v in self.transform.GetTranslation())

    def describe(self) -> str:
        """One line for the panel: how much the prior had to move."""
        shift = float(np.linalg.norm(self.translation_mm))
        return f"rigid: {shift:.1f} mm shift, {self.rotation_deg:.1f} degrees rotation"


def to_itk(volume: CTVolume) -> sitk.Image:
    """The volume as an ITK image in physical LPS mm (ITK index order (i, j, k) = array (z, y, x) reversed)."""
    return itk_image(np.asarray(volume.array, dtype=np.float32), volume.affine)


def register_rigid(current: CTVolume, prior: CTVolume, *, progress: Callable[[float], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, seed: int = 0) -> RigidResult:
    """Register `prior` onto `current` rigidly; `progress` gets 0..1, `should_stop` can cancel.

    Raises RegistrationError when the scans do not overlap or the optimiser fails, and
    RegistrationCancelled when `should_stop()` turned true.
    """
    for which, volume in (("current", current), ("prior", prior)):
        if volume.array.ndim != 3 or min(volume.array.shape) < 2:
            raise RegistrationError(f"the {which} scan is not a 3-D volume (shape {volume.array.shape})")
        if not np.isfinite(volume.array).all() or np.ptp(volume.array) == 0:
            raise RegistrationError(f"the {which} scan holds one value everywhere (or NaN): nothing to register")
    fixed, moving = to_itk(current), to_itk(prior)
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    voxels = float(np.prod(current.array.shape))
    method.SetMetricSamplingPercentagePerLevel(
        [min(MAX_SAMPLING_PERCENTAGE, SAMPLES_PER_LEVEL * f**3 / voxels) for f in SHRINK_FACTORS], seed)
    method.SetNumberOfThreads(max(1, (os.cpu_count() or 2) - 1))  # a core left for the viewer
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=MAX_ITERATIONS,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)

    state = {"level": 0, "iterations": 0, "cancelled": False}
    total = MAX_ITERATIONS * len(SHRINK_FACTORS)

    def on_iteration() -> None:
        state["iterations"] += 1
        if progress is not None:
            progress(min(1.0, (state["level"] * MAX_ITERATIONS + method.GetOptimizerIteration()) / total))
        if should_stop is not None and should_stop():
            state["cancelled"] = True
            method.StopRegistration()

    def on_level() -> None:
        state["level"] = method.GetCurrentLevel()

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    method.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_level)
    try:
        final = method.Execute(fixed, moving)
    except RuntimeError as exc:  # ITK says e.g. "All samples map outside moving image buffer"
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RegistrationError(f"the scans could not be registered ({reason})") from exc
    if state["cancelled"]:
        raise RegistrationCancelled("registration cancelled")
    if progress is not None:
        progress(1.0)
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(final).GetNthTransform(0))
    return RigidResult(euler, float(method.GetMetricValue()), int(state["iterations"]),
                       method.GetOptimizerStopConditionDescription())


def resample_onto(prior: CTVolume, current: CTVolume, result: RigidResult | None) -> CTVolume:
    """The prior in the current scan's grid (same shape, spacing and affine), through `result`
    (None: by the scanners' coordinates alone). Voxels the prior does not cover read as air."""
    transform = result.transform if result is not None else sitk.Transform(3, sitk.sitkIdentity)
    resampled = sitk.Resample(to_itk(prior), to_itk(current), transform, sitk.sitkLinear, OUTSIDE_HU, sitk.sitkFloat32)
    meta = {**prior.meta, "registered_to": current.meta.get("source") or "current scan"}
    return CTVolume(sitk.GetArrayFromImage(resampled).astype(np.float32), tuple(current.spacing),
                    np.array(current.affine, dtype=float), meta)


def difference(current: CTVolume, prior_resampled: CTVolume) -> np.ndarray:
    """Current minus the registered prior, in HU (what changed: new density is positive)."""
    if current.array.shape != prior_resampled.array.shape:
        raise ValueError(f"the prior is not in the current grid: {prior_resampled.array.shape} vs {current.array.shape}")
    return current.array - prior_resampled.array
