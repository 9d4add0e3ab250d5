"""What the rater reads for one QA pair: question, answer, choices, and the report beside them.

Laid out for scanning 75 pairs in a sitting: the question in bold, the answer right under it,
closed-question choices with the correct one marked, and the report (the reference the
consistency flag is judged against) with the question's and answer's own words highlighted so the
matching sentence is found at a glance. Imported text often carries HTML entities (`&amp;`,
`&quot;`): they are decoded once, then escaped, so the rater reads "&" and never markup.
"""
from __future__ import annotations

import html
import re

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QTextBrowser, QVBoxLayout, QWidget

from annotation.records import QAPairRecord, ReportRecord

_STOPWORDS = frozenset(
    "there their these those which where what about other shows shown while being given present "
    "absent during scans scan patient previous current image images based could would with this that "
    "from have were been seen does when into than then also only more most some such each both over "
    "size many much note indicates absence presence".split()
)
_SHORT_TERMS = frozenset({"left", "mass", "cyst", "node", "apex", "hila", "tree"})
_HIGHLIGHT = "<span style='background-color:#6b5a00; color:white'>{}</span>"


def plain(text: str | None) -> str:
    """Text as the rater should read it: HTML entities decoded (once), ready to be escaped."""
    return html.unescape(text or "")


def key_terms(*texts: str) -> list[str]:
    """What of the QA text is worth finding in the report: stems (first six letters) of words of
    five letters or more, so "calcification" also finds "Calcified"; a few short words that carry
    meaning ("left", "mass"); and measurements ("10x10", "27")."""
    words = {w.lower() for text in texts for w in re.findall(r"[A-Za-z][A-Za-z-]{3,}", text or "")}
    stems = {w[:6] for w in words - _STOPWORDS if len(w) >= 5 or w in _SHORT_TERMS}
    numbers = {n for text in texts for n in re.findall(r"\d+(?:[.,]\d+)?(?:x\d+(?:[.,]\d+)?)*", text or "")}
    return sorted(stems | numbers, key=len, reverse=True)


def report_html(report: ReportRecord | None, terms: list[str]) -> str:
    """Findings and impressions as HTML with `terms` highlighted; says so when there is no report."""
    if report is None:
        return "<i>No report stored for this scan: judge consistency against the labels only.</i>"
    sections = [("Findings", report.findings), ("Impressions", report.impressions)]
    pattern = (re.compile(r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")[\w-]*", re.IGNORECASE)
               if terms else None)  # whole words from a stem on (a number is matched from its start)
    parts = []
    for title, text in sections:
        body = html.escape(plain(text) or "Not given.")
        if pattern is not None:
            body = pattern.sub(lambda m: _HIGHLIGHT.format(m.group(0)), body)
        parts.append(f"<p><b>{title}</b><br>{body}</p>")
    return "".join(parts)


def choices_html(qa: QAPairRecord) -> str:
    """The closed question's real choices (the literal '-' placeholders dropped), correct one marked."""
    if not qa.choices:
        return ""
    lines = []
    for letter, text in zip("ABCD", qa.choices):
        if not text or text.strip() == "-":
            continue
        if letter == qa.answer_choice:
            lines.append(f"<b style='color:#5fd35f'>{letter}. {html.escape(plain(text))}  ✓</b>")
        else:
            lines.append(f"{letter}. {html.escape(plain(text))}")
    return "<br>".join(lines)


_STATUS_TEXT = {"todo": "not rated yet", "rated": "rated by you: change and press Enter to update",
                "skipped": "skipped by you", "flagged": "flagged by you"}


def task_title(task: str) -> str:
    """`existence_detection` -> `Existence detection` (task keys are stable, titles are for people)."""
    return task.replace("_", " ").capitalize()


def pair_header(number: int, total: int, qa: QAPairRecord, status: str) -> str:
    """Where the rater is in the queue, what kind of pair this is, and what they did with it before."""
    return (f"<b>Pair {number} of {total}</b> · {task_title(qa.task)} · {html.escape(qa.volume_name)}"
            f"<br><span style='color:gray'>{_STATUS_TEXT.get(status, status)}</span>")


def _is_choice_text(qa: QAPairRecord) -> bool:
    index = "ABCD".find(qa.answer_choice or "?")
    return bool(qa.choices) and index >= 0 and qa.choices[index].strip().lower() == qa.answer.strip().lower()


def _label(word_wrap: bool = True, selectable: bool = True) -> QLabel:
    label = QLabel()
    label.setWordWrap(word_wrap)
    label.setTextFormat(Qt.TextFormat.RichText)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class PairView(QWidget):
    """Read-only view of one pair; `show_pair` fills it, `clear` empties it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        self.header = _label(selectable=False)
        self.question = _label()
        self.question.setStyleSheet("font-size: 14px; font-weight: bold;")
        self.answer = _label()
        self.answer.setStyleSheet("font-size: 13px;")
        self.choices = _label()
        self.view_hint = _label(selectable=False)
        self.view_hint.setStyleSheet("color: gray; font-size: 11px;")
        self.report = QTextBrowser()
        self.report.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.report.setFrameShape(QFrame.Shape.StyledPanel)
        self.report.setMinimumHeight(110)
        report_title = QLabel("<b>Report</b> (reference for the consistency flag; QA words highlighted)")
        report_title.setStyleSheet("color: gray; font-size: 11px;")
        for widget in (self.header, self.question, self.answer, self.choices, self.view_hint, report_title):
            layout.addWidget(widget)
        layout.addWidget(self.report, 1)
        self.clear()

    def clear(self, message: str = "") -> None:
        self.header.setText(message)
        for label in (self.question, self.answer, self.choices, self.view_hint):
            label.clear()
        self.choices.setVisible(False)
        self.report.clear()

    def show_pair(self, qa: QAPairRecord, report: ReportRecord | None, header: str) -> None:
        self.header.setText(header)
        self.question.setText(f"Q: {html.escape(plain(qa.question))}")
        self.answer.setText(f"A: {html.escape(plain(qa.answer))}")
        choices = choices_html(qa)
        self.choices.setText(choices)
        self.choices.setVisible(bool(choices))
        # a closed answer that is just the ticked choice's text would only repeat it
        self.answer.setVisible(not (choices and _is_choice_text(qa)))
        self.report.setHtml(report_html(report, key_terms(plain(qa.question), plain(qa.answer))))

    def set_view_hint(self, text: str) -> None:
        self.view_hint.setText(html.escape(text))
