"""The chat panel's 'Runs on' menus: the loaded model says where it runs, a change reloads it
there, and an absent device is a message in the panel (real model process, real tiny model)."""
from __future__ import annotations

import pytest
import torch

from tests.napari_ctvqa.test_chat import (  # noqa: F401 - fixtures
    TIMEOUT_MS,
    chat,
    chat_worker,
    store,
    viewer_with_ct,
    wait_done,
)


def choose(menu, text: str) -> None:
    menu.setCurrentText(text)
    menu.activated.emit(menu.currentIndex())


def test_runtime_menus_reload_the_model_and_show_where_it_runs(chat, qtbot):  # noqa: F811
    assert chat.runtime.options() == {"device": "auto", "dtype": "auto", "quantize": "none"}
    assert "on cpu, float32" in chat.models.status.text()
    assert [chat.runtime.device.itemText(i) for i in range(chat.runtime.device.count())][:2] == ["auto", "cpu"]
    choose(chat.runtime.dtype, "bfloat16")
    choose(chat.runtime.quantize, "int8")
    qtbot.waitUntil(lambda: chat.model_ready and "int8" in chat.models.status.text(), timeout=TIMEOUT_MS)
    assert "cpu, bfloat16, int8 weights" in chat.models.status.text()
    view = chat.ask("Is there a pleural effusion?")
    wait_done(qtbot, view)
    assert view.state.status == "done" and view.state.text.strip()


def test_an_absent_device_is_a_panel_message(chat, qtbot):  # noqa: F811
    if torch.cuda.device_count() > 1:
        pytest.skip("this machine has a cuda:1; the error path is for machines without one")
    chat.runtime.device.addItem("cuda:1")
    choose(chat.runtime.device, "cuda:1")
    qtbot.waitUntil(lambda: "could not be loaded" in chat.message.text(), timeout=TIMEOUT_MS)
    assert "device 'cuda:1' is not available" in chat.message.text()
    # the model that was working stays loaded (issue 20: a failed load never unloads it)
    assert chat.model_ready and "Still using" in chat.message.text() and "Traceback" not in chat.message.text()
    choose(chat.runtime.device, "cpu")
    qtbot.waitUntil(lambda: chat.model_ready, timeout=TIMEOUT_MS)
