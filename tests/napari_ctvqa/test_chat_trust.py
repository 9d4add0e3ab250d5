"""The chat in the reading room (issue 20): it follows the scan on screen, and its answers can be trusted.

Real parts: napari viewers, the chat panel, a SQLite store and the tiny random VLM of tests/model
in the model process. A random model writes random words, which is what makes it a good test of
the closed-answer rule: its words rarely name the choice its scores pick, and the panel must show
the choice, not the words.
"""
from __future__ import annotations

import itertools

import numpy as np

from annotation.qa_templates import TEMPORAL_LABELS
from napari_ctvqa.widgets.chat.banner import TEXT as BANNER_TEXT
from napari_ctvqa.widgets.chat.ct_choice import scan_key
from tests.napari_ctvqa.test_chat import (  # noqa: F401 - fixtures
    TIMEOUT_MS,
    chat,
    chat_worker,
    make_chat,
    store,
    viewer_with_ct,
    wait_done,
    write_volume,
)


def add_scan(viewer, tmp_path, name: str):
    from model.ct.io import read_ct

    path = write_volume(tmp_path, f"{name}.nii.gz")
    volume = read_ct(path)
    return viewer.add_image(volume.array, name=name, scale=volume.spacing, metadata={"path": str(path), "ct_meta": {}})


def test_a_second_scan_opened_becomes_the_chats_scan_and_gets_the_turn(chat, qtbot, viewer_with_ct, tmp_path):
    viewer, first = viewer_with_ct
    assert chat.ct_layer is first
    second = add_scan(viewer, tmp_path, "train_9_a_1")
    assert chat.ct_layer is second and chat.layer_box.currentText() == "train_9_a_1"
    view = chat.ask("What is seen in the lungs?")
    wait_done(qtbot, view)
    turns = chat.store.chat_turns()
    assert [t.volume_name for t in turns] == ["train_9_a_1.nii.gz"]
    viewer.layers.selection.active = first  # choosing the first scan again moves the chat back
    assert chat.ct_layer is first and chat.turns == []


def closed_questions(n: int) -> list[tuple[str, str]]:
    tasks = itertools.cycle(["existence_detection", "static_temporal_diagnosis"])
    labels = itertools.cycle(TEMPORAL_LABELS)
    return [(next(tasks), next(labels)) for _ in range(n)]


def test_text_and_letter_agree_on_50_closed_questions(chat, qtbot):
    chat.max_new_tokens = 6
    disagreeing = 0
    for task, label in closed_questions(50):
        chat.picker.set_task(task, label)
        view = chat.ask()
        assert view is not None, chat.message.text()
        wait_done(qtbot, view)
        state = view.state
        assert state.status == "done" and state.choice in "ABCD"
        chosen = f"{state.choice}. {state.choices['ABCD'.index(state.choice)]}"
        shown = view.choice_label.text()
        assert chosen in shown.replace("&amp;", "&")  # the shown answer is the chosen choice
        reading = state.reading()
        if reading.agrees:
            assert not view.answer_label.isHidden() and state.text in view.answer_label.text().replace("\u200b", "")
        else:
            disagreeing += 1
            assert view.answer_label.isHidden()  # the model's words are not shown as the answer
            assert not view.flag_label.isHidden() and f"pick {state.choice}" in view.flag_label.text() or \
                "names no choice" in view.flag_label.text() or "no text" in view.flag_label.text()
        assert chat.picker.task == task  # the template stays selected
    assert disagreeing > 0  # a random model's words do disagree, and that path was exercised
    stored = chat.store.chat_turns()
    assert len(stored) == 50 and {t.task for t in stored} == {"existence_detection", "static_temporal_diagnosis"}


def test_a_free_yes_no_question_is_offered_and_asked_as_closed(chat, qtbot):
    chat.question_edit.setPlainText("What is seen in the lungs?")
    assert not chat.question.yes_no_offered
    chat.question_edit.setPlainText("Is there a pleural effusion?")
    assert chat.question.yes_no_offered and chat.question.yes_no_check.isChecked()
    view = chat.ask()
    wait_done(qtbot, view)
    assert view.state.choices == ("Yes", "No") and view.state.choice in ("A", "B")
    assert set(view.state.choice_scores) == {"A", "B"}
    chat.question_edit.setPlainText("Is there a pleural effusion?")
    chat.question.yes_no_check.setChecked(False)  # declined: asked as typed
    free = chat.ask()
    wait_done(qtbot, free)
    assert free.state.choices is None and free.state.choice is None


