"""The finetune panel: pick a base model and the curated pairs, train LoRA, watch, cancel, resume.

It is the GUI face of `ctvqa finetune`: the same `annotation.training_set.run_finetune` call, run
on a worker thread so napari stays responsive. Progress (step, loss, time left) crosses to the
GUI thread through a Qt signal; Cancel sets the run's stop event, so training stops at the next
step with a checkpoint and "Resume" continues it. When a run finishes, the new model version is
in the store and the chat panel's model picker lists it.
"""
from __future__ import annotations

import html
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    import napari
    from annotation.curation import FilterRule
    from annotation.store import Store
    from annotation.training_set import FinetuneOutcome
    from model.training.finetune.config import FinetuneConfig, TrainProgress

_CHOOSE_FOLDER = "\0choose"
_PRIMARY = {"accuracy": "accuracy", "rouge1": "ROUGE-1"}


class _Relay(QObject):
    """Carries the training's progress from the worker thread to the GUI thread."""

    progressed = Signal(object)


def _spin(low: float, high: float, value: float, step: float = 1, decimals: int | None = None) -> Any:
    """An integer spin box, or a float one with `decimals`."""
    if decimals is None:
        spin = QSpinBox()
        spin.setRange(int(low), int(high))
        spin.setSingleStep(int(step))
        spin.setValue(int(value))
        return spin
    spin = QDoubleSpinBox()
    spin.setDecimals(decimals)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


def describe_progress(p: TrainProgress) -> str:
    """One status line: step, loss, throughput and the time left."""
    eta = p.eta_s
    left = "" if math.isnan(eta) else f" · about {eta:.0f} s left" if eta < 120 else f" · about {eta / 60:.0f} min left"
    return f"step {p.step}/{p.total_steps} · loss {p.loss:.3f} · {p.samples_per_s:.1f} pairs/s{left}"


def describe_outcome(outcome: FinetuneOutcome) -> str:
    """What the run produced, with the held-out primary metric of base vs new per task (HTML)."""
    if outcome.status != "done":
        return f"Cancelled at step {outcome.train.step}/{outcome.train.total_steps}: press Resume to continue."
    lines = [f"<b>Model version {html.escape(outcome.version or '')}</b> registered "
             f"(loss {outcome.train.losses[0]:.3f} → {outcome.train.losses[-1]:.3f}); "
             "it is now in the chat panel's model list."]
    metrics = outcome.metrics or {}
    for task, figures in (metrics.get("finetuned") or {}).get("tasks", {}).items():
        base = metrics["base"]["tasks"].get(task, {})
        for key, label in _PRIMARY.items():
            if key in figures and key in base:
                lines.append(f"{html.escape(task)}: {label} {base[key]:.1f} → {figures[key]:.1f}")
                break
    if metrics.get("heldout", 1) is None:
        lines.append("No held-out pairs of the six tasks: raise the held-out share to evaluate.")
    return "<br>".join(lines)


