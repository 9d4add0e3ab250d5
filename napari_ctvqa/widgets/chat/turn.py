"""One question and its answer in the chat panel, and a conversation as Markdown.

The question and the answer sit in visibly different blocks (a radiologist must never mistake
the model's words for their own); closed answers show the chosen letter and per-choice bars;
box answers offer "Show box" and "Jump to slice"; every stored turn can go to the rating queue.
A closed answer is the choice the scores picked; the model's own words are shown beside it only
when they name the same choice, and otherwise flagged. An empty or looping open answer is flagged
and cannot go to the rating queue (`model.inference.answer_checks`). Timings are what the user
waited: from Ask to the first word and to the end, with the scan's encoding named apart.
"""
from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from model.inference.answer_checks import (
    ClosedReading,
    degenerate_reason,
    missing_box_reason,
    read_closed,
)
from napari_ctvqa.widgets.chat.score_bars import ChoiceScoreBars

_STATUS_TEXT = {
    "waiting": "waiting for the model...",
    "encoding": "encoding the scan (first question only)...",
    "streaming": "answering...",
    "cancelled": "cancelled: the answer stops here",
}


@dataclass
class TurnState:
    """What the panel knows of one turn; filled while the answer streams, then from the Answer."""

    question: str
    choices: tuple[str, ...] | None = None
    task: str = "chat"
    text: str = ""
    choice: str | None = None
    choice_scores: dict[str, float] | None = None
    box: tuple[float, ...] | None = None
    model_version: str | None = None
    latency_first_token_s: float | None = None  # from Ask to the first streamed text, as waited
    total_s: float | None = None  # from Ask to the finished answer
    n_tokens: int | None = None
    encoding_s: float | None = None  # encoding the scan, when this turn had to (its first question)
    status: str = "waiting"  # waiting | encoding | streaming | done | cancelled | failed
    error: str = ""
    turn_id: int | None = None
    qa_id: int | None = None

    @classmethod
    def from_record(cls, record: Any) -> TurnState:
        """A turn read back from the store (`annotation.records.ChatTurnRecord`)."""
        return cls(question=record.question, choices=tuple(record.choices) if record.choices else None,
                   task=getattr(record, "task", None) or "chat",
                   text=record.answer, choice=record.choice, choice_scores=record.choice_scores,
                   box=tuple(record.box) if record.box else None, model_version=record.model_version,
                   latency_first_token_s=record.latency_first_token_s, total_s=record.total_s,
                   n_tokens=record.n_tokens, encoding_s=getattr(record, "encoding_s", None),
                   status="done", turn_id=record.id)

    @property
    def closed(self) -> bool:
        return bool(self.choices)

    def reading(self) -> ClosedReading | None:
        """How a closed answer reads (chosen choice, whether the words agree); None for open ones."""
        return read_closed(self.text, self.choices, self.choice) if self.closed else None

    def problem(self) -> str | None:
        """Why this finished answer must not be rated (None when it may be)."""
        if self.closed:
            return None if self.choice else "no choice was scored"
        return degenerate_reason(self.text) or missing_box_reason(self.question, self.box)

    def answer_text(self) -> str:
        """The answer as a reader should take it: the chosen choice of a closed question, else the text."""
        reading = self.reading()
        return reading.shown if reading is not None and reading.shown else self.text

    def meta_line(self) -> str:
        """Model and timings, for the turn's footer and the Markdown export."""
        parts = [self.model_version or "model"]
        if self.encoding_s is not None:
            parts.append(f"encoding {self.encoding_s:.2f} s")
        if self.latency_first_token_s is not None:
            parts.append(f"first token {self.latency_first_token_s:.2f} s")
        if self.total_s is not None:
            parts.append(f"total {self.total_s:.2f} s")
        if self.n_tokens:
            parts.append(f"{self.n_tokens} tokens")
        return " · ".join(parts)

    def choice_text(self) -> str:
        if self.choice is None:
            return ""
        texts = dict(zip("ABCD", self.choices or ()))
        return f"{self.choice}. {texts.get(self.choice, '')}".strip()


_LONGEST_UNBROKEN = 40


