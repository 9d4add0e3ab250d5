"""The scan beside the rating panel: read in the background, shown in one reused layer.

A rater moves on every minute or so and must never wait for a disk read or lose napari's canvas
state (zoom, pan) at each pair, so scans are read off the GUI thread together with the value
range the contrast slider needs, and each is swapped into the same layer, touching only what
changed. Each pair opens at its finding, in the window its words call for (`annotation.view_hint`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.ct.io import read_ct
from model.ct.modality import shows_hu
from model.ct.volume import CTVolume
from model.ct.windows import window_limits
from annotation.view_hint import initial_view, lung_extent

if TYPE_CHECKING:
    import napari

    from annotation.records import FindingBoxRecord, QAPairRecord

LAYER_NAME = "CT (rating)"


@dataclass(frozen=True)
class DisplayVolume:
    """A scan plus its value range (for the 'full' window and the contrast slider) and the slices
    its lungs span (where a named place is looked for), all computed off the GUI thread by the
    prefetcher."""

    volume: CTVolume
    value_range: tuple[float, float]
    lungs: tuple[int, int] | None = None


def read_for_display(path: str | Path, metadata: Mapping[str, Any] | None = None) -> DisplayVolume:
    """`read_ct` (with the scan's calibration from the store), the data range the layer's contrast
    slider needs and the lungs' extent (full passes over the voxels: done here, in the background,
    not when the pair is shown)."""
    volume = read_ct(path, metadata=metadata)
    lungs = lung_extent(volume.array) if shows_hu(volume.meta) else None
    return DisplayVolume(volume, window_limits("full", volume.array), lungs)


class ScanLayer:
    """The one image layer named `LAYER_NAME`, created on the first scan and reused after it."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.layer: Any = None
        self.shown: DisplayVolume | None = None

    @property
    def in_viewer(self) -> bool:
        return self.layer is not None and self.layer in self.viewer.layers

    def show(self, qa: QAPairRecord, scan: DisplayVolume, boxes: Sequence[FindingBoxRecord] = (),
             labels: Mapping[str, int] | None = None) -> str:
        """Swap the pair's scan in at its finding (`boxes`, `labels`: the scan's) or the place its
        words name, in the window they call for; says where it opened and why."""
        volume = scan.volume
        self.shown = scan
        hint = initial_view(qa.question, qa.answer, volume.array.shape[0], boxes, labels, scan.lungs)
        window = hint.window if shows_hu(volume.meta) else "full"
        limits = self.limits(window)
        layer = self.layer
        if not self.in_viewer:
            layer = self.layer = self.viewer.add_image(
                volume.array, scale=volume.spacing, name=LAYER_NAME, colormap="gray",
                contrast_limits=limits, metadata={"path": str(qa.path), "ct_meta": volume.meta},
            )
            layer.contrast_limits_range = scan.value_range
            self.viewer.reset_view()
        else:
            # Every assignment makes napari re-slice or re-draw (even `visible = True` on a visible
            # layer): touch only what changed. The slider range follows the limits by itself.
            reshaped = layer.data.shape != volume.array.shape or tuple(layer.scale) != tuple(volume.spacing)
            if tuple(layer.contrast_limits) != tuple(limits):
                layer.contrast_limits = limits
            layer.data = volume.array
            if tuple(layer.scale) != tuple(volume.spacing):
                layer.scale = volume.spacing
            layer.metadata = {"path": str(qa.path), "ct_meta": volume.meta}  # the window panel reads ct_meta
            if not layer.visible:
                layer.visible = True
            if reshaped:
                self.viewer.reset_view()
        self.viewer.dims.set_point(0, layer.translate[0] + hint.slice_index * volume.spacing[0])
        return (f"Opened at slice {hint.slice_index + 1}/{volume.array.shape[0]}, "
                f"{window} window ({hint.reason}).")

    def limits(self, window: str) -> tuple[float, float]:
        """Contrast limits of a preset on the shown scan ('full' = its whole value range)."""
        if window == "full" or self.shown is None or not shows_hu(self.shown.volume.meta):
            return self.shown.value_range if self.shown is not None else (0.0, 1.0)
        return window_limits(window, None)

    def set_window(self, window: str) -> str:
        """A window key: the preset on the rating layer (full range for a scan not in HU)."""
        if not self.in_viewer or self.shown is None:
            return "no scan shown"
        meta = self.shown.volume.meta
        self.layer.contrast_limits = self.limits(window)
        if shows_hu(meta) or window == "full":
            return f"{window} window"
        what = "normalised" if meta.get("normalised") else f"a {meta.get('modality')} series"
        return f"full range (this scan is {what}, not HU)"

    def hide(self) -> None:
        """Never leave the previous pair's scan on screen under this pair's question."""
        if self.in_viewer:
            self.layer.visible = False

    def step(self, delta: int) -> None:
        """Browse slices from the panel, without giving the keyboard to the canvas."""
        if self.in_viewer:
            step = list(self.viewer.dims.current_step)
            self.viewer.dims.set_current_step(0, step[0] + delta)
