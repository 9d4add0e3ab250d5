"""The demo window: one scan with a finding, the chat panel with a question about it pre-filled,
the demo annotator's rating queue and the CT window presets, laid out for a 1920x1080 screen.

Why it is arranged like this: a new user should see the whole loop at once (look, ask, rate)
without touching a menu. The scan shown is the one the annotator rates first (see
`demo_setup`), so the chat and the rating panel talk about the CT on the canvas. The rating
panel keeps its own layer (it swaps scans as the annotator moves on); while it shows the same
scan as the chat's layer it stays hidden, and the first pair on another scan brings it back on top.

Everything slow stays off the GUI thread: the cohort is built before the window opens, the model
loads and answers in the chat panel's own process, and scans for the rating queue are prefetched.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_ctvqa.demo_setup import DemoSetup

if TYPE_CHECKING:
    import napari

    from model.inference.devices import Runtime
    from napari_ctvqa.widgets.chat.turn import TurnState
    from napari_ctvqa.widgets.chat import ChatWidget
    from napari_ctvqa.widgets.rating import RatingWidget
    from napari_ctvqa.widgets.reading import ReadingRoom
    from napari_ctvqa.widgets.window import WindowWidget

WINDOW_SIZE = (1920, 1080)
CHAT_WIDTH = 500
RATING_WIDTH = 420


class DemoError(RuntimeError):
    """The demo could not show what it promises (model not loaded, no answer in time, ...)."""


@dataclass
class DemoWindow:
    """The open demo: the viewer, its CT layer and the docked panels (for scripts and tests)."""

    viewer: napari.viewer.Viewer
    ct_layer: Any
    chat: ChatWidget
    rating: RatingWidget
    window: WindowWidget
    room: ReadingRoom  # the scan list, crosshair in mm, ruler and Compare with prior
    store: Any
    side_docks: tuple[Any, Any]  # the chat's and rating panel's QDockWidgets, sized by `fit_window`

    def close(self, close_viewer: bool = True) -> None:
        """Stop the model process, the panels and (unless a test owns it) the window; after the
        user closed the window Qt has deleted the panels already, which is fine."""
        worker = self.chat.worker  # a Python attribute: readable even once Qt deleted the panel
        for step in (self.chat.shutdown, worker.shutdown, self.rating.close, self.room.shutdown,
                     self.viewer.close if close_viewer else None):
            if step is not None:
                with contextlib.suppress(RuntimeError):  # "wrapped C/C++ object ... has been deleted"
                    step()
        self.store.close()


def open_demo(setup: DemoSetup, model_path: str | None = None,
              viewer: napari.viewer.Viewer | None = None, runtime: Runtime | None = None) -> DemoWindow:
    """Open napari (or fill `viewer`) on the demo scan with the chat, rating and window panels.

    `model_path` None loads the embedded default model, on `runtime`'s device/dtype/quantization
    (None: $CTVQA_DEVICE/$CTVQA_DTYPE/$CTVQA_QUANTIZE, else auto). When the demo opens its own window the
    model process is started before napari builds it (torch imports meanwhile), and the chat
    panel is built first of the panels so the model loads while the rest is laid out."""
    # deferred: SQLAlchemy, torch and the Qt widgets load once the demo opens its window
    from annotation.store import Store

    from napari_ctvqa.vlm_worker import VLMWorker
    from napari_ctvqa.widgets.chat import ChatWidget
    from napari_ctvqa.widgets.rating import LAYER_NAME, RatingWidget
    from napari_ctvqa.widgets.reading import ReadingRoom
    from napari_ctvqa.widgets.window import WindowWidget

    worker = None
    if viewer is None:
        import napari
        from napari.qt import get_qapp

        get_qapp()  # napari's own application object, which the worker's timer needs
        worker = VLMWorker(os.environ.get("CTVQA_CHAT_WORKER", "process"))  # as the chat panel would
        worker.start()
        viewer = napari.Viewer(title=f"ctvqa demo: {setup.volume_name}")
    store = Store(setup.db_url)
    chat = ChatWidget(viewer, store=store, worker=worker, model_path=model_path, runtime=runtime)
    layer = _add_scan(viewer, setup)
    window = WindowWidget(viewer)
    rating = RatingWidget(viewer, store=store, annotator=setup.annotator)
    rating_layer = viewer.layers[LAYER_NAME] if LAYER_NAME in viewer.layers else None
    if rating_layer is not None:
        if rating.qa is not None and rating.qa.volume_name == setup.volume_name:
            rating_layer.visible = False  # the same scan: show it once, in the chat's layer below
        else:
            viewer.grid.enabled = True  # two different scans: side by side rather than one hidden
    # one view beside the panels on a 1920x1080 screen; "Three views" is a tick away
    room = ReadingRoom(viewer, store=store, three_views=False)
    viewer.layers.selection.active = layer
    chat.picker.set_task("existence_detection", setup.finding)
    window.apply(setup.window)
    viewer.dims.set_point(0, layer.translate[0] + setup.slice_index * layer.scale[0])
    if rating_layer is not None and not rating_layer.visible:
        rating.pair.set_view_hint(f"Shown at slice {setup.slice_index + 1}/{layer.data.shape[0]}, {setup.window} "
                                  f"window: the {setup.finding.lower()} the chat asks about.")
    return DemoWindow(viewer, layer, chat, rating, window, room, store, _dock(viewer, chat, rating, window, room))


def _add_scan(viewer: napari.viewer.Viewer, setup: DemoSetup) -> Any:
    """The demo scan as the reader would open it (mm scale), with the contrast slider over all HU."""
    # deferred: ITK/nibabel load only when the demo scan is read
    from model.ct.io import read_ct
    from model.ct.windows import window_limits

    from napari_ctvqa._reader import layer_data

    volume = read_ct(setup.volume_path)
    data, kwargs, _ = layer_data(volume, Path(setup.volume_path))
    kwargs.pop("translate")  # the rating panel's layer sits at the origin: share its frame, one extent
    layer = viewer.add_image(data, **kwargs)
    layer.contrast_limits_range = window_limits("full", data)
    return layer


def _dock(viewer: napari.viewer.Viewer, chat: ChatWidget, rating: RatingWidget,
          window: WindowWidget, room: ReadingRoom) -> tuple[Any, Any]:
    """Chat and rating side by side on the right (each needs the full height), presets and the
    reading room on the left."""
    from qtpy.QtCore import Qt

    qt_window = viewer.window._qt_window
    viewer.window.add_dock_widget(window, name="CT window", area="left")
    viewer.window.add_dock_widget(room, name="Reading room", area="left")
    chat_dock = viewer.window.add_dock_widget(chat, name="Ask the model", area="right",
                                              add_vertical_stretch=False)
    rating_dock = viewer.window.add_dock_widget(rating, name="Rate QA pairs", area="right",
                                                add_vertical_stretch=False)
    qt_window.splitDockWidget(chat_dock, rating_dock, Qt.Orientation.Horizontal)
    return chat_dock, rating_dock


def fit_window(demo: DemoWindow, size: tuple[int, int] = WINDOW_SIZE) -> None:
    """Resize to `size`, let Qt lay the docks out, then fit the scan to the canvas that is left."""
    from qtpy.QtWidgets import QApplication

    from qtpy.QtCore import Qt

    demo.viewer.window.resize(*size)
    QApplication.processEvents()
    demo.viewer.window._qt_window.resizeDocks(list(demo.side_docks), [CHAT_WIDTH, RATING_WIDTH],
                                              Qt.Orientation.Horizontal)
    for _ in range(3):
        QApplication.processEvents()
    demo.viewer.reset_view()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Run the Qt event loop until `condition()` holds; DemoError naming `what` after `timeout_s`."""
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.01)


