"""The rating panel's keys, in one table, so the help line and the handling cannot drift apart.

Rating is keyboard first because every second per pair counts over a 75-pair sitting. Keys with
Ctrl, Alt or Meta are never taken: they stay napari's. The window keys L/M/B are the window
panel's, so they work the same with or without it (A shows the full range: F is the flag here).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from qtpy.QtCore import Qt
from qtpy.QtGui import QKeyEvent
from qtpy.QtWidgets import QLineEdit

from napari_ctvqa.widgets.rating.scores import ScorePanel

KEY_HELP = ("0-5 score · Tab/↑↓ dimension · C consistent · Enter submit · ←/Backspace back · "
            "→ next · U next unrated · N note · S skip · F flag · PgUp/PgDn slice · "
            "L/M/B/A lung/mediastinum/bone/all window · R rubric")
_DIGITS = {getattr(Qt.Key, f"Key_{d}"): d for d in range(6)}
_NOT_OURS = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.MetaModifier


class KeyTarget(Protocol):
    """What the keys drive (the rating widget)."""

    scores: ScorePanel
    note: QLineEdit

    def submit(self) -> object: ...
    def go_back(self) -> None: ...
    def go_forward(self) -> None: ...
    def ask_reason(self, kind: str) -> None: ...
    def step_slice(self, delta: int) -> None: ...
    def next_unrated(self) -> None: ...
    def set_window(self, window: str) -> None: ...
    def toggle_rubric(self) -> None: ...


# key -> action(panel, event); digits are handled separately (they carry the score)
_ACTIONS: dict[Qt.Key, Callable[[KeyTarget, QKeyEvent], object]] = {
    Qt.Key.Key_Tab: lambda w, e: w.scores.move_focus(-1 if e.modifiers() & Qt.KeyboardModifier.ShiftModifier else 1),
    Qt.Key.Key_Backtab: lambda w, e: w.scores.move_focus(-1),
    Qt.Key.Key_Down: lambda w, e: w.scores.move_focus(1),
    Qt.Key.Key_Up: lambda w, e: w.scores.move_focus(-1),
    Qt.Key.Key_C: lambda w, e: w.scores.toggle_consistent(),
    Qt.Key.Key_Return: lambda w, e: w.submit(),
    Qt.Key.Key_Enter: lambda w, e: w.submit(),
    Qt.Key.Key_Backspace: lambda w, e: w.go_back(),
    Qt.Key.Key_Left: lambda w, e: w.go_back(),
    Qt.Key.Key_Right: lambda w, e: w.go_forward(),
    Qt.Key.Key_N: lambda w, e: w.note.setFocus(),
    Qt.Key.Key_S: lambda w, e: w.ask_reason("skip"),
    Qt.Key.Key_F: lambda w, e: w.ask_reason("flag"),
    Qt.Key.Key_PageUp: lambda w, e: w.step_slice(1),
    Qt.Key.Key_PageDown: lambda w, e: w.step_slice(-1),
    Qt.Key.Key_U: lambda w, e: w.next_unrated(),
    Qt.Key.Key_L: lambda w, e: w.set_window("lung"),
    Qt.Key.Key_M: lambda w, e: w.set_window("mediastinum"),
    Qt.Key.Key_B: lambda w, e: w.set_window("bone"),
    Qt.Key.Key_A: lambda w, e: w.set_window("full"),
    Qt.Key.Key_R: lambda w, e: w.toggle_rubric(),
}


def is_rating_key(event: QKeyEvent) -> bool:
    """Whether the panel acts on this key press (a digit or a table key, without Ctrl/Alt/Meta)."""
    if event.modifiers() & _NOT_OURS:
        return False
    return event.key() in _DIGITS or event.key() in _ACTIONS


def press(panel: KeyTarget, event: QKeyEvent) -> None:
    """Act on a key for which `is_rating_key` holds: a digit scores the highlighted dimension."""
    key = event.key()
    if key in _DIGITS:
        panel.scores.type_score(_DIGITS[key])
    else:
        _ACTIONS[key](panel, event)
