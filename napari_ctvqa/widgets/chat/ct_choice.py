"""Which CT the chat is about, and what of it the model process gets.

The choice follows the viewer's selected scan without a click: opening a scan selects it in
napari and so makes it the chat's scan (a turn is then stored against the scan on screen, not the
one opened first), selecting another scan (in the layer list or the reading room's scan list)
moves the chat to it, removing the chosen one moves on to another, and a scan whose data is
swapped in place (the rating panel's layer) is taken as the new scan it is. Only 3-D grey-value
images are offered (not RGB, not the panel's own "model input" overlays).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox

from napari_ctvqa.vlm_server import VolumePayload

if TYPE_CHECKING:
    import napari

#: Overlays the panel adds start with this, so they are never offered as a CT.
MODEL_INPUT_PREFIX = "model input"


def scan_key(layer: Any) -> str:
    """How the model process tells scans apart: this layer object under this name, from this file."""
    return f"{id(layer)}:{layer.name}:{(layer.metadata or {}).get('path', '')}"


def payload_of(layer: Any) -> VolumePayload:
    """The layer's full-resolution volume and the reader's metadata, as the model process takes it."""
    meta = (layer.metadata or {}).get("ct_meta") or {}
    data = layer.data[0] if layer.multiscale else layer.data  # full resolution of a pyramid
    return VolumePayload(np.asarray(data), tuple(float(s) for s in layer.scale),
                         {"normalised": bool(meta.get("normalised", False)), "modality": meta.get("modality")})


class CTChoice(QObject):
    """The CT combo box (`box`) kept in step with the viewer; `changed` carries the layer (or None)."""

    changed = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer: Any = None
        self.box = QComboBox()
        self._viewer_links = ((viewer.layers.events.inserted, self._on_inserted),
                              (viewer.layers.events.removed, self.refresh),
                              (viewer.layers.selection.events.active, self._on_active))
        for emitter, callback in self._viewer_links:
            emitter.connect(callback)
        self.box.currentIndexChanged.connect(self._on_chosen)

    def ct_layers(self) -> list[Any]:
        # deferred: napari is heavy, and importing this module must not load it
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and not layer.rgb
                and layer.ndim == 3 and not layer.name.startswith(MODEL_INPUT_PREFIX)]

    def refresh(self, event: Any = None, prefer: Any = None) -> None:
        """Re-list the viewer's CTs and choose `prefer` when it is one, else keep the chosen one."""
        layers = self.ct_layers()
        current = prefer if prefer in layers else self.layer if self.layer in layers else None
        active = self.viewer.layers.selection.active
        if current is None:
            current = active if active in layers else (layers[-1] if layers else None)
        self.box.blockSignals(True)
        self.box.clear()
        for layer in layers:
            self.box.addItem(layer.name, id(layer))
        if current is not None:
            self.box.setCurrentIndex(layers.index(current))
        self.box.blockSignals(False)
        if current is not self.layer:
            self._choose(current)

    def unhook(self) -> None:
        """Stop following the viewer (the panel is closing; the viewer lives on)."""
        for emitter, callback in self._viewer_links:
            emitter.disconnect(callback)
        if self.layer is not None:
            self.layer.events.data.disconnect(self._on_data)

    def _on_inserted(self, event: Any) -> None:
        self.refresh(prefer=event.value)  # a scan just opened is the one the user looks at

    def _on_active(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        if active is not self.layer and active in self.ct_layers():
            self.refresh(prefer=active)

    def _on_chosen(self, index: int) -> None:
        layers = self.ct_layers()
        self._choose(layers[index] if 0 <= index < len(layers) else None)

    def _choose(self, layer: Any) -> None:
        if self.layer is not None:
            self.layer.events.data.disconnect(self._on_data)
        self.layer = layer
        if layer is not None:
            layer.events.data.connect(self._on_data)
        self.changed.emit(layer)

    def _on_data(self, event: Any = None) -> None:
        """The chosen layer now shows another scan (swapped in place): the chat moves with it."""
        self.changed.emit(self.layer)
