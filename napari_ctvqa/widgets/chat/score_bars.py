"""Per-choice scores of a closed answer as a small horizontal bar chart (one QProgressBar a choice).

Radiologists should see at a glance whether the model was sure (one long bar) or torn (similar
bars), not only the letter it picked.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from qtpy.QtWidgets import QGridLayout, QLabel, QProgressBar, QWidget

_RESOLUTION = 1000


class ChoiceScoreBars(QWidget):
    """Rows "A. Yes  [=====   ] 71%"; the chosen letter's row is bold."""

    def __init__(self, scores: Mapping[str, float], choices: Sequence[str] | None = None,
                 chosen: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setHorizontalSpacing(6)
        layout.setVerticalSpacing(2)
        layout.setColumnStretch(1, 1)
        texts = dict(zip("ABCD", choices or ()))
        self.bars: dict[str, QProgressBar] = {}
        for row, (letter, score) in enumerate(sorted(scores.items())):
            label = QLabel(f"{letter}. {texts.get(letter, '')}".strip())
            label.setWordWrap(True)
            label.setToolTip(texts.get(letter, letter))
            bar = QProgressBar()
            bar.setRange(0, _RESOLUTION)
            bar.setValue(int(round(float(score) * _RESOLUTION)))
            bar.setFormat(f"{100 * float(score):.0f}%")
            bar.setMaximumHeight(16)
            bar.setMinimumWidth(70)
            if letter == chosen:
                font = label.font()
                font.setBold(True)
                label.setFont(font)
            layout.addWidget(label, row, 0)
            layout.addWidget(bar, row, 1)
            self.bars[letter] = bar

    def values(self) -> dict[str, float]:
        """The fraction each bar shows (what the user sees), by letter."""
        return {letter: bar.value() / _RESOLUTION for letter, bar in self.bars.items()}
