"""The chat dock widget: ask the local 3D VLM about the CT in the viewer (GitHub issue 7).

Why it is built this way: a radiologist keeps scrolling, panning and windowing while the model
answers, so the model runs in its own process (`napari_ctvqa.vlm_worker`; see
bench/chat_responsiveness.py) and the panel only reacts to its signals. The scan is sent once
and encoded once; follow-up questions reuse the encoding. Every finished turn goes into the
store (through `annotation.Store` only) and comes back when the panel is reopened on that scan.
Errors from the model, the store or the user's input are shown in the panel, never as tracebacks.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QApplication, QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QPlainTextEdit,
    QProgressBar, QPushButton, QScrollArea, QSizePolicy, QVBoxLayout, QWidget,
)

from napari_ctvqa.vlm_worker import VLMWorker
from napari_ctvqa.widgets._chat_layers import add_box_layer, box_centre, jump_to, show_model_input
from napari_ctvqa.widgets._chat_server import VolumePayload
from napari_ctvqa.widgets._chat_templates import FREE, TemplatePicker, TemplateQuestion, earlier_labels
from napari_ctvqa.widgets._chat_turn import TurnState, TurnView, turns_markdown

if TYPE_CHECKING:
    import napari

DEFAULT_MODEL_NAME = "default"
_CHOOSE_FOLDER = "__folder__"
MAX_NEW_TOKENS = 96


def volume_name_of(layer: Any) -> str:
    """The scan's name in the store: the file the reader recorded, the sample data's volume name,
    else the layer name."""
    metadata = layer.metadata or {}
    if metadata.get("path"):
        return Path(metadata["path"]).name
    return str(metadata.get("volume_name") or layer.name)


class ChatWidget(QWidget):
    """Chat with the VLM about one CT layer; see the module docstring for the why.

    `store`, `worker` and `model_path` are for tests and the demo; napari passes only the viewer
    (then the store is `annotation.Store.create()` and the model `$CTVQA_MODEL` or the embedded one).
    `$CTVQA_CHAT_WORKER=thread` runs the model in a thread instead of a process (for scripts that
    cannot use multiprocessing's spawn, e.g. without an `if __name__ == "__main__":` guard).
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, store: Any = None, worker: VLMWorker | None = None,
                 model_path: str | None = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.store = store
        self._owns_worker = worker is None
        self.worker = worker or VLMWorker(os.environ.get("CTVQA_CHAT_WORKER", "process"), parent=self)
        self.model_name: str | None = None
        self.model_path: str | None = None
        self.model_ready = False
        self._loading: tuple[str, str | None] | None = None
        self.turns: list[TurnView] = []
        self._pending: dict[int, TurnView] = {}
        self._sent_scans: set[str] = set()
        self._layer: Any = None
        self._scan_id: int | None = None
        self._conversation = uuid.uuid4().hex
        self._template = TemplateQuestion("", None, "chat")
        self._closed = False
        self.max_new_tokens = MAX_NEW_TOKENS
        self._build()
        self._connect()
        self._open_store()
        self._fill_models()
        self._refresh_layers()
        self.load_model(model_path or os.environ.get("CTVQA_MODEL") or None, None)

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        self.layer_box = QComboBox()
        self.model_box = QComboBox()
        self.model_status = QLabel()
        self.model_status.setWordWrap(True)
        self.model_progress = QProgressBar()
        self.model_progress.setRange(0, 0)
        self.model_progress.setMaximumHeight(10)
        self.model_progress.setTextVisible(False)
        self.picker = TemplatePicker()
        form = QFormLayout()
        form.addRow("CT", self.layer_box)
        form.addRow("Model", self.model_box)
        form.addRow("", self.model_status)
        form.addRow("", self.model_progress)

        self.transcript = QWidget()
        self._transcript_layout = QVBoxLayout(self.transcript)
        self._transcript_layout.setContentsMargins(2, 2, 2, 2)
        self._transcript_layout.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.transcript)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._follow = True  # keep the newest text in view unless the user scrolled up to read
        bar = self.scroll.verticalScrollBar()
        bar.valueChanged.connect(lambda value: setattr(self, "_follow", value >= bar.maximum() - 4))
        bar.rangeChanged.connect(lambda _lo, hi: bar.setValue(hi) if self._follow else None)

        self.question_edit = QPlainTextEdit()
        self.question_edit.setPlaceholderText("Ask about this CT, e.g. 'Is there a pleural effusion?'")
        self.question_edit.setMaximumHeight(72)
        self.choices_label = QLabel()
        self.choices_label.setWordWrap(True)
        self.choices_label.setStyleSheet("color: #b0b0b0;")
        self.ask_button = QPushButton("Ask [Ctrl+Enter]")
        self.ask_button.setDefault(True)
        self.question_edit.installEventFilter(self)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.ask_button, 2)
        buttons.addWidget(self.cancel_button, 1)

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

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.message)  # at the top, where a problem is seen before the next click
        layout.addWidget(self.picker)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.question_edit)
        layout.addWidget(self.choices_label)
        layout.addLayout(buttons)
        layout.addWidget(self.model_input_check)
        layout.addLayout(tools)
        self.setMinimumWidth(360)

    def _connect(self) -> None:
        w = self.worker
        self._worker_links = [
            (w.loaded, self._on_loaded), (w.load_failed, self._on_load_failed), (w.status, self._on_status),
            (w.piece, self._on_piece), (w.finished, self._on_finished), (w.failed, self._on_failed),
            (w.model_input_ready, self._on_model_input), (w.error, self._on_worker_error),
        ]
        for signal, slot in self._worker_links:
            signal.connect(slot)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.layer_box.currentIndexChanged.connect(self._on_layer_chosen)
        self.model_box.activated.connect(self._on_model_chosen)
        self.picker.changed.connect(self._on_template)
        self.picker.invalid.connect(self.show_message)
        self.ask_button.clicked.connect(self.ask)
        self.cancel_button.clicked.connect(self.cancel)
        self.model_input_check.toggled.connect(self._toggle_model_input)
        self.copy_button.clicked.connect(self.copy_conversation)
        self.new_button.clicked.connect(self.new_conversation)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt name
        """Ctrl+Enter in the question box asks (plain Enter starts a new line)."""
        if (watched is self.question_edit and event.type() == QEvent.Type.KeyPress
                and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
                and event.modifiers() & Qt.KeyboardModifier.ControlModifier):
            self.ask()
            return True
        return super().eventFilter(watched, event)

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

    # ------------------------------------------------------------------ store
    def _open_store(self) -> None:
        if self.store is not None:
            return
        try:
            from annotation.store import Store

            self.store = Store.create()
        except Exception as exc:  # noqa: BLE001 - the chat still works, only history is lost
            self.store = None
            self.show_message(f"The database could not be opened ({exc}); answers will not be saved.")

    def _store_call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a store method; a failure becomes a panel message (and None), never a traceback."""
        if self.store is None:
            return None
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self.show_message(f"Could not {what}: {exc}")
            return None

    # ------------------------------------------------------------------ layers
    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and not layer.rgb
                and layer.ndim == 3 and not layer.name.startswith("model input")]

    @property
    def ct_layer(self) -> Any:
        return self._layer

    def _refresh_layers(self, event: Any = None) -> None:
        layers = self._image_layers()
        current = self._layer if self._layer in layers else None
        active = self.viewer.layers.selection.active
        if current is None:
            current = active if active in layers else (layers[-1] if layers else None)
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        for layer in layers:
            self.layer_box.addItem(layer.name, id(layer))
        if current is not None:
            self.layer_box.setCurrentIndex(layers.index(current))
        self.layer_box.blockSignals(False)
        if current is not self._layer:
            self._set_layer(current)

    def _on_active_layer(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        if self._layer is None and active in self._image_layers():
            self._refresh_layers()

    def _on_layer_chosen(self, index: int) -> None:
        layers = self._image_layers()
        self._set_layer(layers[index] if 0 <= index < len(layers) else None)

    def _set_layer(self, layer: Any) -> None:
        """Switch the chat to another scan: its stored turns, its patient's prior labels."""
        self._layer = layer
        self._conversation = uuid.uuid4().hex
        self._clear_transcript()
        self.model_input_check.blockSignals(True)
        self.model_input_check.setChecked(False)
        self.model_input_check.blockSignals(False)
        self._scan_id = None
        if layer is None:
            self.picker.set_earlier_labels([])
            return
        scan = self._store_call("read the scan", self.store.scan_by_volume, volume_name_of(layer)) if self.store else None
        self._scan_id = scan.id if scan else None
        earlier = self._store_call("read earlier scans", earlier_labels, self.store, scan.id) if scan else None
        self.picker.set_earlier_labels(earlier or [])
        if scan is not None:
            for record in self._store_call("read earlier turns", self.store.chat_turns, scan_id=scan.id) or []:
                self._add_turn(TurnState.from_record(record))

    def _scan_key(self) -> str:
        return f"{id(self._layer)}:{self._layer.name}"

    def _payload(self) -> VolumePayload | None:
        """The volume for the model process, only the first time this scan is used."""
        key = self._scan_key()
        if key in self._sent_scans:
            return None
        layer = self._layer
        meta = (layer.metadata or {}).get("ct_meta") or {}
        self._sent_scans.add(key)
        data = layer.data[0] if layer.multiscale else layer.data  # full resolution of a pyramid
        return VolumePayload(np.asarray(data), tuple(float(s) for s in layer.scale),
                             {"normalised": bool(meta.get("normalised", False))})

    # ------------------------------------------------------------------ models
    def _fill_models(self) -> None:
        self.model_box.blockSignals(True)
        self.model_box.clear()
        self.model_box.addItem("Default model", (DEFAULT_MODEL_NAME, None))
        versions = self._store_call("list model versions", self.store.model_versions) if self.store else None
        for version in versions or []:
            if version.path and version.name != DEFAULT_MODEL_NAME:
                self.model_box.addItem(f"{version.name} ({version.kind})", (version.name, version.path))
        self.model_box.addItem("Choose a model folder...", (_CHOOSE_FOLDER, None))
        self.model_box.blockSignals(False)

    def _on_model_chosen(self, index: int) -> None:
        name, path = self.model_box.itemData(index)
        if name == _CHOOSE_FOLDER:
            path = QFileDialog.getExistingDirectory(self, "Choose a model folder (ours or a published M3D-LaMed)")
            if not path:
                return
            name = None
        self.load_model(path, name)

    def load_model(self, path: str | None, name: str | None) -> None:
        """Load a model in the background: None = the embedded default; `name` as stored with turns."""
        if self.worker.busy_request is not None:
            self.show_message("Wait for the running answer (or cancel it) before switching models.")
            return
        self.model_ready = False
        self._sent_scans.clear()
        if name is None:
            name = self._version_name(path)
        index = self.model_box.findText(name, Qt.MatchFlag.MatchStartsWith)
        if index < 0:  # a folder chosen for the first time: list it beside the others
            index = self.model_box.count() - 1
            self.model_box.insertItem(index, f"{name} (folder)", (name, path))
        self.model_box.setCurrentIndex(index)
        self._loading = (name, path)
        self.model_status.setText(f"Loading {self._loading[0]}...")
        self.model_progress.setVisible(True)
        self._update_buttons()
        self.worker.load(path)

    def _version_name(self, path: str | None) -> str:
        """The registered name of the model in `path` (so turns name it the same), else its folder name."""
        if path is None:
            return DEFAULT_MODEL_NAME
        versions = self._store_call("list model versions", self.store.model_versions) if self.store else None
        for version in versions or []:
            if version.path and Path(version.path).resolve() == Path(path).resolve():
                return version.name
        return Path(path).name

    def _on_loaded(self, info: dict) -> None:
        self.model_name, self.model_path = self._loading or (DEFAULT_MODEL_NAME, None)
        self._loading = None
        self._sent_scans.clear()  # a (re)load empties the worker's scans, also for a shared worker
        self.model_ready = True
        self.model_progress.setVisible(False)
        style = (info.get("settings") or {}).get("prompt_style", "m3d")
        self.model_status.setText(f"Ready: {self.model_name} (prompt style {style})")
        self._update_buttons()

    def _on_load_failed(self, message: str) -> None:
        self._loading = None
        self.model_ready = False
        self.model_progress.setVisible(False)
        self.model_status.setText("No model loaded")
        self.show_message(f"The model could not be loaded: {message}")
        self._update_buttons()

    def _on_worker_error(self, message: str) -> None:
        if not self.worker.alive:
            self.model_ready = False
            self._sent_scans.clear()
            self.model_status.setText("No model loaded")
            self.model_progress.setVisible(False)
        self.show_message(message)
        self._update_buttons()

    def _model_version(self) -> str | None:
        """The name turns are stored under, registering the model version on first use."""
        name, path = self.model_name or DEFAULT_MODEL_NAME, self.model_path
        known = self._store_call("look up the model version", self.store.model_version, name)
        if known is not None:
            return name
        kind = "default" if path is None else "external"
        registered = self._store_call("register the model version", self.store.register_model_version,
                                      name, path, kind=kind)
        return name if registered is not None else None

    # ------------------------------------------------------------------ asking
    def _on_template(self, template: TemplateQuestion) -> None:
        self._template = template
        if self.picker.task != FREE:
            self.question_edit.setPlainText(template.question)
        self.choices_label.setText(
            "Choices: " + "   ".join(f"{l}. {c}" for l, c in zip("ABCD", template.choices)) if template.choices else "")
        self.show_message("")

    def _update_buttons(self) -> None:
        busy = self.worker.busy_request is not None
        self.ask_button.setEnabled(self.model_ready and not busy)
        self.cancel_button.setEnabled(busy)
        self.model_box.setEnabled(not busy)

    def ask(self, question: str | None = None) -> TurnView | None:
        """Send the typed (or given) question about the chosen CT; returns its turn view."""
        question = (question if isinstance(question, str) else self.question_edit.toPlainText()).strip()
        problem = ("Type a question first." if not question else
                   "Open a CT (3-D image layer) first." if self._layer is None else
                   "The model is not loaded yet." if not self.model_ready else
                   "The model is still answering; cancel it or wait." if self.worker.busy_request else "")
        if problem:
            self.show_message(problem)
            return None
        template = self._template if self.picker.task != FREE else TemplateQuestion(question, None, "chat")
        state = TurnState(question=question, choices=template.choices, task=template.task)
        view = self._add_turn(state)
        request_id = self.worker.ask(self._scan_key(), question, volume=self._payload(),
                                     choices=list(template.choices) if template.choices else None,
                                     max_new_tokens=self.max_new_tokens)
        self._pending[request_id] = view
        self.picker.set_task(FREE)
        self.question_edit.clear()
        self.show_message("")
        self._update_buttons()
        return view

    def cancel(self) -> None:
        self.worker.cancel()

    def _on_status(self, request_id: int, text: str) -> None:
        view = self._pending.get(request_id)
        if view is not None and text.startswith("encoding"):
            view.set_status("encoding")

    def _on_piece(self, request_id: int, piece: str) -> None:
        view = self._pending.get(request_id)
        if view is not None:
            view.append(piece)

    def _on_finished(self, request_id: int, answer: dict) -> None:
        view = self._pending.pop(request_id, None)
        self._update_buttons()
        if view is None:
            return
        view.finish(answer, self.model_name)
        if not answer.get("cancelled"):
            self._save_turn(view)
        if view.state.box is not None:
            self.show_box(view)

    def _on_failed(self, request_id: int, message: str) -> None:
        view = self._pending.pop(request_id, None)
        self._update_buttons()
        if view is not None:
            view.fail(message)
        self.show_message(f"The model could not answer: {message}")

    def _save_turn(self, view: TurnView) -> None:
        """Store a finished turn (registering scan and model on first use)."""
        if self.store is None:
            return
        layer, state = self._layer, view.state
        if self._scan_id is None:
            path = (layer.metadata or {}).get("path")
            scan = self._store_call("register the scan", self.store.add_scan, volume_name_of(layer), path)
            self._scan_id = scan.id if scan else None
        if self._scan_id is None:
            return
        state.turn_id = self._store_call(
            "save the turn", self.store.add_chat_turn, self._scan_id, state.question, state.text,
            conversation_id=self._conversation, model_version=self._model_version(), choices=state.choices,
            choice=state.choice, choice_scores=state.choice_scores, box=state.box,
            latency_first_token_s=state.latency_first_token_s, total_s=state.total_s, n_tokens=state.n_tokens)
        view.refresh()

    # ------------------------------------------------------------------ turns
    def _add_turn(self, state: TurnState) -> TurnView:
        view = TurnView(state)
        view.send_requested.connect(self.send_to_queue)
        view.jump_requested.connect(self.jump_to_box)
        view.box_requested.connect(self.show_box)
        self._transcript_layout.insertWidget(self._transcript_layout.count() - 1, view)
        self.turns.append(view)
        self._follow = True
        return view

    def _clear_transcript(self) -> None:
        for view in self.turns:
            view.setParent(None)
            view.deleteLater()
        self.turns.clear()
        self._pending.clear()


    def send_to_queue(self, view: TurnView) -> None:
        """Make the turn a QA pair (source "chat") that the rating queue can hand out."""
        state = view.state
        if state.turn_id is None:
            self.show_message("Only saved turns can be sent to the rating queue.")
            return
        task = state.task if state.task != FREE else "chat"
        qa_id = self._store_call("send the turn to the rating queue", self.store.chat_turn_to_qa, state.turn_id, task)
        if qa_id is not None:
            state.qa_id = qa_id
            view.refresh()
            self.show_message(f"Added as QA pair {qa_id} (source: chat).", error=False)

    def _box_layer_name(self, view: TurnView) -> str:
        return f"{self._layer.name} box Q{self.turns.index(view) + 1}"

    def show_box(self, view: TurnView) -> Any:
        """Draw the turn's box on the CT (in the CT's millimetres)."""
        if view.state.box is None or self._layer is None:
            return None
        return add_box_layer(self.viewer, self._layer, view.state.box, self._box_layer_name(view))

    def jump_to_box(self, view: TurnView) -> None:
        """Move the viewer to the box centre (and draw the box if it is not shown)."""
        if view.state.box is None or self._layer is None:
            return
        if self._box_layer_name(view) not in self.viewer.layers:
            self.show_box(view)
        jump_to(self.viewer, self._layer, box_centre(view.state.box))

    # ------------------------------------------------------------------ tools
    def _model_input_name(self) -> str:
        return f"model input: {self._layer.name}"

    def _toggle_model_input(self, checked: bool) -> None:
        if self._layer is None:
            return
        if not checked:
            if self._model_input_name() in self.viewer.layers:
                self.viewer.layers.remove(self._model_input_name())
            return
        if not self.model_ready:
            self.show_message("Load a model first: its input size decides what it sees.")
            self.model_input_check.setChecked(False)
            return
        self.worker.request_model_input(self._scan_key(), self._payload())

    def _on_model_input(self, key: str, image: Any, scale: tuple, offset: tuple) -> None:
        if self._layer is None or key != self._scan_key() or not self.model_input_check.isChecked():
            return
        show_model_input(self.viewer, self._layer, image, scale, offset, self._model_input_name())

    def conversation_markdown(self) -> str:
        name = volume_name_of(self._layer) if self._layer is not None else "no scan"
        return turns_markdown(name, (view.state for view in self.turns))

    def copy_conversation(self) -> None:
        QApplication.clipboard().setText(self.conversation_markdown())
        self.show_message("Conversation copied as Markdown.", error=False)

    def new_conversation(self) -> None:
        if self.worker.busy_request is not None:
            self.show_message("Cancel the running answer first.")
            return
        self._conversation = uuid.uuid4().hex
        self._clear_transcript()

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the model process and unhook from the viewer (the panel is going away); idempotent."""
        if self._closed:
            return
        self._closed = True
        for emitter, callback in ((self.viewer.layers.events.inserted, self._refresh_layers),
                                  (self.viewer.layers.events.removed, self._refresh_layers),
                                  (self.viewer.layers.selection.events.active, self._on_active_layer)):
            emitter.disconnect(callback)
        if self._owns_worker:
            self.worker.shutdown()
        else:  # a shared worker lives on: stop it from calling into this closed panel
            for signal, slot in self._worker_links:
                signal.disconnect(slot)
