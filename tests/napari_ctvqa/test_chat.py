"""Chat panel acceptance (issue 7): streamed answers, cancel, closed questions with scores, boxes
in physical coordinates, the rating queue, persistence, the model's view, and GUI responsiveness.

One model process (the tiny random VLM of tests/model) serves every test of this module, so the
spawn and import cost is paid once; each test still builds its own viewer, store and panel.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from annotation.store import Store
from model.ct.volume import CTVolume, canonical_affine
from model.ct.io import write_ct
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QApplication

from napari_ctvqa.vlm_worker import VLMWorker
from napari_ctvqa.widgets.chat import ChatWidget

SPACING = (5.0, 1.4, 1.2)
TRANSLATE = (10.0, -20.0, 30.0)
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def chat_worker(qapp):
    worker = VLMWorker("process")
    yield worker
    worker.shutdown()
    assert not worker.alive


def write_volume(tmp_path: Path, name: str = "train_7_b_1.nii.gz") -> Path:
    array = np.full((20, 40, 36), -1000.0, dtype=np.float32)
    array[2:18, 6:34, 5:31] = 40.0
    array[8:12, 12:20, 10:16] = 300.0
    volume = CTVolume(array, SPACING, canonical_affine(SPACING), {})
    return write_ct(volume, tmp_path / name)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.create(f"sqlite:///{tmp_path / 'chat.sqlite'}")
    yield store
    store.close()


@pytest.fixture
def viewer_with_ct(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = write_volume(tmp_path)
    from model.ct.io import read_ct

    layer = viewer.add_image(read_ct(path).array, name="train_7_b_1", scale=SPACING, translate=TRANSLATE,
                             metadata={"path": str(path), "ct_meta": {}})
    return viewer, layer


def make_chat(viewer, qtbot, store, worker, model_dir) -> ChatWidget:
    widget = ChatWidget(viewer, store=store, worker=worker, model_path=str(model_dir))
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: widget.model_ready or bool(widget.message.text()), timeout=TIMEOUT_MS)
    assert widget.model_ready, widget.message.text()
    return widget


@pytest.fixture
def chat(viewer_with_ct, qtbot, store, chat_worker, tiny_vlm_dir):
    viewer, _ = viewer_with_ct
    widget = make_chat(viewer, qtbot, store, chat_worker, tiny_vlm_dir)
    yield widget
    widget.close()


def wait_done(qtbot, view) -> None:
    qtbot.waitUntil(lambda: view.state.status in ("done", "cancelled", "failed"), timeout=TIMEOUT_MS)


def test_streamed_answer_equals_the_models_answer(chat, qtbot, tiny_vlm_dir, viewer_with_ct):
    updates: list[str] = []
    chat.worker.piece.connect(lambda _id, piece: updates.append(piece))
    view = chat.ask("What abnormality is seen in this CT scan?")
    assert view is not None and view.state.status in ("waiting", "encoding", "streaming")
    assert not chat.ask_button.isEnabled() and chat.cancel_button.isEnabled()
    wait_done(qtbot, view)
    assert view.state.status == "done", view.state.error
    assert len(updates) >= 2, f"expected a streamed answer, got {len(updates)} update(s)"

    from model.ct.io import read_ct
    from model.inference.loading import load_vlm

    _, layer = viewer_with_ct
    expected = load_vlm(tiny_vlm_dir).answer(read_ct(layer.metadata["path"]), "What abnormality is seen in this CT scan?",
                                             max_new_tokens=chat.max_new_tokens)
    assert view.state.text == expected.text
    assert "".join(updates).strip() == expected.text
    assert view.answer_label.text().replace("\u200b", "") == expected.text
    assert chat.ask_button.isEnabled()

    follow_up = chat.ask("Is the heart enlarged?")
    wait_done(qtbot, follow_up)
    assert follow_up.state.status == "done"
    stored = chat.store.chat_turns()
    assert [t.question for t in stored] == ["What abnormality is seen in this CT scan?", "Is the heart enlarged?"]
    assert stored[0].answer == expected.text and stored[0].model_version == chat.model_name
    assert stored[0].n_tokens and stored[0].total_s > 0 and stored[0].latency_first_token_s is not None
    assert len({t.conversation_id for t in stored}) == 1


def test_cancel_stops_the_answer_and_marks_the_turn(chat, qtbot):
    chat.max_new_tokens = 200
    full = chat.ask("Describe the findings in the lungs.")
    wait_done(qtbot, full)
    assert full.state.status == "done"

    view = chat.ask("Describe the findings in the lungs.")
    qtbot.waitUntil(lambda: bool(view.state.text), timeout=TIMEOUT_MS)
    chat.cancel_button.click()
    wait_done(qtbot, view)
    assert view.state.status == "cancelled"
    assert "cancelled" in view.status_label.text()
    assert len(view.state.text) < len(full.state.text)
    assert full.state.text.startswith(view.state.text.strip())
    assert not view.send_button.isVisible()
    assert [t.question for t in chat.store.chat_turns()] == ["Describe the findings in the lungs."]
    assert chat.ask_button.isEnabled() and not chat.cancel_button.isEnabled()


def test_closed_template_question_shows_letter_and_score_bars(chat, qtbot):
    chat.picker.set_task("existence_detection", "Lung nodule")
    question = chat.question_edit.toPlainText()
    assert "lung nodule" in question and "A. Yes" in chat.choices_label.text()
    view = chat.ask()
    wait_done(qtbot, view)
    state = view.state
    assert state.status == "done" and state.choices == ("Yes", "No")
    assert state.choice in ("A", "B")
    assert set(state.choice_scores) == {"A", "B"}
    assert sum(state.choice_scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert view.score_bars is not None and not view.score_bars.isHidden()
    shown = view.score_bars.values()
    assert sum(shown.values()) == pytest.approx(1.0, abs=2e-3)
    assert max(shown, key=shown.get) == state.choice
    assert f"{state.choice}." in view.choice_label.text()
    assert chat.store.chat_turns()[0].choice == state.choice


def test_box_answer_draws_a_shapes_layer_at_the_right_place(chat, qtbot, viewer_with_ct):
    viewer, ct = viewer_with_ct
    view = chat.ask("Where is the dense lesion?")
    wait_done(qtbot, view)
    box = (8.0, 12.0, 10.0, 12.0, 20.0, 16.0)  # z1, y1, x1, z2, y2, x2 voxel edges of the CT
    view.finish({"text": "In the centre.", "box": box, "total_s": 0.1}, chat.model_name)
    assert not view.box_row.isHidden()
    shapes = chat.show_box(view)
    assert tuple(shapes.scale) == tuple(ct.scale) and tuple(shapes.translate) == tuple(ct.translate)
    world = np.array([shapes.data_to_world(v) for rect in shapes.data for v in rect])
    z_slices = sorted(set(np.round(world[:, 0], 6)))
    assert z_slices == [TRANSLATE[0] + k * SPACING[0] for k in (8, 9, 10, 11)]
    y_edges = [TRANSLATE[1] + (box[1] - 0.5) * SPACING[1], TRANSLATE[1] + (box[4] - 0.5) * SPACING[1]]
    x_edges = [TRANSLATE[2] + (box[2] - 0.5) * SPACING[2], TRANSLATE[2] + (box[5] - 0.5) * SPACING[2]]
    assert sorted(set(np.round(world[:, 1], 6))) == pytest.approx(y_edges)
    assert sorted(set(np.round(world[:, 2], 6))) == pytest.approx(x_edges)

    viewer.dims.set_point(0, TRANSLATE[0])
    view.jump_button.click()
    centre_z = TRANSLATE[0] + ((box[0] + box[3]) / 2 - 0.5) * SPACING[0]
    assert abs(viewer.dims.point[0] - centre_z) <= SPACING[0] / 2 + 1e-6
    assert len([layer for layer in viewer.layers if layer.name.endswith("box Q1")]) == 1


def test_turn_goes_to_the_rating_queue_and_survives_a_restart(chat, qtbot, viewer_with_ct, store, chat_worker,
                                                              tiny_vlm_dir):
    chat.picker.set_task("existence_detection", "Pleural effusion")
    question = chat.question_edit.toPlainText()
    view = chat.ask()
    wait_done(qtbot, view)
    assert view.send_button.isEnabled(), view.flag_label.text()
    view.send_button.click()
    pairs = store.qa_pairs(source="chat")
    chosen = {"A": "Yes", "B": "No"}[view.state.choice]
    assert [(p.question, p.answer, p.answer_choice, p.task, p.volume_name) for p in pairs] == [
        (question, chosen, view.state.choice, "existence_detection", "train_7_b_1.nii.gz")]
    assert tuple(pairs[0].choices) == ("Yes", "No", "-", "-")
    assert not view.send_button.isEnabled() and str(pairs[0].id) in view.send_button.text()

    chat.close()
    viewer, _ = viewer_with_ct
    reopened = make_chat(viewer, qtbot, store, chat_worker, tiny_vlm_dir)
    try:
        assert [v.state.question for v in reopened.turns] == [question]
        restored = reopened.turns[0].state
        assert (restored.text, restored.task, restored.choices) == (view.state.text, "existence_detection", ("Yes", "No"))
        assert restored.encoding_s == pytest.approx(view.state.encoding_s)
        assert question in reopened.conversation_markdown()
    finally:
        reopened.close()


def test_an_empty_looping_or_boxless_answer_is_flagged_and_cannot_be_sent(viewer_with_ct, qtbot, store, chat_worker,
                                                                 tiny_vlm_dir):
    viewer, layer = viewer_with_ct
    scan = store.add_scan("train_7_b_1.nii.gz", layer.metadata["path"])
    for answer in ("", "lung lung lung lung lung"):
        store.add_chat_turn(scan.id, "What is seen?", answer, conversation_id="c")
    # a box question answered with a cut box (what the default model wrote to another phrasing)
    store.add_chat_turn(scan.id, "Where is the pleural effusion? Give the bounding box.",
                        "170, 0.21, 0.13, 0.42, 0.80, 0.78]", conversation_id="c")
    widget = make_chat(viewer, qtbot, store, chat_worker, tiny_vlm_dir)
    try:
        assert len(widget.turns) == 3
        for view in widget.turns:
            assert not view.send_button.isEnabled()
            assert not view.flag_label.isHidden() and "cannot be sent" in view.flag_label.text()
            widget.send_to_queue(view)
            assert "Not sent to the rating queue" in widget.message.text()
        assert store.qa_pairs() == []
        assert "Flagged: the answer is empty" in widget.conversation_markdown()
        assert "no box could be read" in widget.turns[2].flag_label.text()
    finally:
        widget.close()


def test_copy_conversation_puts_markdown_on_the_clipboard(chat, qtbot):
    view = chat.ask("Is the aorta calcified?")
    wait_done(qtbot, view)
    chat.copy_button.click()
    text = QApplication.clipboard().text()
    assert text.startswith("# CT VQA conversation: train_7_b_1.nii.gz")
    assert "## Q1. Is the aorta calcified?" in text and "**Answer:**" in text


def test_layer_choice_follows_the_viewer(chat, viewer_with_ct):
    viewer, ct = viewer_with_ct
    assert chat.ct_layer is ct and chat.layer_box.count() == 1
    other = viewer.add_image(np.zeros((4, 8, 8), dtype=np.float32), name="other")
    assert chat.layer_box.count() == 2 and chat.ct_layer is other  # the scan just opened (issue 20)
    chat.layer_box.setCurrentIndex(0)
    assert chat.ct_layer is ct
    viewer.layers.remove(ct)
    assert chat.layer_box.count() == 1 and chat.ct_layer is other
    viewer.layers.remove(other)
    assert chat.layer_box.count() == 0 and chat.ct_layer is None
    assert chat.ask("Anything?") is None and "Open a CT" in chat.message.text()


def test_model_input_overlays_the_ct(chat, qtbot, viewer_with_ct):
    viewer, ct = viewer_with_ct
    chat.model_input_check.setChecked(True)
    name = f"model input: {ct.name}"
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=TIMEOUT_MS)
    overlay = viewer.layers[name]
    assert overlay.data.shape == (16, 32, 32) and overlay.data.dtype == np.uint8
    # the input covers the CT's body crop: its first and last voxel edges lie inside the CT's extent
    lo = np.asarray(overlay.data_to_world(np.full(3, -0.5)))
    hi = np.asarray(overlay.data_to_world(np.array(overlay.data.shape) - 0.5))
    ct_lo = np.asarray(ct.data_to_world(np.full(3, -0.5)))
    ct_hi = np.asarray(ct.data_to_world(np.array(ct.data.shape) - 0.5))
    assert np.all(lo >= ct_lo - 1e-6) and np.all(hi <= ct_hi + 1e-6)
    # body box of the test volume is voxels z 2-18, y 6-34, x 5-31 (grown by the box stride)
    assert lo[1] <= TRANSLATE[1] + 5.5 * SPACING[1] and hi[1] >= TRANSLATE[1] + 33.5 * SPACING[1]
    chat.model_input_check.setChecked(False)
    assert name not in viewer.layers


def test_gui_keeps_processing_events_while_generating(chat, qtbot):
    chat.max_new_tokens = 200
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    view = chat.ask("Describe the mediastinum.")
    last[0] = time.perf_counter()
    timer.start()
    wait_done(qtbot, view)
    timer.stop()
    print(f"\nlongest GUI timer gap while generating: {1000 * max(gaps, default=0):.1f} ms over {len(gaps)} ticks")
    assert view.state.status == "done"
    assert len(gaps) > 0


def test_a_model_that_cannot_load_is_a_message(viewer_with_ct, qtbot, store, chat_worker, tmp_path):
    viewer, _ = viewer_with_ct
    widget = ChatWidget(viewer, store=store, worker=chat_worker, model_path=str(tmp_path / "no-such-model"))
    qtbot.addWidget(widget)
    try:
        qtbot.waitUntil(lambda: bool(widget.message.text()), timeout=TIMEOUT_MS)
        assert "could not be loaded" in widget.message.text() and "no-such-model" in widget.message.text()
        assert "Traceback" not in widget.message.text()
        assert not widget.model_ready and not widget.ask_button.isEnabled()
    finally:
        widget.close()


def test_panel_owns_its_model_process_and_survives_its_crash(viewer_with_ct, qtbot, store, tiny_vlm_dir):
    viewer, _ = viewer_with_ct
    widget = make_chat(viewer, qtbot, store, None, tiny_vlm_dir)
    try:
        crashed = widget.worker._handle
        crashed.kill()  # as the OOM killer would
        qtbot.waitUntil(lambda: "stopped unexpectedly" in widget.message.text(), timeout=TIMEOUT_MS)
        assert not widget.model_ready and not widget.ask_button.isEnabled()
        widget.load_model(str(tiny_vlm_dir), None)  # choosing the model again starts a new process
        qtbot.waitUntil(lambda: widget.model_ready, timeout=TIMEOUT_MS)
        process = widget.worker._handle
        assert process is not crashed and process.is_alive()
    finally:
        widget.close()
    assert not process.is_alive()


def test_real_ct_opened_by_the_reader_is_answered_and_overlaid(make_napari_viewer, qtbot, store, chat_worker,
                                                                tiny_vlm_dir, shared_data):
    from napari_ctvqa._reader import read_ct_layers

    viewer = make_napari_viewer()
    data, kwargs, _ = read_ct_layers(shared_data / "ct" / "totalsegmentator_example_ct.nii.gz")[0]
    ct = viewer.add_image(data, **kwargs)
    widget = make_chat(viewer, qtbot, store, chat_worker, tiny_vlm_dir)
    try:
        widget.question_edit.setPlainText("Is there a pleural effusion?")
        qtbot.keyClick(widget.question_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        view = widget.turns[-1]
        wait_done(qtbot, view)
        assert view.state.status == "done" and view.state.text
        assert store.scan_by_volume("totalsegmentator_example_ct.nii.gz") is not None
        widget.model_input_check.setChecked(True)
        qtbot.waitUntil(lambda: f"model input: {ct.name}" in viewer.layers, timeout=TIMEOUT_MS)
        overlay = viewer.layers[f"model input: {ct.name}"]
        lo = np.asarray(overlay.data_to_world(np.full(3, -0.5)))
        hi = np.asarray(overlay.data_to_world(np.array(overlay.data.shape) - 0.5))
        ct_lo = np.asarray(ct.data_to_world(np.full(3, -0.5)))
        ct_hi = np.asarray(ct.data_to_world(np.array(ct.data.shape) - 0.5))
        assert np.all(np.minimum(lo, hi) >= np.minimum(ct_lo, ct_hi) - 1e-3)
        assert np.all(np.maximum(lo, hi) <= np.maximum(ct_lo, ct_hi) + 1e-3)
    finally:
        widget.close()


def test_longitudinal_template_takes_priors_from_the_patients_earlier_scan(chat, viewer_with_ct, store):
    from annotation.qa_templates import CT_RATE_LABELS
    from annotation.schema import Label

    viewer, ct = viewer_with_ct
    earlier = store.add_scan("train_7_a_1.nii.gz").id
    store.db.write(lambda session: session.add_all(
        Label(scan_id=earlier, name=name, value=int(name == "Emphysema")) for name in CT_RATE_LABELS))
    store.add_scan("train_7_b_1.nii.gz", ct.metadata["path"])
    viewer.add_image(ct.data, name="same scan again", scale=ct.scale, metadata=dict(ct.metadata))
    chat.layer_box.setCurrentIndex(chat.layer_box.findText("same scan again"))
    chat.picker.set_task("longitudinal_temporal_diagnosis", "Emphysema")
    assert chat.picker.priors_edit.text() == "1"
    assert "emphysema showed [1]" in chat.question_edit.toPlainText()
    assert "A. Refractory Lesion" in chat.choices_label.text()
