"""The chat panel's "whole scan / this slice" choice: the slice the viewer shows reaches the
model, and models that read whole scans only disable the choice."""
from __future__ import annotations

import numpy as np
import pytest
from model.ct.volume import CTVolume, canonical_affine

from napari_ctvqa.vlm_worker import VLMWorker
from napari_ctvqa.widgets.chat import ChatWidget
from tests.model.test_omnict_vlm import chest

SPACING = (4.0, 4.0, 4.0)
TIMEOUT_MS = 60_000


@pytest.fixture
def worker(qapp):
    worker = VLMWorker("thread")
    yield worker
    worker.shutdown()


def open_chat(make_napari_viewer, qtbot, worker, model_dir):
    viewer = make_napari_viewer()
    layer = viewer.add_image(chest(), name="chest", scale=SPACING, metadata={"ct_meta": {}})
    widget = ChatWidget(viewer, store=None, worker=worker, model_path=str(model_dir))
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: widget.model_ready or bool(widget.message.text()), timeout=TIMEOUT_MS)
    assert widget.model_ready, widget.message.text()
    return viewer, layer, widget


def test_this_slice_asks_the_model_about_the_shown_slice(make_napari_viewer, qtbot, worker, tiny_omnict_dir):
    viewer, layer, chat = open_chat(make_napari_viewer, qtbot, worker, tiny_omnict_dir)
    assert chat.scope.slice.isEnabled()
    viewer.dims.set_current_step(0, 7)
    assert chat.scope.slice.text() == "This slice (z 7)"
    assert chat.scope.slice_index(layer) is None  # whole scan is the default
    chat.scope.slice.setChecked(True)
    assert chat.scope.slice_index(layer) == 7
    chat.picker.set_task("existence_detection", "Lung nodule")
    view = chat.ask()
    qtbot.waitUntil(lambda: view.state.status in ("done", "failed"), timeout=TIMEOUT_MS)
    assert view.state.status == "done", view.state.error

    from model.inference.loading import load_vlm

    volume = CTVolume(np.asarray(layer.data, np.float32), SPACING, canonical_affine(SPACING), {})
    vlm = load_vlm(tiny_omnict_dir)
    expected = vlm.answer(volume, view.state.question, choices=["Yes", "No"], max_new_tokens=chat.max_new_tokens,
                          slice_index=7)
    whole = vlm.answer(volume, view.state.question, choices=["Yes", "No"], max_new_tokens=chat.max_new_tokens)
    assert view.state.choice_scores == pytest.approx(expected.choice_scores, abs=1e-5)
    assert expected.choice_scores != pytest.approx(whole.choice_scores, abs=1e-5)  # the slice made a difference
    chat.close()


def test_whole_scan_models_disable_the_slice_choice(make_napari_viewer, qtbot, worker, tiny_vlm_dir):
    _, layer, chat = open_chat(make_napari_viewer, qtbot, worker, tiny_vlm_dir)
    assert not chat.scope.slice.isEnabled() and chat.scope.whole.isChecked()
    assert "whole scans only" in chat.scope.slice.toolTip()
    chat.scope.slice.setChecked(True)  # even if forced, a disabled choice asks about the whole scan
    assert chat.scope.slice_index(layer) is None
    chat.close()
