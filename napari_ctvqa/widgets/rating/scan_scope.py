"""The rating panel's tie to the scan selected in the viewer.

Why: a radiologist reading a patient in the reading room wants to rate the pairs written about that
scan, not page through a queue that jumps between patients. The chat and the window panel follow
the selected scan; so does this checkbox: while it is on, the queue keeps to the selected scan's
pairs (its name in the store, as the chat registers it), and it follows when another scan is
selected. The panel's own "CT (rating)" layer is never taken as the selection.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox

from napari_ctvqa.widgets.chat.history import volume_name_of
from napari_ctvqa.widgets.reading.geometry import is_scan

if TYPE_CHECKING:
    import napari

    from annotation.records import QueueItem


def selected_scan_name(viewer: napari.viewer.Viewer) -> str | None:
    """The store's name of the scan selected in the viewer (None: no scan, or the rating layer)."""
    active = viewer.layers.selection.active
    if active is None or not is_scan(active):  # the rating layer is not a scan (reading.geometry)
        return None
    return volume_name_of(active)


def keep_to_scan(items: Sequence[QueueItem], volume_name: str | None) -> list[QueueItem]:
    """The queue items of one scan, in queue order (all of them when no scan is given)."""
    if volume_name is None:
        return list(items)
    return [item for item in items if item.volume_name == volume_name]


class ScanScope(QCheckBox):
    """'Only the selected scan's pairs': `changed` carries the scan to keep to, or None for all."""

    changed = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__("Only the selected scan's pairs")
        self.viewer = viewer
        self.volume_name: str | None = None
        self.setToolTip("Keep the queue to the pairs about the scan selected in the viewer (the one the "
                        "chat asks about); it follows when another scan is selected")
        self.setEnabled(False)  # until a scan is selected
        self.toggled.connect(self._emit)
        viewer.layers.selection.events.active.connect(self._on_active)
        self._on_active()

    @property
    def scope(self) -> str | None:
        """The scan the queue keeps to now (None: the whole queue)."""
        return self.volume_name if self.isChecked() else None

    def _on_active(self, event: Any = None) -> None:
        name = selected_scan_name(self.viewer)
        if name is None or name == self.volume_name:
            return  # the rating layer or an overlay selected: keep the scan the rater chose
        self.volume_name = name
        self.setEnabled(True)
        self.setText(f"Only the pairs of {name}")
        if self.isChecked():
            self._emit()

    def _emit(self, *_: Any) -> None:
        self.changed.emit(self.scope)

    def unhook(self) -> None:
        self.viewer.layers.selection.events.active.disconnect(self._on_active)
