"""The question being written: typed freely, or filled in from a 3D-RAD template and still editable.

A closed template's choices are listed under the text because the model answers with one of their
letters, and the radiologist should know what it will choose from. Ctrl+Enter asks, so the hands
stay on the keyboard; plain Enter starts a new line. The template stays selected after a
question (the next one is usually the same kind about another finding). A free question that
is answered by yes or no is offered as a closed Yes/No question (ticked by default): models
trained on 3D-RAD answer such questions reliably only with the choices listed.
"""
from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from model.inference.answer_checks import YES_NO_CHOICES, is_yes_no_question
from napari_ctvqa.widgets.chat.templates import FREE, TemplatePicker, TemplateQuestion


class QuestionBox(QWidget):
    """Text box, choices line, Ask and Cancel; follows `picker` and emits `ask_requested`."""

    ask_requested = Signal()

    def __init__(self, picker: TemplatePicker, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.picker = picker
        self._template = TemplateQuestion("", None, "chat")
        self.edit = QPlainTextEdit()
        self.edit.setPlaceholderText("Ask about this CT, e.g. 'Is there a pleural effusion?'")
        self.edit.setMaximumHeight(72)
        self.edit.installEventFilter(self)
        self.choices_label = QLabel()
        self.choices_label.setWordWrap(True)
        self.choices_label.setStyleSheet("color: #b0b0b0;")
        self.yes_no_check = QCheckBox("Ask as a closed Yes/No question (A. Yes  B. No): a scored choice")
        self.yes_no_check.setToolTip("This reads as a yes/no question; closed, the answer is the choice the "
                                     "model's scores pick, not free text")
        self.yes_no_check.setChecked(True)
        self.yes_no_check.hide()
        self.ask_button = QPushButton("Ask [Ctrl+Enter]")
        self.ask_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.ask_button, 2)
        buttons.addWidget(self.cancel_button, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit)
        layout.addWidget(self.choices_label)
        layout.addWidget(self.yes_no_check)
        layout.addLayout(buttons)
        self.ask_button.clicked.connect(self.ask_requested)
        picker.changed.connect(self._on_template)
        self.edit.textChanged.connect(self._offer_yes_no)

    def text(self) -> str:
        return self.edit.toPlainText()

    @property
    def yes_no_offered(self) -> bool:
        return not self.yes_no_check.isHidden()

    def template_for(self, question: str) -> TemplateQuestion:
        """The choices and task `question` goes with: the chosen template's, else a free chat
        question (closed Yes/No when it reads as one and the offer is taken)."""
        if self.picker.task != FREE:
            return self._template
        if self.yes_no_check.isChecked() and is_yes_no_question(question):
            return TemplateQuestion(question, YES_NO_CHOICES, "chat")
        return TemplateQuestion(question, None, "chat")

    def sent(self) -> None:
        """A free question's box empties for the next one; a template stays selected and filled."""
        if self.picker.task == FREE:
            self.edit.clear()

    def _offer_yes_no(self) -> None:
        offered = self.picker.task == FREE and is_yes_no_question(self.text())
        self.yes_no_check.setVisible(offered)

    def set_enabled(self, ready: bool, busy: bool) -> None:
        """Ask needs a loaded, idle model; Cancel only makes sense while it answers."""
        self.ask_button.setEnabled(ready and not busy)
        self.cancel_button.setEnabled(busy)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt name
        if (watched is self.edit and event.type() == QEvent.Type.KeyPress
                and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
                and event.modifiers() & Qt.KeyboardModifier.ControlModifier):
            self.ask_requested.emit()
            return True
        return super().eventFilter(watched, event)

    def _on_template(self, template: TemplateQuestion) -> None:
        self._template = template
        if self.picker.task != FREE:
            self.edit.setPlainText(template.question)
        self._offer_yes_no()
        self.choices_label.setText(
            "Choices: " + "   ".join(f"{l}. {c}" for l, c in zip("ABCD", template.choices)) if template.choices else "")