def breakable(text: str) -> str:
    """Text with zero-width spaces in very long words, so a QLabel can wrap it instead of
    widening the panel (untrained models and tokenizer artefacts produce such runs)."""
    words = text.split(" ")
    return " ".join("\u200b".join(w[i:i + _LONGEST_UNBROKEN] for i in range(0, len(w), _LONGEST_UNBROKEN))
                    if len(w) > _LONGEST_UNBROKEN else w for w in words)


def format_box(box: Iterable[float]) -> str:
    z1, y1, x1, z2, y2, x2 = (float(v) for v in box)
    return f"z {z1:.0f}-{z2:.0f}, y {y1:.0f}-{y2:.0f}, x {x1:.0f}-{x2:.0f} (voxels)"


def turns_markdown(volume_name: str, turns: Iterable[TurnState]) -> str:
    """The conversation as Markdown, for reports and messages (Copy button)."""
    lines = [f"# CT VQA conversation: {volume_name}", ""]
    for number, turn in enumerate(turns, 1):
        lines += [f"## Q{number}. {turn.question}", ""]
        if turn.choices:
            lines += [f"- {letter}. {text}" for letter, text in zip("ABCD", turn.choices)] + [""]
        lines += [f"**Answer:** {turn.answer_text() or '(no text)'}", ""]
        reading = turn.reading()
        if reading is not None and turn.text and not reading.agrees:
            lines += [f"*Flagged: {reading.note}.*", ""]
        elif reading is None and turn.status == "done" and turn.problem():
            lines += [f"*Flagged: {turn.problem()}.*", ""]
        if turn.choice:
            lines.append(f"**Choice:** {turn.choice_text()}")
            if turn.choice_scores:
                scores = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(turn.choice_scores.items()))
                lines.append(f"(scores: {scores})")
            lines.append("")
        if turn.box:
            lines += [f"**Box:** {format_box(turn.box)}", ""]
        if turn.status in ("cancelled", "failed"):
            lines += [f"*{turn.status}{': ' + turn.error if turn.error else ''}*", ""]
        lines += [f"*{turn.meta_line()}*", ""]
    return "\n".join(lines).rstrip() + "\n"


