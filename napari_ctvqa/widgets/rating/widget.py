"""The rating panel: one annotator's queue, one pair at a time, from start to the last pair.

Why the session lives apart from its parts: what a pair shows (`pair`), how it is scored
(`scores`, `keys`), how its scan is read and swapped in (`scan_layer`, `prefetch`) each change on
their own; this module keeps only the order of a sitting (start, show, score or skip, go on) and
the store calls, which are blind: only this annotator's own ratings are ever read.
"""
from __future__ import annotations

import html
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtGui import QCloseEvent, QKeyEvent
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from annotation.rubric import LABELS, SCORE_KEYS
from model.ct.volume import CTReadError
from napari_ctvqa.widgets.rating.annotator import AnnotatorPicker
from napari_ctvqa.widgets.rating.controls import ReasonRow, TextField, key_button
from napari_ctvqa.widgets.rating.keys import KEY_HELP, is_rating_key, press
from napari_ctvqa.widgets.rating.pair import PairView, pair_header, task_title
from napari_ctvqa.widgets.rating.prefetch import Prefetcher
from napari_ctvqa.widgets.rating.rubric import RubricView
from napari_ctvqa.widgets.rating.scan_layer import (
    DisplayVolume,
    ScanLayer,
    read_for_display,
)
from napari_ctvqa.widgets.rating.scan_scope import ScanScope, keep_to_scan
from napari_ctvqa.widgets.rating.scores import ScorePanel

if TYPE_CHECKING:
    import napari

    from annotation.records import QAPairRecord, QueueItem
    from annotation.store import Store

_PREFETCH_DELAY_MS = 150


