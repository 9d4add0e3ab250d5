"""The reading room (issue 20): scans as a list, three views the right way up, crosshair and ruler
in mm, and a registered prior beside the current scan. Real napari viewers, real SQLite, real
NIfTI files and SimpleITK registration; no model."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
from qtpy.QtWidgets import QApplication

from annotation.store import Store
from model.ct.io import write_ct
from model.ct.registration import to_itk
from model.ct.volume import CTVolume
from napari_ctvqa.widgets.reading import ReadingRoom
from napari_ctvqa.widgets.reading.geometry import ras_of
from napari_ctvqa.widgets.reading.ruler import measure
from tests.marker_phantom import MARKERS, SPACING, marker_phantom

TIMEOUT_MS = 60_000


@pytest.fixture
def store(tmp_path):
    store = Store.create(f"sqlite:///{tmp_path / 'room.sqlite'}")
    yield store
    store.close()


@pytest.fixture
def room(make_napari_viewer, qtbot, store):
    viewer = make_napari_viewer(show=True)
    widget = ReadingRoom(viewer, store=store)
    viewer.window.add_dock_widget(widget, name="Reading room", area="left")
    viewer.window.resize(1500, 950)
    QApplication.processEvents()
    yield widget
    widget.shutdown()


def add_phantom(viewer, volume: CTVolume, name: str, path=None):
    metadata = {"affine": volume.affine, "ct_meta": {}, **({"path": str(path)} if path else {})}
    return viewer.add_image(volume.array, name=name, scale=volume.spacing, metadata=metadata,
                            contrast_limits=(-1000, 2000))


def world_of(marker: str) -> tuple[float, float, float]:
    return tuple(float(v * s) for v, s in zip(MARKERS[marker], SPACING))


def bright_centre(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the marker's white pixels and of everything that is not black, in a screenshot."""
    grey = image[..., :3].mean(axis=-1)
    marker = np.argwhere(grey > 245).mean(axis=0)
    body = np.argwhere(grey > 40).mean(axis=0)
    return marker, body


# view, marker, axis of the screenshot (0 rows, 1 columns), sign: -1 = marker above / left of the body
ORIENTATION_CHECKS = [
    ("axial", "anterior", 0, -1), ("axial", "right", 1, -1),
    ("coronal", "superior", 0, -1), ("coronal", "right", 1, -1),
    ("sagittal", "superior", 0, -1), ("sagittal", "anterior", 1, -1),
]


def test_each_view_is_the_right_way_up_on_a_phantom_with_markers(room, qtbot):
    viewer = room.viewer
    add_phantom(viewer, marker_phantom(), "phantom")
    room.fit()
    for view, marker, axis, sign in ORIENTATION_CHECKS:
        viewer.dims.set_point(range(3), world_of(marker))
        room.views.flush()  # moves reach the other views at most every SYNC_MS; no waiting here
        for _ in range(5):
            QApplication.processEvents()
        if view == "axial":
            shot = viewer.screenshot(canvas_only=True, flash=False)
        else:
            shot = room.views.qt_viewers[view].screenshot(flash=False)
        found, body = bright_centre(shot)
        assert sign * (found[axis] - body[axis]) > 5, f"{marker} marker on the wrong side of the {view} view"
    for view, model in room.views.models.items():  # linked: each view slices through the crosshair
        axis = model.dims.order[0]
        assert model.dims.point[axis] == pytest.approx(viewer.dims.point[axis]), view


def test_crosshair_position_and_ruler_are_in_mm(room):
    viewer = room.viewer
    volume = marker_phantom(origin_ras=(100.0, -50.0, 20.0))
    layer = add_phantom(viewer, volume, "phantom")
    k, j, i = MARKERS["superior"]
    viewer.dims.set_point(range(3), world_of("superior"))
    room.views.flush()
    expected = volume.affine @ np.array([k, j, i, 1.0])
    assert np.allclose(ras_of(layer, viewer.dims.point), expected[:3])
    text = room.position_label.text()
    assert f"S {expected[2]:.1f}" in text and "2000 HU" in text
    room.views.models["sagittal"].dims.set_point(2, 10 * SPACING[2])  # scrolling another view moves the crosshair
    room.views.flush()
    assert viewer.dims.point[2] == pytest.approx(10 * SPACING[2])
    room.start_ruler()
    assert measure(viewer, (80.0, 10.0, 10.0), (80.0, 40.0, 50.0)) == pytest.approx(50.0)
    assert "50.0 mm" in room.ruler_label.text()


def open_as_the_reader_does(viewer, volume: CTVolume, path):
    from napari_ctvqa._reader import layer_data

    write_ct(volume, path)
    data, kwargs, _ = layer_data(volume, path)
    return viewer.add_image(data, **kwargs)


