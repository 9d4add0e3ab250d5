"""What a question is about: the whole scan, or the axial slice the viewer shows.

OmniCT-family models read one slice as well as a volume, and a radiologist scrolling a scan
often means "this slice"; the choice lives beside the question so it is seen before asking.
Models that read whole volumes only (M3D family) get the slice choice disabled, with the reason
in its tooltip.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QButtonGroup, QHBoxLayout, QRadioButton, QWidget

if TYPE_CHECKING:
    import napari

_NO_SLICES = "This model reads whole scans only (M3D family); slice questions need an OmniCT-family model."


class ScopeChoice(QWidget):
    """Two radio buttons, "Whole scan" and "This slice (z N)"; `slice_index(layer)` is the choice."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer: Any = None
        self.whole = QRadioButton("Whole scan")
        self.slice = QRadioButton("This slice")
        self.whole.setChecked(True)
        self._group = QButtonGroup(self)
        for button in (self.whole, self.slice):
            self._group.addButton(button)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.whole)
        layout.addWidget(self.slice)
        layout.addStretch(1)
        self.set_supported(False)
        viewer.dims.events.current_step.connect(self._update_label)

    def set_layer(self, layer: Any) -> None:
        self.layer = layer
        self._update_label()

    def set_supported(self, supported: bool) -> None:
        """Enable "This slice" for models that read slices; otherwise fall back to the whole scan."""
        self.slice.setEnabled(supported)
        self.slice.setToolTip("Ask about the axial slice the viewer shows." if supported else _NO_SLICES)
        if not supported:
            self.whole.setChecked(True)

    def current_slice(self, layer: Any = None) -> int | None:
        """The axial slice (data index along z) of `layer` the viewer shows, or None without a layer."""
        layer = layer if layer is not None else self.layer
        if layer is None or layer.ndim != 3:
            return None
        z = layer.world_to_data(self.viewer.dims.point)[0]
        return int(min(max(round(float(z)), 0), layer.data.shape[0] - 1))

    def slice_index(self, layer: Any = None) -> int | None:
        """The slice a question is about, or None for the whole scan."""
        return self.current_slice(layer) if self.slice.isChecked() and self.slice.isEnabled() else None

    def _update_label(self, event: Any = None) -> None:
        z = self.current_slice()
        self.slice.setText("This slice" if z is None else f"This slice (z {z})")

    def unhook(self) -> None:
        self.viewer.dims.events.current_step.disconnect(self._update_label)
