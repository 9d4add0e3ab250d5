"""The scans open in the viewer as a list, one shown at a time, each placed where it can be seen.

Why: napari lays every layer into one world box. The reader places each scan where the scanner
put it (so a patient's scans overlay), but two patients' scans can lie a metre apart: one shared
z-slider over empty space, a black canvas for the new scan, and napari's canvas crashing on a
resize after one is removed. So a scan whose box does not meet the others' is moved to their
centre (its scanner position is kept in the metadata; positions shown in mm come from its affine,
not from where it lies in the viewer), the scan opened or selected is the one shown, and the
view is reset onto it. The chat, the window panel and the three views follow the selection.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QListWidget

from napari_ctvqa.widgets.reading.geometry import is_scan

if TYPE_CHECKING:
    import napari


def box_of(layer: Any) -> np.ndarray:
    """(2, 3) world corners (min, max) of a scan layer."""
    shape = np.asarray(layer.data[0].shape if layer.multiscale else layer.data.shape, dtype=float)
    low = np.asarray(layer.translate, dtype=float)
    return np.stack([low, low + shape * np.asarray(layer.scale, dtype=float)])


def place(layer: Any, others: list[Any]) -> bool:
    """Move `layer` onto the others' centre when its box meets none of theirs; True when moved."""
    if not others:
        return False
    box = box_of(layer)
    boxes = [box_of(other) for other in others]
    if any(np.all(box[0] < other[1]) and np.all(other[0] < box[1]) for other in boxes):
        return False  # it overlaps a scan already open (a prior of the same patient): keep it
    centre = np.mean([b.mean(axis=0) for b in boxes[:1]], axis=0)
    layer.metadata = {**(layer.metadata or {}), "scanner_translate": tuple(float(t) for t in layer.translate)}
    layer.translate = tuple(np.asarray(layer.translate) + centre - box.mean(axis=0))
    return True


class ScanList(QObject):
    """The viewer's scans (`widget` lists them); `current` is the one shown; `changed` carries it."""

    changed = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.current: Any = None
        self.widget = QListWidget()
        self.widget.setToolTip("The open scans: the selected one is shown, asked about and measured")
        self.widget.setMaximumHeight(110)
        self.widget.currentRowChanged.connect(self._on_row)
        self._links = ((viewer.layers.events.inserted, self._on_inserted),
                       (viewer.layers.events.removed, self._on_removed),
                       (viewer.layers.selection.events.active, self._on_active))
        for emitter, callback in self._links:
            emitter.connect(callback)
        scans = self.scans()
        self._relist()
        if scans:
            self.show(scans[-1])

    def scans(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if is_scan(layer)]

    def show(self, layer: Any) -> None:
        """Make `layer` the shown and selected scan (the others hidden), centred on its middle."""
        if layer is self.current and layer.visible:
            return
        fresh = layer is not self.current
        self.current = layer
        for scan in self.scans():
            wanted = scan is layer or (self.viewer.grid.enabled and scan.visible)  # a grid shows several
            if scan.visible != wanted:
                scan.visible = wanted
        if self.viewer.layers.selection.active is not layer:
            self.viewer.layers.selection.active = layer
        self._relist()
        if fresh:
            box = box_of(layer)
            self.viewer.reset_view()
            self.viewer.dims.set_point(range(3), tuple(box.mean(axis=0)))
        self.changed.emit(layer)

    def unhook(self) -> None:
        for emitter, callback in self._links:
            emitter.disconnect(callback)

    def _relist(self) -> None:
        scans = self.scans()
        self.widget.blockSignals(True)
        self.widget.clear()
        self.widget.addItems([scan.name for scan in scans])
        if self.current in scans:
            self.widget.setCurrentRow(scans.index(self.current))
        self.widget.blockSignals(False)

    def _on_row(self, row: int) -> None:
        scans = self.scans()
        if 0 <= row < len(scans):
            self.show(scans[row])

    def _on_inserted(self, event: Any) -> None:
        layer = event.value
        if not is_scan(layer):
            return
        place(layer, [scan for scan in self.scans() if scan is not layer])
        self.show(layer)

    def _on_removed(self, event: Any) -> None:
        scans = self.scans()
        if self.current is event.value or self.current not in scans:
            self.current = None
            if scans:
                self.show(scans[-1])
            else:
                self.changed.emit(None)
        self._relist()

    def _on_active(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        if active is not self.current and active in self.scans():
            self.show(active)
