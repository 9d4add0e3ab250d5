"""The one long-lived thread a model generates on.

Why: `VLM.stream` hands text out while `generate` runs, so generation runs on a thread of its own.
A fresh thread per answer sets torch's CPU thread team and its kernels' per-thread state up again
each time: on the 4B Phi-3 shape (2 cores) that was about 0.25 s of every first token, a tenth of
it (docs/devices.md). One thread kept for the model's life pays that once.

A daemon thread, as before: a process may exit while an answer is still being written. An idle
one is ended and joined at exit (left to die with the interpreter, torch's per-thread state
aborted the default model's process in 5-8 of 10 exits). A forked child starts its own (threads do not
survive a fork), and the thread ends when its owner is collected.
"""
from __future__ import annotations

import atexit
import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_EXIT_WAIT_S = 5.0
_live: weakref.WeakSet[GenerationThread] = weakref.WeakSet()


def _serve(jobs: queue.SimpleQueue) -> None:
    while (job := jobs.get()) is not None:
        work, future = job
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)


class GenerationThread:
    """`submit(work)` runs `work` on this object's thread, one job after another."""

    def __init__(self, name: str = "ctvqa-generate") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._pid = -1

    def submit(self, work: Callable[[], Any]) -> Future:
        future: Future = Future()
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._jobs, self._pid = queue.SimpleQueue(), os.getpid()
                self._thread = threading.Thread(target=_serve, args=(self._jobs,), name=self.name, daemon=True)
                self._thread.start()
                weakref.finalize(self, self._jobs.put, None)
                _live.add(self)
            self._jobs.put((work, future))
        return future

    def stop(self, timeout: float | None = None) -> None:
        """End the thread once the jobs before are done (waiting at most `timeout` s for it)."""
        with self._lock:
            jobs, thread, mine = self._jobs, self._thread, self._pid == os.getpid()
            self._jobs = self._thread = None
        if jobs is not None and thread is not None and mine:
            jobs.put(None)
            thread.join(timeout)

    @property
    def thread(self) -> threading.Thread | None:
        """The thread jobs run on (None before the first job)."""
        return self._thread


@atexit.register
def _stop_all() -> None:
    for worker in list(_live):
        worker.stop(_EXIT_WAIT_S)