class RatingWidget(QWidget):
    """Rate QA pairs: `RatingWidget(viewer)` asks for a name; `annotator=` starts that queue now
    (a name the database does not know asks for a confirmation first).

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
        self.items: list[QueueItem] = []  # the queue shown: all of it, or the selected scan's pairs
        self._queue: list[QueueItem] = []  # the annotator's whole queue
        self.index = -1
        self._resume: int | None = None  # where the rater was before going back to edit
        self.qa: QAPairRecord | None = None
        self._shown_at = time.monotonic()
        self.scan = ScanLayer(viewer)
        self._prefetch = prefetch
        self._prefetcher: Prefetcher[DisplayVolume] | None = None
        self._calibration: dict[str, dict | None] = {}  # scan path -> its metadata row from the store
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._build()
        if annotator:
            self.start(annotator)

    # ----------------------------------------------------------------- layout
    def _build(self) -> None:
        outer = QHBoxLayout(self)
        outer.setContentsMargins(6, 6, 6, 6)
        column = QWidget()
        outer.addWidget(column, 1)
        self.rubric = RubricView()
        outer.addWidget(self.rubric)
        layout = QVBoxLayout(column)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)

        self.picker = AnnotatorPicker()
        self.picker.chosen.connect(lambda name, new: self.start(name, create=new))
        self.name_edit = self.picker.field
        self.start_button = self.picker.start_button
        layout.addWidget(self.picker)
        self.scope = ScanScope(self.viewer)
        self.scope.changed.connect(self._keep_to)
        layout.addWidget(self.scope)

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

        self.reason_row = ReasonRow()
        self.reason = self.reason_row.field
        self.reason_row.confirmed.connect(self._store_reason)
        self.reason_row.cancelled.connect(self._cancel_reason)
        layout.addWidget(self.reason_row)

        nav = QHBoxLayout()
        self.back_button = key_button("◀ Back [←]", "previous pair (Backspace or Left)", self.go_back)
        self.submit_button = key_button("Submit [Enter]", "store the five scores and go on", self.submit)
        self.submit_button.setStyleSheet("font-weight: bold;")
        self.next_button = key_button("Next ▶ [→]", "next pair without storing (Right)", self.go_forward)
        self.unrated_button = key_button("Next unrated [U]", "the next pair you have not rated, skipped or flagged",
                                         self.next_unrated)
        for button in (self.back_button, self.submit_button, self.next_button):
            nav.addWidget(button)
        layout.addLayout(nav)
        aside = QHBoxLayout()
        aside.addWidget(self.unrated_button)
        self.skip_button = key_button("Skip [S]", "skip this pair, with a reason", lambda: self.ask_reason("skip"))
        self.flag_button = key_button("Flag [F]", "flag a problem with this pair, with a reason",
                                      lambda: self.ask_reason("flag"))
        aside.addWidget(self.skip_button)
        aside.addWidget(self.flag_button)
        self.rubric_button = key_button("Rubric [R]", "what 0 / 3 / 5 mean, two scored examples (beside the pair)",
                                        self.toggle_rubric)
        aside.addWidget(self.rubric_button)
        layout.addLayout(aside)

        self.message = QLabel()
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        keys = QLabel(KEY_HELP)
        keys.setWordWrap(True)
        keys.setStyleSheet("color: gray; font-size: 11px;")
        layout.addWidget(keys)
        self._set_enabled(False)
        self._list_annotators()

    def _set_enabled(self, enabled: bool) -> None:
        for widget in (self.scores, self.note, self.back_button, self.submit_button, self.next_button,
                       self.skip_button, self.flag_button, self.unrated_button):
            widget.setEnabled(enabled)

    # ---------------------------------------------------------------- session
    def _open_store(self) -> Store:
        if self.store is None:
            # deferred: SQLAlchemy loads only when no store is given
            from annotation.store import Store

            self.store = Store()
        return self.store

    def _list_annotators(self) -> None:
        """Fill the picker with the human raters of the given store (the default one is opened
        only when the rater starts, so building the panel never touches a database)."""
        if self.store is not None:
            try:
                self.picker.set_names([n for n, kind in self.store.raters() if kind == "human"])
            except Exception as exc:  # a database without the schema: said when the rater starts
                self._say(f"Cannot list the annotators of {self.store.url}: {exc}", error=True)

    def start(self, annotator: str, create: bool = False) -> None:
        """Open `annotator`'s queue at their first pair still to do (or the first, if all done).
        A name the database does not know is only created with `create=True` (the picker asks)."""
        name = annotator.strip()
        if not name:
            self._say("Pick your annotator name first.", error=True)
            return
        try:
            store = self._open_store()
            known = {n for n, _ in store.raters()}
            if name not in known and not create:
                self.picker.set_names([n for n, kind in store.raters() if kind == "human"])
                self.picker.set_name(name)
                self.picker.request(name)
                return
            store.ensure_rater(name)
            items = list(store.queue(name))
        except Exception as exc:  # e.g. no database yet: a message in the panel, not a traceback
            where = self.store.url if self.store is not None else "the default database"
            self._say(f"Cannot open the rating queue in {where}: {exc}. "
                      "Set up the database first (ctvqa db init, ctvqa import, ctvqa assign).", error=True)
            return
        self.annotator = name
        self.picker.set_name(name)
        self._queue = items
        if self._prefetcher is None and self._prefetch:
            self._prefetcher = Prefetcher(self._read_scan)
        self._keep_to(self.scope.scope)

    def _keep_to(self, volume_name: str | None) -> None:
        """Show the queue, or only its pairs of `volume_name`, at the first pair still to do."""
        if self.annotator is None:
            return
        self.items = keep_to_scan(self._queue, volume_name)
        self._resume = None
        self._update_progress()
        if not self.items:
            self._set_enabled(False)
            self.qa = None
            self._hide_scan("")
            name = html.escape(self.annotator)
            self.pair.clear(f"None of the {len(self._queue)} pairs of <b>{name}</b>'s queue is about "
                            f"<b>{html.escape(volume_name)}</b> (untick the box for the whole queue)."
                            if volume_name is not None and self._queue else
                            f"No pairs assigned to <b>{name}</b> yet "
                            "(a curator assigns them with <code>ctvqa assign</code>).")
            return
        self._set_enabled(True)
        todo = next((i for i, item in enumerate(self.items) if item.status == "todo"), 0)
        self.show_index(todo)
        if volume_name is not None:
            self._say(f"{len(self.items)} of your {len(self._queue)} pairs are about {volume_name}.")
        self.setFocus()

    def show_index(self, index: int) -> None:
        """Show pair `index` of the queue: text, own earlier rating, scan; then prefetch the next."""
        if self.store is None or self.annotator is None:
            raise RuntimeError("start an annotator's queue before showing pairs")
        self.index = max(0, min(len(self.items) - 1, index))
        item = self.items[self.index]
        qa = self.qa = self.store.qa_pair(item.qa_id)
        report = self.store.report(qa.scan_id)
        own = self.store.rating(self.annotator, qa.id, repeat=item.repeat)
        self.pair.show_pair(qa, report, pair_header(self.index + 1, len(self.items), qa, item.status))
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
            qa = self.store.qa_pair(item.qa_id)
            if qa.path:
                self._calibration[str(Path(qa.path))] = qa.ct_metadata
                self._prefetcher.request(qa.path)

    def _show_scan(self, qa: QAPairRecord) -> None:
        if not qa.path:
            self._hide_scan(f"No volume file is registered for {qa.volume_name}: rate from the text.")
            return
        self._calibration[str(Path(qa.path))] = qa.ct_metadata
        try:
            shown = self._prefetcher.get(qa.path) if self._prefetcher is not None else self._read_scan(qa.path)
        except (CTReadError, OSError) as exc:
            self._hide_scan(f"Scan not shown: {exc}")
            return
        self.pair.set_view_hint(self.scan.show(qa, shown, self.store.finding_boxes(qa.scan_id),
                                               self.store.labels(qa.scan_id)))

    def _read_scan(self, path: str | Path) -> DisplayVolume:
        """The scan with its calibration from the store (CT-RATE metadata), on the prefetch thread."""
        return read_for_display(path, self._calibration.get(str(Path(path))))

    def _hide_scan(self, reason: str) -> None:
        self.scan.hide()
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
                               seconds=self._elapsed(), repeat=self.items[self.index].repeat)
        self._mark("rated")
        self._advance("Stored.")
        return True

    def ask_reason(self, kind: str) -> None:
        """Open the reason field for a skip or flag; Enter stores, Esc cancels."""
        if self.qa is not None:
            self.reason_row.ask(kind)

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
        getattr(self.store, kind)(self.annotator, self.qa.id, reason, seconds=self._elapsed(),
                                  repeat=self.items[self.index].repeat)
        self._mark("skipped" if kind == "skip" else "flagged")
        self._cancel_reason()
        self._advance(f"{'Skipped' if kind == 'skip' else 'Flagged'}: {reason}")
        return True

    def _cancel_reason(self) -> None:
        self.reason_row.dismiss()
        self.setFocus()

    def go_back(self) -> None:
        """Back to the previous pair; the pair the rater came from is remembered, so Enter on an
        edited earlier pair returns there instead of to the pair after the edited one."""
        if self.index > 0:
            if self._resume is None:
                self._resume = self.index
            self.show_index(self.index - 1)
        else:
            self._say("This is the first pair.")

    def go_forward(self) -> None:
        if 0 <= self.index < len(self.items) - 1:
            self.show_index(self.index + 1)
            if self._resume is not None and self.index >= self._resume:
                self._resume = None
        else:
            self._say("This is the last pair.")

    def next_unrated(self) -> None:
        """U: the next pair still to do after this one (wrapping round to the start)."""
        order = list(range(self.index + 1, len(self.items))) + list(range(0, self.index + 1))
        todo = next((i for i in order if self.items[i].status == "todo"), None)
        if todo is None:
            self._say(f"Every pair of your queue is done ({len(self.items)} of {len(self.items)}).")
            return
        self._resume = None
        self.show_index(todo)
        self._say(f"Pair {todo + 1}: the next one not rated yet.")

    def set_window(self, window: str) -> None:
        """L/M/B/A: a CT window on the pair's scan, from the panel (no window panel needed)."""
        self._say(f"Shown in the {self.scan.set_window(window)}." if self.scan.in_viewer else "No scan shown.")

    def toggle_rubric(self) -> None:
        """R: the rubric in a column beside the pair (the panel widens; nothing is squeezed)."""
        shown = self.rubric.toggle()
        self.rubric_button.setText("Hide rubric [R]" if shown else "Rubric [R]")

    def step_slice(self, delta: int) -> None:
        """PageUp/PageDown: browse slices without giving the keyboard to the canvas."""
        self.scan.step(delta)

    def _advance(self, message: str) -> None:
        self._update_progress()
        resume, self._resume = self._resume, None
        if resume is not None and resume > self.index:
            self.show_index(resume)
            self._say(f"{message} Back at pair {resume + 1}, where you were.")
        elif self.index < len(self.items) - 1:
            self.show_index(self.index + 1)
            self._say(message)
        else:
            done = self.progress.value()
            self._say(f"{message} That was the last pair of your queue ({done} of {len(self.items)} done); "
                      "← goes back to earlier pairs.")

    def _mark(self, status: str) -> None:
        item = self.items[self.index]
        self.items[self.index] = replace(item, status=status)
        self._queue[self._queue.index(item)] = self.items[self.index]

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
        return self.qa is not None and is_rating_key(event)

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
        press(self, event)
        event.accept()

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop the background reader with the panel (no thread outlives the widget)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        self.scope.unhook()
        super().closeEvent(event)
