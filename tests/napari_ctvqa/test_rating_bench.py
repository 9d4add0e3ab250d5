"""The rater's bench on a real synthetic cohort (volumes, reports, labels, finding boxes imported
through the CLI's own functions): 20 pairs rated with keys only, each opening at a slice through
its finding where the phantom's ground truth knows where it is; window keys, next unrated,
returning after an edit, decoded entities, blind repeats."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from qtpy.QtCore import Qt
from qtpy.QtGui import QTextDocument

from annotation.importers.ctrate import import_ctrate
from annotation.importers.finding_boxes import import_finding_boxes
from annotation.qa_templates import CT_RATE_LABELS
from annotation.store import Store
from annotation.synth import write_cohort
from model.ct.windows import window_limits
from napari_ctvqa.widgets.rating import LAYER_NAME, RatingWidget


@pytest.fixture(scope="module")
def cohort_db(tmp_path_factory) -> Path:
    """4 phantom patients (32x96x96), imported with their finding boxes; ann has 20 pairs with a
    10 % repeat share, checker has every pair."""
    root = tmp_path_factory.mktemp("bench")
    cohort = root / "cohort"
    write_cohort(cohort, 4, seed=2, size=(32, 96, 96))
    store = Store.create(f"sqlite:///{root / 'ctvqa.sqlite'}")
    import_ctrate(store.db, cohort / "reports.csv", cohort / "labels.csv", cohort / "metadata.csv",
                  volumes=cohort / "volumes")
    import_finding_boxes(store, cohort / "ground_truth.json")
    store.assign(["ann"], per_annotator=20, overlap=0, seed=4, repeat=0.1)
    store.assign(["checker"], per_annotator=sum(store.count_qa_pairs().values()), overlap=0, seed=0)
    store.close()
    return root


@pytest.fixture
def bench(cohort_db: Path, tmp_path: Path, make_napari_viewer, qtbot):
    for part in cohort_db.glob("ctvqa.sqlite*"):
        shutil.copy(part, tmp_path / part.name)
    store = Store(f"sqlite:///{tmp_path / 'ctvqa.sqlite'}")
    truth = json.loads((cohort_db / "cohort" / "ground_truth.json").read_text())["volumes"]
    made = []

    def make(annotator: str) -> RatingWidget:
        widget = RatingWidget(make_napari_viewer(), store=store, annotator=annotator)
        qtbot.addWidget(widget)
        made.append(widget)
        return widget

    yield make, store, truth
    for widget in made:
        widget.close()
    store.close()


def finding_slices(qa, truth) -> set[int] | None:
    """Ground truth, independent of the view's word tables: the z slices of the lesions whose
    CT-RATE label the pair's text names verbatim; None when it names none or the scan has none."""
    text = f"{qa.question} {qa.answer}".lower()
    labels = [label for label in CT_RATE_LABELS if label.lower() in text]
    lesions = [l for l in truth[qa.volume_name]["lesions"] if l["label"] in labels]
    if not lesions:
        return None
    return {z for l in lesions for z in range(l["bbox_voxel"][0], l["bbox_voxel"][3])}


def opened_slice(widget) -> int:
    return int(widget.viewer.dims.current_step[0])


def test_twenty_pairs_with_keys_only_open_at_their_findings(bench, qtbot):
    make, store, truth = bench
    widget = make("ann")
    assert len(widget.items) == 22 and sum(item.repeat for item in widget.items) == 2
    located = hits = 0
    for _ in range(20):
        slices = finding_slices(widget.qa, truth)
        if slices is not None:
            located += 1
            hits += opened_slice(widget) in slices
        for key in (Qt.Key.Key_4, Qt.Key.Key_3, Qt.Key.Key_5, Qt.Key.Key_4, Qt.Key.Key_4, Qt.Key.Key_Return):
            qtbot.keyClick(widget, key)
    assert store.progress("ann").done == 20
    assert len(store.ratings_frame()) + len(store.ratings_frame(repeats=True)) == 20
    assert located >= 3 and hits >= 0.9 * located, (hits, located)


