"""The chat panel: the flow from a question to its stored answer, over the parts it owns.

Why the flow lives apart from its parts: the order of events (ask, stream into the turn, save,
draw the box) is what changes when the chat gains features, and it reads best without the
details of choosing a scan or a model, guarding the store or laying out a turn around it.
"""
from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_ctvqa.vlm_worker import VLMWorker
from napari_ctvqa.widgets.chat.banner import DefaultModelBanner
from napari_ctvqa.widgets.chat.ct_choice import MODEL_INPUT_PREFIX, CTChoice, scan_key
from napari_ctvqa.widgets.chat.history import DEFAULT_MODEL_NAME, ChatHistory, volume_name_of
from napari_ctvqa.widgets.chat.model_choice import ModelChoice
from napari_ctvqa.widgets.chat.overlays import (
    add_box_layer,
    box_centre,
    jump_to,
    show_model_input,
)
from napari_ctvqa.widgets.chat.question import QuestionBox
from napari_ctvqa.widgets.chat.scope import ScopeChoice
from napari_ctvqa.widgets.chat.runtime_choice import RuntimeChoice
from napari_ctvqa.widgets.chat.templates import FREE, TemplatePicker
from napari_ctvqa.widgets.chat.transcript import Transcript
from napari_ctvqa.widgets.chat.turn import TurnState, TurnView, turns_markdown

if TYPE_CHECKING:
    import napari

    from model.inference.devices import Runtime

MAX_NEW_TOKENS = 96


