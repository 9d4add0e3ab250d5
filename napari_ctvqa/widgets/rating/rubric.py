"""The scoring guideline, inline and collapsed: one click away instead of a separate PDF.

Annotators asked for inline, formatted guidelines; 3D-RAD gave its raters a manual plus two scored
examples. The text is `annotation.rubric.RUBRIC` itself, so the widget can never drift from what
the curation filter and the auto-scorer use.
"""
from __future__ import annotations

import re

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QTextBrowser, QWidget
from superqt import QCollapsible

from annotation.rubric import RUBRIC


class RubricView(QCollapsible):
    """Collapsed by default; expanding shows what 0/3/5 mean per dimension and the two examples."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Rubric: what 0 / 3 / 5 mean, two scored examples", parent)
        self.browser = QTextBrowser()
        # headings as bold lines: at markdown heading sizes the narrow dock shows two words a line
        self.browser.setMarkdown(re.sub(r"^#{1,6} (.*)$", r"**\1**", RUBRIC.to_markdown(), flags=re.MULTILINE))
        self.browser.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.browser.setMinimumHeight(260)
        self.addWidget(self.browser)
        self.setDuration(0)
        self.toggleButton().setFocusPolicy(Qt.FocusPolicy.NoFocus)
