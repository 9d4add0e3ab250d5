"""The model side of the chat panel: a request loop that owns one VLM and the scans it has seen.

It is Qt-free and talks only through two queues and a cancel event, so the same loop runs in a
spawned process (what the panel uses: torch then never competes with napari's GUI thread for the
GIL or for CPU threads) or in a thread (what the responsiveness benchmark compares it with).

Requests (tuples, first item the kind):
  ("load", path_or_None[, {"device", "dtype", "quantize"}])   (model.inference.devices options)
  ("ask", request_id, scan_key, volume_or_None, question, choices, max_new_tokens[, slice_index_or_None])
  ("model_input", scan_key, volume_or_None)
  ("prepare", scan_key, volume_or_None)   encode a scan and fill its image prefix ahead of the first question
  ("quit",)
Replies:
  ("loaded", info) | ("load_failed", message)   info: path, settings, slice_questions (bool); a failed
                                                load keeps the model that was loaded
  ("status", request_id, text)          e.g. "encoding..." before a scan's first question
  ("piece", request_id, text)           streamed answer text
  ("done", request_id, answer_dict)     the final Answer as a dict (plus "cancelled": bool and
                                        "encoding_s": seconds spent encoding the scan, or None)
  ("failed", request_id, message)
  ("model_input", scan_key, uint8 array (D, H, W), scale, offset)  (InputGeometry, in CT voxels) | ("failed", None, message)
  ("prepared", scan_key, seconds) | ("prepare_failed", scan_key, message)
  ("prepare_skipped", scan_key)         a later request was already waiting: the scan is kept, not read
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.ct.volume import CTVolume, canonical_affine
from model.processes import end_with_parent, yield_to_viewer

log = logging.getLogger(__name__)
#: How often the model process checks that napari is still its parent (seconds).
#: How many scans the worker keeps (the VLM caches their encodings); a chat rarely switches
#: between more, and each holds its CT array.
MAX_SCANS = 4
#: Requests after which a waiting read-ahead is not worth its encoding: the reader has moved on
#: (another scan shown, a question asked, a model chosen) and would wait for it.
SUPERSEDES_PREPARE = frozenset({"prepare", "ask", "load"})


@dataclass
class VolumePayload:
    """What the worker needs of a CT layer: the HU array and the reader's metadata."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)


