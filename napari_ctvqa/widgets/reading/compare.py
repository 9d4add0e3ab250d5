"""Compare with prior: the patient's earlier scan beside the current one, registered, scrolled in step.

Why this way (OHIF's compare protocol, Slicer's CompareVolumes): a radiologist reads change, so
the prior must show the same anatomy on the same slice. The prior is read and rigidly registered
to the current scan (`model.ct.registration`, SimpleITK) off the GUI thread, with progress and
Cancel, then resampled into the current scan's grid: the two then share one world, and scrolling
is linked by giving both viewers the same point in mm. The optional difference view (current
minus prior, HU) shows what is new (bright) and what went (dark).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from model.ct.io import read_ct
from model.ct.registration import RegistrationError, difference, register_rigid, resample_onto
from model.ct.volume import CTReadError, CTVolume
from napari_ctvqa.widgets.reading.geometry import volume_of
from napari_ctvqa.widgets.reading.views import orient

if TYPE_CHECKING:
    import napari

DIFFERENCE_LIMITS = (-300.0, 300.0)


@dataclass(frozen=True)
class Comparison:
    """A registered prior in the current scan's grid, and how it was registered."""

    name: str
    prior: CTVolume
    difference: np.ndarray
    description: str


def compare(current: CTVolume, prior_path: str, name: str, progress: Any = None, should_stop: Any = None) -> Comparison:
    """Read, register and resample one prior (runs in the worker thread)."""
    prior = read_ct(prior_path)
    result = register_rigid(current, prior, progress=progress, should_stop=should_stop)
    aligned = resample_onto(prior, current, result)
    return Comparison(name, aligned, difference(current, aligned), result.describe())


class PriorComparison(QObject):
    """Runs `compare` in a background thread: `progress(fraction)`, then `done(Comparison)` or
    `failed(message)` (a cancelled run fails with "registration cancelled"). The thread only
    emits signals; Qt delivers them on the GUI thread, where the layers are touched."""

    progress = Signal(float)
    done = Signal(object)
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.done.connect(self._finished)
        self.failed.connect(self._finished)

    @property
    def running(self) -> bool:
        return self.thread is not None

    def start(self, current_layer: Any, prior_path: str, name: str) -> None:
        current = volume_of(current_layer)
        self._stop.clear()
        self.thread = threading.Thread(target=self._run, args=(current, prior_path, name), daemon=True,
                                       name="ctvqa-compare")
        self.thread.start()

    def cancel(self) -> None:
        self._stop.set()

    def _run(self, current: CTVolume, prior_path: str, name: str) -> None:
        try:
            comparison = compare(current, prior_path, name, self.progress.emit, self._stop.is_set)
        except (RegistrationError, CTReadError) as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 - a panel message, never a traceback
            self.failed.emit(f"the prior could not be compared: {exc}")
        else:
            self.done.emit(comparison)

    def _finished(self, _result: Any = None) -> None:
        self.thread = None


class CompareView(QObject):
    """A docked viewer (`widget`) with the registered prior and the optional difference, its point
    tied to the main viewer's in both directions (the same mm: they share the current grid)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # deferred: napari's Qt viewer loads only when a prior is compared
        from napari.components.viewer_model import ViewerModel
        from napari.qt import QtViewer

        self.viewer = viewer
        self.model = ViewerModel(title="prior")
        self.qt_viewer = QtViewer(self.model)
        self.title = QLabel("<b>Prior</b>")
        self.title.setWordWrap(True)
        self.widget = QWidget()
        layout = QVBoxLayout(self.widget)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.qt_viewer, 1)
        orient(self.model, "axial")
        self.comparison: Comparison | None = None
        self._syncing = False
        self._links = ((viewer.dims.events.point, self._from_main), (self.model.dims.events.point, self._from_prior))
        for emitter, callback in self._links:
            emitter.connect(callback)

    def show(self, current_layer: Any, comparison: Comparison, with_difference: bool) -> None:
        """Show the registered prior at the current scan's place and window (and the difference)."""
        self.comparison = comparison
        self.model.layers.clear()
        place = {"scale": current_layer.scale, "translate": current_layer.translate}
        self.model.add_image(comparison.prior.array, name=f"prior: {comparison.name}", colormap="gray",
                             contrast_limits=current_layer.contrast_limits, **place)
        self.model.add_image(comparison.difference, name="difference (current - prior)", colormap="twilight_shifted",
                             contrast_limits=DIFFERENCE_LIMITS, visible=with_difference, **place)
        self.title.setText(f"<b>Prior</b> {comparison.name}, registered ({comparison.description}); "
                           f"scrolls with the current scan")
        orient(self.model, "axial")
        self.model.reset_view()
        self._from_main()

    def set_difference(self, visible: bool) -> None:
        for layer in self.model.layers:
            if layer.name.startswith("difference"):
                layer.visible = visible

    def _from_main(self, event: Any = None) -> None:
        self._copy(self.viewer, self.model)

    def _from_prior(self, event: Any = None) -> None:
        self._copy(self.model, self.viewer)

    def _copy(self, source: Any, target: Any) -> None:
        if self._syncing or not len(self.model.layers) or source.dims.ndim != 3 or target.dims.ndim != 3:
            return
        point = tuple(float(v) for v in source.dims.point)
        if tuple(target.dims.point) == point:
            return
        self._syncing = True
        try:
            target.dims.set_point(range(3), point)
        finally:
            self._syncing = False

    def unhook(self) -> None:
        for emitter, callback in self._links:
            emitter.disconnect(callback)
        self.qt_viewer.close()  # deletes itself (WA_DeleteOnClose); napari counts live QtViewers
        self.qt_viewer = None
