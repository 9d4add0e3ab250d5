"""The rating panel follows the scan selected in the viewer (issue 20): with "only the selected
scan's pairs" ticked the queue keeps to that scan's pairs, follows a new selection, keeps what was
rated, and comes back whole when unticked."""
from __future__ import annotations

from qtpy.QtCore import Qt

from tests.napari_ctvqa.test_rating import rating_template, rating_widget, store  # noqa: F401  (fixtures)


def open_scans(viewer, store) -> list:  # noqa: F811
    """Both scans of the store opened as a radiologist would (the plugin's reader, file paths)."""
    layers = []
    for name in ("train_1_a_1.nii.gz", "train_2_a_1.nii.gz"):
        path = store.scan_by_volume(name).path
        layers += viewer.open(path, plugin="napari-ctvqa")
    return layers


def test_queue_keeps_to_the_selected_scan_and_follows_it(rating_widget, store, qtbot):  # noqa: F811
    widget = rating_widget("alice")
    viewer = widget.viewer
    assert not widget.scope.isEnabled()  # no scan selected yet: nothing to keep to
    first, _ = open_scans(viewer, store)
    assert widget.scope.isEnabled() and widget.scope.text().endswith("train_2_a_1.nii.gz")
    assert len(widget.items) == 4

    widget.scope.setChecked(True)
    assert len(widget.items) == 2
    assert {item.volume_name for item in widget.items} == {"train_2_a_1.nii.gz"}
    assert widget.qa.volume_name == "train_2_a_1.nii.gz"
    assert "2 of your 4 pairs" in widget.message.text()

    for key in (Qt.Key.Key_4, Qt.Key.Key_4, Qt.Key.Key_4, Qt.Key.Key_4, Qt.Key.Key_4, Qt.Key.Key_Return):
        qtbot.keyClick(widget, key)
    rated = [item for item in widget.items if item.status == "rated"]
    assert len(rated) == 1 and store.rating("alice", rated[0].qa_id).status == "rated"

    viewer.layers.selection.active = first  # the radiologist selects the other scan
    assert {item.volume_name for item in widget.items} == {"train_1_a_1.nii.gz"}
    assert widget.qa.volume_name == "train_1_a_1.nii.gz"

    widget.scope.setChecked(False)
    assert len(widget.items) == 4
    assert [item.status for item in widget.items].count("rated") == 1  # the rating made in scope is kept
    assert widget.qa.id == widget.items[next(i for i, it in enumerate(widget.items) if it.status == "todo")].qa_id


def test_rating_layer_is_never_taken_as_the_selected_scan(rating_widget, store):  # noqa: F811
    widget = rating_widget("alice")
    viewer = widget.viewer
    first, _ = open_scans(viewer, store)
    viewer.layers.selection.active = first
    widget.scope.setChecked(True)
    assert widget.qa.volume_name == "train_1_a_1.nii.gz"
    rating_layer = widget.scan.layer
    assert rating_layer is not None and rating_layer in viewer.layers
    viewer.layers.selection.active = rating_layer
    assert widget.scope.volume_name == "train_1_a_1.nii.gz"
    assert {item.volume_name for item in widget.items} == {"train_1_a_1.nii.gz"}


def test_a_scan_without_pairs_says_so_and_disables_rating(rating_widget):  # noqa: F811
    import numpy as np

    widget = rating_widget("alice")
    widget.viewer.add_image(np.zeros((8, 16, 16), np.float32), name="other patient")
    widget.scope.setChecked(True)
    assert widget.items == [] and widget.qa is None
    assert "None of the 4 pairs" in widget.pair.header.text() and "other patient" in widget.pair.header.text()
    assert not widget.submit_button.isEnabled()
    widget.scope.setChecked(False)
    assert len(widget.items) == 4 and widget.submit_button.isEnabled()