class ChatWidget(QWidget):
    """Chat with the VLM about one CT layer; see the package docstring for the why.

    `store`, `worker` and `model_path` are for tests and the demo; napari passes only the viewer
    (then the store is `annotation.Store.create()` and the model `$CTVQA_MODEL` or the embedded one).
    `$CTVQA_CHAT_WORKER=thread` runs the model in a thread instead of a process (for scripts that
    cannot use multiprocessing's spawn, e.g. without an `if __name__ == "__main__":` guard).
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, store: Any = None, worker: VLMWorker | None = None,
                 model_path: str | None = None, runtime: Runtime | None = None) -> None:
        super().__init__()
        self._asked_runtime = runtime  # device/dtype/quantize to start with (None: $CTVQA_*, else auto)
        self.viewer = viewer
        self.history = ChatHistory(store, self.show_message)
        self._owns_worker = worker is None
        self.worker = worker or VLMWorker(os.environ.get("CTVQA_CHAT_WORKER", "process"), parent=self)
        self._scan_id: int | None = None
        self._conversation = uuid.uuid4().hex
        self._closed = False
        self.max_new_tokens = MAX_NEW_TOKENS
        self._build()
        self._connect()
        self.history.open_default()
        self.models.fill()
        self.ct.refresh()
        self.load_model(model_path or os.environ.get("CTVQA_MODEL") or None, None)

    @property
    def store(self) -> Any:
        return self.history.store

    @property
    def ct_layer(self) -> Any:
        return self.ct.layer

    @property
    def turns(self) -> list[TurnView]:
        return self.transcript.turns

    @property
    def model_ready(self) -> bool:
        return self.models.ready

    @property
    def model_name(self) -> str | None:
        return self.models.name

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        self.ct = CTChoice(self.viewer, parent=self)
        self.layer_box = self.ct.box
        self.models = ModelChoice(self.history, parent=self)
        self.picker = TemplatePicker()
        form = QFormLayout()
        form.addRow("CT", self.layer_box)
        form.addRow("Model", self.models.box)
        self.runtime = RuntimeChoice(self._asked_runtime, parent=self)
        form.addRow("Runs on", self.runtime.widget)
        form.addRow("", self.models.status)
        form.addRow("", self.models.progress)
        self.scope = ScopeChoice(self.viewer, parent=self)
        form.addRow("Ask about", self.scope)
        self.transcript = Transcript()
        self.question = QuestionBox(self.picker)
        # the parts tests, the demo and scripts drive directly
        self.question_edit, self.choices_label = self.question.edit, self.question.choices_label
        self.ask_button, self.cancel_button = self.question.ask_button, self.question.cancel_button

        self.model_input_check = QCheckBox("Show what the model sees")
        self.copy_button = QPushButton("Copy conversation")
        self.new_button = QPushButton("New conversation")
        tools = QHBoxLayout()
        tools.addWidget(self.copy_button)
        tools.addWidget(self.new_button)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.hide()
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)

        self.banner = DefaultModelBanner()
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.banner)
        layout.addWidget(self.message)  # at the top, where a problem is seen before the next click
        layout.addWidget(self.picker)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.question)
        layout.addWidget(self.model_input_check)
        layout.addLayout(tools)
        self.setMinimumWidth(360)

    def _connect(self) -> None:
        w = self.worker
        self._worker_links = [
            (w.loaded, self._on_loaded), (w.load_failed, self._on_load_failed),
            (w.status, self.transcript.show_status), (w.piece, self.transcript.append_piece),
            (w.finished, self._on_finished), (w.failed, self._on_failed),
            (w.model_input_ready, self._on_model_input), (w.error, self._on_worker_error),
            (w.prepared, self._on_prepared), (w.prepare_failed, self._on_prepare_failed),
            (w.prepare_skipped, self._on_prepare_skipped),
        ]
        for signal, slot in self._worker_links:
            signal.connect(slot)
        self.ct.changed.connect(self._set_layer)
        self.models.chosen.connect(self.load_model)
        self.runtime.changed.connect(lambda: self.load_model(self.models.path, self.models.name))  # the loaded one
        self.transcript.send_requested.connect(self.send_to_queue)
        self.transcript.jump_requested.connect(self.jump_to_box)
        self.transcript.box_requested.connect(self.show_box)
        self.picker.changed.connect(lambda _template: self.show_message(""))  # a valid template clears errors
        self.picker.invalid.connect(self.show_message)
        self.question.ask_requested.connect(self.ask)
        self.cancel_button.clicked.connect(self.cancel)
        self.model_input_check.toggled.connect(self._toggle_model_input)
        self.copy_button.clicked.connect(self.copy_conversation)
        self.new_button.clicked.connect(self.new_conversation)

    # ------------------------------------------------------------------ messages
    def show_message(self, text: str, error: bool = True) -> None:
        self.message.setStyleSheet("color: #ff6b6b;" if error else "color: #9fd49f;")
        self.message.setText(text)
        self.message.setVisible(bool(text))
        self._fit_message()

    def _fit_message(self) -> None:
        """Give the wrapped message all its lines (napari's dock does not ask labels for them)."""
        width = self.message.width() if self.message.isVisible() else self.width() - 20
        self.message.setMinimumHeight(self.message.heightForWidth(max(width, 100)) if self.message.text() else 0)

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        super().resizeEvent(event)
        self._fit_message()

    # ------------------------------------------------------------------ scan and model
    def _set_layer(self, layer: Any) -> None:
        """Switch the chat to another scan: its stored turns, its patient's prior labels."""
        self._conversation = uuid.uuid4().hex
        self.transcript.clear_turns()
        self.model_input_check.blockSignals(True)
        self.model_input_check.setChecked(False)
        self.model_input_check.blockSignals(False)
        self._scan_id = None
        self.scope.set_layer(layer)
        self._update_banner()
        if layer is None:
            self.picker.set_earlier_labels([])
            return
        scan = self.history.scan(volume_name_of(layer))
        self._scan_id = scan.id if scan else None
        self.picker.set_earlier_labels(self.history.earlier_labels(scan.id) if scan else [])
        if scan is not None:
            for record in self.history.turns(scan.id):
                self.transcript.add_turn(TurnState.from_record(record))
        self._prepare_scan()

    def _prepare_scan(self) -> None:
        """Have the model read the chosen scan now, while the reader looks at it, rather than when
        the first question comes (vlm_server.ChatServer._prepare)."""
        layer = self.ct_layer
        if layer is None or not self.model_ready:
            return
        payload = self.models.payload(layer)
        if payload is None:  # the model holds this scan already
            self.models.scan_note("")
            return
        self.worker.prepare(scan_key(layer), payload)
        self.models.scan_note("reading the scan...")

    def _shows(self, key: str) -> bool:
        """Whether the panel's scan is the one a read-ahead reply is about (it may have moved on)."""
        return self.ct_layer is not None and scan_key(self.ct_layer) == key

    def _on_prepared(self, key: str, seconds: float) -> None:
        if self._shows(key):
            self.models.scan_note(f"scan read in {seconds:.2f} s")

    def _on_prepare_skipped(self, key: str) -> None:
        if self._shows(key):
            self.models.scan_note("")  # the question already waiting reads it

    def _on_prepare_failed(self, key: str, message: str) -> None:
        if self._shows(key):
            self.models.scan_note(f"could not read this scan: {message}")

    def load_model(self, path: str | None, name: str | None) -> None:
        """Load a model in the background: None = the embedded default; `name` as stored with turns."""
        if self.worker.busy_request is not None:
            self.show_message("Wait for the running answer (or cancel it) before switching models.")
            return
        self.models.begin(path, name)
        self._update_buttons()
        self.worker.load(path, self.runtime.options())

    def _on_loaded(self, info: dict) -> None:
        self.models.loaded(info)
        self.scope.set_supported(bool(info.get("slice_questions")))
        self.runtime.set_devices(info.get("devices", []))
        self._update_buttons()
        self._update_banner()
        self._prepare_scan()

    def _update_banner(self) -> None:
        self.banner.update_for(self.models.name if self.models.ready else None, DEFAULT_MODEL_NAME, self.ct_layer)

    def _on_load_failed(self, message: str) -> None:
        kept = self.models.failed()
        self.show_message(f"The model could not be loaded: {message}"
                          + (f" Still using {kept}." if kept else ""))
        self._update_buttons()
        self._update_banner()

    def _on_worker_error(self, message: str) -> None:
        if not self.worker.alive:
            self.models.lost()
        self.show_message(message)
        self._update_buttons()

    # ------------------------------------------------------------------ asking
    def _update_buttons(self) -> None:
        busy = self.worker.busy_request is not None
        self.question.set_enabled(self.model_ready, busy)
        self.models.box.setEnabled(not busy)
        self.runtime.set_enabled(not busy)

    def ask(self, question: str | None = None) -> TurnView | None:
        """Send the typed (or given) question about the chosen CT; returns its turn view."""
        question = (question if isinstance(question, str) else self.question.text()).strip()
        problem = ("Type a question first." if not question else
                   "Open a CT (3-D image layer) first." if self.ct_layer is None else
                   "The model is not loaded yet." if not self.model_ready else
                   "The model is still answering; cancel it or wait." if self.worker.busy_request else "")
        if problem:
            self.show_message(problem)
            return None
        template = self.question.template_for(question)
        view = self.transcript.add_turn(TurnState(question=question, choices=template.choices, task=template.task))
        request_id = self.worker.ask(scan_key(self.ct_layer), question, volume=self.models.payload(self.ct_layer),
                                     choices=list(template.choices) if template.choices else None,
                                     max_new_tokens=self.max_new_tokens, slice_index=self.scope.slice_index(self.ct_layer))
        self.transcript.expect(request_id, view)
        self.question.sent()
        self.show_message("")
        self._update_buttons()
        return view

    def cancel(self) -> None:
        self.worker.cancel()

    def _on_finished(self, request_id: int, answer: dict) -> None:
        view, waited_s = self.transcript.answered(request_id)
        self._update_buttons()
        if view is None:
            return
        view.finish(answer, self.model_name, waited_s)
        if not answer.get("cancelled"):
            self._save_turn(view)
        if view.state.box is not None:
            self.show_box(view)

    def _on_failed(self, request_id: int, message: str) -> None:
        view, _ = self.transcript.answered(request_id)
        self._update_buttons()
        if view is not None:
            view.fail(message)
        self.show_message(f"The model could not answer: {message}")

    def _save_turn(self, view: TurnView) -> None:
        """Store a finished turn (registering scan and model on first use)."""
        if self.store is None:
            return
        layer = self.ct_layer
        if self._scan_id is None:
            self._scan_id = self.history.add_scan(volume_name_of(layer), (layer.metadata or {}).get("path"))
        if self._scan_id is None:
            return
        view.state.turn_id = self.history.save_turn(self._scan_id, view.state, self._conversation,
                                                    self.models.name, self.models.path)
        view.refresh()

    # ------------------------------------------------------------------ turns
    def send_to_queue(self, view: TurnView) -> None:
        """Make the turn a QA pair (source "chat") that the rating queue can hand out."""
        state = view.state
        if state.turn_id is None:
            self.show_message("Only saved turns can be sent to the rating queue.")
            return
        if (problem := state.problem()) is not None:
            self.show_message(f"Not sent to the rating queue: {problem}.")
            return
        qa_id = self.history.send_to_queue(state.turn_id, state.task if state.task != FREE else "chat")
        if qa_id is not None:
            state.qa_id = qa_id
            view.refresh()
            self.show_message(f"Added as QA pair {qa_id} (source: chat).", error=False)

    def _box_layer_name(self, view: TurnView) -> str:
        return f"{self.ct_layer.name} box Q{self.turns.index(view) + 1}"

    def show_box(self, view: TurnView) -> Any:
        """Draw the turn's box on the CT (in the CT's millimetres)."""
        if view.state.box is None or self.ct_layer is None:
            return None
        return add_box_layer(self.viewer, self.ct_layer, view.state.box, self._box_layer_name(view))

    def jump_to_box(self, view: TurnView) -> None:
        """Move the viewer to the box centre (and draw the box if it is not shown)."""
        if view.state.box is None or self.ct_layer is None:
            return
        if self._box_layer_name(view) not in self.viewer.layers:
            self.show_box(view)
        jump_to(self.viewer, self.ct_layer, box_centre(view.state.box))

    # ------------------------------------------------------------------ tools
    def _model_input_name(self) -> str:
        return f"{MODEL_INPUT_PREFIX}: {self.ct_layer.name}"

    def _toggle_model_input(self, checked: bool) -> None:
        if self.ct_layer is None:
            return
        if not checked:
            if self._model_input_name() in self.viewer.layers:
                self.viewer.layers.remove(self._model_input_name())
            return
        if not self.model_ready:
            self.show_message("Load a model first: its input size decides what it sees.")
            self.model_input_check.setChecked(False)
            return
        self.worker.request_model_input(scan_key(self.ct_layer), self.models.payload(self.ct_layer))

    def _on_model_input(self, key: str, image: Any, scale: tuple, offset: tuple) -> None:
        if self.ct_layer is None or key != scan_key(self.ct_layer) or not self.model_input_check.isChecked():
            return
        show_model_input(self.viewer, self.ct_layer, image, scale, offset, self._model_input_name())

    def conversation_markdown(self) -> str:
        name = volume_name_of(self.ct_layer) if self.ct_layer is not None else "no scan"
        return turns_markdown(name, (view.state for view in self.turns))

    def copy_conversation(self) -> None:
        QApplication.clipboard().setText(self.conversation_markdown())
        self.show_message("Conversation copied as Markdown.", error=False)

    def new_conversation(self) -> None:
        if self.worker.busy_request is not None:
            self.show_message("Cancel the running answer first.")
            return
        self._conversation = uuid.uuid4().hex
        self.transcript.clear_turns()

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the model process and unhook from the viewer (the panel is going away); idempotent."""
        if self._closed:
            return
        self._closed = True
        self.ct.unhook()
        self.scope.unhook()
        if self._owns_worker:
            self.worker.shutdown()
        else:  # a shared worker lives on: stop it from calling into this closed panel
            for signal, slot in self._worker_links:
                signal.disconnect(slot)
