"""The chat panel's question templates: the six 3D-RAD question kinds, worded as 3D-RAD words them.

Closed questions (tasks 4-6) use the exact benchmark templates and choices from
`annotation.qa_templates`, so a model answers in the layout it was trained and scored on; the
longitudinal question's prior sequence comes from the patient's earlier scans in the store and
stays editable. Open tasks (1-3) get a starting question the radiologist edits.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QLineEdit, QWidget

from annotation.qa_templates import (
    CT_RATE_LABELS,
    EXISTENCE_CHOICES,
    TEMPORAL_CHOICES,
    TEMPORAL_LABELS,
    question_templates,
)
from model.inference.prompts import parse_prior_list as parse_priors

FREE = "free"
#: Task keys in the paper's order, with the names radiologists see in the menu.
TASK_TITLES: dict[str, str] = {
    FREE: "Free question",
    "anomaly_detection": "Anomaly detection (open)",
    "image_observation": "Image observation (open)",
    "medical_computation": "Measurement (open)",
    "existence_detection": "Existence of a finding (Yes/No)",
    "static_temporal_diagnosis": "Temporal status, this scan (A-D)",
    "longitudinal_temporal_diagnosis": "Longitudinal status, with prior scans (A-D)",
}
OPEN_STARTERS: dict[str, str] = {
    "anomaly_detection": "What abnormality is seen in this CT scan, and where is it located?",
    "image_observation": "What can be observed in the lungs on this CT scan?",
    "medical_computation": "What is the size of the largest lesion on this CT scan?",
}


@dataclass(frozen=True)
class TemplateQuestion:
    """A question ready to ask: its text, the offered choices (None for open) and its task key."""

    question: str
    choices: tuple[str, ...] | None
    task: str


def labels_of(task: str) -> tuple[str, ...]:
    """The CT-RATE labels a task asks about (temporal tasks leave out medical material)."""
    if task == "existence_detection":
        return CT_RATE_LABELS
    if task in ("static_temporal_diagnosis", "longitudinal_temporal_diagnosis"):
        return TEMPORAL_LABELS
    return ()


def template_question(task: str, label: str | None = None, priors: Sequence[int] | None = None) -> TemplateQuestion:
    """The question of `task` about `label` (and, for the longitudinal task, the prior sequence)."""
    if task == FREE:
        return TemplateQuestion("", None, "chat")
    if task in OPEN_STARTERS:
        return TemplateQuestion(OPEN_STARTERS[task], None, task)
    if task not in TASK_TITLES:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASK_TITLES)}")
    if label not in labels_of(task):
        raise ValueError(f"{label!r} is not a label of task {task!r}")
    template = question_templates()[task][0]
    if task == "existence_detection":
        return TemplateQuestion(template.format(label=label.lower()), EXISTENCE_CHOICES[:2], task)
    if task == "static_temporal_diagnosis":
        return TemplateQuestion(template.format(label=label.lower()), TEMPORAL_CHOICES, task)
    if not priors:
        raise ValueError("the longitudinal question needs the label of each earlier scan (e.g. 0, 1, 1)")
    sequence = str([int(p) for p in priors])
    return TemplateQuestion(template.format(label=label.lower(), sequence=sequence), TEMPORAL_CHOICES, task)


def prior_sequence(earlier: Sequence[Mapping[str, int]], label: str) -> list[int] | None:
    """The label's value on each earlier scan, or None when a scan's label is unknown."""
    if not earlier or any(label not in labels for labels in earlier):
        return None
    return [int(labels[label]) for labels in earlier]


class TemplatePicker(QWidget):
    """Task + label + prior-sequence fields; emits `changed` with a TemplateQuestion (or an error)."""

    changed = Signal(object)  # TemplateQuestion
    invalid = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._earlier: list[Mapping[str, int]] = []
        self.task_box = QComboBox()
        for key, title in TASK_TITLES.items():
            self.task_box.addItem(title, key)
        self.label_box = QComboBox()
        self.priors_edit = QLineEdit()
        self.priors_edit.setPlaceholderText("earlier scans, oldest first, e.g. 0, 1, 1")
        self.priors_note = QLabel()
        self.priors_note.setWordWrap(True)
        self.priors_note.setStyleSheet("color: #aaaaaa;")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Template", self.task_box)
        form.addRow("Finding", self.label_box)
        form.addRow("Prior scans", self.priors_edit)
        form.addRow("", self.priors_note)
        self._form = form
        self.task_box.currentIndexChanged.connect(self._task_changed)
        self.label_box.currentIndexChanged.connect(self._label_changed)
        self.priors_edit.editingFinished.connect(self._emit)
        self._task_changed()

    @property
    def task(self) -> str:
        return self.task_box.currentData()

    def set_task(self, task: str, label: str | None = None) -> None:
        self.task_box.setCurrentIndex(self.task_box.findData(task))
        if label is not None:
            self.label_box.setCurrentText(label)

    def set_earlier_labels(self, earlier: Sequence[Mapping[str, int]]) -> None:
        """The current scan's patient history (from the store), used to fill the prior sequence."""
        self._earlier = list(earlier)
        self._fill_priors()

    def _task_changed(self) -> None:
        labels = labels_of(self.task)
        current = self.label_box.currentText()
        self.label_box.blockSignals(True)
        self.label_box.clear()
        self.label_box.addItems(labels)
        if current in labels:
            self.label_box.setCurrentText(current)
        self.label_box.blockSignals(False)
        longitudinal = self.task == "longitudinal_temporal_diagnosis"
        self._form.setRowVisible(self.label_box, bool(labels))
        self._form.setRowVisible(self.priors_edit, longitudinal)
        self._form.setRowVisible(self.priors_note, longitudinal)
        self._fill_priors()

    def _label_changed(self) -> None:
        self._fill_priors()

    def _fill_priors(self) -> None:
        if self.task == "longitudinal_temporal_diagnosis":
            sequence = prior_sequence(self._earlier, self.label_box.currentText())
            if sequence is None:
                self.priors_note.setText("Earlier scans' labels are not in the database: type them.")
            else:
                self.priors_edit.setText(", ".join(map(str, sequence)))
                self.priors_note.setText(f"Filled from {len(sequence)} earlier scan(s) of this patient; editable.")
        self._emit()

    def current(self) -> TemplateQuestion:
        """The question the fields describe; ValueError (with the reason) when they are incomplete."""
        priors = None
        if self.task == "longitudinal_temporal_diagnosis":
            priors = parse_priors(self.priors_edit.text())
        return template_question(self.task, self.label_box.currentText() or None, priors)

    def _emit(self) -> None:
        try:
            self.changed.emit(self.current())
        except ValueError as exc:
            self.invalid.emit(str(exc))
