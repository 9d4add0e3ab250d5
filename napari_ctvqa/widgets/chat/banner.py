"""The warning over the chat when the default model is asked about a scan that is not a phantom.

Why: the embedded default model knows only the project's synthetic phantoms; with a real CT open
its answers mean nothing, and a radiologist who has not read the model card cannot know that.
A scan counts as a phantom when the layer says so (sample data, the synthetic cohort's reader
metadata) or when the cohort's `metadata.csv` beside the file names it a synthetic phantom.
"""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QLabel

PHANTOM_MODEL_NAME = "synthetic phantom"  # ManufacturerModelName the synthetic cohort writes
TEXT = ("\u26a0 The default model was trained on synthetic phantoms only: its answers about this scan "
        "mean nothing. Choose a real checkpoint under Model.")


@lru_cache(maxsize=64)
def _cohort_phantoms(metadata_csv: Path, mtime: float) -> frozenset[str]:
    """Volume names a cohort's metadata.csv marks as synthetic phantoms (cached per file version)."""
    try:
        with metadata_csv.open(newline="", encoding="utf-8") as fh:
            return frozenset(row.get("VolumeName", "") for row in csv.DictReader(fh)
                             if PHANTOM_MODEL_NAME in str(row.get("ManufacturerModelName", "")).lower())
    except (OSError, UnicodeDecodeError, csv.Error):
        return frozenset()


def is_phantom(layer: Any) -> bool:
    """Whether the layer shows one of the project's synthetic phantoms (see the module docstring)."""
    metadata = layer.metadata or {}
    ct_meta = metadata.get("ct_meta") or {}
    if metadata.get("synthetic") or ct_meta.get("synthetic"):
        return True
    if any(PHANTOM_MODEL_NAME in str(value).lower() for value in ct_meta.values() if isinstance(value, str)):
        return True
    path = metadata.get("path")
    if not path:
        return False
    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        candidate = folder / "metadata.csv"
        if candidate.is_file() and path.name in _cohort_phantoms(candidate, candidate.stat().st_mtime):
            return True
    return False


class DefaultModelBanner(QLabel):
    """Shown while the default model is loaded and the chat's scan is not a phantom."""

    def __init__(self) -> None:
        super().__init__(TEXT)
        self.setWordWrap(True)
        self.setStyleSheet("background-color: rgba(200, 120, 20, 70); color: #ffd9a0; padding: 4px; border-radius: 4px;")
        self.hide()

    def update_for(self, model_name: str | None, default_name: str, layer: Any) -> None:
        self.setVisible(model_name == default_name and layer is not None and not is_phantom(layer))