def wait_for_model(demo: DemoWindow, timeout_s: float) -> None:
    """Until the chat's model is loaded; DemoError with the panel's message if loading failed."""
    chat = demo.chat
    wait_for(lambda: chat.model_ready or (not chat.worker.loading and bool(chat.message.text())),
             timeout_s, "the model to load")
    if not chat.model_ready:
        raise DemoError(chat.message.text() or "the model could not be loaded")


def answer_prefilled(demo: DemoWindow, timeout_s: float) -> TurnState:
    """Ask the pre-filled question in a fresh conversation and wait until the answer is complete."""
    chat = demo.chat
    chat.new_conversation()
    view = chat.ask()
    if view is None:
        raise DemoError(f"the question could not be asked: {chat.message.text()}")
    wait_for(lambda: view.state.status in ("done", "cancelled", "failed"), timeout_s, "the model's answer")
    if view.state.status != "done":
        raise DemoError(f"the model did not answer: {view.state.error or view.state.status}")
    return view.state


def save_screenshot(demo: DemoWindow, path: str | Path) -> Path:
    """The whole window (panels included) as a PNG, after pending paints have happened."""
    from qtpy.QtWidgets import QApplication

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        QApplication.processEvents()
        time.sleep(0.02)
    demo.viewer.screenshot(str(path), canvas_only=False, flash=False)
    return path
