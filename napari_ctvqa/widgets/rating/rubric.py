"""The scoring guideline beside the pair, on a key (R), instead of a separate PDF.

Annotators asked for inline, formatted guidelines; 3D-RAD gave its raters a manual plus two scored
examples. Opening it must not squeeze the question and the report a rater is scoring, so it is a
column to the right of the pair (the dock grows wider, the canvas gives way), not a fold inside
it. The text is `annotation.rubric.RUBRIC` itself, so the widget can never drift from what the
curation filter and the auto-scorer use.
"""
from __future__ import annotations

import re

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QTextBrowser, QVBoxLayout, QWidget

from annotation.rubric import RUBRIC

RUBRIC_WIDTH = 340


class RubricView(QWidget):
    """Hidden by default; `toggle` (key R) shows what 0/3/5 mean per dimension and two examples."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 0, 0, 0)
        title = QLabel("<b>Rubric</b> <span style='color:gray'>(R hides it)</span>")
        self.browser = QTextBrowser()
        # headings as bold lines: at markdown heading sizes a narrow column shows two words a line
        self.browser.setMarkdown(re.sub(r"^#{1,6} (.*)$", r"**\1**", RUBRIC.to_markdown(), flags=re.MULTILINE))
        self.browser.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        layout.addWidget(title)
        layout.addWidget(self.browser, 1)
        self.setFixedWidth(RUBRIC_WIDTH)
        self.setVisible(False)

    def toggle(self) -> bool:
        """Show or hide the rubric column; returns whether it is now shown."""
        self.setVisible(self.isHidden())
        return not self.isHidden()
