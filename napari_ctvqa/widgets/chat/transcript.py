"""The chat panel's scrolling list of turns, and where streamed replies find their turn.

It keeps the newest text in view while an answer streams, but stops following as soon as the
user scrolls up to read an earlier answer, so streaming never yanks the page from under them.
Replies are matched to turns by request id; a turn cleared meanwhile (another scan, a new
conversation) simply gets no more text.
"""
from __future__ import annotations

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
        self._answering: dict[int, TurnView] = {}  # request id -> its turn, until the answer ends
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

    def expect(self, request_id: int, view: TurnView) -> None:
        self._answering[request_id] = view

    def show_status(self, request_id: int, text: str) -> None:
        view = self._answering.get(request_id)
        if view is not None and text.startswith("encoding"):
            view.set_status("encoding")

    def append_piece(self, request_id: int, piece: str) -> None:
        view = self._answering.get(request_id)
        if view is not None:
            view.append(piece)

    def answered(self, request_id: int) -> TurnView | None:
        """The turn the request was for, now no longer waiting (None when it was cleared)."""
        return self._answering.pop(request_id, None)

    def clear_turns(self) -> None:
        for view in self.turns:
            view.setParent(None)
            view.deleteLater()
        self.turns.clear()
        self._answering.clear()
