"""The background reader behind the rating widget: reads off the calling thread, caches the last
few, reports a bad file when it is asked for, and retries it later."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from napari_ctvqa.widgets.rating.prefetch import Prefetcher


class Loader:
    """Records which thread read which path; `bad` paths fail like an unreadable CT."""

    def __init__(self, bad: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.bad = set(bad)

    def __call__(self, path: Path) -> str:
        self.calls.append((path.name, threading.current_thread().name))
        if path.name in self.bad:
            raise OSError(f"{path}: cannot read")
        return f"volume of {path.name}"


def test_reads_in_the_background_once_and_caches():
    loader = Loader()
    prefetcher = Prefetcher(loader, keep=2)
    try:
        prefetcher.request("a.nii.gz").result(timeout=5)
        assert prefetcher.is_ready("a.nii.gz")
        assert prefetcher.get("a.nii.gz") == "volume of a.nii.gz"
        assert loader.calls == [("a.nii.gz", loader.calls[0][1])]
        assert loader.calls[0][1] != threading.current_thread().name
        prefetcher.get("b.nii.gz")
        prefetcher.get("c.nii.gz")  # keep=2: "a" is dropped
        assert not prefetcher.is_ready("a.nii.gz")
        prefetcher.get("a.nii.gz")
        assert [name for name, _ in loader.calls] == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "a.nii.gz"]
    finally:
        prefetcher.close()


def test_a_failed_read_is_reported_at_get_and_retried():
    loader = Loader(bad={"bad.nii.gz"})
    prefetcher = Prefetcher(loader)
    try:
        prefetcher.request("bad.nii.gz")
        with pytest.raises(OSError, match="cannot read"):
            prefetcher.get("bad.nii.gz")
        loader.bad.clear()  # e.g. the file was restored
        assert prefetcher.get("bad.nii.gz") == "volume of bad.nii.gz"
    finally:
        prefetcher.close()


def test_keep_must_be_positive():
    with pytest.raises(ValueError, match="keep"):
        Prefetcher(Loader(), keep=0)
