"""The curator panel: how well raters agree, who has done how much, what the filter keeps, export.

It is the GUI face of `ctvqa agreement` and `ctvqa export`: the same Store calls
(`agreement`, `agreement_report`, `annotator_stats`, `curation_preview`, `export`), shown as
tables and heatmaps. The between-rater tables and the filter preview are quick queries on the GUI
thread; the bootstrapped agreement report and the export run on worker threads, so napari stays
responsive.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

from annotation.rubric import DIMENSIONS
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_ctvqa.widgets.agreement_panel import AgreementPanel
from napari_ctvqa.widgets.tables import caption, fill_table, make_table

if TYPE_CHECKING:
    import napari
    from annotation.curation import FilterRule, FilterSummary
    from annotation.store import Store

SHORT = {key: short for key, _, short in DIMENSIONS}


def short_reason(reason: str) -> str:
    """'dimension < 3: answer_appropriateness' -> 'AA < 3' so a task's reasons fit one line."""
    match = re.fullmatch(r"dimension (< [\d.]+): (\w+)", reason)
    return f"{SHORT[match.group(2)]} {match.group(1)}" if match and match.group(2) in SHORT else reason


class _ProgressRelay(QObject):
    """Carries the export's progress callback from the worker thread to the GUI thread."""

    progressed = Signal(int, int)


