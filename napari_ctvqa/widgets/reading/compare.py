"""Compare with prior: the patient's earlier scan beside the current one, registered, scrolled in step.

Why this way (OHIF's compare protocol, Slicer's CompareVolumes): a radiologist reads change, so
the prior must show the same anatomy on the same slice. The prior is read and rigidly registered
to the current scan (`model.ct.registration`, SimpleITK) off the GUI thread, with progress and
Cancel, then resampled into the current scan's grid: the two then share one world, and scrolling
is linked by giving both viewers the same point in mm. The optional difference view (current
minus prior, HU) shows what is new (bright) and what went (dark).
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from model.ct.prior import (
    Comparison,
    compare_in_process,
    receive_comparison,
    send_volume,
)
from model.processes import lower_priority
from napari_ctvqa.widgets.reading.geometry import volume_of
from napari_ctvqa.widgets.reading.views import orient

if TYPE_CHECKING:
    import napari

DIFFERENCE_LIMITS = (-300.0, 300.0)
POLL_MS = 50
REAP_AFTER_MS = 2000  # a registration process that sent its result has exited by then


class PriorComparison(QObject):
    """Runs `model.ct.prior.compare` in a spawned process: `progress(fraction)`, then
    `done(Comparison)` or `failed(message)` (a cancelled run fails with "registration cancelled").
    A timer on the GUI thread reads the process's queue, so the layers are touched there only."""

    progress = Signal(float)
    done = Signal(object)
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._context = multiprocessing.get_context("spawn")
        self.process: Any = None
        self._queue: Any = None
        self._inbox: Any = None
        self._stop: Any = None
        self._moving: Future | None = None  # the result being copied out of shared memory
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)

    @property
    def running(self) -> bool:
        return self.process is not None

    def start(self, current_layer: Any, prior_path: str, name: str) -> None:
        self._queue, self._stop = self._context.Queue(), self._context.Event()
        inbox = self._context.Queue()
        on_main = threading.current_thread() is threading.main_thread()
        self.process = self._context.Process(target=compare_in_process, name="ctvqa-compare", daemon=True,
                                             args=(inbox, prior_path, name, self._queue, self._stop,
                                                   os.getpid(), on_main))
        self.process.start()
        lower_priority(self.process.pid)  # its start-up imports already yield to the viewer
        # The scan goes through shared memory, not the start arguments: a spawned process's
        # arguments are written to it while it starts up, and the click would wait for that. The
        # copy into shared memory touches every page of it (tens of ms), so a thread makes it.
        volume = volume_of(current_layer)
        _in_background(lambda: inbox.put(send_volume(volume)))
        inbox.cancel_join_thread()  # a registration that died unread must not hold napari at exit
        self._inbox = inbox
        self._timer.start()

    def cancel(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _poll(self) -> None:
        if self._moving is not None:  # the result is being copied out of shared memory
            if not self._moving.done():
                return
            moving, self._moving = self._moving, None
            self._finish()
            try:
                comparison = moving.result()
            except (OSError, ValueError) as exc:
                self.failed.emit(f"the registered prior could not be read back: {exc}")
            else:
                self.done.emit(comparison)
            return
        while True:
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                self.progress.emit(value)
                continue
            if kind == "done":  # copying 32 MB out of shared memory faults in every page: off the GUI thread
                self._moving = _in_background(lambda message=value: receive_comparison(message))
                return
            self._finish()
            self.failed.emit(value)
            return
        if self.process is not None and not self.process.is_alive() and self._queue.empty():
            code = self.process.exitcode
            self._finish()
            self.failed.emit(f"the registration process stopped (exit code {code})")

    def _finish(self) -> None:
        """Stop polling; the process, which sent its last word, is reaped later (joining it now
        would hold the GUI thread while it exits)."""
        self._timer.stop()
        if self.process is not None:
            self.process.join(timeout=0)
            if self.process.is_alive():
                QTimer.singleShot(REAP_AFTER_MS, lambda process=self.process: _reap(process))
        self.process = None
        self._inbox = None


def _in_background(work: Any) -> Future:
    """`work()` on a thread of its own (numpy's copies and the page faults release the GIL)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctvqa-compare-copy")
    future = executor.submit(work)
    executor.shutdown(wait=False)
    return future


def _reap(process: Any) -> None:
    process.join(timeout=0)
    if process.is_alive():
        process.terminate()


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
        self._adding = 0  # calls of _add_layers, so that only the latest adds its second layer
        self._syncing = False
        self._links = ((viewer.dims.events.point, self._from_main), (self.model.dims.events.point, self._from_prior))
        for emitter, callback in self._links:
            emitter.connect(callback)

    def waiting(self, title: str) -> None:
        """No registered prior of the shown scan yet: its layers hidden, `title` says what to do."""
        self.title.setText(title)
        for layer in self.model.layers:
            layer.visible = False

    def prepare(self, current_layer: Any) -> None:
        """Add the prior's two layers, hidden, holding the current scan's array (shared, not copied)
        until a registered prior replaces it: adding a napari layer holds the GUI thread for tens
        of ms, so it is done in turns of the event loop of their own before the Compare click,
        and the comparison only hands its arrays to layers already there (issue 20)."""
        if len(self.model.layers):
            return
        place = {"data": current_layer.data, "scale": tuple(current_layer.scale),
                 "translate": tuple(current_layer.translate), "visible": False}
        self._add_layers({"name": "prior", "contrast_limits": tuple(current_layer.contrast_limits), **place},
                         {"name": "difference (current - prior)", "contrast_limits": DIFFERENCE_LIMITS, **place})

    def show(self, current_layer: Any, comparison: Comparison, with_difference: bool) -> None:
        """Show the registered prior at the current scan's place and window (and the difference).

        The viewer must not stall here (issue 20): the arrays go to the two layers `prepare` added
        (removing layers makes napari collect garbage, half a second; adding them costs tens of
        ms each); a comparison that ends before those were added adds them in two turns."""
        self.comparison = comparison
        place = {"scale": tuple(current_layer.scale), "translate": tuple(current_layer.translate)}
        prior = {"data": comparison.prior.array, "name": f"prior: {comparison.name}",
                 "contrast_limits": tuple(current_layer.contrast_limits), "visible": True, **place}
        difference = {"data": comparison.difference, "name": "difference (current - prior)",
                      "contrast_limits": DIFFERENCE_LIMITS, "visible": with_difference, **place}
        if len(self.model.layers) == 2:
            for layer, values in zip(self.model.layers, (prior, difference)):
                for key, value in values.items():
                    setattr(layer, key, value)
            self._shown()
            return
        if len(self.model.layers):  # half prepared (never clear an empty list: same cost)
            self.model.layers.clear()
        self._add_layers(prior, difference, then=self._shown)

    def _add_layers(self, prior: dict[str, Any], difference: dict[str, Any],
                    then: Callable[[], None] | None = None) -> None:
        """The prior's layer now and the difference's in the next turn of the event loop (each
        costs tens of ms); a later call supersedes the second turn of an earlier one (a comparison
        that ends while `prepare` is half done), so the pane never holds three layers."""
        self._adding += 1
        turn = self._adding
        self.model.add_image(colormap="gray", **prior)

        def second() -> None:
            if self.qt_viewer is None or turn != self._adding:  # closed, or superseded meanwhile
                return
            self.model.add_image(colormap="twilight_shifted", **difference)
            if then is not None:
                then()

        QTimer.singleShot(0, second)

    def _shown(self) -> None:
        comparison = self.comparison
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
