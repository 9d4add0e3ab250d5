"""Controls that leave the keyboard to the rating panel unless the rater is typing.

The panel's single keys (digits, C, N, S, F, arrows) only work while the panel has the focus, so
its buttons never take it, and a text field keeps every key while it has it (no letter typed into
a note may skip the pair) until Enter or Esc hands the keyboard back.
"""
from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QKeyEvent
from qtpy.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget


class TextField(QLineEdit):
    """A line edit that keeps every key to itself while typing (so no letter triggers a shortcut
    and no arrow reaches napari) and reports Enter as `done`, Esc as `cancelled`."""

    done = Signal()
    cancelled = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.done.emit()
        elif event.key() == Qt.Key.Key_Escape:
            self.cancelled.emit()
        else:
            super().keyPressEvent(event)
        event.accept()


def key_button(text: str, tip: str, slot: Callable[[], object]) -> QPushButton:
    """A button that never takes the keyboard focus from the panel."""
    button = QPushButton(text)
    button.setToolTip(tip)
    button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    button.clicked.connect(slot)
    return button


class ReasonRow(QWidget):
    """"Skip because: [...] OK Cancel", hidden until asked: a skip or flag needs a reason, and the
    reason is what a curator reads later to decide whether the pair or the scan is at fault."""

    confirmed = Signal(str, str)  # kind ("skip" or "flag"), the reason as typed
    cancelled = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.kind: str | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel()
        self.field = TextField()
        self.field.done.connect(self._confirm)
        self.field.cancelled.connect(self.cancelled)
        layout.addWidget(self.label)
        layout.addWidget(self.field, 1)
        layout.addWidget(key_button("OK [Enter]", "store with this reason", self._confirm))
        # a lambda, not `self.cancelled.emit`: `clicked` passes `checked`, which `cancelled` does not carry
        layout.addWidget(key_button("Cancel [Esc]", "keep the pair as it is", lambda: self.cancelled.emit()))
        self.setVisible(False)

    def ask(self, kind: str) -> None:
        """Show the row for a skip or a flag and give the keyboard to the reason field."""
        self.kind = kind
        self.label.setText("Skip because:" if kind == "skip" else "Flag because:")
        self.field.setPlaceholderText("why? (required)  Enter: store   Esc: cancel")
        self.field.clear()
        self.setVisible(True)
        self.field.setFocus()

    def dismiss(self) -> None:
        self.kind = None
        if not self.isHidden():  # hiding re-lays out the panel: only when it is shown
            self.setVisible(False)

    def _confirm(self) -> None:
        if self.kind is not None:
            self.confirmed.emit(self.kind, self.field.text())
