"""Which model answers, whether it is ready, and which scans it already holds.

The menu offers the embedded default, every registered version with a folder, and any folder
(ours or a published M3D-LaMed). A model is named as the store knows it, so turns asked of a
folder that is also a registered version are stored under that version, not under the folder.
A scan is sent to the model process once per loaded model: the process keeps it (and its
encoding) for follow-up questions, and forgets it when a model (re)loads or the process dies.
A model that fails to load leaves the one that worked in place (the process keeps it loaded), so
a wrong folder never costs the radiologist their working model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QLabel, QProgressBar

from napari_ctvqa.vlm_server import VolumePayload
from napari_ctvqa.widgets.chat.ct_choice import payload_of, scan_key
from napari_ctvqa.widgets.chat.history import DEFAULT_MODEL_NAME, ChatHistory

_CHOOSE_FOLDER = "__folder__"


class ModelChoice(QObject):
    """Menu (`box`), `status` and `progress`; `name`, `path` and `ready` describe the loaded model,
    `payload` hands out each scan once per load.

    It only shows the loading; the panel starts it (`begin`, then the worker) and reports how it
    ended (`loaded`, `failed`, `lost`). Picking a menu entry emits `chosen(path, name)`.
    """

    chosen = Signal(object, object)  # path or None (the default), name or None (from the path)

    def __init__(self, history: ChatHistory, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.history = history
        self.name: str | None = None
        self.path: str | None = None
        self.ready = False
        self.runtime: str | None = None  # where the loaded model runs, e.g. "cpu, float32"
        self._loading: tuple[str, str | None] | None = None
        self._previous: tuple[str, str | None] | None = None  # the working model while another loads
        self._sent_scans: set[str] = set()
        self._ready_text = ""
        self.box = QComboBox()
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setMaximumHeight(10)
        self.progress.setTextVisible(False)
        self.box.activated.connect(self._on_activated)

    def fill(self) -> None:
        self.box.blockSignals(True)
        self.box.clear()
        self.box.addItem("Default model", (DEFAULT_MODEL_NAME, None))
        for version in self.history.model_versions():
            if version.path and version.name != DEFAULT_MODEL_NAME:
                self.box.addItem(f"{version.name} ({version.kind})", (version.name, version.path))
        self.box.addItem("Choose a model folder...", (_CHOOSE_FOLDER, None))
        self.box.blockSignals(False)

    def begin(self, path: str | None, name: str | None) -> None:
        """Show that `path` (None: the embedded default) is loading, listed under `name`."""
        self._previous = (self.name, self.path) if self.ready and self.name else self._previous
        self.ready = False
        self._sent_scans.clear()
        if name is None:
            name = self.version_name(path)
        index = self._index_of(name)
        if index < 0:  # a folder chosen for the first time: list it beside the others
            index = self.box.count() - 1
            self.box.insertItem(index, f"{name} (folder)", (name, path))
        self.box.setCurrentIndex(index)
        self._loading = (name, path)
        self.status.setText(f"Loading {name}...")
        self.progress.setVisible(True)

    def _index_of(self, name: str | None) -> int:
        """The menu entry of model `name` (matched on the stored name, not a text prefix: `ft-r1` is
        not `ft-r10`), else -1."""
        return next((k for k in range(self.box.count()) if (self.box.itemData(k) or (None,))[0] == name), -1)

    def _select(self, name: str | None) -> None:
        index = self._index_of(name)
        if index >= 0:
            self.box.setCurrentIndex(index)

    def version_name(self, path: str | None) -> str:
        """The registered name of the model in `path` (so turns name it the same), else its folder name."""
        if path is None:
            return DEFAULT_MODEL_NAME
        for version in self.history.model_versions():
            if version.path and Path(version.path).resolve() == Path(path).resolve():
                return version.name
        return Path(path).name

    def loaded(self, info: dict) -> None:
        self.name, self.path = self._loading or (DEFAULT_MODEL_NAME, None)
        self._loading = None
        self._sent_scans.clear()  # a (re)load empties the worker's scans, also for a shared worker
        self.ready = True
        self.progress.setVisible(False)
        style = (info.get("settings") or {}).get("prompt_style", "m3d")
        self.runtime = info.get("runtime")
        where = f" on {self.runtime}" if self.runtime else ""
        self._set_ready(f"Ready: {self.name}{where} (prompt style {style})")

    def failed(self) -> str | None:
        """The load failed: back to the model that worked (its name), else no model (None)."""
        self._loading = None
        if self._previous is None:
            self.lost()
            return None
        self.name, self.path = self._previous
        self.ready = True
        self.progress.setVisible(False)
        self._select(self.name)
        self._set_ready(f"Ready: {self.name} (kept: the chosen model could not be loaded)")
        return self.name

    def _set_ready(self, text: str) -> None:
        self._ready_text = text
        self.status.setText(text)

    def scan_note(self, note: str) -> None:
        """Say how reading the current scan ahead of its first question goes, after the model's line."""
        if self.ready:
            self.status.setText(f"{self._ready_text} · {note}" if note else self._ready_text)

    def lost(self) -> None:
        """No model any more (its process died, or the load failed)."""
        self.ready = False
        self._previous = None
        self._sent_scans.clear()
        self.progress.setVisible(False)
        self.status.setText("No model loaded")

    def payload(self, layer: Any) -> VolumePayload | None:
        """The layer's volume for the model process, only the first time the loaded model needs it."""
        key = scan_key(layer)
        if key in self._sent_scans:
            return None
        self._sent_scans.add(key)
        return payload_of(layer)

    def _on_activated(self, index: int) -> None:
        name, path = self.box.itemData(index)
        if name == _CHOOSE_FOLDER:
            path = QFileDialog.getExistingDirectory(self.box, "Choose a model folder (ours or a published M3D-LaMed)")
            if not path:  # cancelled: the menu shows the model that is still loaded again
                self._select(self.name)
                return
            name = None
        self.chosen.emit(path, name)
