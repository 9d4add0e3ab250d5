"""The five 0-5 score rows and the consistency flag of the rating widget.

Built for keyboard-only rating: the rows never take keyboard focus themselves (the rating widget
routes digits to the highlighted row), the buttons show the digit that sets them, and each row's
tooltip carries the rubric anchors so the meaning of a score is one hover away.
"""
from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from annotation.rubric import DIMENSIONS, MAX_SCORE, MIN_SCORE, RUBRIC

_FOCUSED = 'QWidget#scoreRow[focused="true"] { background: rgba(90, 140, 220, 70); border-radius: 3px; }'
_BUTTON = (
    "QPushButton { min-width: 22px; max-width: 28px; padding: 1px; }"
    "QPushButton:checked { background: #3d7be0; color: white; font-weight: bold; }"
)


def dimension_tooltip(key: str) -> str:
    """What the dimension asks and what 0, 3 and 5 mean (rich text for a Qt tooltip)."""
    dim = next(d for d in RUBRIC.dimensions if d.key == key)
    anchors = "".join(f"<br><b>{s}</b>: {text}" for s, text in sorted(dim.anchors.items()))
    return f"<b>{dim.label}</b>: {dim.asks}{anchors}"


class ScoreRow(QWidget):
    """One dimension: its label and six buttons 0..5; clicking a set score again clears it."""

    clicked = Signal(int, object)  # row index, new value (int or None)

    def __init__(self, index: int, key: str, label: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("scoreRow")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.index, self.key = index, key
        self._value: int | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 1, 4, 1)
        layout.setSpacing(2)
        self.label = QLabel(label)
        self.label.setToolTip(dimension_tooltip(key))
        layout.addWidget(self.label, 1)
        self.buttons: list[QPushButton] = []
        for score in range(MIN_SCORE, MAX_SCORE + 1):
            button = QPushButton(str(score))
            button.setCheckable(True)
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            button.setStyleSheet(_BUTTON)
            button.setToolTip(f"{label} = {score} (key {score})")
            button.clicked.connect(lambda _=False, s=score: self._on_click(s))
            layout.addWidget(button)
            self.buttons.append(button)
        self.setToolTip(dimension_tooltip(key))

    def value(self) -> int | None:
        return self._value

    def set_value(self, value: int | None) -> None:
        self._value = value
        for score, button in enumerate(self.buttons, start=MIN_SCORE):
            button.setChecked(score == value)

    def set_focused(self, focused: bool) -> None:
        # a property re-polish, not setStyleSheet: restyling per key press would cost milliseconds
        self.setProperty("focused", focused)
        self.style().unpolish(self)
        self.style().polish(self)
        self.label.setText(("▶ " if focused else "") + self.label.text().removeprefix("▶ "))

    def _on_click(self, score: int) -> None:
        self.set_value(None if self._value == score else score)
        self.clicked.emit(self.index, self._value)


class ScorePanel(QWidget):
    """Five score rows with one highlighted ("focused") row, plus the consistency checkbox."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setStyleSheet(_FOCUSED)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        self.rows = [ScoreRow(i, key, label, self) for i, (key, label, _) in enumerate(DIMENSIONS)]
        for row in self.rows:
            row.clicked.connect(self._on_row_clicked)
            layout.addWidget(row)
        self.consistent = QCheckBox("Consistent with the report  [C]")
        self.consistent.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.consistent.setToolTip(RUBRIC.consistency)
        self.consistent.toggled.connect(self.changed)
        layout.addWidget(self.consistent)
        self.focused = 0
        self.rows[0].set_focused(True)

    def scores(self) -> dict[str, int | None]:
        return {row.key: row.value() for row in self.rows}

    def missing(self) -> list[str]:
        """Keys of the dimensions still without a score, in rubric order."""
        return [row.key for row in self.rows if row.value() is None]

    def set_scores(self, scores: dict[str, int | None] | None, consistent: bool | None) -> None:
        """Show a stored rating (or an empty form for `None`) and highlight the first row."""
        for row in self.rows:
            row.set_value((scores or {}).get(row.key))
        self.consistent.setChecked(True if consistent is None else consistent)
        self.focus_row(0)
        self.changed.emit()

    def focus_row(self, index: int) -> None:
        self.rows[self.focused].set_focused(False)
        self.focused = max(0, min(len(self.rows) - 1, index))
        self.rows[self.focused].set_focused(True)

    def move_focus(self, delta: int) -> None:
        """Tab/Down and Shift+Tab/Up: wrap around so the rater never gets stuck at an end."""
        self.focus_row((self.focused + delta) % len(self.rows))

    def type_score(self, score: int) -> None:
        """A digit key: score the highlighted row and move to the next one."""
        self.rows[self.focused].set_value(score)
        if self.focused < len(self.rows) - 1:
            self.focus_row(self.focused + 1)
        self.changed.emit()

    def toggle_consistent(self) -> None:
        self.consistent.setChecked(not self.consistent.isChecked())

    def _on_row_clicked(self, index: int, _value: object) -> None:
        self.focus_row(index + 1 if index < len(self.rows) - 1 else index)
        self.changed.emit()