def test_every_located_finding_of_the_cohort_opens_on_its_slice(bench):
    make, store, truth = bench
    widget = make("checker")
    located = hits = effusions = 0
    for index, item in enumerate(widget.items):
        qa = store.qa_pair(item.qa_id)
        slices = finding_slices(qa, truth)
        if slices is None:
            continue
        widget.show_index(index)
        located += 1
        hits += opened_slice(widget) in slices
        if "pleural effusion" in qa.question.lower():  # fluid is judged in the mediastinum window
            effusions += 1
            assert widget.viewer.layers[LAYER_NAME].contrast_limits == pytest.approx(window_limits("mediastinum"))
    assert located >= 20 and effusions >= 1
    assert hits >= 0.9 * located, (hits, located)


def test_window_keys_next_unrated_and_return_after_an_edit(bench, qtbot):
    make, store, _ = bench
    widget = make("ann")
    layer = widget.viewer.layers[LAYER_NAME]
    for key, window in ((Qt.Key.Key_L, "lung"), (Qt.Key.Key_B, "bone"), (Qt.Key.Key_M, "mediastinum")):
        qtbot.keyClick(widget, key)
        assert layer.contrast_limits == pytest.approx(window_limits(window))
    qtbot.keyClick(widget, Qt.Key.Key_A)
    assert layer.contrast_limits == pytest.approx(widget.scan.shown.value_range)  # all of the data
    rate = (Qt.Key.Key_3,) * 5 + (Qt.Key.Key_Return,)
    for _ in range(3):
        for key in rate:
            qtbot.keyClick(widget, key)
    assert widget.index == 3
    for _ in range(2):
        qtbot.keyClick(widget, Qt.Key.Key_Left)
    assert widget.index == 1
    for key in (Qt.Key.Key_1,) * 5 + (Qt.Key.Key_Return,):  # change pair 2, Enter: back to pair 4
        qtbot.keyClick(widget, key)
    assert widget.index == 3 and "where you were" in widget.message.text()
    assert store.rating("ann", widget.items[1].qa_id).scores["linguistic_quality"] == 1
    qtbot.keyClick(widget, Qt.Key.Key_Right)
    qtbot.keyClick(widget, Qt.Key.Key_S)
    qtbot.keyClicks(widget.reason, "no scan detail")
    qtbot.keyClick(widget.reason, Qt.Key.Key_Return)  # skip pair 5 -> pair 6
    widget.show_index(0)
    qtbot.keyClick(widget, Qt.Key.Key_U)  # next unrated after pair 1: pair 4 (2, 3 rated)
    assert widget.index == 3 and widget.items[3].status == "todo"


def test_repeat_is_blind_and_entities_are_decoded(bench, qtbot):
    make, store, _ = bench
    widget = make("ann")
    repeat_at = next(i for i, item in enumerate(widget.items) if item.repeat)
    first_at = next(i for i, item in enumerate(widget.items) if item.qa_id == widget.items[repeat_at].qa_id)
    widget.show_index(first_at)
    for key in (Qt.Key.Key_5,) * 5 + (Qt.Key.Key_Return,):
        qtbot.keyClick(widget, key)
    widget.show_index(repeat_at)
    assert widget.scores.missing() and "not rated yet" in widget.pair.header.text()  # nothing of the first showing
    qa = widget.qa
    store.db.engine.dispose()
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE qa_pairs SET question = 'Heart &amp; aorta: &quot;normal&quot;?' "
                             f"WHERE id = {qa.id}")
    widget.show_index(repeat_at)
    shown = QTextDocument()
    shown.setHtml(widget.pair.question.text())  # what the rater reads, not the label's markup
    assert shown.toPlainText() == 'Q: Heart & aorta: "normal"?'

