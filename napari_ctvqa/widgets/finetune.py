"""The finetune panel: pick a base model and the curated pairs, train LoRA, watch, cancel, resume.

It is the GUI face of `ctvqa finetune`, and literally so: it runs that command in a child
process (`python -m napari_ctvqa.cli finetune ... --progress-json`, a QProcess), so the panel
trains through the same path as the CLI (torchrun workers with Processes > 1), at the CLI's speed,
and napari's interpreter never trains or evaluates: the GUI thread only reads one JSON line per
step. Cancel sends the process Ctrl-C, so training stops at the next step with a checkpoint and
"Resume" continues it. When a run finishes, the new model version is in the store and the chat
panel's model picker lists it; a run that got worse on a held-out task is not registered (it says
so, with n and the standard error beside every figure) unless "register even if worse" is ticked.
"""
from __future__ import annotations

import html
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QProcess, Signal
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
    from model.training.finetune.config import FinetuneConfig, TrainProgress

_CHOOSE_FOLDER = "\0choose"
_SPLITS = (("by patient (held-out share)", "patient"), ("the cohort's own valid split", "keep"))


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


def describe_outcome(summary: dict[str, Any]) -> str:
    """What the run produced (the result `ctvqa finetune --json` prints), with each held-out task's
    primary metric, base -> new, its n and the difference's standard error (HTML)."""
    # deferred: annotation.heldout is only needed once a run has finished
    from annotation.heldout import describe

    if summary["status"] != "done":
        return f"Cancelled at step {summary['steps']}/{summary['total_steps']}: press Resume to continue."
    losses = f"loss {summary['first_loss']:.3f} → {summary['final_loss']:.3f}"
    if summary["version"]:
        lines = [f"<b>Model version {html.escape(summary['version'])}</b> registered ({losses}); "
                 "it is now in the chat panel's model list."]
    else:
        lines = [f"<b style='color:#ff6b6b'>Not registered</b> ({losses}): worse on a held-out task by more "
                 f"than its standard error. The model stays in {html.escape(str(summary['model_path']))}; "
                 "tick “register even if worse” and Resume to register it."]
    for row in summary.get("comparison") or []:
        text = html.escape(describe(row))
        lines.append(f"<span style='color:#ff6b6b'>{text}</span>" if row["regression"] else text)
    if summary.get("heldout", 1) is None:
        lines.append("No held-out pairs of the six tasks: raise the held-out share to evaluate.")
    return "<br>".join(lines)


