"""Voxel values and memory: non-finite voxels, and how much a read may allocate.

Non-finite voxels (NaN, +-Inf) break everything downstream: one NaN makes the model input's
min-max normalisation NaN everywhere (a black image the model still answers), and an Inf
becomes NaN in the scores. The rule, applied on every read and told to the user in
``meta["notes"]``: a volume with no finite voxel is refused; otherwise NaN and -Inf become the
lowest finite value (background/air in a CT) and +Inf the highest.

Memory: a file's header says how many voxels it holds before anything is allocated. A read is
refused when those voxels, as stored plus as float32 HU, would exceed the memory budget: the
environment variable ``CTVQA_MEMORY_BUDGET`` (bytes, or with a K/M/G/T suffix), else half of
the memory the system has available. So a gzip stream that would inflate to 4 GiB on an 8 GiB
machine is refused by its header, and inflation itself never goes past what the header claims.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from model.ct.volume import CTReadError, add_note

BUDGET_ENV = "CTVQA_MEMORY_BUDGET"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def replace_nonfinite(path: str | Path, array: np.ndarray) -> str | None:
    """Apply the module's rule in place on a float array; returns the note to show, or None."""
    if array.dtype.kind != "f":
        return None
    finite = np.isfinite(array)
    if finite.all():
        return None
    n_bad = int(array.size - np.count_nonzero(finite))
    if n_bad == array.size:
        raise CTReadError(path, f"no finite voxel (all {array.size} are NaN or infinite)")
    lo, hi = float(array[finite].min()), float(array[finite].max())
    n_nan = int(np.count_nonzero(np.isnan(array)))
    np.nan_to_num(array, copy=False, nan=lo, posinf=hi, neginf=lo)
    return (f"{n_bad} non-finite voxel(s) ({n_nan} NaN, {n_bad - n_nan} infinite) replaced: "
            f"NaN and -Inf by the lowest value {lo:g}, +Inf by the highest {hi:g}")


def memory_budget() -> int:
    """Bytes one read may allocate (module doc)."""
    text = os.environ.get(BUDGET_ENV, "").strip().upper().removesuffix("B").removesuffix("I")
    if text:
        unit = text[-1] if text[-1] in _UNITS else ""
        try:
            return int(float(text[: len(text) - len(unit)]) * _UNITS[unit])
        except ValueError:
            raise ValueError(f"{BUDGET_ENV}={os.environ[BUDGET_ENV]!r} is not a size like 8G or 500000000") from None
    try:
        import psutil

        return int(psutil.virtual_memory().available // 2)
    except (ImportError, OSError):
        return 4 << 30


def check_budget(path: str | Path, size_xyz: tuple[int, ...], stored_itemsize: int) -> None:
    """Refuse, before allocating, a volume whose stored and float32 copies exceed the budget."""
    voxels = math.prod(int(n) for n in size_xyz)
    needed = voxels * (int(stored_itemsize) + 4)
    budget = memory_budget()
    if needed > budget:
        raise CTReadError(path, f"{'x'.join(str(int(n)) for n in size_xyz)} voxels need {needed / 2**30:.2f} GiB to read, "
                                f"over the memory budget of {budget / 2**30:.2f} GiB (set {BUDGET_ENV} to raise it)")


def finish_values(path: str | Path, array: np.ndarray, meta: dict, stored_as_float: bool = True) -> None:
    """The checks every reader ends with: something to show, and only finite values (in place).
    Integer voxels (with a finite rescale) cannot be NaN, so `stored_as_float=False` skips the pass."""
    if array.size == 0:
        raise CTReadError(path, f"empty volume (shape {array.shape})")
    note = replace_nonfinite(path, array) if stored_as_float else None
    if note is not None:
        add_note(meta, note)