class TurnView(QFrame):
    """The widget of one turn; the panel updates it through `append`, `finish` and `fail`."""

    send_requested = Signal(object)  # TurnView
    jump_requested = Signal(object)
    box_requested = Signal(object)

    def __init__(self, state: TurnState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.setObjectName("chatTurn")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(4)

        self.question_label = QLabel(f"<b>Question</b><br>{html.escape(breakable(state.question))}")
        self.question_label.setWordWrap(True)
        self.question_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.question_label)

        answer_box = QFrame()
        answer_box.setObjectName("chatAnswer")
        answer_box.setStyleSheet("#chatAnswer { background-color: rgba(90, 140, 220, 45); border-radius: 4px; }")
        self._answer_layout = QVBoxLayout(answer_box)
        self._answer_layout.setContentsMargins(6, 4, 6, 4)
        self._answer_layout.setSpacing(3)
        header = QLabel("<b>Model answer</b>")
        self._answer_layout.addWidget(header)
        self.answer_label = QLabel()
        self.answer_label.setWordWrap(True)
        self.answer_label.setTextFormat(Qt.TextFormat.PlainText)
        self.answer_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._answer_layout.addWidget(self.answer_label)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self._answer_layout.addWidget(self.status_label)
        self.choice_label = QLabel()
        self.choice_label.setWordWrap(True)
        self._answer_layout.addWidget(self.choice_label)
        self.flag_label = QLabel()
        self.flag_label.setWordWrap(True)
        self.flag_label.setStyleSheet("color: #f0a04b;")
        self._answer_layout.addWidget(self.flag_label)
        self.score_bars: ChoiceScoreBars | None = None
        layout.addWidget(answer_box)

        self.box_row = QWidget()
        box_layout = QHBoxLayout(self.box_row)
        box_layout.setContentsMargins(0, 0, 0, 0)
        self.box_label = QLabel()
        self.box_label.setWordWrap(True)
        self.show_box_button = QPushButton("Show box")
        self.jump_button = QPushButton("Jump to slice")
        box_layout.addWidget(self.box_label, 1)
        box_layout.addWidget(self.show_box_button)
        box_layout.addWidget(self.jump_button)
        self.show_box_button.clicked.connect(lambda: self.box_requested.emit(self))
        self.jump_button.clicked.connect(lambda: self.jump_requested.emit(self))
        layout.addWidget(self.box_row)

        footer = QHBoxLayout()
        self.meta_label = QLabel()
        self.meta_label.setWordWrap(True)
        self.meta_label.setStyleSheet("color: #9a9a9a;")
        self.send_button = QPushButton("Send to rating queue")
        self.send_button.setToolTip("Create a QA pair (source: chat) that annotators can rate")
        self.send_button.clicked.connect(lambda: self.send_requested.emit(self))
        footer.addWidget(self.meta_label, 1)
        footer.addWidget(self.send_button)
        layout.addLayout(footer)
        self.refresh()

    def append(self, piece: str, waited_s: float | None = None) -> None:
        """Add streamed text (the first piece ends the "encoding" state; `waited_s` since Ask)."""
        if not self.state.text and waited_s is not None:
            self.state.latency_first_token_s = waited_s
        self.state.text += piece
        self.state.status = "streaming"
        self.answer_label.setText(breakable(self.state.text))
        self.status_label.setText(_STATUS_TEXT["streaming"])

    def set_status(self, status: str) -> None:
        self.state.status = status
        self.refresh()

    def finish(self, answer: dict[str, Any], model_version: str | None, waited_s: float | None = None) -> None:
        """Show the final answer (a `model.Answer` as a dict with "cancelled" and "encoding_s");
        `waited_s` is the time since Ask (the panel's clock: what the user waited)."""
        state = self.state
        state.text = answer.get("text", state.text) or state.text
        state.choice = answer.get("choice")
        state.choice_scores = answer.get("choice_scores")
        state.box = tuple(answer["box"]) if answer.get("box") else None
        if state.latency_first_token_s is None:  # no text streamed: the model's own figure
            state.latency_first_token_s = answer.get("latency_first_token_s")
        state.total_s = waited_s if waited_s is not None else answer.get("total_s")
        state.encoding_s = answer.get("encoding_s")
        state.n_tokens = answer.get("n_tokens")
        state.model_version = model_version
        state.status = "cancelled" if answer.get("cancelled") else "done"
        self.refresh()

    def fail(self, message: str) -> None:
        self.state.status = "failed"
        self.state.error = message
        self.refresh()

    def refresh(self) -> None:
        """Redraw everything from `state` (also used for turns restored from the store)."""
        state = self.state
        finished = state.status in ("done", "cancelled", "failed")
        reading = state.reading() if finished else None
        if reading is not None and reading.shown:
            self.answer_label.setText(breakable(f"Model's words: {state.text}") if reading.agrees else "")
        else:
            self.answer_label.setText(breakable(state.text))
        self.answer_label.setVisible(bool(self.answer_label.text()))
        flag = ""
        if state.status == "done":
            flag = (reading.note if reading is not None and not reading.agrees else "") or state.problem() or ""
        if flag and reading is None:
            flag += ": it cannot be sent to the rating queue"
        self.flag_label.setText(f"\u26a0 {flag[0].upper()}{flag[1:]}." if flag else "")
        self.flag_label.setVisible(bool(flag))
        if state.status == "failed":
            self.status_label.setText(f"Error: {state.error}")
            self.status_label.setStyleSheet("color: #ff6b6b;")
        else:
            self.status_label.setText(_STATUS_TEXT.get(state.status, ""))
            self.status_label.setStyleSheet("color: #c8b560; font-style: italic;")
        self.status_label.setVisible(bool(self.status_label.text()))
        self.choice_label.setText(f"Answer (chosen by the scores): <b>{html.escape(state.choice_text())}</b>"
                                  if state.choice else "")
        self.choice_label.setVisible(bool(state.choice))
        if state.choice_scores and self.score_bars is None:
            self.score_bars = ChoiceScoreBars(state.choice_scores, state.choices, state.choice)
            self._answer_layout.addWidget(self.score_bars)
        self.box_row.setVisible(state.box is not None)
        if state.box is not None:
            self.box_label.setText(f"Box: {format_box(state.box)}")
        self.meta_label.setText(state.meta_line() if finished and state.status != "failed" else "")
        self.send_button.setVisible(state.status == "done")
        self.send_button.setEnabled(state.turn_id is not None and state.qa_id is None and state.problem() is None)
        if state.qa_id is not None:
            self.send_button.setText(f"In rating queue (QA {state.qa_id})")
