"""The chat panel's scrolling list of turns, and where streamed replies find their turn.

It keeps the newest text in view while an answer streams, but stops following as soon as the
user scrolls up to read an earlier answer, so streaming never yanks the page from under them.
Replies are matched to turns by request id; a turn cleared meanwhile (another scan, a new
conversation) simply gets no more text. The clock of each turn starts here, when it is asked,
so its timings are what the user waited (encoding, sending the scan and queueing included).
"""
from __future__ import annotations

import time

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget

from napari_ctvqa.widgets.chat.turn import TurnState, TurnView


class Transcript(QScrollArea):
    """The turns of one conversation, oldest first; each view's requests are re-emitted here."""

    send_requested = Signal(object)  # TurnView
    jump_requested = Signal(object)
    box_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.turns: list[TurnView] = []
        self._answering: dict[int, tuple[TurnView, float]] = {}  # request id -> turn, asked at; until answered
        content = QWidget()
        self._layout = QVBoxLayout(content)
        self._layout.setContentsMargins(2, 2, 2, 2)
        self._layout.addStretch(1)
        self.setWidgetResizable(True)
        self.setWidget(content)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._follow = True
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(lambda value: setattr(self, "_follow", value >= bar.maximum() - 4))
        bar.rangeChanged.connect(lambda _lo, hi: bar.setValue(hi) if self._follow else None)

    def add_turn(self, state: TurnState) -> TurnView:
        """Append a turn below the others and follow it again (a new question is worth seeing)."""
        view = TurnView(state)
        view.send_requested.connect(self.send_requested)
        view.jump_requested.connect(self.jump_requested)
        view.box_requested.connect(self.box_requested)
        self._layout.insertWidget(self._layout.count() - 1, view)
        self.turns.append(view)
        self._follow = True
        return view

    def expect(self, request_id: int, view: TurnView, asked_at: float | None = None) -> None:
        self._answering[request_id] = (view, time.perf_counter() if asked_at is None else asked_at)

    def show_status(self, request_id: int, text: str) -> None:
        view, _ = self._answering.get(request_id, (None, 0.0))
        if view is not None and text.startswith("encoding"):
            view.set_status("encoding")

    def append_piece(self, request_id: int, piece: str) -> None:
        view, asked_at = self._answering.get(request_id, (None, 0.0))
        if view is not None:
            view.append(piece, time.perf_counter() - asked_at)

    def answered(self, request_id: int) -> tuple[TurnView | None, float | None]:
        """The turn the request was for, now no longer waiting, and the seconds since it was asked
        ((None, None) when it was cleared)."""
        view, asked_at = self._answering.pop(request_id, (None, None))
        return view, (None if asked_at is None else time.perf_counter() - asked_at)

    def clear_turns(self) -> None:
        for view in self.turns:
            view.setParent(None)
            view.deleteLater()
        self.turns.clear()
        self._answering.clear()