class FinetuneWidget(QWidget):
    """Base model, training set (filter), LoRA settings, output folder; Start, Cancel, Resume.

    `store` defaults to the database named in the panel's field. `finished` fires with the run's
    result (the dict `ctvqa finetune --json` prints: done or cancelled), `failed` with the error
    message."""

    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer, store: Store | None = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.store = store
        self.process: QProcess | None = None
        self._buffer = b""
        self._result: dict[str, Any] | None = None
        self._errors: list[str] = []
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
        self.include_unrated = QCheckBox("also unrated pairs imported as curated (3D-RAD, M3D-VQA)")
        self.include_unrated.toggled.connect(self.refresh_preview)
        self.split = QComboBox()
        for label, mode in _SPLITS:
            self.split.addItem(label, mode)
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
        form.addRow("Unrated", self.include_unrated)
        form.addRow("Tasks", self.tasks)
        form.addRow("Held out", self.split)
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
        self.max_steps.setToolTip("with Resume: the run's new total")
        self.processes = _spin(1, max(os.cpu_count() or 1, 1), 1)
        self.processes.setToolTip("data-parallel training processes (torchrun; gloo on CPU)")
        self.train_modules = QComboBox()
        for text, value in (("language model (LoRA)", "lm"), ("+ projector", "lm+projector"),
                            ("+ projector + vision LoRA", "all")):
            self.train_modules.addItem(text, value)
        self.train_modules.setToolTip("what trains: the image features are computed once per scan for the language "
                                      "model alone; the projector and a vision LoRA see the image every step "
                                      "(slower; for findings the base model never learnt to tell apart)")
        for label, widget in (("Trains", self.train_modules), ("Rank r", self.lora_r), ("Alpha", self.lora_alpha),
                              ("Dropout", self.lora_dropout),
                              ("Learning rate", self.lr), ("Epochs", self.epochs), ("Batch size", self.batch_size),
                              ("Max steps", self.max_steps), ("Processes", self.processes)):
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
        self.allow_regression = QCheckBox("register even if worse on a held-out task")
        out.addRow("Run folder", folder_row)
        out.addRow("Version name", self.name_edit)
        out.addRow("", self.merge)
        out.addRow("", self.allow_regression)
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
                          cap_per_question=self.cap.value() or None,
                          include_unrated=self.include_unrated.isChecked())

    def config(self) -> FinetuneConfig:
        # deferred: see _build
        from model.training.finetune.config import FinetuneConfig

        return FinetuneConfig(lora_r=self.lora_r.value(), lora_alpha=self.lora_alpha.value(),
                              lora_dropout=self.lora_dropout.value(), lr=self.lr.value(),
                              epochs=self.epochs.value(), batch_size=self.batch_size.value(),
                              max_steps=self.max_steps.value() or None, seed=self.seed.value(),
                              train_modules=self.train_modules.currentData())

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
    def command(self, resume: bool = False) -> list[str]:
        """The `ctvqa finetune` command line of the panel's settings (what Start runs)."""
        rule, config = self.rule(), self.config()
        args = ["finetune", "--db", self.store.url, "--out", str(Path(self.out_dir.text().strip()).expanduser()),
                "--min-mean", str(rule.min_mean), "--min-dim", str(rule.min_dim),
                "--cap-per-question", str(rule.cap_per_question or 0), "--split", self.split.currentData(),
                "--val-frac", str(self.val_frac.value()), "--seed", str(config.seed),
                "--lora-r", str(config.lora_r), "--lora-alpha", str(config.lora_alpha),
                "--lora-dropout", str(config.lora_dropout), "--lr", repr(config.lr), "--epochs", str(config.epochs),
                "--batch-size", str(config.batch_size), "--processes", str(self.processes.value()),
                "--train-modules", config.train_modules, "--progress-json"]
        flags = {"--require-consistent": rule.require_consistent, "--include-unrated": rule.include_unrated,
                 "--merge": self.merge.isChecked(), "--allow-regression": self.allow_regression.isChecked(),
                 "--resume": resume}
        args += [flag for flag, on in flags.items() if on]
        options = {"--base": self.base_box.currentData(), "--max-steps": config.max_steps,
                   "--tasks": ",".join(t for t in self.tasks.text().replace(" ", "").split(",") if t) or None,
                   "--name": self.name_edit.text().strip() or None}
        for flag, value in options.items():
            if value is not None:
                args += [flag, str(value)]
        return args

    def start(self, resume: bool = False) -> None:
        """Run `ctvqa finetune` in a child process (progress below, Cancel stops at the next step)."""
        if self.store is None:
            self._say("Open a database first.", error=True)
            return
        if not self.out_dir.text().strip():
            self._say("Choose a run folder first.", error=True)
            return
        if self.store.url in ("sqlite://", "sqlite:///:memory:"):
            self._say("The run needs a database file or server (an in-memory database cannot be shared).", error=True)
            return
        try:
            args = self.command(resume)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return
        self._set_running(True)
        self.result.setText("")
        self.progress.setValue(0)
        self._buffer, self._result, self._errors = b"", None, []
        self._say("Resuming…" if resume else "Building the training set and loading the base model…")
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        self.process.readyReadStandardOutput.connect(self._read_events)
        self.process.readyReadStandardError.connect(self._read_errors)
        self.process.finished.connect(self._on_process_finished)
        self.process.start(sys.executable, ["-m", "napari_ctvqa.cli", *args])

    def cancel(self) -> None:
        """Ctrl-C to the run: it stops at the next step with a checkpoint that Resume continues from."""
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            os.kill(int(self.process.processId()), signal.SIGINT)
        self._say("Cancelling at the next step…")

    def _read_events(self) -> None:
        """Whole JSON lines from the run; anything else on stdout is ignored."""
        self._buffer += bytes(self.process.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "progress":
                self._relay.progressed.emit(_progress(event))
            elif event.get("event") == "log":
                self._say(str(event.get("text", "")))
            elif event.get("event") == "result":
                self._result = event

    def _read_errors(self) -> None:
        text = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
        self._errors = (self._errors + [line for line in text.splitlines() if line.strip()])[-20:]

    def _on_process_finished(self, code: int, _status: Any) -> None:  # noqa: ANN401
        self._read_events()
        self._read_errors()
        self.process = None
        self._set_running(False)
        if self._result is None:
            errors = [line for line in self._errors if line.startswith("error:")]
            message = (errors or self._errors or [f"the run exited with code {code}"])[-1]
            self._say(f"Finetuning failed: {message.removeprefix('error: ')}", error=True)
            self.failed.emit(message)
            return
        self._on_finished(self._result)

    def _on_progress(self, p: TrainProgress) -> None:
        self.progress.setMaximum(max(p.total_steps, 1))
        self.progress.setValue(p.step)
        self.progress.setFormat("%v / %m steps")
        self._say(describe_progress(p))

    def _on_finished(self, summary: dict[str, Any]) -> None:
        self.result.setText(describe_outcome(summary))
        if summary["status"] == "done":
            self._say(f"Done: {summary['model_path']}")
            self._fill_bases()
        self.finished.emit(summary)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def closeEvent(self, event: Any) -> None:  # noqa: ANN401, N802 (Qt's name)
        """Closing the panel stops a running run at its next step (with a checkpoint)."""
        if self.process is not None:
            self.cancel()
            self.process.waitForFinished(30_000)
        super().closeEvent(event)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder")
        if folder:
            self.out_dir.setText(folder)

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet("color: #ff6b6b; font-weight: bold;" if error else "")
        self.status.setText(html.escape(text))


def _progress(event: dict[str, Any]) -> TrainProgress:
    # deferred: see FinetuneWidget._build
    from model.training.finetune.config import TrainProgress

    return TrainProgress(**{k: event[k] for k in ("step", "total_steps", "epoch", "loss", "elapsed_s",
                                                  "samples_per_s")}, start_step=int(event.get("start_step", 0)))