class CuratorWidget(QWidget):
    """Agreement, annotator progress, filter preview and export over one store.

    `store` defaults to the database named in the panel's field (`$CTVQA_DB` or the default).
    `exported` fires with the manifest when an export finishes, `failed` with the message.
    """

    exported = Signal(dict)
    failed = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer, store: Store | None = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.store = store
        self._worker = None
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(self._on_progress)
        self._build()
        if store is not None:
            self.refresh()

    # ----------------------------------------------------------------- layout
    def _build(self) -> None:
        # deferred: SQLAlchemy/pandas load when the panel is built, not when napari lists plugin widgets
        from annotation.exports import EXPORT_FORMATS
        from annotation.store import default_db_url

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        self.setMinimumWidth(520)  # tables of numbers: narrower only hides columns behind a scroll bar
        db_row = QHBoxLayout()
        self.db_edit = QLineEdit(self.store.url if self.store is not None else default_db_url())
        self.db_edit.setToolTip("database URL (sqlite:///file or postgresql+psycopg://...)")
        self.refresh_button = QPushButton("Open / refresh")
        self.refresh_button.clicked.connect(self._on_refresh_clicked)
        db_row.addWidget(QLabel("Database:"))
        db_row.addWidget(self.db_edit, 1)
        db_row.addWidget(self.refresh_button)
        layout.addLayout(db_row)
        self.message = QLabel()
        self.message.setWordWrap(True)
        layout.addWidget(self.message)

        self.tabs = QTabWidget()
        layout.addWidget(self.tabs, 1)
        self.tabs.addTab(self._build_agreement(), "Agreement")
        self.tabs.addTab(self._build_annotators(), "Annotators")
        self.tabs.addTab(self._build_filter(EXPORT_FORMATS), "Filter && export")

    def _build_agreement(self) -> QWidget:
        self.agreement = AgreementPanel()
        # the tables the curator reads first, also reachable as before
        self.top_k, self.per_rater_table = self.agreement.top_k, self.agreement.per_rater_table
        self.pairwise_table = self.agreement.pairwise_table
        self.top_k.valueChanged.connect(self.refresh_agreement)
        return self.agreement

    def _build_annotators(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(caption("Progress and time spent per annotator (time counts every visit to a pair)"))
        self.annotators_table = make_table()
        layout.addWidget(self.annotators_table, 1)
        return page

    def _build_filter(self, formats: tuple[str, ...]) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(caption("Filter (3D-RAD's rule by default): the preview follows every change"))
        form = QFormLayout()
        self.min_mean = QDoubleSpinBox()
        self.min_dim = QDoubleSpinBox()
        for spin in (self.min_mean, self.min_dim):
            spin.setRange(0.0, 5.0)
            spin.setSingleStep(0.5)
            spin.setValue(3.0)
            spin.valueChanged.connect(self.refresh_preview)
        self.require_consistent = QCheckBox("only pairs judged consistent with the report")
        self.require_consistent.toggled.connect(self.refresh_preview)
        self.cap = QSpinBox()
        self.cap.setRange(0, 100000)
        self.cap.setValue(10)
        self.cap.setSpecialValueText("no cap")
        self.cap.setToolTip("at most this many identical open question-answer pairs per subtask (3D-RAD: 10); "
                            "template questions of tasks 4-6 are never capped")
        self.cap.valueChanged.connect(self.refresh_preview)
        self.include_unrated = QCheckBox("keep unrated pairs imported as curated (3D-RAD, M3D-VQA)")
        self.include_unrated.toggled.connect(self.refresh_preview)
        form.addRow("Min mean score", self.min_mean)
        form.addRow("Min every dimension", self.min_dim)
        form.addRow("Consistency", self.require_consistent)
        form.addRow("Cap per question", self.cap)
        form.addRow("Unrated", self.include_unrated)
        layout.addLayout(form)
        self.preview_label = QLabel()
        self.preview_label.setWordWrap(True)
        layout.addWidget(self.preview_label)
        self.preview_table = make_table()
        layout.addWidget(self.preview_table, 1)
        layout.addWidget(caption("Dimensions: " + " · ".join(f"{short} {label}" for _, label, short in DIMENSIONS)))

        layout.addWidget(caption("Export the pairs that pass (no patient on both sides of the split)"))
        export_form = QFormLayout()
        self.format = QComboBox()
        self.format.addItems(list(formats))
        folder_row = QHBoxLayout()
        self.out_dir = QLineEdit()
        self.out_dir.setPlaceholderText("a new or empty folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row.addWidget(self.out_dir, 1)
        folder_row.addWidget(browse)
        self.val_frac = QDoubleSpinBox()
        self.val_frac.setRange(0.0, 0.9)
        self.val_frac.setSingleStep(0.05)
        self.val_frac.setValue(0.1)
        self.val_frac.setToolTip("share of pairs in 'valid' when splitting by patient (whole patients move)")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.split = QComboBox()
        self.split.addItem("the cohort's own split (by patient where a scan has none)", "keep")
        self.split.addItem("by patient (validation share)", "patient")
        self.image_root = QLineEdit()
        self.image_root.setPlaceholderText("image paths relative to: the folder holding every scan")
        self.image_root.setToolTip("write image paths relative to this folder (the manifest records it)")
        export_form.addRow("Format", self.format)
        export_form.addRow("Folder", folder_row)
        export_form.addRow("Split", self.split)
        export_form.addRow("Validation share", self.val_frac)
        export_form.addRow("Seed", self.seed)
        export_form.addRow("Image root", self.image_root)
        layout.addLayout(export_form)
        self.export_button = QPushButton("Export the pairs that pass")
        self.export_button.clicked.connect(self.start_export)
        self.export_progress = QProgressBar()
        self.export_progress.setFormat("")
        layout.addWidget(self.export_button)
        layout.addWidget(self.export_progress)
        return page

    # ------------------------------------------------------------------ data
    def _on_refresh_clicked(self) -> None:
        # deferred: see _build
        from annotation.store import Store

        url = self.db_edit.text().strip()
        if self.store is None or url != self.store.url:
            try:
                self.store = Store(url or None)
            except Exception as exc:  # a malformed URL: show it, keep the panel usable
                self._say(f"Cannot open {url}: {exc}", error=True)
                return
        self.refresh()

    def refresh(self) -> None:
        """Reload everything from the store (agreement, annotators, filter preview)."""
        if self.store is None:
            return
        try:
            self.refresh_annotators()
            self.refresh_agreement()
            self.refresh_preview()
        except Exception as exc:  # e.g. a database without the schema: say so instead of a traceback
            self._say(f"Cannot read {self.store.url}: {exc}", error=True)
            return
        self._say("")

    def refresh_agreement(self) -> None:
        """Between-rater tables now; reliability, repeats, heatmaps and adjudication list follow
        from a worker thread (the bootstrap takes a second or more)."""
        if self.store is not None:
            self.agreement.refresh(self.store)

    def refresh_annotators(self) -> None:
        import pandas as pd

        rows = [{"Annotator": s.name, "Kind": s.kind, "Assigned": s.assigned, "Rated": s.rated,
                 "Skipped": s.skipped, "Flagged": s.flagged,
                 "Done %": 100.0 * (s.rated + s.skipped + s.flagged) / s.assigned if s.assigned else float("nan"),
                 "Minutes": s.seconds / 60.0,
                 "s / pair": s.seconds / max(s.rated + s.skipped + s.flagged, 1)}
                for s in self.store.annotator_stats()]
        fill_table(self.annotators_table, pd.DataFrame(rows))

    def rule(self) -> FilterRule:
        # deferred: see _build
        from annotation.curation import FilterRule

        return FilterRule(min_mean=self.min_mean.value(), min_dim=self.min_dim.value(),
                          require_consistent=self.require_consistent.isChecked(),
                          cap_per_question=self.cap.value() or None,
                          include_unrated=self.include_unrated.isChecked())

    def refresh_preview(self) -> None:
        """How many pairs the current rule keeps, per task, and why the others fail."""
        if self.store is None:
            return
        summary = self.store.curation_preview(self.rule())
        self._show_summary(summary)

    def _show_summary(self, summary: FilterSummary) -> None:
        import pandas as pd

        share = f" ({100 * summary.passed / summary.total:.0f}%)" if summary.total else ""
        accuracy = ("–" if summary.factual_accuracy_rate is None
                    else f"{100 * summary.factual_accuracy_rate:.1f}%")
        unrated = f" ({summary.unrated_passed} of them unrated)" if summary.unrated_passed else ""
        self.preview_label.setText(
            f"<b>{summary.passed} of {summary.total} pairs pass</b>{share}{unrated}. "
            f"Factual accuracy (rated pairs judged consistent): {accuracy}. "
            f"<br><span style='color:gray'>{html.escape(self.rule().describe()['text'])}</span>")
        rows = [{"Task": task, "Pass": info["passed"], "Fail": info["failed"],
                 "Why the others fail": " · ".join(f"{short_reason(r)}: {n}" for r, n in info["reasons"].items())}
                for task, info in summary.per_task.items()]
        fill_table(self.preview_table, pd.DataFrame(rows, columns=["Task", "Pass", "Fail", "Why the others fail"]))

    # ---------------------------------------------------------------- export
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into folder")
        if folder:
            self.out_dir.setText(folder)

    def start_export(self) -> None:
        """Write the passing pairs in the chosen format on a worker thread (bar shows progress)."""
        from napari.qt.threading import create_worker

        if self.store is None:
            self._say("Open a database first.", error=True)
            return
        if not self.out_dir.text().strip():
            self._say("Choose an export folder first.", error=True)
            return
        out_dir = Path(self.out_dir.text().strip()).expanduser()
        root = self.image_root.text().strip()
        self.export_button.setEnabled(False)
        self.export_progress.setFormat("%v / %m pairs written")
        self.export_progress.setValue(0)
        self._say(f"Exporting to {out_dir} …")
        # `_connect` with an "errored" handler: the error becomes a message, not a re-raise.
        self._worker = create_worker(
            self.store.export, self.format.currentText(), out_dir, rule=self.rule(),
            val_frac=self.val_frac.value(), seed=self.seed.value(), progress=self._relay.progressed.emit,
            split=self.split.currentData(), image_root=Path(root).expanduser() if root else None,
            _connect={"returned": self._on_exported, "errored": self._on_export_error},
        )

    def _on_progress(self, done: int, total: int) -> None:
        self.export_progress.setMaximum(max(total, 1))
        self.export_progress.setValue(done)

    def _on_exported(self, manifest: dict) -> None:
        self.export_button.setEnabled(True)
        splits = ", ".join(f"{name} {info['rows']} pairs / {info['patients']} "
                           f"patient{'' if info['patients'] == 1 else 's'}"
                           for name, info in manifest["splits"].items())
        unrated = f", {manifest['unrated_included']} of them unrated" if manifest.get("unrated_included") else ""
        warnings = "".join(f" Warning: {w}." for w in manifest.get("warnings", []))
        self._say(f"Exported {manifest['total']} pairs as {manifest['format']} "
                  f"({splits}{unrated}) to {self.out_dir.text().strip()}.{warnings}",
                  error=bool(warnings))
        self.exported.emit(manifest)

    def _on_export_error(self, exc: Exception) -> None:
        self.export_button.setEnabled(True)
        self._say(f"Export failed: {exc}", error=True)
        self.failed.emit(str(exc))

    def _say(self, text: str, error: bool = False) -> None:
        self.message.setStyleSheet("color: #ff6b6b; font-weight: bold;" if error else "")
        self.message.setText(html.escape(text))
        self.message.setVisible(bool(text))
