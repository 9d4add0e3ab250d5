"""The reading room panel: the scan list, the crosshair position in mm, the ruler, the three views
and Compare with prior, over the parts in this package (see its docstring for the why)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_ctvqa.widgets.chat.history import ChatHistory, volume_name_of
from napari_ctvqa.widgets.reading.compare import CompareView, PriorComparison
from napari_ctvqa.widgets.reading.geometry import format_ras, ras_of, value_at
from napari_ctvqa.widgets.reading.ruler import RULER, lengths_mm, ruler_layer
from napari_ctvqa.widgets.reading.scans import ScanList
from napari_ctvqa.widgets.reading.views import OrthoViews

if TYPE_CHECKING:
    import napari

#: Width the coronal/sagittal column (and the prior) get beside the axial canvas, in pixels.
VIEW_WIDTH = 420


class ReadingRoom(QWidget):
    """Dock widget: napari passes the viewer; `store` (an `annotation.Store`) is for tests and the shell."""

    def __init__(self, viewer: napari.viewer.Viewer, *, store: Any = None, three_views: bool = True) -> None:
        super().__init__()
        self.viewer = viewer
        self.history = ChatHistory(store, self.show_message)
        self._docks: dict[str, Any] = {}
        self._priors: list[Any] = []
        self._closed = False
        self._build()
        self.history.open_default()
        self.views = OrthoViews(viewer, parent=self)
        self.compare_view: CompareView | None = None
        self.comparison = PriorComparison(parent=self)
        self.scans = ScanList(viewer, parent=self)
        self._scan_box.insertWidget(0, self.scans.widget)
        self._connect()
        self.views_check.setChecked(three_views)
        self._toggle_views(three_views)
        self._on_scan(self.scans.current)

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        self.position_label = QLabel("Crosshair: open a scan")
        self.position_label.setWordWrap(True)
        self.views_check = QCheckBox("Three views (axial, coronal, sagittal)")
        self.ruler_button = QPushButton("Ruler (mm)")
        self.ruler_button.setToolTip("Draw a line on a view: its length on the patient is written beside it")
        self.ruler_label = QLabel()
        self.ruler_label.setWordWrap(True)
        self.prior_box = QComboBox()
        self.compare_button = QPushButton("Compare with prior")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.difference_check = QCheckBox("Difference view (current - prior)")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setMaximumHeight(12)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setMinimumHeight(2 * self.message.fontMetrics().lineSpacing())
        # Their place is kept while hidden: showing one re-laid out the window and resized and
        # repainted every canvas in it, 60 ms of the Compare click (issue 20).
        for widget in (self.progress, self.message):
            policy = widget.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            widget.setSizePolicy(policy)
            widget.hide()

        self._scan_box = QVBoxLayout()
        tools = QHBoxLayout()
        tools.addWidget(self.ruler_button)
        compare_row = QHBoxLayout()
        compare_row.addWidget(self.compare_button, 2)
        compare_row.addWidget(self.cancel_button, 1)
        form = QFormLayout()
        form.addRow("Prior", self.prior_box)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>Scans</b> (the selected one is shown and asked about)"))
        layout.addLayout(self._scan_box)
        layout.addWidget(self.position_label)
        layout.addWidget(self.views_check)
        layout.addLayout(tools)
        layout.addWidget(self.ruler_label)
        layout.addLayout(form)
        layout.addLayout(compare_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.difference_check)
        layout.addWidget(self.message)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.scans.changed.connect(self._on_scan)
        self.views.moved.connect(self._on_moved)
        self.views_check.toggled.connect(self._toggle_views)
        self.ruler_button.clicked.connect(self.start_ruler)
        self.compare_button.clicked.connect(self.compare_with_prior)
        self.cancel_button.clicked.connect(self.comparison.cancel)
        self.comparison.progress.connect(lambda f: self.progress.setValue(int(100 * f)))
        self.comparison.done.connect(self._on_compared)
        self.comparison.failed.connect(self._on_compare_failed)
        self.difference_check.toggled.connect(
            lambda on: self.compare_view.set_difference(on) if self.compare_view else None)

    # ------------------------------------------------------------------ messages
    def show_message(self, text: str, error: bool = True) -> None:
        self.message.setStyleSheet("color: #ff6b6b;" if error else "color: #9fd49f;")
        self.message.setText(text)
        self.message.setVisible(bool(text))

    # ------------------------------------------------------------------ scans and views
    @property
    def current(self) -> Any:
        return self.scans.current

    def _on_scan(self, layer: Any) -> None:
        self.views.show(layer)
        self._fill_priors(layer)
        if layer is None:
            self.position_label.setText("Crosshair: open a scan")
        else:
            self._on_moved(self.viewer.dims.point)

    def _on_moved(self, point: Any) -> None:
        layer = self.current
        if layer is None or len(point) != 3:
            return
        value = value_at(layer, point)
        hu = f" · {value:.0f} HU" if value is not None else " · outside the scan"
        self.position_label.setText(f"Crosshair: {format_ras(ras_of(layer, point))}{hu}")

    def _dock(self, name: str, widget: QWidget, area: str) -> Any:
        window = getattr(self.viewer, "window", None)
        if window is None:
            return None
        if name in self._docks and self._docks[name].isVisible():
            return self._docks[name]  # shown already: no re-layout of the window
        if name not in self._docks:
            self._docks[name] = window.add_dock_widget(widget, name=name, area=area, add_vertical_stretch=False)
        self._docks[name].setVisible(True)
        self._side_by_side()
        self.fit()
        return self._docks[name]

    def _side_by_side(self) -> None:
        """The prior beside the coronal and sagittal views, not stacked with them: stacked in one
        column, the prior's axial view was left a strip too thin to read."""
        prior, views = self._docks.get("Prior"), self._docks.get("Coronal and sagittal")
        if prior is not None and views is not None and prior.isVisible() and views.isVisible():
            self.viewer.window._qt_window.splitDockWidget(prior, views, Qt.Orientation.Horizontal)

    def fit(self, width: int = VIEW_WIDTH) -> None:
        """Give the docked views the width of a view, not the width Qt starts a dock with (call
        again after resizing the window), and fit each scan into its canvas (the axial one too:
        a dock shown beside it narrows it)."""
        window = getattr(self.viewer, "window", None)
        docks = [dock for dock in self._docks.values() if dock.isVisible()]
        if window is None or not docks:
            return
        window._qt_window.resizeDocks(docks, [width] * len(docks), Qt.Orientation.Horizontal)
        self._fit_scans()
        QTimer.singleShot(0, self._fit_scans)  # again once Qt has laid out the new dock sizes

    def _fit_scans(self) -> None:
        if self._closed:
            return
        for model in (self.viewer, *self.views.models.values(), *([self.compare_view.model] if self.compare_view else [])):
            if len(model.layers):
                model.reset_view()

    def _toggle_views(self, on: bool) -> None:
        if on:
            self._dock("Coronal and sagittal", self.views.widget, "right")
        elif "Coronal and sagittal" in self._docks:
            self._docks["Coronal and sagittal"].setVisible(False)

    def start_ruler(self) -> Any:
        layer = ruler_layer(self.viewer, self.current)
        if not getattr(layer, "_ctvqa_listed", False):
            layer.events.data.connect(lambda _e: self._list_ruler())
            layer._ctvqa_listed = True
        self._list_ruler()
        return layer

    def _list_ruler(self) -> None:
        if RULER not in self.viewer.layers:
            self.ruler_label.setText("")
            return
        lengths = lengths_mm(self.viewer.layers[RULER])
        self.ruler_label.setText("Ruler: " + ", ".join(f"{v:.1f} mm" for v in lengths) if lengths
                                 else "Ruler: click two points on a view")

    # ------------------------------------------------------------------ priors
    def _fill_priors(self, layer: Any) -> None:
        """The patient's earlier scans with a file, newest first (the one a radiologist compares with)."""
        self.prior_box.clear()
        self._priors = []
        scan = self.history.scan(volume_name_of(layer)) if layer is not None else None
        if scan is not None:
            self._priors = [p for p in reversed(self.history.earlier_scans(scan.id))
                            if p.path and Path(p.path).exists()]
        for prior in self._priors:
            self.prior_box.addItem(f"{prior.volume_name}" + (f" ({prior.study_date})" if prior.study_date else ""))
        self.compare_button.setEnabled(bool(self._priors) and not self.comparison.running)
        if self._priors:
            QTimer.singleShot(0, self._prepare_compare_view)
        elif "Prior" in self._docks:
            self._docks["Prior"].setVisible(False)
        if layer is not None and scan is None:
            self.compare_button.setToolTip("This scan is not in the database: import its cohort to find its priors")
        elif layer is not None and not self._priors:
            self.compare_button.setToolTip("The database holds no earlier scan of this patient with a file")
        else:
            self.compare_button.setToolTip("Open the chosen prior beside this scan, rigidly registered to it")

    @property
    def priors(self) -> list[Any]:
        return list(self._priors)

    def compare_with_prior(self) -> None:
        """Register the chosen prior to the shown scan in the background, then open it beside it."""
        layer = self.current
        if layer is None or not self._priors:
            self.show_message("No prior to compare with: " + self.compare_button.toolTip().lower())
            return
        prior = self._priors[max(0, self.prior_box.currentIndex())]
        self.show_message(f"Registering {prior.volume_name} to {layer.name}...", error=False)
        self.progress.setValue(0)
        self.progress.show()
        self.compare_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._comparing = layer
        self.comparison.start(layer, prior.path, prior.volume_name)
        # The prior's viewer (built when the scan's priors were listed, else now) is docked in turns
        # of the event loop of their own, so no step of the click stalls the viewer.
        QTimer.singleShot(0, lambda: self._open_compare_view(prior.volume_name))

    def _prepare_compare_view(self) -> None:
        """Once the shown scan has a prior, the prior's pane is built, docked beside the current
        scan (as a hanging protocol shows a prior: the window is laid out once, here) and given its
        two layers, each in a turn of the event loop of its own: building a napari canvas holds
        the GUI thread for about 0.1 s, laying out and repainting the window's canvases and
        adding each layer for tens of ms, and none of that should fall on the Compare click or on
        the prior's arrival (issue 20)."""
        if self._closed or not self._priors:
            return
        if self.compare_view is None:
            self.compare_view = CompareView(self.viewer, parent=self)
            QTimer.singleShot(0, self._prepare_compare_view)
            return
        name = self._priors[max(0, self.prior_box.currentIndex())].volume_name
        if not self.comparison.running:  # a scan shown anew: its prior is not compared yet
            self.compare_view.waiting(f"<b>Prior</b> {name}: <i>Compare with prior</i> registers it and shows it here")
        if "Prior" not in self._docks or not self._docks["Prior"].isVisible():
            self._dock("Prior", self.compare_view.widget, "right")
            QTimer.singleShot(0, self._prepare_compare_view)
            return
        if self.current is not None:
            self.compare_view.prepare(self.current)

    def _open_compare_view(self, name: str) -> None:
        if self._closed:
            return
        if self.compare_view is None:  # a click before the pane was prepared
            self.compare_view = CompareView(self.viewer, parent=self)
        QTimer.singleShot(0, lambda: None if self._closed else self._dock("Prior", self.compare_view.widget, "right"))
        self.compare_view.waiting(f"<b>Prior</b> {name}: registering...")

    def _end_compare(self) -> None:
        self.progress.hide()
        self.cancel_button.setEnabled(False)
        self.compare_button.setEnabled(bool(self._priors))

    def _on_compared(self, comparison: Any) -> None:
        self._end_compare()
        layer = self._comparing
        if layer is not self.current or layer not in self.viewer.layers:
            self.show_message("The scan changed while the prior was registered; compare again.")
            return
        if self.compare_view is None:  # a registration faster than the click's two turns of the event loop
            self._open_compare_view(comparison.name)
        self.compare_view.show(layer, comparison, self.difference_check.isChecked())
        self._dock("Prior", self.compare_view.widget, "right")  # shown since the scan opened, as a rule
        self.show_message(f"{comparison.name}: {comparison.description}.", error=False)

    def _on_compare_failed(self, message: str) -> None:
        self._end_compare()
        self.show_message(f"Compare with prior: {message}")

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Unhook from the viewer and stop a running registration; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.comparison.cancel()
        self.scans.unhook()
        self.views.unhook()
        if self.compare_view is not None:
            self.compare_view.unhook()
