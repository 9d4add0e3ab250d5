"""CT display windows: the presets radiologists switch between, as (width, level) in HU.

Kept Qt-free so the window widget, the CLI and preprocessing (an optional window before min-max
normalisation) share one definition.
"""
from __future__ import annotations

import warnings

import numpy as np

#: name -> (width, level) in HU. `full` is not here: it depends on the data (see `window_limits`).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "bone": (2000.0, 300.0),
}
#: Every name `window_limits` accepts, in the order the UI shows them.
WINDOW_NAMES: tuple[str, ...] = (*WINDOW_PRESETS, "full")


def window_limits(name: str, array: np.ndarray | None = None) -> tuple[float, float]:
    """(low, high) display limits of preset `name`; `full` spans the data's finite range.

    `array` is needed only for `full`; a constant array gets a 1-unit span so that display
    code never divides by zero.
    """
    key = name.lower()
    if key in WINDOW_PRESETS:
        width, level = WINDOW_PRESETS[key]
        return (level - width / 2.0, level + width / 2.0)
    if key != "full":
        raise ValueError(f"unknown CT window {name!r}; choose one of {', '.join(WINDOW_NAMES)}")
    if array is None:
        raise ValueError("the 'full' window is computed from the data: pass the array")
    data = np.asarray(array)
    if data.size == 0:
        raise ValueError("the 'full' window needs a non-empty array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN is reported below, clearly
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("the 'full' window needs at least one finite value")
    return (lo, hi if hi > lo else lo + 1.0)