class FinetuneWidget(QWidget):
    """Base model, training set (filter), LoRA settings, output folder; Start, Cancel, Resume.

    `store` defaults to the database named in the panel's field. `finished` fires with the
    FinetuneOutcome (done or cancelled), `failed` with the error message."""

    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer, store: Store | None = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.store = store
        self.worker = None
        self._stop = threading.Event()
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._build()
        if store is not None:
            self.refresh()

    # ----------------------------------------------------------------- layout
    def _build(self) -> None:
        # deferred: SQLAlchemy and torch load when the panel is built, not when napari lists plugin widgets
        from annotation.store import default_db_url
        from model.training.finetune.config import FinetuneConfig

        defaults = FinetuneConfig()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        db_row = QHBoxLayout()
        self.db_edit = QLineEdit(self.store.url if self.store is not None else default_db_url())
        self.db_edit.setToolTip("database URL (sqlite:///file or postgresql+psycopg://...)")
        open_button = QPushButton("Open")
        open_button.clicked.connect(self._on_open_clicked)
        db_row.addWidget(QLabel("Database:"))
        db_row.addWidget(self.db_edit, 1)
        db_row.addWidget(open_button)
        layout.addLayout(db_row)

        self.base_box = QComboBox()
        self.base_box.setToolTip("the model to start from: the embedded default, a registered version or a folder")
        self.base_box.activated.connect(self._on_base_chosen)
        base_row = QFormLayout()
        base_row.addRow("Base model", self.base_box)
        layout.addLayout(base_row)

        data = QGroupBox("Training set: the curated pairs (held-out patients are evaluated)")
        form = QFormLayout(data)
        self.min_mean = _spin(0.0, 5.0, 3.0, 0.5, decimals=1)
        self.min_dim = _spin(0.0, 5.0, 3.0, 0.5, decimals=1)
        self.require_consistent = QCheckBox("only pairs judged consistent with the report")
        self.cap = _spin(0, 100000, 10)
        self.cap.setSpecialValueText("no cap")
        for spin in (self.min_mean, self.min_dim, self.cap):
            spin.valueChanged.connect(self.refresh_preview)
        self.require_consistent.toggled.connect(self.refresh_preview)
        self.tasks = QLineEdit()
        self.tasks.setPlaceholderText("all tasks (or e.g. existence_detection,image_observation)")
        self.val_frac = _spin(0.0, 0.9, 0.1, 0.05, decimals=2)
        self.val_frac.setToolTip("share of patients held out for the before/after evaluation")
        self.seed = _spin(0, 2**31 - 1, 0)
        self.preview_label = QLabel()
        self.preview_label.setWordWrap(True)
        form.addRow("Min mean score", self.min_mean)
        form.addRow("Min every dimension", self.min_dim)
        form.addRow("Consistency", self.require_consistent)
        form.addRow("Cap per question", self.cap)
        form.addRow("Tasks", self.tasks)
        form.addRow("Held-out share", self.val_frac)
        form.addRow("Seed", self.seed)
        form.addRow(self.preview_label)
        layout.addWidget(data)

        lora = QGroupBox("LoRA (M3D's recipe by default)")
        form = QFormLayout(lora)
        self.lora_r = _spin(1, 1024, defaults.lora_r)
        self.lora_alpha = _spin(1, 4096, defaults.lora_alpha)
        self.lora_dropout = _spin(0.0, 0.9, defaults.lora_dropout, 0.05, decimals=2)
        self.lr = _spin(1e-7, 1.0, defaults.lr, 1e-5, decimals=7)
        self.epochs = _spin(1, 1000, defaults.epochs)
        self.batch_size = _spin(1, 1024, defaults.batch_size)
        self.max_steps = _spin(0, 10**7, 0)
        self.max_steps.setSpecialValueText("by epochs")
        for label, widget in (("Rank r", self.lora_r), ("Alpha", self.lora_alpha), ("Dropout", self.lora_dropout),
                              ("Learning rate", self.lr), ("Epochs", self.epochs), ("Batch size", self.batch_size),
                              ("Max steps", self.max_steps)):
            form.addRow(label, widget)
        layout.addWidget(lora)

        out = QFormLayout()
        folder_row = QHBoxLayout()
        self.out_dir = QLineEdit()
        self.out_dir.setPlaceholderText("a new folder for the run (or a cancelled run's folder to resume)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row.addWidget(self.out_dir, 1)
        folder_row.addWidget(browse)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("automatic (ft-BASE-TIME-rRUN)")
        self.merge = QCheckBox("also write a standalone merged model folder")
        out.addRow("Run folder", folder_row)
        out.addRow("Version name", self.name_edit)
        out.addRow("", self.merge)
        layout.addLayout(out)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start finetuning")
        self.start_button.clicked.connect(lambda: self.start())
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("continue the run in the run folder from its last checkpoint")
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop at the next step and keep a checkpoint")
        self.cancel_button.clicked.connect(self.cancel)
        for button in (self.start_button, self.resume_button, self.cancel_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setFormat("")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.result = QLabel()
        self.result.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.result)
        layout.addStretch(1)
        self._set_running(False)

    # ------------------------------------------------------------------ data
    def _on_open_clicked(self) -> None:
        # deferred: see _build
        from annotation.store import Store

        url = self.db_edit.text().strip()
        try:
            self.store = Store.create(url or None)
        except Exception as exc:  # a malformed URL or unreachable server: say so, keep the panel usable
            self._say(f"Cannot open {url}: {exc}", error=True)
            return
        self.refresh()

    def refresh(self) -> None:
        """Reload the base model list and the filter preview from the store."""
        self._fill_bases()
        self.refresh_preview()

    def _fill_bases(self, chosen: str | None = None) -> None:
        self.base_box.clear()
        self.base_box.addItem("Default model", None)
        for version in self.store.model_versions() if self.store is not None else []:
            if version.path:
                self.base_box.addItem(f"{version.name} ({version.kind})", version.name)
        if chosen is not None:
            self.base_box.addItem(chosen, chosen)
        self.base_box.addItem("Choose a model folder…", _CHOOSE_FOLDER)
        self.base_box.setCurrentIndex(self.base_box.count() - 2 if chosen else 0)

    def _on_base_chosen(self, index: int) -> None:
        if self.base_box.itemData(index) == _CHOOSE_FOLDER:
            folder = QFileDialog.getExistingDirectory(self, "Base model folder (ours, an adapter, or M3D-LaMed)")
            if folder:
                self.set_base(folder)
            else:
                self.base_box.setCurrentIndex(0)

    def set_base(self, base: str | None) -> None:
        """Select a base: a registered version name, a folder path or None (the default model)."""
        index = self.base_box.findData(base)
        if index < 0:
            self._fill_bases(chosen=base)
        else:
            self.base_box.setCurrentIndex(index)

    def rule(self) -> FilterRule:
        # deferred: see _build
        from annotation.curation import FilterRule

        return FilterRule(min_mean=self.min_mean.value(), min_dim=self.min_dim.value(),
                          require_consistent=self.require_consistent.isChecked(),
                          cap_per_question=self.cap.value() or None)

    def config(self) -> FinetuneConfig:
        # deferred: see _build
        from model.training.finetune.config import FinetuneConfig

        return FinetuneConfig(lora_r=self.lora_r.value(), lora_alpha=self.lora_alpha.value(),
                              lora_dropout=self.lora_dropout.value(), lr=self.lr.value(),
                              epochs=self.epochs.value(), batch_size=self.batch_size.value(),
                              max_steps=self.max_steps.value() or None, seed=self.seed.value())

    def refresh_preview(self) -> None:
        """How many rated pairs the current filter keeps for training (before the held-out split)."""
        if self.store is None:
            return
        try:
            summary = self.store.curation_preview(self.rule())
        except Exception as exc:  # noqa: BLE001 (a database error is shown, not raised into Qt)
            self._say(f"Cannot read the ratings: {exc}", error=True)
            return
        self.preview_label.setText(f"{summary.passed} of {summary.total} QA pairs pass the filter.")

    # ------------------------------------------------------------------ run
    def start(self, resume: bool = False) -> None:
        """Build the training set and train on a worker thread (progress below, Cancel stops)."""
        # deferred: see _build
        from napari.qt.threading import create_worker

        from annotation.training_set import run_finetune

        if self.store is None:
            self._say("Open a database first.", error=True)
            return
        if not self.out_dir.text().strip():
            self._say("Choose a run folder first.", error=True)
            return
        try:
            config = self.config()
            rule = self.rule()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return
        tasks = [t for t in self.tasks.text().replace(" ", "").split(",") if t] or None
        self._stop.clear()
        self._set_running(True)
        self.result.setText("")
        self.progress.setValue(0)
        self._say("Resuming…" if resume else "Building the training set and loading the base model…")
        self.worker = create_worker(
            run_finetune, self.store, Path(self.out_dir.text().strip()).expanduser(),
            base=self.base_box.currentData(), rule=rule, tasks=tasks, config=config, val_frac=self.val_frac.value(),
            split_seed=self.seed.value(), resume=resume, merge=self.merge.isChecked(),
            name=self.name_edit.text().strip() or None, progress=self._relay.progressed.emit, stop=self._stop,
            log=lambda text: None,
            _connect={"returned": self._on_finished, "errored": self._on_error},
        )

    def cancel(self) -> None:
        """Stop at the next step; the run keeps a checkpoint that Resume continues from."""
        self._stop.set()
        self._say("Cancelling at the next step…")

    def _on_progress(self, p: TrainProgress) -> None:
        self.progress.setMaximum(max(p.total_steps, 1))
        self.progress.setValue(p.step)
        self.progress.setFormat("%v / %m steps")
        self._say(describe_progress(p))

    def _on_finished(self, outcome: FinetuneOutcome) -> None:
        self._set_running(False)
        self.worker = None
        self.result.setText(describe_outcome(outcome))
        if outcome.status == "done":
            self._say(f"Done: {outcome.model_path}")
            self._fill_bases()
        self.finished.emit(outcome)

    def _on_error(self, exc: Exception) -> None:
        self._set_running(False)
        self.worker = None
        self._say(f"Finetuning failed: {exc}", error=True)
        self.failed.emit(str(exc))

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder")
        if folder:
            self.out_dir.setText(folder)

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet("color: #ff6b6b; font-weight: bold;" if error else "")
        self.status.setText(html.escape(text))