def test_scans_of_two_patients_are_each_visible_and_removal_does_not_crash(room, tmp_path):
    viewer = room.viewer
    first = open_as_the_reader_does(viewer, marker_phantom(), tmp_path / "patient_a.nii.gz")
    far = marker_phantom(origin_ras=(0.0, 0.0, 1200.0))  # 1.2 m away, as another scanner put its patient
    second = open_as_the_reader_does(viewer, far, tmp_path / "patient_b.nii.gz")
    assert room.scans.current is second and second.visible and not first.visible
    assert room.scans.widget.count() == 2
    assert second.metadata["scanner_translate"][0] == pytest.approx(1200.0)  # kept, but not where it is shown
    assert viewer.dims.nsteps[0] <= first.data.shape[0] + 1, "one slider spread over the space between the scans"
    assert first.data.shape[0] // 2 - 2 <= viewer.dims.current_step[0] <= first.data.shape[0] // 2 + 2
    room.start_ruler()
    assert viewer.dims.nsteps[0] <= first.data.shape[0] + 1  # the ruler keeps slice steps too
    room.scans.widget.setCurrentRow(0)
    assert room.scans.current is first and first.visible and not second.visible
    assert viewer.layers.selection.active is first
    viewer.layers.remove(first)
    for size in ((900, 700), (1400, 900)):
        viewer.window.resize(*size)
        QApplication.processEvents()
    assert room.scans.current is second and second.visible


