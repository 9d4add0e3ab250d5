"""Coronal and sagittal views beside napari's axial canvas, the right way up, linked by a crosshair.

Why extra viewers: napari has one canvas per window (multi-canvas is its open issue #5348), so,
as napari's "multiple viewer widget" example does, each extra view is a `ViewerModel` with its
own `QtViewer`, docked in the window, showing the same data array (no copy) of the shown scan.

Orientation (radiological convention, canonical arrays: k inferior->superior, j anterior->
posterior, i right->left; model/ct/volume.py): the axial canvas shows (j, i) rows down, so anterior
is at the top and the patient's right on the screen's left. The coronal view shows (k, i) and the
sagittal view (k, j) with the vertical axis pointing up (`camera.orientation2d`), so superior is
at the top, the patient's right on the left of the coronal view and anterior on the left of the
sagittal view. napari's dimension roll shows (k, i) rows down, upside down: that is why the views
set their own orientation instead of rolling.

The three viewers share one world (the same layer scale and translate), so the crosshair is
the main viewer's dims point: moving it in one (slider, scroll, a click on a canvas) moves the
others, and each extra view takes only the coordinate it slices along (the rest of the point is in
its plane: there the crosshair moves, the image needs no re-slicing).
Moves are coalesced (at most one redraw of the other views per `SYNC_MS`): paging through slices
fires a point event per slice, and re-slicing two more viewers and three crosshairs on each one
would make the axial view lag behind the wheel.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import QLabel, QSplitter, QVBoxLayout, QWidget

from napari_ctvqa.widgets.reading.crosshair import Crosshair

if TYPE_CHECKING:
    import napari

#: View name -> napari dims order (the last two axes are displayed, rows then columns).
VIEW_ORDERS: dict[str, tuple[int, int, int]] = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
SYNC_MS = 40


def orient(viewer: Any, view: str) -> None:
    """Show `view` in `viewer`: its dims order, and the vertical axis up for coronal and sagittal."""
    viewer.dims.order = VIEW_ORDERS[view]
    viewer.camera.orientation2d = ("down", "right") if view == "axial" else ("up", "right")


def mirror(source: Any, target_viewer: Any, name: str) -> tuple[Any, Callable[[Any], None]]:
    """A layer in `target_viewer` showing `source`'s data (shared, not copied) at its place and
    window, and the callback that keeps its window following `source` (disconnect it when done)."""
    layer = target_viewer.add_image(source.data, name=name, scale=source.scale, translate=source.translate,
                                    colormap=source.colormap, contrast_limits=source.contrast_limits,
                                    multiscale=source.multiscale, metadata=source.metadata)
    def follow(_event: Any) -> None:
        layer.contrast_limits = source.contrast_limits

    source.events.contrast_limits.connect(follow)
    return layer, follow


class OrthoViews(QObject):
    """The coronal and sagittal viewers (`widget`, to dock), following `show(layer)` and the point.

    `moved` carries the world point whenever the crosshair moves (in any of the three views)."""

    moved = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # deferred: napari's Qt viewer loads only when the views are built
        from napari.components.viewer_model import ViewerModel
        from napari.qt import QtViewer

        self.viewer = viewer
        self.layer: Any = None
        self._following: list[tuple[Any, Callable[[Any], None]]] = []
        self.models = {view: ViewerModel(title=view) for view in ("coronal", "sagittal")}
        self.qt_viewers = {view: QtViewer(model) for view, model in self.models.items()}
        self.widget = QSplitter(Qt.Orientation.Vertical)
        for view, qt_viewer in self.qt_viewers.items():
            box = QWidget()
            layout = QVBoxLayout(box)
            layout.setContentsMargins(0, 0, 0, 0)
            title = QLabel(f"<b>{view.capitalize()}</b> ({'R | L, S up' if view == 'coronal' else 'A | P, S up'})")
            layout.addWidget(title)
            layout.addWidget(qt_viewer, 1)
            self.widget.addWidget(box)
        for view, model in self.models.items():
            orient(model, view)
        orient(viewer, "axial")
        # napari has no public accessor for the main window's QtViewer
        canvases = {"axial": viewer.window._qt_viewer, **self.qt_viewers}
        self.crosshairs = {view: Crosshair(qt_viewer.canvas.view.scene) for view, qt_viewer in canvases.items()}
        self._syncing = False
        self._pending: Any = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SYNC_MS)
        self._timer.timeout.connect(self._flush)
        for model in self.all_viewers:
            model.dims.events.point.connect(self._on_point)
            model.mouse_drag_callbacks.append(self._click_to_move)
        viewer.layers.events.removing.connect(self._hide_crosshairs)
        viewer.dims.events.ndisplay.connect(self._redraw)

    @property
    def named_viewers(self) -> dict[str, Any]:
        return {"axial": self.viewer, **self.models}

    @property
    def all_viewers(self) -> list[Any]:
        return list(self.named_viewers.values())

    def show(self, layer: Any) -> None:
        """Show `layer` in the extra views (None clears them), each with its crosshair."""
        self._unfollow()
        self._hide_crosshairs()
        self.layer = layer
        for view, model in self.models.items():
            model.layers.clear()
            if layer is None:
                continue
            self._following.append((layer, mirror(layer, model, layer.name)[1]))
            orient(model, view)
            model.reset_view()
        if layer is not None:
            self._sync(self.viewer.dims.point)

    def _redraw(self, _event: Any = None) -> None:
        """After a 2-D/3-D switch: the crosshair is drawn on slices only."""
        self._sync(self.viewer.dims.point)

    def _hide_crosshairs(self, _event: Any = None) -> None:
        """Hidden while layers change, until the next scan is shown: napari repaints a canvas while
        it resets the world to the new layers, and lines left at the old world's coordinates in
        that state crashed the software OpenGL rasteriser (Xvfb's llvmpipe)."""
        for crosshair in self.crosshairs.values():
            crosshair.hide()

    def _on_point(self, event: Any) -> None:
        if self._syncing:
            return
        dims = event.source
        if dims is self.viewer.dims or len(event.value) != 3 or self.viewer.dims.ndim != 3:
            self._pending = event.value
        else:  # an extra view moved along the axis it slices: the rest of its point may be stale
            point = list(self._pending if self._pending is not None else self.viewer.dims.point)
            axis = dims.order[0]
            point[axis] = event.value[axis]
            self._pending = tuple(point)
        if not self._timer.isActive():
            self._timer.start()

    def _flush(self) -> None:
        if self._pending is not None:
            point, self._pending = self._pending, None
            self._sync(point)

    def flush(self) -> None:
        """Apply a pending crosshair move now (scripts and tests that read the other views at once)."""
        self._timer.stop()
        self._flush()

    def _sync(self, point: Any) -> None:
        """Give every viewer `point` and redraw the crosshairs through it."""
        if self.layer is None:
            return
        # deferred: only the box of the shown scan, computed once per move
        from napari_ctvqa.widgets.reading.scans import box_of

        self._syncing = True
        try:
            box = box_of(self.layer)
            point = tuple(float(v) for v in point)[-3:]
            for view, model in self.named_viewers.items():
                if model.dims.ndim != 3 or len(point) != 3:
                    continue  # a viewer with no scan yet (2-D), or a point from before one opened
                order = tuple(model.dims.order)
                if model is self.viewer:
                    if tuple(model.dims.point) != point:
                        model.dims.set_point(range(3), point)
                elif model.dims.point[order[0]] != point[order[0]]:
                    # only the axis a view slices along: a move within its plane (an axial step, in
                    # the coronal view) moves its crosshair and need not re-slice its image
                    model.dims.set_point(order[0], point[order[0]])
                self.crosshairs[view].draw(point, order, box, flat=model.dims.ndisplay == 2)
        finally:
            self._syncing = False
        self.moved.emit(point)

    def _click_to_move(self, model: Any, event: Any):
        """A click (press and release without dragging) puts the crosshair there; a drag still pans."""
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged and self.layer is not None:
            self._sync(tuple(float(v) for v in event.position))

    def _unfollow(self) -> None:
        """Stop the windows of mirrors shown earlier following their source (each show() makes new ones)."""
        for source, follow in self._following:
            source.events.contrast_limits.disconnect(follow)
        self._following.clear()

    def unhook(self) -> None:
        self._unfollow()
        self._timer.stop()
        self.viewer.layers.events.removing.disconnect(self._hide_crosshairs)
        self.viewer.dims.events.ndisplay.disconnect(self._redraw)
        for model in self.all_viewers:
            model.dims.events.point.disconnect(self._on_point)
            if self._click_to_move in model.mouse_drag_callbacks:
                model.mouse_drag_callbacks.remove(self._click_to_move)
        for crosshair in self.crosshairs.values():
            crosshair.remove()
        self.crosshairs.clear()
        for qt_viewer in self.qt_viewers.values():
            qt_viewer.close()  # deletes itself (WA_DeleteOnClose); napari counts live QtViewers
        self.qt_viewers.clear()
