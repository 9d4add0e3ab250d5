"""Read the next scans of a rating queue in the background, so moving on never waits on disk.

Decompressing a 512x512 CT takes about a second; a rater moves on every ~60 s. One worker thread
reads the pairs ahead while the rater scores the current one, and the GUI thread only collects the
finished volume. A small cache keeps the last few volumes so going back is instant too. Qt-free:
plain `concurrent.futures`, so the benchmark can drive it without a window.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from threading import Lock
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """Loads paths with `loader` on one background thread and caches the last `keep` results.

    `request(path)` starts a read without waiting; `get(path)` returns the volume (waiting only if
    the read is still running) and re-raises the loader's error (e.g. `CTReadError`) there, so a bad
    file is reported when the rater reaches it, not earlier.
    """

    def __init__(self, loader: Callable[[Path], T], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._loader = loader
        self._keep = keep
        self._futures: OrderedDict[Path, Future[T]] = OrderedDict()
        self._lock = Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctvqa-prefetch")

    def request(self, path: str | Path) -> Future[T]:
        """Start reading `path` in the background unless it is already read or being read."""
        key = Path(path)
        with self._lock:
            future = self._futures.get(key)
            if future is None or (future.done() and future.exception() is not None):
                future = self._pool.submit(self._loader, key)
                self._futures[key] = future
            self._futures.move_to_end(key)
            while len(self._futures) > self._keep:
                _, old = self._futures.popitem(last=False)
                old.cancel()
            return future

    def get(self, path: str | Path) -> T:
        """The loaded volume; reads it now (on the worker) if nobody asked for it before."""
        return self.request(path).result()

    def is_ready(self, path: str | Path) -> bool:
        """Whether `get(path)` would return without waiting (used by tests and the benchmark)."""
        with self._lock:
            future = self._futures.get(Path(path))
            return future is not None and future.done()

    def close(self) -> None:
        """Drop queued reads and stop the worker; a read already running finishes on its own."""
        with self._lock:
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
