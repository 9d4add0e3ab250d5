"""Window presets: limits from model.ct.windows, buttons and keys of the dock widget."""
from __future__ import annotations

import numpy as np
import pytest
from model.ct.windows import WINDOW_NAMES, WINDOW_PRESETS, window_limits
from qtpy.QtCore import Qt

from napari_ctvqa.widgets.window import WINDOW_KEYS, WindowWidget


def test_presets_are_the_radiology_defaults() -> None:
    assert WINDOW_PRESETS == {"lung": (1500.0, -600.0), "mediastinum": (350.0, 50.0), "bone": (2000.0, 300.0)}
    assert window_limits("lung") == (-1350.0, 150.0)
    assert window_limits("Mediastinum") == (-125.0, 225.0)
    assert window_limits("bone") == (-700.0, 1300.0)
    assert window_limits("full", np.array([[-1024.0, np.nan], [3071.0, 0.0]])) == (-1024.0, 3071.0)
    assert window_limits("full", np.zeros(4)) == (0.0, 1.0)  # constant data still gets a span


@pytest.mark.parametrize("call", [lambda: window_limits("soft"), lambda: window_limits("full"), lambda: window_limits("full", np.full(3, np.nan))])
def test_bad_window_requests_are_refused(call) -> None:
    with pytest.raises(ValueError):
        call()


def _viewer_with_ct(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    data = np.linspace(-1024, 2000, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    layer = viewer.add_image(data, contrast_limits=window_limits("mediastinum"), name="ct")
    widget = WindowWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, layer, widget


def test_buttons_set_contrast_limits_and_show_keys(make_napari_viewer, qtbot) -> None:
    viewer, layer, widget = _viewer_with_ct(make_napari_viewer, qtbot)
    assert [button.text() for button in widget.buttons.values()] == ["Lung [L]", "Mediastinum [M]", "Bone [B]", "Full [F]"]
    for name in WINDOW_NAMES:
        qtbot.mouseClick(widget.buttons[name], Qt.MouseButton.LeftButton)
        assert tuple(layer.contrast_limits) == pytest.approx(window_limits(name, layer.data)), name
    assert tuple(layer.contrast_limits) == pytest.approx((-1024.0, 2000.0))
    assert "full" in widget.status.text()


def test_keys_on_the_canvas_set_contrast_limits(make_napari_viewer, qtbot) -> None:
    viewer, layer, _ = _viewer_with_ct(make_napari_viewer, qtbot)
    canvas = viewer.window._qt_viewer.canvas.native
    for name in ("lung", "bone", "full", "mediastinum"):
        qtbot.keyClick(canvas, getattr(Qt.Key, f"Key_{WINDOW_KEYS[name]}"))
        assert tuple(layer.contrast_limits) == pytest.approx(window_limits(name, layer.data)), name


def test_window_applies_to_the_selected_image(make_napari_viewer, qtbot) -> None:
    viewer, first, widget = _viewer_with_ct(make_napari_viewer, qtbot)
    second = viewer.add_image(np.zeros((4, 8, 8), np.float32), contrast_limits=(0, 1), name="other")
    viewer.layers.selection.active = first
    qtbot.mouseClick(widget.buttons["lung"], Qt.MouseButton.LeftButton)
    assert tuple(first.contrast_limits) == pytest.approx(window_limits("lung"))
    assert tuple(second.contrast_limits) == pytest.approx((0, 1))


def test_normalised_volume_gets_full_range_instead_of_hu_preset(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 4, 4), contrast_limits=(0.2, 0.3),
                             metadata={"ct_meta": {"normalised": True}})
    widget = WindowWidget(viewer)
    qtbot.addWidget(widget)
    qtbot.mouseClick(widget.buttons["lung"], Qt.MouseButton.LeftButton)
    assert tuple(layer.contrast_limits) == pytest.approx((0.0, 1.0))


def test_no_image_layer_is_harmless(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    widget = WindowWidget(viewer)
    qtbot.addWidget(widget)
    viewer.add_points(np.zeros((1, 3)))
    qtbot.mouseClick(widget.buttons["bone"], Qt.MouseButton.LeftButton)
    assert widget.status.text().startswith("Keys")  # nothing applied, status unchanged
