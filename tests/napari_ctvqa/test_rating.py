"""Rating widget acceptance (issue 8): keyboard-only rating, refusal, edits with history, blind
queues, skip/flag with reasons, prefetch and in-place layer swap. A small store is built directly
with Store methods and tiny volumes so the tests do not wait on generators."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from annotation.rubric import RUBRIC, SCORE_KEYS
from annotation.store import Store
from model.ct.volume import CTVolume, canonical_affine
from model.ct.io import write_ct
from qtpy.QtCore import Qt

from napari_ctvqa.widgets.rating import LAYER_NAME, RatingWidget

REPORT_FINDINGS = "A 9 mm solid nodule in the right upper lobe. Calcified plaques in the aortic wall."
PAIRS = (
    # (volume index, task, question, answer, choices, answer_choice)
    (0, "image_observation", "Where is the solid nodule located?", "In the right upper lobe.", None, None),
    (0, "existence_detection", "Is there arterial wall calcification in this scan?", "Yes",
     ("Yes", "No", "-", "-"), "A"),
    (1, "anomaly_detection", "What abnormality is seen in the heart?", "Mild cardiomegaly.", None, None),
    (1, "medical_computation", "What is the size of the nodule?", "9 mm.", None, None),
)


def build_store(tmp_path: Path) -> Store:
    """Two tiny scans (different heights), a report, four pairs over four tasks, alice and bob
    both assigned all four."""
    store = Store.create(f"sqlite:///{tmp_path / 'ctvqa.sqlite'}")
    scan_ids = []
    for i, size in enumerate(((12, 24, 20), (16, 24, 20))):
        array = np.full(size, -1000.0, dtype=np.float32)
        array[:, 4:-4, 4:-4] = np.linspace(-900, 900, size[0], dtype=np.float32)[:, None, None]
        array[:, 4:-4, 4:8] = -850.0  # lung from bottom to top, so named places are heights of the lungs
        volume = CTVolume(array, (2.0, 1.0, 1.0), canonical_affine((2.0, 1.0, 1.0)), {})
        name = f"train_{i + 1}_a_1.nii.gz"
        path = write_ct(volume, tmp_path / name)
        scan_ids.append(store.add_scan(name, path).id)

    store.set_report(scan_ids[0], findings=REPORT_FINDINGS, impressions="Lung nodule.")
    for vol, task, question, answer, choices, letter in PAIRS:
        store.add_qa_pair(scan_ids[vol], task, question, answer, choices=choices, answer_choice=letter,
                          source="template")
    store.assign(["alice", "bob"], per_annotator=len(PAIRS), overlap=len(PAIRS), seed=1)
    return store


@pytest.fixture(scope="session")
def rating_template(tmp_path_factory) -> Path:
    """`build_store` once per run (migrations and volume writing take a second); tests copy it."""
    folder = tmp_path_factory.mktemp("rating-template")
    build_store(folder).close()
    return folder


def copy_store(template: Path, tmp_path: Path) -> Store:
    """A private copy of the template database (the volumes are shared, read-only)."""
    for part in template.glob("ctvqa.sqlite*"):
        shutil.copy(part, tmp_path / part.name)
    return Store(f"sqlite:///{tmp_path / 'ctvqa.sqlite'}")


@pytest.fixture
def store(rating_template: Path, tmp_path: Path) -> Store:
    store = copy_store(rating_template, tmp_path)
    yield store
    store.close()


@pytest.fixture
def rating_widget(make_napari_viewer, qtbot, store):
    made = []

    def make(annotator: str, **kwargs) -> RatingWidget:
        viewer = make_napari_viewer()
        widget = RatingWidget(viewer, store=store, annotator=annotator, **kwargs)
        qtbot.addWidget(widget)
        made.append(widget)
        return widget

    yield make
    for widget in made:
        widget.close()


def type_keys(qtbot, widget, *keys) -> None:
    for key in keys:
        qtbot.keyClick(widget, key)


def test_keyboard_only_rating_is_stored(rating_widget, store, qtbot):
    widget = rating_widget("alice")
    first = widget.qa.id
    # 4 3 5 2 1 score the five rows in turn; C unticks "consistent"; N opens the note; Enter submits.
    type_keys(qtbot, widget, Qt.Key.Key_4, Qt.Key.Key_3, Qt.Key.Key_5, Qt.Key.Key_2, Qt.Key.Key_1, Qt.Key.Key_C,
              Qt.Key.Key_N)
    qtbot.keyClicks(widget.note, "size not in report")
    type_keys(qtbot, widget.note, Qt.Key.Key_Return)  # leaves the note, does not submit
    assert store.rating("alice", first) is None
    assert not widget.reason_row.isVisibleTo(widget)  # the "s" and "n" typed in the note stayed text
    type_keys(qtbot, widget, Qt.Key.Key_Return)
    stored = store.rating("alice", first)
    assert stored is not None and stored.status == "rated"
    assert [stored.scores[k] for k in SCORE_KEYS] == [4, 3, 5, 2, 1]
    assert stored.consistent is False
    assert stored.note == "size not in report"
    assert stored.seconds_spent > 0
    assert widget.index == 1 and widget.qa.id != first  # advanced to the next pair
    assert widget.scores.missing() == list(SCORE_KEYS)  # and shows it unscored


def test_tab_and_arrows_move_between_dimensions(rating_widget, qtbot):
    widget = rating_widget("alice")
    type_keys(qtbot, widget, Qt.Key.Key_Tab, Qt.Key.Key_Tab, Qt.Key.Key_5, Qt.Key.Key_Up, Qt.Key.Key_Up, Qt.Key.Key_2)
    scores = widget.scores.scores()
    assert scores["answer_appropriateness"] == 5
    assert scores["specificity_clarity"] == 2
    assert scores["visual_verifiability"] is None


def test_submit_refused_with_a_missing_score(rating_widget, store, qtbot):
    widget = rating_widget("alice")
    qa_id = widget.qa.id
    type_keys(qtbot, widget, Qt.Key.Key_5, Qt.Key.Key_5, Qt.Key.Key_Tab, Qt.Key.Key_5, Qt.Key.Key_5,
              Qt.Key.Key_Return)
    assert store.rating("alice", qa_id) is None
    assert widget.qa.id == qa_id
    assert "Answer Appropriateness" in widget.message.text()
    assert widget.scores.focused == 2  # the highlight jumps to the missing dimension


def test_going_back_edits_the_same_rating_and_keeps_history(rating_widget, store, qtbot):
    widget = rating_widget("alice")
    qa_id = widget.qa.id
    type_keys(qtbot, widget, *[Qt.Key.Key_3] * 5, Qt.Key.Key_Return)
    first = store.rating("alice", qa_id)
    type_keys(qtbot, widget, Qt.Key.Key_Backspace)
    assert widget.qa.id == qa_id
    assert widget.scores.scores() == dict.fromkeys(SCORE_KEYS, 3)  # previous values shown
    type_keys(qtbot, widget, Qt.Key.Key_Tab, Qt.Key.Key_Tab, Qt.Key.Key_Tab, Qt.Key.Key_Tab, Qt.Key.Key_1,
              Qt.Key.Key_Return)
    edited = store.rating("alice", qa_id)
    assert edited.id == first.id  # the same row, updated
    assert edited.scores["linguistic_quality"] == 1
    history = store.rating_history("alice", qa_id)
    assert len(history) == 1 and history[0].scores == dict.fromkeys(SCORE_KEYS, 3)
    type_keys(qtbot, widget, Qt.Key.Key_Left, Qt.Key.Key_Right)
    assert widget.index == 1


def test_annotator_b_never_sees_a_scores(rating_widget, store, qtbot):
    alice = rating_widget("alice")
    rated = alice.qa.id
    type_keys(qtbot, alice, *[Qt.Key.Key_5] * 5, Qt.Key.Key_Return)
    bob = rating_widget("bob")
    assert all(item.status == "todo" for item in bob.items)
    position = next(i for i, item in enumerate(bob.items) if item.qa_id == rated)
    bob.show_index(position)
    assert bob.qa.id == rated
    assert bob.scores.missing() == list(SCORE_KEYS)
    assert "not rated yet" in bob.pair.header.text()
    assert bob.progress.value() == 0


def test_skip_and_flag_store_their_reason(rating_widget, store, qtbot):
    widget = rating_widget("alice")
    skipped = widget.qa.id
    type_keys(qtbot, widget, Qt.Key.Key_S)
    assert widget.reason_row.isVisibleTo(widget)
    type_keys(qtbot, widget.reason, Qt.Key.Key_Return)  # an empty reason is refused
    assert store.rating("alice", skipped) is None
    qtbot.keyClicks(widget.reason, "scan does not load")  # letters type, they do not skip or flag
    type_keys(qtbot, widget.reason, Qt.Key.Key_Return)
    flagged = widget.qa.id
    assert flagged != skipped
    widget.flag_button.click()
    qtbot.keyClicks(widget.reason, "answer contradicts report")
    widget.reason.done.emit()
    assert store.rating("alice", skipped).status == "skipped"
    assert store.rating("alice", skipped).reason == "scan does not load"
    assert store.rating("alice", flagged).status == "flagged"
    assert store.rating("alice", flagged).reason == "answer contradicts report"
    assert store.progress("alice").done == 2


def test_pair_text_choices_and_report_are_shown(rating_widget, store):
    widget = rating_widget("alice")
    closed = next(i for i, item in enumerate(widget.items) if item.task == "existence_detection")
    widget.show_index(closed)
    assert "arterial wall calcification" in widget.pair.question.text()
    assert "A. Yes" in widget.pair.choices.text() and "✓" in widget.pair.choices.text()
    assert "Calcified plaques" in widget.pair.report.toPlainText()
    assert "bone window" in widget.pair.view_hint.text()  # "calcification" -> bone window


def test_rubric_is_beside_the_pair_on_a_key_and_on_the_tooltips(rating_widget, qtbot):
    widget = rating_widget("alice")
    widget.show()
    assert widget.rubric.isHidden()
    pair_height = widget.pair.height()
    qtbot.keyClick(widget, Qt.Key.Key_R)
    assert widget.rubric.isVisible()
    qtbot.wait(10)
    assert widget.rubric.geometry().left() >= widget.pair.mapTo(widget, widget.pair.rect().topRight()).x()
    assert widget.pair.height() >= pair_height  # beside the pair, not squeezing it
    qtbot.keyClick(widget, Qt.Key.Key_R)
    assert widget.rubric.isHidden()
    text = widget.rubric.browser.toPlainText()
    for dim in RUBRIC.dimensions:
        assert dim.label in text and dim.anchors[3] in text
    assert all(example.question in text for example in RUBRIC.examples)
    tip = widget.scores.rows[0].label.toolTip()
    assert "Visual Verifiability" in tip and RUBRIC.dimensions[0].anchors[5] in tip


def test_layer_is_reused_and_opens_at_the_named_location(rating_widget, store):
    widget = rating_widget("alice")
    viewer = widget.viewer
    by_task = {item.task: i for i, item in enumerate(widget.items)}
    widget.show_index(by_task["image_observation"])  # "upper lobe" + "nodule" -> upper slices, lung window
    layer = viewer.layers[LAYER_NAME]
    assert layer.contrast_limits == pytest.approx([-1350.0, 150.0])
    n = layer.data.shape[0]
    assert viewer.dims.current_step[0] >= 0.7 * (n - 1)
    widget.show_index(by_task["medical_computation"])  # the other, taller scan
    assert viewer.layers[LAYER_NAME] is layer and len(viewer.layers) == 1
    assert layer.data.shape[0] == n + 4
    assert layer.contrast_limits == pytest.approx([-1350.0, 150.0])  # "nodule" -> lung window


def test_an_unreadable_scan_is_reported_and_the_old_one_hidden(rating_widget, store, tmp_path):
    widget = rating_widget("alice")
    layer = widget.viewer.layers[LAYER_NAME]
    broken = next(i for i, item in enumerate(widget.items) if item.task == "medical_computation")
    store.set_scan_path(store.qa_pair(widget.items[broken].qa_id).scan_id, tmp_path / "gone.nii.gz")
    widget.show_index(broken)
    assert "Scan not shown" in widget.pair.view_hint.text() and "gone.nii.gz" in widget.pair.view_hint.text()
    assert not layer.visible  # not the previous pair's scan under this question
    assert "size of the nodule" in widget.pair.question.text()  # still rateable from the text
    widget.show_index(next(i for i, item in enumerate(widget.items) if item.task == "image_observation"))
    assert layer.visible


def test_next_scan_is_read_in_the_background(rating_widget, store, qtbot):
    widget = rating_widget("alice")
    nxt = store.qa_pair(widget.items[widget.index + 1].qa_id)
    qtbot.waitUntil(lambda: widget._prefetcher.is_ready(nxt.path), timeout=10000)  # nobody asked yet
    widget.go_forward()
    assert widget.viewer.layers[LAYER_NAME].metadata["path"] == str(nxt.path)


def test_start_from_the_name_field(make_napari_viewer, qtbot, store):
    widget = RatingWidget(make_napari_viewer(), store=store)
    qtbot.addWidget(widget)
    assert widget.qa is None
    qtbot.keyClick(widget, Qt.Key.Key_5)  # no pair yet: keys do nothing
    assert widget.picker.known == ["alice", "bob"]  # picked from the raters the database knows
    qtbot.keyClicks(widget.name_edit, "carol")
    qtbot.keyClick(widget.name_edit, Qt.Key.Key_Return)
    assert widget.annotator is None and widget.picker.confirm.isVisibleTo(widget)  # a new name: confirm first
    assert "carol" not in {n for n, _ in store.raters()}
    widget.picker._create()
    assert widget.annotator == "carol" and widget.qa is None  # known now, but nothing assigned
    assert "No pairs assigned" in widget.pair.header.text()
    widget.close()


def test_keys_the_panel_does_not_use_still_reach_napari(rating_widget, qtbot):
    widget = rating_widget("alice")
    widget.viewer.window.add_dock_widget(widget, name="Rate QA pairs", area="right")
    layer = widget.viewer.layers[LAYER_NAME]
    widget.viewer.layers.selection.active = layer
    assert layer.visible
    qtbot.keyClick(widget, Qt.Key.Key_V)  # napari: toggle the selected layer's visibility
    assert not layer.visible
    qtbot.keyClick(widget, Qt.Key.Key_Right)  # ours: next pair (napari would step a slice)
    assert widget.index == 1


def test_a_foreign_database_is_a_message(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE patients_of_another_tool (id INTEGER)")
    monkeypatch.setenv("CTVQA_DB", f"sqlite:///{foreign}")
    widget = RatingWidget(make_napari_viewer(), annotator="alice")  # opens $CTVQA_DB
    qtbot.addWidget(widget)
    assert widget.qa is None and widget.annotator is None
    assert "Cannot open the rating queue" in widget.message.text()
    assert "not a napari-ctvqa schema" in widget.message.text()
    widget.close()