def test_timings_name_encoding_apart_from_the_first_token(chat, qtbot, viewer_with_ct, tmp_path):
    viewer, _ = viewer_with_ct
    add_scan(viewer, tmp_path, "train_4_a_1")  # a scan the model has not encoded yet
    first = chat.ask("What is seen in the lungs?")  # at once, while the scan is still being read
    wait_done(qtbot, first)
    state = first.state
    assert state.encoding_s is not None and state.encoding_s > 0
    assert state.total_s >= state.latency_first_token_s
    assert "encoding" in first.meta_label.text() and "first token" in first.meta_label.text()
    follow_up = chat.ask("And the heart?")
    wait_done(qtbot, follow_up)
    assert follow_up.state.encoding_s is None and "encoding" not in follow_up.meta_label.text()


def test_an_opened_scan_is_read_before_the_first_question(chat, qtbot, viewer_with_ct, tmp_path):
    """Encoding and the image prefix run when the scan is shown: the first question then waits only
    for its own tokens, and still reports the encoding it was spared."""
    viewer, first_scan = viewer_with_ct
    read: list[tuple[str, float]] = []
    chat.worker.prepared.connect(lambda key, seconds: read.append((key, seconds)))
    array = np.array(first_scan.data, dtype=np.float32)
    array[5:9, 20:30, 8:14] = 200.0  # other content: nothing of it is cached yet
    scan = viewer.add_image(array, name="train_5_a_1", scale=first_scan.scale, metadata={"ct_meta": {}})
    key = scan_key(scan)
    qtbot.waitUntil(lambda: any(k == key for k, _ in read), timeout=TIMEOUT_MS)
    seconds = next(s for k, s in read if k == key)
    assert seconds > 0 and "scan read in" in chat.models.status.text()
    first = chat.ask("What is seen in the lungs?")
    wait_done(qtbot, first)
    assert first.state.encoding_s == seconds  # the model reports what it spent when the scan was shown
    assert "encoding" in first.meta_label.text()
    follow_up = chat.ask("And the heart?")
    wait_done(qtbot, follow_up)
    assert follow_up.state.encoding_s is None


def test_the_old_model_survives_a_failed_load(chat, qtbot, tmp_path):
    working = chat.model_name
    chat.load_model(str(tmp_path / "not-a-model"), None)
    qtbot.waitUntil(lambda: "could not be loaded" in chat.message.text(), timeout=TIMEOUT_MS)
    assert f"Still using {working}" in chat.message.text()
    assert chat.model_ready and chat.model_name == working and chat.ask_button.isEnabled()
    assert chat.models.box.currentText().startswith(working)
    view = chat.ask("What is seen in the lungs?")
    wait_done(qtbot, view)
    assert view.state.status == "done" and view.state.model_version == working


def test_a_banner_warns_when_the_default_model_reads_a_real_scan(make_napari_viewer, qtbot, store, chat_worker, tmp_path):
    viewer = make_napari_viewer()
    real = viewer.add_image(np.zeros((8, 16, 16), np.float32), name="patient", metadata={"ct_meta": {}})
    from napari_ctvqa.widgets.chat import ChatWidget

    widget = ChatWidget(viewer, store=store, worker=chat_worker)  # no model path: the embedded default
    qtbot.addWidget(widget)
    try:
        qtbot.waitUntil(lambda: widget.model_ready or bool(widget.message.text()), timeout=TIMEOUT_MS)
        assert widget.model_name == "default" and not widget.banner.isHidden()
        assert widget.banner.text() == BANNER_TEXT
        cohort = tmp_path / "cohort"
        (cohort / "volumes").mkdir(parents=True)
        (cohort / "metadata.csv").write_text("VolumeName,ManufacturerModelName\ntrain_1_a_1.nii.gz,synthetic phantom\n")
        phantom = viewer.add_image(np.zeros((8, 16, 16), np.float32), name="train_1_a_1",
                                   metadata={"path": str(cohort / "volumes" / "train_1_a_1.nii.gz")})
        assert widget.ct_layer is phantom and widget.banner.isHidden()
        viewer.layers.selection.active = real
        assert not widget.banner.isHidden()
    finally:
        widget.close()
