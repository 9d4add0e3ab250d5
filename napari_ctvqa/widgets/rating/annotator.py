"""Who is rating: picked from the raters the database knows, a new name only after a confirmation.

Typing a name used to open (or silently create) any queue, so a typo made a new, empty rater and
the real queue looked lost. The picker lists the known human raters; a name it does not know
asks "Create it?" first.
"""
from __future__ import annotations

import difflib
import html

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_ctvqa.widgets.rating.controls import TextField, key_button


class AnnotatorPicker(QWidget):
    """An editable list of known annotators with Start; `chosen(name, is_new)` when confirmed."""

    chosen = Signal(str, bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.known: list[str] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.field = TextField()
        self.combo.setLineEdit(self.field)
        self.field.setPlaceholderText("pick your name")
        self.field.done.connect(self.request)
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.request)
        row.addWidget(QLabel("Annotator:"))
        row.addWidget(self.combo, 1)
        row.addWidget(self.start_button)
        layout.addLayout(row)
        self.confirm = QWidget()
        confirm_row = QHBoxLayout(self.confirm)
        confirm_row.setContentsMargins(0, 0, 0, 0)
        self.confirm_label = QLabel()
        self.confirm_label.setWordWrap(True)
        confirm_row.addWidget(self.confirm_label, 1)
        confirm_row.addWidget(key_button("Create", "create this annotator and open their (empty) queue", self._create))
        confirm_row.addWidget(key_button("Cancel", "pick another name", self._cancel))
        self.confirm.setVisible(False)
        layout.addWidget(self.confirm)
        self._pending: str | None = None

    def set_names(self, names: list[str]) -> None:
        current = self.field.text()
        self.known = sorted(names)
        self.combo.clear()
        self.combo.addItems(self.known)
        self.field.setText(current)

    def set_name(self, name: str) -> None:
        self.field.setText(name)

    def request(self, name: str | None = None) -> None:
        """Start `name` (default: the typed one) if known, else ask to confirm a new annotator."""
        name = (name if isinstance(name, str) else self.field.text()).strip()
        if not name:
            return
        if name in self.known:
            self._cancel()
            self.chosen.emit(name, False)
            return
        self._pending = name
        close = difflib.get_close_matches(name, self.known, n=1, cutoff=0.6)
        hint = f" Did you mean <b>{html.escape(close[0])}</b>?" if close else ""
        self.confirm_label.setText(f"<b>{html.escape(name)}</b> is not a known annotator.{hint} Create it?")
        self.confirm.setVisible(True)

    def _create(self) -> None:
        if self._pending:
            name, self._pending = self._pending, None
            self.confirm.setVisible(False)
            self.known = sorted({*self.known, name})
            self.chosen.emit(name, True)

    def _cancel(self) -> None:
        self._pending = None
        if not self.confirm.isHidden():
            self.confirm.setVisible(False)
