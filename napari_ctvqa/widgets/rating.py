"""The rating dock widget: one annotator works through their queue of QA pairs, keyboard first.

Why it looks like this: 3D-RAD's raters scored 75 pairs each in 1.5-2 hours, so every second per
pair counts. Each pair opens its scan at the slice and window its own words point to, the report
sits beside the question, the five scores and the consistency flag are set from the keyboard, and
the next scan is already read in the background. All data goes through `annotation.Store`
(blind: only this annotator's own ratings are ever read), the CT through `model.read_ct`.

Keys (active while the rating panel has keyboard focus; shown on the controls):
  0-5 score the highlighted dimension and move to the next   Tab / Down, Shift+Tab / Up  move
  C toggle consistency   Enter submit and go on   Backspace / Left previous pair   Right next pair
  N note   S skip (asks a reason)   F flag (asks a reason)   PageUp / PageDown  slice up / down
While a text field has focus keys type text; Enter or Esc leaves the field. Keys the panel does
not use (e.g. the window presets L/M/B) fall through to napari, which gets them from the main
window. Clicking the canvas gives napari the keyboard (arrows then step slices); click the panel,
or any of its buttons, to take it back.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from annotation.rubric import LABELS, SCORE_KEYS
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtGui import QCloseEvent, QKeyEvent
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_ctvqa.widgets._rating_pair import PairView
from napari_ctvqa.widgets._rating_prefetch import Prefetcher
from napari_ctvqa.widgets._rating_rubric import RubricView
from napari_ctvqa.widgets._rating_scores import ScorePanel
from napari_ctvqa.widgets._rating_view import initial_view

if TYPE_CHECKING:
    import napari
    from annotation.records import QAPairRecord, QueueItem
    from annotation.store import Store
    from model.ct.volume import CTVolume

LAYER_NAME = "CT (rating)"
KEY_HELP = ("0-5 score · Tab/↑↓ dimension · C consistent · Enter submit · ←/Backspace back · "
            "→ next · N note · S skip · F flag · PgUp/PgDn slice")
_PREFETCH_DELAY_MS = 150
_DIGITS = {getattr(Qt.Key, f"Key_{d}"): d for d in range(6)}


@dataclass(frozen=True)
class DisplayVolume:
    """A scan plus its value range (for the 'full' window and the contrast slider), both computed
    off the GUI thread by the prefetcher."""

    volume: CTVolume
    value_range: tuple[float, float]


def read_for_display(path: str | Path) -> DisplayVolume:
    """`read_ct` and the data range the layer's contrast slider needs (a full pass over the
    voxels: done here, in the background, not when the pair is shown)."""
    from model.ct.io import read_ct
    from model.ct.windows import window_limits

    volume = read_ct(path)
    return DisplayVolume(volume, window_limits("full", volume.array))


def task_title(task: str) -> str:
    """`existence_detection` -> `Existence detection` (task keys are stable, titles are for people)."""
    return task.replace("_", " ").capitalize()


class TextField(QLineEdit):
    """A line edit that keeps every key to itself while typing (so no letter triggers a shortcut
    and no arrow reaches napari) and reports Enter as `done`, Esc as `cancelled`."""

    done = Signal()
    cancelled = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.done.emit()
        elif event.key() == Qt.Key.Key_Escape:
            self.cancelled.emit()
        else:
            super().keyPressEvent(event)
        event.accept()


def _button(text: str, tip: str, slot) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    button.clicked.connect(slot)
    return button


class RatingWidget(QWidget):
    """Rate QA pairs: `RatingWidget(viewer)` asks for a name; `annotator=` starts that queue now.

    `store` defaults to `annotation.Store()` (the `--db`/`CTVQA_DB`/default database) and is opened
    when the annotator starts. `prefetch=False` reads each scan on demand (the benchmark's
    baseline).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        store: Store | None = None,
        annotator: str | None = None,
        prefetch: bool = True,
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self.store = store
        self.annotator: str | None = None
        self.items: list[QueueItem] = []
        self.index = -1
        self.qa: QAPairRecord | None = None
        self._shown_at = time.monotonic()
        self._reason_kind: str | None = None
        self._layer = None
        self._prefetch = prefetch
        self._prefetcher: Prefetcher[DisplayVolume] | None = None
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._build()
        if annotator:
            self.start(annotator)

    # ----------------------------------------------------------------- layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(4)

        start_row = QHBoxLayout()
        self.name_edit = TextField()
        self.name_edit.setPlaceholderText("your annotator name")
        self.name_edit.done.connect(self._on_start_clicked)
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self._on_start_clicked)
        start_row.addWidget(QLabel("Annotator:"))
        start_row.addWidget(self.name_edit, 1)
        start_row.addWidget(self.start_button)
        layout.addLayout(start_row)

        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m done")
        self.progress.setMaximumHeight(16)
        self.progress_detail = QLabel()
        self.progress_detail.setWordWrap(True)
        self.progress_detail.setStyleSheet("color: gray; font-size: 11px;")
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_detail)

        self.pair = PairView()
        layout.addWidget(self.pair, 1)

        self.scores = ScorePanel()
        self.scores.changed.connect(self.setFocus)
        layout.addWidget(self.scores)

        self.note = TextField()
        self.note.setPlaceholderText("Note (optional)  [N]   Enter/Esc: back to keys")
        self.note.done.connect(self.setFocus)
        self.note.cancelled.connect(self.setFocus)
        layout.addWidget(self.note)

        self.reason_row = QWidget()
        reason_layout = QHBoxLayout(self.reason_row)
        reason_layout.setContentsMargins(0, 0, 0, 0)
        self.reason_label = QLabel()
        self.reason = TextField()
        self.reason.done.connect(self._confirm_reason)
        self.reason.cancelled.connect(self._cancel_reason)
        reason_layout.addWidget(self.reason_label)
        reason_layout.addWidget(self.reason, 1)
        reason_layout.addWidget(_button("OK [Enter]", "store with this reason", self._confirm_reason))
        reason_layout.addWidget(_button("Cancel [Esc]", "keep the pair as it is", self._cancel_reason))
        self.reason_row.setVisible(False)
        layout.addWidget(self.reason_row)

        nav = QHBoxLayout()
        self.back_button = _button("◀ Back [←]", "previous pair (Backspace or Left)", self.go_back)
        self.submit_button = _button("Submit [Enter]", "store the five scores and go on", self.submit)
        self.submit_button.setStyleSheet("font-weight: bold;")
        self.next_button = _button("Next ▶ [→]", "next pair without storing (Right)", self.go_forward)
        for button in (self.back_button, self.submit_button, self.next_button):
            nav.addWidget(button)
        layout.addLayout(nav)
        aside = QHBoxLayout()
        self.skip_button = _button("Skip [S]", "skip this pair, with a reason", lambda: self.ask_reason("skip"))
        self.flag_button = _button("Flag [F]", "flag a problem with this pair, with a reason",
                                   lambda: self.ask_reason("flag"))
        aside.addWidget(self.skip_button)
        aside.addWidget(self.flag_button)
        layout.addLayout(aside)

        self.message = QLabel()
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        keys = QLabel(KEY_HELP)
        keys.setWordWrap(True)
        keys.setStyleSheet("color: gray; font-size: 11px;")
        layout.addWidget(keys)
        self.rubric = RubricView()
        layout.addWidget(self.rubric)
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        for widget in (self.scores, self.note, self.back_button, self.submit_button, self.next_button,
                       self.skip_button, self.flag_button):
            widget.setEnabled(enabled)

    # ---------------------------------------------------------------- session
    def start(self, annotator: str) -> None:
        """Open `annotator`'s queue at their first pair still to do (or the first, if all done)."""
        name = annotator.strip()
        if not name:
            self._say("Type your annotator name first.", error=True)
            return
        try:
            if self.store is None:
                from annotation.store import Store

                self.store = Store()
            self.store.ensure_rater(name)
            items = list(self.store.queue(name))
        except Exception as exc:  # e.g. no database yet: a message in the panel, not a traceback
            where = self.store.url if self.store is not None else "the default database"
            self._say(f"Cannot open the rating queue in {where}: {exc}. "
                      "Set up the database first (ctvqa db init, ctvqa import, ctvqa assign).", error=True)
            return
        self.annotator = name
        self.name_edit.setText(name)
        self.items = items
        if self._prefetcher is None and self._prefetch:
            self._prefetcher = Prefetcher(read_for_display)
        self._update_progress()
        if not self.items:
            self._set_enabled(False)
            self.pair.clear(f"No pairs assigned to <b>{html.escape(name)}</b> yet "
                            "(a curator assigns them with <code>ctvqa assign</code>).")
            return
        self._set_enabled(True)
        todo = next((i for i, item in enumerate(self.items) if item.status == "todo"), 0)
        self.show_index(todo)
        self.setFocus()

    def _on_start_clicked(self) -> None:
        self.start(self.name_edit.text())

    def show_index(self, index: int) -> None:
        """Show pair `index` of the queue: text, own earlier rating, scan; then prefetch the next."""
        if self.store is None or self.annotator is None:
            raise RuntimeError("start an annotator's queue before showing pairs")
        self.index = max(0, min(len(self.items) - 1, index))
        item = self.items[self.index]
        qa = self.qa = self.store.qa_pair(item.qa_id)
        report = self.store.report(qa.scan_id)
        own = self.store.rating(self.annotator, qa.id)
        status = {"todo": "not rated yet", "rated": "rated by you: change and press Enter to update",
                  "skipped": "skipped by you", "flagged": "flagged by you"}.get(item.status, item.status)
        header = (f"<b>Pair {self.index + 1} of {len(self.items)}</b> · {task_title(qa.task)} · "
                  f"{html.escape(qa.volume_name)}<br><span style='color:gray'>{status}</span>")
        self.pair.show_pair(qa, report, header)
        rated = own is not None and own.status == "rated"
        self.scores.set_scores(own.scores if rated else None, own.consistent if rated else None)
        self.note.setText(own.note if own is not None else "")
        self._cancel_reason()
        self._show_scan(qa)
        self._say(f"Earlier {own.status}: {own.reason}" if own is not None and own.reason else "")
        # Start the next read once this pair is painted, so it does not compete with the paint.
        QTimer.singleShot(_PREFETCH_DELAY_MS, self._prefetch_ahead)
        self._shown_at = time.monotonic()

    def _prefetch_ahead(self) -> None:
        if self._prefetcher is None or self.store is None:
            return
        for item in self.items[self.index + 1:self.index + 2]:
            path = self.store.qa_pair(item.qa_id).path
            if path:
                self._prefetcher.request(path)

    def _show_scan(self, qa: QAPairRecord) -> None:
        """Swap the scan into the one rating layer (reused, so napari keeps its canvas state)."""
        from model.ct.volume import CTReadError
        from model.ct.windows import window_limits

        if not qa.path:
            self._hide_scan(f"No volume file is registered for {qa.volume_name}: rate from the text.")
            return
        try:
            shown = self._prefetcher.get(qa.path) if self._prefetcher is not None else read_for_display(qa.path)
        except (CTReadError, OSError) as exc:
            self._hide_scan(f"Scan not shown: {exc}")
            return
        volume = shown.volume
        hint = initial_view(qa.question, qa.answer, volume.array.shape[0])
        window = "full" if volume.meta.get("normalised") else hint.window
        limits = shown.value_range if window == "full" else window_limits(window, None)
        layer = self._layer
        if layer is None or layer not in self.viewer.layers:
            layer = self._layer = self.viewer.add_image(
                volume.array, scale=volume.spacing, name=LAYER_NAME, colormap="gray",
                contrast_limits=limits, metadata={"path": str(qa.path)},
            )
            layer.contrast_limits_range = shown.value_range
            self.viewer.reset_view()
        else:
            # Every assignment makes napari re-slice or re-draw (even `visible = True` on a visible
            # layer): touch only what changed. The slider range follows the limits by itself.
            reshaped = layer.data.shape != volume.array.shape or tuple(layer.scale) != tuple(volume.spacing)
            if tuple(layer.contrast_limits) != tuple(limits):
                layer.contrast_limits = limits
            layer.data = volume.array
            if tuple(layer.scale) != tuple(volume.spacing):
                layer.scale = volume.spacing
            layer.metadata = {"path": str(qa.path)}
            if not layer.visible:
                layer.visible = True
            if reshaped:
                self.viewer.reset_view()
        self.viewer.dims.set_point(0, layer.translate[0] + hint.slice_index * volume.spacing[0])
        self.pair.set_view_hint(f"Opened at slice {hint.slice_index + 1}/{volume.array.shape[0]}, "
                                f"{window} window ({hint.reason}).")

    def _hide_scan(self, reason: str) -> None:
        """Never leave the previous pair's scan on screen under this pair's question."""
        if self._layer is not None and self._layer in self.viewer.layers:
            self._layer.visible = False
        self.pair.set_view_hint(reason)

    # ---------------------------------------------------------------- actions
    def submit(self) -> bool:
        """Store the five scores (refused, with a message, while any is missing) and go on."""
        if self.qa is None or self.store is None:
            return False
        missing = self.scores.missing()
        if missing:
            labels = ", ".join(LABELS[key] for key in missing)
            self.scores.focus_row(SCORE_KEYS.index(missing[0]))
            self._say(f"Not stored: set all five scores first (missing: {labels}).", error=True)
            return False
        self.store.save_rating(self.annotator, self.qa.id, self.scores.scores(),
                               self.scores.consistent.isChecked(), note=self.note.text().strip(),
                               seconds=self._elapsed())
        self._mark("rated")
        self._advance("Stored.")
        return True

    def ask_reason(self, kind: str) -> None:
        """Open the reason field for a skip or flag; Enter stores, Esc cancels."""
        if self.qa is None:
            return
        self._reason_kind = kind
        self.reason_label.setText("Skip because:" if kind == "skip" else "Flag because:")
        self.reason.setPlaceholderText("why? (required)  Enter: store   Esc: cancel")
        self.reason.clear()
        self.reason_row.setVisible(True)
        self.reason.setFocus()

    def skip(self, reason: str) -> bool:
        return self._store_reason("skip", reason)

    def flag(self, reason: str) -> bool:
        return self._store_reason("flag", reason)

    def _store_reason(self, kind: str, reason: str) -> bool:
        if self.qa is None or self.store is None:
            return False
        reason = reason.strip()
        if not reason:
            self._say(f"Not stored: a {kind} needs a reason.", error=True)
            return False
        getattr(self.store, kind)(self.annotator, self.qa.id, reason, seconds=self._elapsed())
        self._mark("skipped" if kind == "skip" else "flagged")
        self._cancel_reason()
        self._advance(f"{'Skipped' if kind == 'skip' else 'Flagged'}: {reason}")
        return True

    def _confirm_reason(self) -> None:
        if self._reason_kind is not None:
            self._store_reason(self._reason_kind, self.reason.text())

    def _cancel_reason(self) -> None:
        self._reason_kind = None
        if self.reason_row.isVisibleTo(self):
            self.reason_row.setVisible(False)
        self.setFocus()

    def go_back(self) -> None:
        if self.index > 0:
            self.show_index(self.index - 1)
        else:
            self._say("This is the first pair.")

    def go_forward(self) -> None:
        if 0 <= self.index < len(self.items) - 1:
            self.show_index(self.index + 1)
        else:
            self._say("This is the last pair.")

    def step_slice(self, delta: int) -> None:
        """PageUp/PageDown: browse slices without giving the keyboard to the canvas."""
        if self._layer is not None and self._layer in self.viewer.layers:
            step = list(self.viewer.dims.current_step)
            self.viewer.dims.set_current_step(0, step[0] + delta)

    def _advance(self, message: str) -> None:
        self._update_progress()
        if self.index < len(self.items) - 1:
            self.show_index(self.index + 1)
            self._say(message)
        else:
            done = self.progress.value()
            self._say(f"{message} That was the last pair of your queue ({done} of {len(self.items)} done); "
                      "← goes back to earlier pairs.")

    def _mark(self, status: str) -> None:
        self.items[self.index] = replace(self.items[self.index], status=status)

    def _elapsed(self) -> float:
        return time.monotonic() - self._shown_at

    def _update_progress(self) -> None:
        if self.store is None or self.annotator is None:
            return
        prog = self.store.progress(self.annotator)
        self.progress.setMaximum(max(prog.total, 1))
        self.progress.setValue(prog.done)
        # non-breaking spaces inside each entry: lines wrap between tasks, never inside one
        per_task = " · ".join("&nbsp;".join(f"{task_title(t)} {d}/{n}".split())
                              for t, (d, n) in sorted(prog.per_task.items()))
        self.progress_detail.setText(
            f"{prog.skipped} skipped · {prog.flagged} flagged · {prog.seconds / 60:.0f} min spent<br>{per_task}")

    def _say(self, text: str, error: bool = False) -> None:
        self.message.setStyleSheet("color: #ff6b6b; font-weight: bold;" if error else "color: #7fd37f;")
        self.message.setText(html.escape(text))

    # --------------------------------------------------------------- keyboard
    def _handles(self, event: QKeyEvent) -> bool:
        mods = event.modifiers()
        if mods & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier
                   | Qt.KeyboardModifier.MetaModifier):
            return False
        return self.qa is not None and (event.key() in _DIGITS or event.key() in _ACTIONS)

    def event(self, event: QEvent) -> bool:
        """Claim our keys before napari's window-wide shortcuts and Qt's Tab focus chain do."""
        if event.type() in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress) and self._handles(event):
            if event.type() == QEvent.Type.KeyPress:
                self.keyPressEvent(event)
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Our keys act here; any other key is ignored so it reaches napari (e.g. window presets)."""
        if not self._handles(event):
            super().keyPressEvent(event)
            return
        key = event.key()
        if key in _DIGITS:
            self.scores.type_score(_DIGITS[key])
        else:
            _ACTIONS[key](self, event)
        event.accept()

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop the background reader with the panel (no thread outlives the widget)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        super().closeEvent(event)


# key -> action(widget, event); digits are handled separately (they carry the score)
_ACTIONS = {
    Qt.Key.Key_Tab: lambda w, e: w.scores.move_focus(-1 if e.modifiers() & Qt.KeyboardModifier.ShiftModifier else 1),
    Qt.Key.Key_Backtab: lambda w, e: w.scores.move_focus(-1),
    Qt.Key.Key_Down: lambda w, e: w.scores.move_focus(1),
    Qt.Key.Key_Up: lambda w, e: w.scores.move_focus(-1),
    Qt.Key.Key_C: lambda w, e: w.scores.toggle_consistent(),
    Qt.Key.Key_Return: lambda w, e: w.submit(),
    Qt.Key.Key_Enter: lambda w, e: w.submit(),
    Qt.Key.Key_Backspace: lambda w, e: w.go_back(),
    Qt.Key.Key_Left: lambda w, e: w.go_back(),
    Qt.Key.Key_Right: lambda w, e: w.go_forward(),
    Qt.Key.Key_N: lambda w, e: w.note.setFocus(),
    Qt.Key.Key_S: lambda w, e: w.ask_reason("skip"),
    Qt.Key.Key_F: lambda w, e: w.ask_reason("flag"),
    Qt.Key.Key_PageUp: lambda w, e: w.step_slice(1),
    Qt.Key.Key_PageDown: lambda w, e: w.step_slice(-1),
}