def error_message(exc: BaseException) -> str:
    """One readable line for the panel; the traceback goes to the debug log for developers."""
    log.debug("chat model request failed", exc_info=exc)
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class ChatServer:
    """Holds the model and prepared scans; `handle` answers one request through `send`."""

    def __init__(self, send: Any, cancel_event: Any) -> None:
        self.send = send
        self.cancel_event = cancel_event
        self.vlm: Any = None
        self.scans: dict[str, Any] = {}  # scan key -> model.CTVolume, oldest first
        self.read_ahead_s: dict[str, float] = {}  # scan key -> seconds _prepare spent, until it is asked about
        self.unread: set[str] = set()  # scans kept by skip_prepare: their first question encodes them

    def handle(self, request: tuple) -> bool:
        """Serve one request; False means stop the loop."""
        kind = request[0]
        if kind == "quit":
            return False
        if kind == "load":
            self._load(*request[1:])
        elif kind == "ask":
            self._ask(*request[1:])
        elif kind == "model_input":
            self._model_input(request[1], request[2])
        elif kind == "prepare":
            self._prepare(request[1], request[2])
        else:
            self.send(("failed", None, f"unknown request {kind!r}"))
        return True

    def _load(self, path: str | None, runtime: dict[str, str | None] | None = None) -> None:
        # deferred: torch and transformers load in the model process only
        from model.inference.devices import available_devices
        from model.inference.loading import load_vlm

        try:
            vlm = load_vlm(path, **(runtime or {}))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a panel message
            self.send(("load_failed", error_message(exc)))  # the working model stays loaded
            return
        self.vlm = vlm
        self.scans.clear()
        self.read_ahead_s.clear()
        self.unread.clear()
        self.send(("loaded", {"path": path, "settings": dict(getattr(self.vlm, "settings", {}) or {}),
                              "slice_questions": bool(getattr(self.vlm, "supports_slices", False)),
                              "runtime": self.vlm.runtime, "devices": available_devices()}))

    def _require_model(self) -> None:
        if self.vlm is None:
            raise RuntimeError("no model is loaded; choose a model first")

    def _volume(self, key: str, payload: VolumePayload | None) -> Any:
        """The CTVolume of a scan: rebuilt from the payload when one comes, else the kept one.

        The same object is reused for every question, so the VLM's per-volume cache (model input,
        image features, prompt prefix) is hit from the second question on."""
        if payload is not None:
            spacing = tuple(float(s) for s in payload.spacing)
            self.scans.pop(key, None)
            self.scans[key] = CTVolume(np.asarray(payload.array, dtype=np.float32), spacing,
                                       canonical_affine(spacing), dict(payload.meta))
            while len(self.scans) > MAX_SCANS:
                self.scans.pop(next(iter(self.scans)))
        if key not in self.scans:
            raise KeyError(f"the model process has no volume for scan {key!r}; ask again to send it")
        return self.scans[key]

    def _ask(self, request_id: int, key: str, payload: VolumePayload | None, question: str,
             choices: list[str] | None, max_new_tokens: int, slice_index: int | None = None) -> None:
        self.cancel_event.clear()
        try:
            self._require_model()
            encoding = payload is not None or key not in self.scans or key in self.unread
            self.unread.discard(key)
            if encoding:
                self.send(("status", request_id, "encoding..."))
            started = time.perf_counter()
            prepared = self.vlm.prepare(self._volume(key, payload), slice_index=slice_index)
            # a scan read ahead (_prepare) reports its encoding with its first question
            encoding_s = (time.perf_counter() - started if encoding else
                          self.read_ahead_s.pop(key, None) if slice_index is None else None)
            answer = {**self._generate(request_id, prepared, question, choices, max_new_tokens), "encoding_s": encoding_s}
        except Exception as exc:  # noqa: BLE001 - every failure becomes a panel message
            self.send(("failed", request_id, error_message(exc)))
            return
        self.send(("done", request_id, answer))

    def _generate(self, request_id: int, prepared: Any, question: str, choices: list[str] | None,
                  max_new_tokens: int) -> dict[str, Any]:
        """`VLM.answer`, streaming its pieces as replies and honouring Cancel between token steps."""
        done = threading.Event()
        watcher = threading.Thread(target=self._watch_cancel, args=(done,), daemon=True)
        watcher.start()
        try:
            answer = self.vlm.answer(prepared, question, choices=choices, max_new_tokens=max_new_tokens,
                                     on_text=lambda piece: self.send(("piece", request_id, piece)))
        finally:
            done.set()
            watcher.join()
        return {**dataclasses.asdict(answer), "cancelled": self.cancel_event.is_set()}

    def _watch_cancel(self, done: threading.Event) -> None:
        """Forward the panel's Cancel to the VLM at once (and again until the answer ends, so a
        cancel that arrives while the scan is still being encoded is not lost)."""
        while not done.is_set():
            if self.cancel_event.wait(0.01):
                self.vlm.cancel()
                done.wait(0.01)

    def _prepare(self, key: str, payload: VolumePayload | None) -> None:
        """Encode a scan and run its image prefix through the language model as soon as the panel
        shows it, while the reader looks and types: the first question then waits only for its
        own tokens. A 4B-class checkpoint in bf16 spends about 4 s of its 5.7 s first token on a
        new scan on 2 CPU cores (docs/devices.md), the same work a question would otherwise start
        with."""
        try:
            volume = self._volume(key, payload)
            self._require_model()
            fresh = payload is not None or key in self.unread
            self.unread.discard(key)
            started = time.perf_counter()
            self.vlm.prefix_cache(self.vlm.prepare(volume))
        except Exception as exc:  # noqa: BLE001 - the first question reports it again, as its own failure
            self.send(("prepare_failed", key, error_message(exc)))
            return
        seconds = time.perf_counter() - started
        if fresh:
            self.read_ahead_s[key] = seconds
        self.send(("prepared", key, seconds))

    def skip_prepare(self, key: str, payload: VolumePayload | None) -> None:
        """Keep a scan whose read-ahead was overtaken, without encoding it: a reader flicking
        through four scans must not wait for four encodings before the question about the last."""
        try:
            self._volume(key, payload)
        except Exception as exc:  # noqa: BLE001 - as _prepare: said now, the question says it again
            self.send(("prepare_failed", key, error_message(exc)))
            return
        if payload is not None:
            self.unread.add(key)
        self.send(("prepare_skipped", key))

    def _model_input(self, key: str, payload: VolumePayload | None) -> None:
        try:
            self._require_model()
            prepared = self.vlm.prepare(self._volume(key, payload))
            if prepared.geometry is None:
                raise ValueError("this scan was given as a ready model input; there is nothing to overlay")
            image = (prepared.pixels[0, 0].numpy() * 255.0 + 0.5).astype(np.uint8)
            self.send(("model_input", key, image, tuple(prepared.geometry.scale), tuple(prepared.geometry.offset)))
        except Exception as exc:  # noqa: BLE001
            self.send(("failed", None, error_message(exc)))


def serve(requests: Any, replies: Any, cancel_event: Any) -> None:
    """The loop: one request at a time until "quit" (or the queue's owner goes away); a read-ahead
    with a later request already waiting behind it is skipped (ChatServer.skip_prepare)."""
    server = ChatServer(replies.put, cancel_event)
    waiting: deque[tuple] = deque()
    while True:
        try:
            if not waiting:
                waiting.append(requests.get())
            while True:
                waiting.append(requests.get_nowait())
        except queue.Empty:
            pass
        except (EOFError, OSError):
            return
        request = waiting.popleft()
        if request[0] == "prepare" and any(later[0] in SUPERSEDES_PREPARE for later in waiting):
            server.skip_prepare(request[1], request[2])
        elif not server.handle(request):
            return


def serve_in_process(requests: Any, replies: Any, cancel_event: Any, parent_pid: int | None = None,
                     signal_on_death: bool = True) -> None:
    """Entry point of the spawned model process: tie its life to napari's, yield the CPU to
    napari, then serve.

    A lower priority and one core left free keep the viewer smooth while the model generates
    (bench/chat_responsiveness.py); generation is then a little slower on a busy machine.
    """
    if parent_pid is not None:
        end_with_parent(parent_pid, signal_on_death)
    import torch  # deferred: only the spawned model process needs torch

    torch.set_num_threads(yield_to_viewer())
    serve(requests, replies, cancel_event)
