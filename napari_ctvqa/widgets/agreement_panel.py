"""The curator panel's agreement tab: between-rater tables at once, then (off the GUI thread, the
bootstrap takes a second or more) reliability per dimension with intervals, intra-rater
repeats, the 3D-RAD-style heatmaps and the adjudication list. The same
`Store.agreement_report` behind `ctvqa agreement`, so panel and CLI show the same numbers.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_ctvqa.widgets.tables import caption, fill_table, make_table

if TYPE_CHECKING:
    from annotation.agreement import AgreementReport
    from annotation.store import Store

_RELIABILITY_SHOWN = ["dimension", "n_units", "alpha", "alpha_low", "alpha_high", "wkappa", "wkappa_low",
                      "wkappa_high", "icc", "icc_low", "icc_high", "icc_n", "icc_raters", "warning"]
_DISAGREEMENT_SHOWN = ["qa_id", "task", "mean_spread", "worst_dimension", "dimension_spread",
                       "consistent_split", "scores", "question", "answer"]


class AgreementPanel(QWidget):
    """Top-k, warnings and four sub-tabs; `report_ready` fires when the full report is shown."""

    report_ready = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store: Store | None = None
        self.report: AgreementReport | None = None
        self._worker = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 100000)
        self.top_k.setValue(100)
        self.top_k.setToolTip("k of Top-k overlap and NDCG@k (3D-RAD used 100); capped at the common pairs")
        self.n_disagreements = QSpinBox()
        self.n_disagreements.setRange(1, 1000)
        self.n_disagreements.setValue(20)
        self.n_disagreements.setToolTip("how many of the most-disagreed pairs to list")
        self.bootstrap = QSpinBox()
        self.bootstrap.setRange(0, 10000)
        self.bootstrap.setValue(1000)
        self.bootstrap.setToolTip("bootstrap resamples behind the 95% intervals (0: no intervals)")
        for label, spin in (("Top-k:", self.top_k), ("List:", self.n_disagreements), ("Bootstrap:", self.bootstrap)):
            top.addWidget(QLabel(label))
            top.addWidget(spin)
        top.addStretch(1)
        layout.addLayout(top)
        self.warnings = QLabel()
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #e0b040;")
        layout.addWidget(self.warnings)
        self.tabs = QTabWidget()
        layout.addWidget(self.tabs, 1)
        self.tabs.addTab(self._raters_tab(), "Raters")
        self.tabs.addTab(self._reliability_tab(), "Reliability")
        self.tabs.addTab(self._heatmap_tab(), "Heatmaps")
        self.tabs.addTab(self._adjudicate_tab(), "Adjudicate")

    def _raters_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(caption("Per rater: mean agreement with every other rater, best first by Spearman"))
        self.per_rater_table = make_table()
        layout.addWidget(self.per_rater_table, 1)
        layout.addWidget(caption("Per pair of raters over the QA pairs both rated; k = the Top-k used "
                                 "(at most n); hover a header for its meaning"))
        self.pairwise_table = make_table()
        layout.addWidget(self.pairwise_table, 2)
        return page

    def _reliability_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(caption("Across all raters, per dimension: ordinal Krippendorff's alpha, quadratic-"
                                 "weighted kappa (mean over rater pairs), ICC(A,1); 95% bootstrap intervals"))
        self.reliability_table = make_table()
        layout.addWidget(self.reliability_table, 1)
        layout.addWidget(caption("Intra-rater: each rater against their own repeat of the same pair "
                                 "(ctvqa assign --repeat)"))
        self.intra_table = make_table()
        layout.addWidget(self.intra_table, 1)
        return page

    def _heatmap_tab(self) -> QWidget:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg  # deferred: matplotlib's Qt canvas
        from matplotlib.figure import Figure

        page = QWidget()
        layout = QVBoxLayout(page)
        self.canvas = FigureCanvasQTAgg(Figure(figsize=(9, 3)))
        layout.addWidget(self.canvas, 1)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save PNG…")
        self.save_button.clicked.connect(self._save_png)
        self.save_button.setEnabled(False)
        row.addStretch(1)
        row.addWidget(self.save_button)
        layout.addLayout(row)
        return page

    def _adjudicate_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(caption("The pairs raters disagree on most (widest spread of mean scores first): "
                                 "adjudicate these before exporting"))
        self.disagreements_table = make_table()
        layout.addWidget(self.disagreements_table, 1)
        return page

    # ------------------------------------------------------------------ data
    def refresh(self, store: Store) -> None:
        """Between-rater tables now (quick), the full report on a worker thread."""
        from napari.qt.threading import create_worker

        self.store = store
        pairwise, per_rater = store.agreement(top_k=self.top_k.value())
        fill_table(self.per_rater_table, per_rater)
        fill_table(self.pairwise_table, pairwise)
        if self._worker is not None:
            self._worker.quit()
        self.warnings.setText("computing reliability and intervals …")
        self._worker = create_worker(
            store.agreement_report, top_k=self.top_k.value(), n_boot=self.bootstrap.value(),
            disagreements=self.n_disagreements.value(),
            _connect={"returned": self.show_report, "errored": self._on_error})

    def show_report(self, report: AgreementReport) -> None:
        """Fill the reliability, intra-rater and adjudication tables and draw the heatmaps."""
        from annotation.agreement.plots import agreement_figure, report_title  # deferred: matplotlib

        self.report = report
        self._worker = None
        fill_table(self.reliability_table, report.reliability[_RELIABILITY_SHOWN])
        fill_table(self.intra_table, report.intra)
        shown = [c for c in _DISAGREEMENT_SHOWN if c in report.disagreements.columns]
        fill_table(self.disagreements_table, report.disagreements[shown])
        self.warnings.setText(html.escape("; ".join(report.warnings)))
        figure = self.canvas.figure
        figure.clear()
        if not report.per_rater.empty:
            drawn = agreement_figure(report.per_rater, report.reliability, report_title(report))
            drawn.set_canvas(self.canvas)
            self.canvas.figure = drawn
            self.canvas.draw_idle()
        self.save_button.setEnabled(not report.per_rater.empty)
        self.report_ready.emit(report)

    def save_png(self, path: str | Path) -> Path:
        """Write the heatmaps shown to a PNG (the same figure `ctvqa agreement --plot` saves)."""
        from annotation.agreement.plots import report_title, save_agreement_png  # deferred: matplotlib

        if self.report is None:
            raise RuntimeError("no agreement report yet: refresh first")
        return save_agreement_png(self.report.per_rater, self.report.reliability, path, report_title(self.report))

    def _save_png(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save agreement heatmaps", "agreement.png", "PNG (*.png)")
        if path:
            try:
                self.warnings.setText(f"Saved {self.save_png(path)}")
            except (OSError, ValueError) as exc:
                self.warnings.setText(html.escape(f"Cannot save: {exc}"))

    def _on_error(self, exc: Exception) -> None:
        self._worker = None
        self.warnings.setText(html.escape(f"Agreement failed: {exc}"))

