"""Runs the VLM away from napari's GUI thread and turns its replies into Qt signals.

Why a separate process by default: torch in a thread of the napari process shares the GIL and the
CPU thread pools with the GUI, which made micro-sam's viewer stutter. bench/chat_responsiveness.py
measures the longest gap between 10 ms timer ticks while an answer streams, in both modes; the
process (at lower priority, one core left to napari) is the default because it is never worse
than the thread beyond noise and a crash or OOM kill of the model leaves napari running (numbers
in docs/chat.md). The thread mode exists for that comparison and for scripts that cannot spawn.

The worker answers one request at a time; replies are drained by a QTimer on the GUI thread in
small batches, so the GUI never waits on the model.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import threading
import time
import weakref
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from napari_ctvqa.vlm_server import VolumePayload, serve, serve_in_process

#: How often replies are drained, and how long one drain may take at most.
POLL_MS = 15
_DRAIN_BUDGET_S = 0.008
_SHUTDOWN_TIMEOUT_S = 1.0  # the model process keeps nothing worth waiting for


def _stop(handle: Any, requests: Any, cancel_event: Any) -> None:
    """Ask the loop to quit, then make sure it is gone (also run when the worker is collected)."""
    if handle is None or not handle.is_alive():
        return
    cancel_event.set()
    try:
        requests.put(("quit",))
    except (ValueError, OSError):
        pass
    handle.join(_SHUTDOWN_TIMEOUT_S)
    if isinstance(handle, multiprocessing.process.BaseProcess) and handle.is_alive():
        handle.terminate()
        handle.join(_SHUTDOWN_TIMEOUT_S)
        if handle.is_alive():
            handle.kill()
            handle.join()


class VLMWorker(QObject):
    """The chat panel's handle on the model: load, ask (streamed), cancel, model input, shutdown.

    Signals carry plain Python data; `finished` gets the Answer as a dict with a "cancelled" flag.
    """

    loaded = Signal(dict)
    load_failed = Signal(str)
    status = Signal(int, str)
    piece = Signal(int, str)
    finished = Signal(int, dict)
    failed = Signal(int, str)
    model_input_ready = Signal(str, object, tuple, tuple)
    prepared = Signal(str, float)  # scan key, seconds spent encoding it and filling its image prefix
    prepare_failed = Signal(str, str)
    prepare_skipped = Signal(str)  # scan key: a later request came first, the scan was kept unread
    error = Signal(str)

    def __init__(self, mode: str = "process", parent: QObject | None = None) -> None:
        super().__init__(parent)
        if mode not in ("process", "thread"):
            raise ValueError(f"worker mode must be 'process' or 'thread', got {mode!r}")
        self.mode = mode
        self._ids = itertools.count(1)
        self._handle: Any = None
        self._requests: Any = None
        self._replies: Any = None
        self._cancel: Any = None
        self._finalizer: weakref.finalize | None = None
        self.busy_request: int | None = None
        self.loading = False
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._drain)

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self) -> None:
        if self._handle is not None and self._handle.is_alive():
            return
        if self.mode == "process":
            ctx = multiprocessing.get_context("spawn")
            self._requests, self._replies, self._cancel = ctx.Queue(), ctx.Queue(), ctx.Event()
            # Python joins a queue's feeder thread at exit: one still sending a scan to a model
            # process that died blocks on the full pipe for ever (this process holds its read end
            # too, so no error ends it), and napari would never exit. Unsent requests are dropped.
            self._requests.cancel_join_thread()
            # The model process ends with this one even when napari is killed (model.processes.end_with_parent).
            main_thread = threading.current_thread() is threading.main_thread()
            self._handle = ctx.Process(target=serve_in_process, name="ctvqa-vlm", daemon=True,
                                       args=(self._requests, self._replies, self._cancel, os.getpid(), main_thread))
        else:
            self._requests, self._replies, self._cancel = queue.Queue(), queue.Queue(), threading.Event()
            self._handle = threading.Thread(target=serve, args=(self._requests, self._replies, self._cancel),
                                            name="ctvqa-vlm", daemon=True)
        self._handle.start()
        self._finalizer = weakref.finalize(self, _stop, self._handle, self._requests, self._cancel)
        self._timer.start()

    def start(self) -> None:
        """Start the model process now, before any request, so it imports torch while the caller
        is still building its window (the demo does); requests start it anyway."""
        self._start()

    @property
    def alive(self) -> bool:
        return self._handle is not None and self._handle.is_alive()

    def shutdown(self) -> None:
        """Stop the model process/thread; safe to call twice. The panel calls it when it closes."""
        self._timer.stop()
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        if self.mode == "process" and self._requests is not None:
            for q in (self._requests, self._replies):
                q.cancel_join_thread()  # requests the stopped process never read are dropped
                q.close()
        self._handle = None
        self.busy_request = None
        self.loading = False

    # -- requests --------------------------------------------------------------------------
    def load(self, path: str | None, runtime: dict[str, str | None] | None = None) -> None:
        """Load a model folder (None = the embedded default) in the background, on the device,
        dtype and quantization of `runtime` (None: the environment, else auto); emits loaded/load_failed."""
        self._start()
        self.loading = True
        self._requests.put(("load", None if path is None else str(path), dict(runtime or {})))

    def ask(self, scan_key: str, question: str, *, volume: VolumePayload | None = None,
            choices: list[str] | None = None, max_new_tokens: int = 64, slice_index: int | None = None) -> int:
        """Queue a question; `volume` is needed the first time a scan is asked about; `slice_index`
        asks about that axial slice instead of the whole scan. Returns the id."""
        self._start()
        request_id = next(self._ids)
        self.busy_request = request_id
        self._requests.put(("ask", request_id, scan_key, volume, question,
                            list(choices) if choices else None, int(max_new_tokens),
                            None if slice_index is None else int(slice_index)))
        return request_id

    def cancel(self) -> None:
        """Stop the running answer within one token step; it then finishes with cancelled=True."""
        if self._cancel is not None and self.busy_request is not None:
            self._cancel.set()

    def request_model_input(self, scan_key: str, volume: VolumePayload | None = None) -> None:
        """Ask for a scan's preprocessed input (emits model_input_ready); `volume` as for `ask`."""
        self._start()
        self._requests.put(("model_input", scan_key, volume))

    def prepare(self, scan_key: str, volume: VolumePayload | None = None) -> None:
        """Encode a scan ahead of its first question (emits prepared / prepare_failed); a question
        asked meanwhile waits for it and then starts from the prepared prefix. One still waiting
        when a later request comes is skipped (prepare_skipped)."""
        self._start()
        self._requests.put(("prepare", scan_key, volume))

    # -- replies ---------------------------------------------------------------------------
    def _drain(self) -> None:
        deadline = time.perf_counter() + _DRAIN_BUDGET_S
        pieces: dict[int, list[str]] = {}
        while time.perf_counter() < deadline:
            try:
                reply = self._replies.get_nowait()
            except queue.Empty:
                break
            except (EOFError, OSError, ValueError):
                self._timer.stop()
                self.error.emit("the model process stopped unexpectedly; choose the model again")
                return
            if reply[0] == "piece":
                pieces.setdefault(reply[1], []).append(reply[2])
                continue
            self._flush(pieces)
            self._dispatch(reply)
        self._flush(pieces)
        if self.alive or self._handle is None:
            return
        self._timer.stop()
        self._handle = None
        if self.busy_request is not None:
            self.failed.emit(self.busy_request, "the model process stopped before answering")
        self.busy_request = None
        self.loading = False
        self.error.emit("the model process stopped unexpectedly (out of memory?); choose the model again")

    def _flush(self, pieces: dict[int, list[str]]) -> None:
        for request_id, parts in pieces.items():
            self.piece.emit(request_id, "".join(parts))
        pieces.clear()

    def _dispatch(self, reply: tuple) -> None:
        kind = reply[0]
        if kind == "loaded":
            self.loading = False
            self.loaded.emit(reply[1])
        elif kind == "load_failed":
            self.loading = False
            self.load_failed.emit(reply[1])
        elif kind == "status":
            self.status.emit(reply[1], reply[2])
        elif kind == "done":
            self.busy_request = None
            self.finished.emit(reply[1], reply[2])
        elif kind == "failed":
            if reply[1] is None:
                self.error.emit(reply[2])
            else:
                self.busy_request = None
                self.failed.emit(reply[1], reply[2])
        elif kind == "prepared":
            self.prepared.emit(reply[1], float(reply[2]))
        elif kind == "prepare_failed":
            self.prepare_failed.emit(reply[1], reply[2])
        elif kind == "prepare_skipped":
            self.prepare_skipped.emit(reply[1])
        elif kind == "model_input":
            self.model_input_ready.emit(reply[1], np.asarray(reply[2]), tuple(reply[3]), tuple(reply[4]))
