"""Dock widget with the CT window presets, also bound to keys on the viewer (L, M, B, F).

The preset -> limits logic lives in `model.ct.windows`; this widget only picks the image layer
and applies the limits, so the keys and buttons behave identically.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from model.ct.modality import shows_hu
from model.ct.windows import WINDOW_NAMES, window_limits

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

#: preset name -> keyboard key (shown on the button as "Lung [L]").
WINDOW_KEYS: dict[str, str] = {"lung": "L", "mediastinum": "M", "bone": "B", "full": "F"}


def target_image(viewer: napari.viewer.Viewer) -> Image | None:
    """The image a window applies to: the active layer if it is an image, else the topmost
    selected image, else the topmost image (so a key works right after opening a scan)."""
    from napari.layers import Image

    active = viewer.layers.selection.active
    if isinstance(active, Image):
        return active
    images = [layer for layer in reversed(viewer.layers) if isinstance(layer, Image)]
    selected = [layer for layer in images if layer in viewer.layers.selection]
    return (selected or images or [None])[0]


def apply_window(viewer: napari.viewer.Viewer, name: str) -> tuple[float, float] | None:
    """Set the target image's contrast limits to preset `name`; returns the limits applied.

    HU presets make no sense on M3D's [0, 1] normalised arrays or on MR and other non-CT series,
    so those get `full` and a note.
    """
    from napari.utils.notifications import show_info

    layer = target_image(viewer)
    if layer is None:
        show_info("CT window: open a CT first (no image layer)")
        return None
    ct_meta = layer.metadata.get("ct_meta", {}) if isinstance(layer.metadata, dict) else {}
    if not shows_hu(ct_meta) and name != "full":
        what = "normalised to [0, 1]" if ct_meta.get("normalised") else f"a {ct_meta.get('modality')} series"
        show_info(f"{layer.name} is {what}, not HU: showing the full range instead of {name}")
        name = "full"
    limits = window_limits(name, layer.data if name == "full" else None)
    layer.contrast_limits = limits
    return limits


class WindowWidget(QWidget):
    """Four preset buttons (Lung [L], Mediastinum [M], Bone [B], Full [F]) for the viewer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.buttons: dict[str, QPushButton] = {}
        self.status = QLabel("Keys L, M, B, F set the window of the selected image.")
        self.status.setWordWrap(True)
        grid = QGridLayout()
        for index, name in enumerate(WINDOW_NAMES):
            key = WINDOW_KEYS[name]
            button = QPushButton(f"{name.capitalize()} [{key}]")
            button.setToolTip(f"{name} window{'' if name == 'full' else ' (width/level in HU)'}; key {key}")
            button.clicked.connect(lambda _checked=False, preset=name: self.apply(preset))
            grid.addWidget(button, index // 2, index % 2)
            self.buttons[name] = button
            viewer.bind_key(key, _key_callback(self, name), overwrite=True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(grid)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def apply(self, name: str) -> tuple[float, float] | None:
        """Apply preset `name` to the target image and say what is shown."""
        limits = apply_window(self.viewer, name)
        if limits is not None:  # named, since it applies to the selected scan (the reading room's)
            self.status.setText(f"{name}: {limits[0]:g} to {limits[1]:g} on {target_image(self.viewer).name}")
        return limits


def _key_callback(widget: WindowWidget, name: str):
    """A viewer key binding for preset `name`: through the widget so key and button update the
    same status line, and straight on the viewer once the widget has been closed."""

    def set_window(viewer: napari.viewer.Viewer) -> None:
        try:
            widget.apply(name)
        except RuntimeError:  # the Qt widget was deleted; the key still works
            apply_window(viewer, name)

    set_window.__name__ = f"ct_window_{name}"
    set_window.__doc__ = f"Set the CT window to {name}."
    return set_window