def moved_prior_file(tmp_path, current: CTVolume):
    image = to_itk(current)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    truth = sitk.Euler3DTransform(centre, 0.0, 0.0, math.radians(4.0), (5.0, -8.0, 3.0))
    prior = sitk.Resample(image, image, truth.GetInverse(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    volume = CTVolume(sitk.GetArrayFromImage(prior), current.spacing, current.affine.copy(), {})
    return write_ct(volume, tmp_path / "train_5_a_1.nii.gz")


def test_compare_with_prior_opens_the_registered_prior_scrolling_in_step(room, qtbot, store, tmp_path):
    current = marker_phantom()
    current_path = write_ct(current, tmp_path / "train_5_b_1.nii.gz")
    prior_path = moved_prior_file(tmp_path, current)
    store.add_scan("train_5_a_1.nii.gz", str(prior_path))
    store.add_scan("train_5_b_1.nii.gz", str(current_path))
    store.add_scan("train_6_a_1.nii.gz", str(prior_path))  # another patient: never offered
    viewer = room.viewer
    layer = add_phantom(viewer, current, "train_5_b_1", current_path)
    assert [p.volume_name for p in room.priors] == ["train_5_a_1.nii.gz"]
    assert room.compare_button.isEnabled()
    # the prior's viewer is built once the scan has a prior, so the click does not pay for it
    # and docked beside it (the window is laid out then, not at the click), with its two layers
    # hidden (holding the current scan until a registered prior comes) and a title saying so
    qtbot.waitUntil(lambda: room.compare_view is not None and len(room.compare_view.model.layers) == 2,
                    timeout=TIMEOUT_MS)
    assert room._docks["Prior"].isVisible()
    assert "Compare with prior" in room.compare_view.title.text()
    prior_layer, difference = room.compare_view.model.layers
    assert not prior_layer.visible and not difference.visible

    room.difference_check.setChecked(True)
    room.compare_button.click()
    assert room.cancel_button.isEnabled() and not room.compare_button.isEnabled()
    # registration runs in a process of its own (SimpleITK holds the GIL for long stretches)
    assert room.comparison.process is not None and room.comparison.process.pid != os.getpid()
    qtbot.waitUntil(lambda: not room.comparison.running and room.compare_button.isEnabled(), timeout=TIMEOUT_MS)
    assert room._docks["Prior"].isVisible()
    assert list(room.compare_view.model.layers) == [prior_layer, difference]  # the same two layers
    assert prior_layer.data.shape == layer.data.shape and tuple(prior_layer.scale) == tuple(layer.scale)
    assert prior_layer.visible and difference.visible and prior_layer.data is not layer.data
    residual = np.abs(difference.data[layer.data > -500]).mean()
    unregistered = np.abs(current.array - np.asarray(__import__("model.ct.io", fromlist=["read_ct"])
                                                     .read_ct(prior_path).array))[layer.data > -500].mean()
    assert residual < 0.3 * unregistered
    assert "degrees rotation" in room.message.text()

    viewer.dims.set_point(0, 20 * SPACING[0])  # scrolling the current scan scrolls the prior, in mm
    assert room.compare_view.model.dims.point[0] == pytest.approx(20 * SPACING[0])
    room.compare_view.model.dims.set_point(0, 12 * SPACING[0])  # and the other way round
    assert viewer.dims.point[0] == pytest.approx(12 * SPACING[0])
    room.difference_check.setChecked(False)
    assert not difference.visible

    # Comparing again gives the new result to the same two layers (removing layers would make
    # napari collect garbage on the GUI thread, half a second), and the viewer shows it.
    before = difference.data.copy()
    viewer.dims.set_point(0, 20 * SPACING[0])
    room.compare_button.click()
    qtbot.waitUntil(lambda: not room.comparison.running and room.compare_button.isEnabled(), timeout=TIMEOUT_MS)
    assert list(room.compare_view.model.layers) == [prior_layer, difference]
    assert difference.data is not before and np.abs(difference.data - before).mean() < 5.0  # same registration
    assert room.compare_view.model.dims.point[0] == pytest.approx(20 * SPACING[0])

    # another patient's scan, with no prior: the pane goes; back to this one: it waits for a click
    add_phantom(viewer, marker_phantom(), "unknown scan")
    assert not room._docks["Prior"].isVisible()
    room.scans.widget.setCurrentRow(0)
    qtbot.waitUntil(lambda: room._docks["Prior"].isVisible(), timeout=TIMEOUT_MS)
    assert not prior_layer.visible, "a prior registered to the scan shown before is not shown as this one's"
    assert "Compare with prior" in room.compare_view.title.text()


def test_a_scan_without_priors_says_why_compare_is_off(room, store, tmp_path):
    add_phantom(room.viewer, marker_phantom(), "unknown scan")
    assert not room.compare_button.isEnabled()
    assert "not in the database" in room.compare_button.toolTip()
    room.compare_with_prior()
    assert "No prior" in room.message.text()


def test_switching_scans_leaves_one_window_follower_per_shown_view(room, tmp_path):
    """Each show() mirrors the scan into the two extra views; the mirrors of a scan shown earlier
    stop following its window, so switching back and forth does not pile up callbacks."""
    viewer = room.viewer
    first = open_as_the_reader_does(viewer, marker_phantom(), tmp_path / "a.nii.gz")
    second = open_as_the_reader_does(viewer, marker_phantom(), tmp_path / "b.nii.gz")
    room.views.show(first)
    once = len(first.events.contrast_limits.callbacks)
    for _ in range(3):
        room.views.show(second)
        room.views.show(first)
    assert len(first.events.contrast_limits.callbacks) == once  # no pile-up of followers
    room.views.show(first)
    second.contrast_limits = (-100.0, 100.0)  # no longer shown: nothing follows it
    assert all(source is first for source, _ in room.views._following)
    first.contrast_limits = (-500.0, 500.0)
    assert all(tuple(m.layers[first.name].contrast_limits) == (-500.0, 500.0) for m in room.views.models.values())


def crosshair_pixels(shot: np.ndarray) -> np.ndarray:
    """(row, col) of the crosshair's yellow pixels in a screenshot."""
    r, g, b = (shot[..., c].astype(int) for c in range(3))
    return np.argwhere((r > 180) & (g > 150) & (b < 110) & (r - b > 100))


def test_the_crosshair_is_drawn_through_the_point_in_every_view_and_follows_it(room):
    viewer = room.viewer
    add_phantom(viewer, marker_phantom(), "phantom")
    room.fit()
    assert [layer.name for layer in viewer.layers] == ["phantom"], "the crosshair is not a layer to skip"
    lines = {}
    for marker in ("superior", "anterior"):
        viewer.dims.set_point(range(3), world_of(marker))
        room.views.flush()
        for _ in range(5):
            QApplication.processEvents()
        for view in ("axial", "coronal", "sagittal"):
            shot = (viewer.screenshot(canvas_only=True, flash=False) if view == "axial"
                    else room.views.qt_viewers[view].screenshot(flash=False))
            yellow = crosshair_pixels(shot)
            assert len(yellow) > 100, f"no crosshair drawn in the {view} view"
            rows, cols = np.bincount(yellow[:, 0]).argmax(), np.bincount(yellow[:, 1]).argmax()
            found, _ = bright_centre(shot)
            if view == "axial" or marker == "superior":  # the marker lies on this view's slice
                assert abs(rows - found[0]) < 4 and abs(cols - found[1]) < 4, f"{view}: crosshair off the marker"
            lines[marker, view] = (rows, cols)
    for view in ("axial", "coronal", "sagittal"):
        assert lines["superior", view] != lines["anterior", view], f"the {view} crosshair did not follow"
    viewer.dims.ndisplay = 3
    assert not room.views.crosshairs["axial"].shown, "two flat lines floating in a 3-D rendering"
    viewer.dims.ndisplay = 2
    assert room.views.crosshairs["axial"].shown


def test_a_prior_arriving_while_its_pane_is_half_prepared_gives_two_layers(room, qtbot):
    """`prepare` adds its second layer a turn later; a comparison shown in between replaces them,
    and the superseded turn must not add a third (placeholder) layer."""
    from model.ct.prior import Comparison
    from napari_ctvqa.widgets.reading.compare import CompareView

    current = marker_phantom()
    layer = add_phantom(room.viewer, current, "phantom")
    view = CompareView(room.viewer, parent=room)
    view.prepare(layer)
    assert len(view.model.layers) == 1  # the difference comes in the next turn
    prior = CTVolume(current.array - 100.0, current.spacing, current.affine.copy(), {})
    view.show(layer, Comparison("earlier", prior, current.array - prior.array, "rigid: 0 mm"), True)
    qtbot.waitUntil(lambda: "registered" in view.title.text(), timeout=TIMEOUT_MS)
    for _ in range(5):
        QApplication.processEvents()
    prior_layer, difference = view.model.layers
    assert len(view.model.layers) == 2 and prior_layer.visible and difference.visible
    assert prior_layer.data is prior.array and np.all(difference.data == 100.0)
    view.unhook()
