"""Which split each exported pair goes to, and how its image path is written.

Two rules, both keeping every patient on one side of the line:
- `keep` (the default): a pair whose scan carries its cohort's own split (CT-RATE's `train_`/
  `valid_` names, 3D-RAD's `test_` ones, or the importer's split column) stays in it; pairs
  without one are split by patient among themselves.
- `patient`: every pair is split by patient, `val_frac` of the rows going to validation.

One split name is used in every format: `valid` (CT-RATE's own word; a cohort's `validation` or
`val` is renamed to it), so a 3D-RAD folder, an M3D CSV, a jsonl file and a Hugging Face split of
one export all say the same. Whole patients are moved, so with few patients the realised share
can be far from the one asked for; that comes back as a warning rather than silently.

Image paths are written relative to an image root (the `--image-root` given, else the deepest
folder holding every scan), which the manifest records, so an export can move with its images.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

SPLIT_MODES: tuple[str, ...] = ("keep", "patient")
TRAIN, VALID = "train", "valid"
_ALIASES = {"validation": VALID, "val": VALID}
_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def valid_patients(patients: pd.Series, val_frac: float, seed: int) -> set[str]:
    """The patients sent to validation: ordered by a seeded hash and moved until validation holds
    at least `val_frac` of the rows, so the split depends only on the patients and the seed (not on
    row order or library versions); at least one patient always stays in training."""
    if not 0 <= val_frac < 1:
        raise ValueError(f"val_frac must be at least 0 and below 1, got {val_frac}")
    counts = patients.value_counts()
    if val_frac == 0 or len(counts) < 2:
        return set()
    order = sorted(counts.index, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    cumulative = counts.loc[order].cumsum().to_numpy()
    n_valid = int(np.searchsorted(cumulative, val_frac * len(patients))) + 1
    return set(order[:min(n_valid, len(order) - 1)])


def split_name(value: object) -> str | None:
    """A cohort's split as an export split name (None when the scan has none)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
        return None
    name = str(value).strip().lower()
    name = _ALIASES.get(name, name)
    if not _SPLIT_NAME.fullmatch(name):
        raise ValueError(f"split {value!r} cannot name an export split (letters, digits and _ only)")
    return name


def assign_splits(frame: pd.DataFrame, mode: str, val_frac: float, seed: int) -> tuple[pd.Series, list[str]]:
    """(split per row, warnings) for a frame with `patient` and `cohort_split` columns."""
    if mode not in SPLIT_MODES:
        raise ValueError(f"unknown split mode {mode!r}; expected one of {list(SPLIT_MODES)}")
    own = frame["cohort_split"].map(split_name) if mode == "keep" else pd.Series(None, index=frame.index)
    split = own.astype(object)
    free = split.isna()
    warnings: list[str] = []
    if free.any():
        valid = valid_patients(frame.loc[free, "patient"], val_frac, seed)
        split[free] = np.where(frame.loc[free, "patient"].isin(valid), VALID, TRAIN)
        warning = share_warning(int(free.sum()), int((split[free] == VALID).sum()),
                                int(frame.loc[free, "patient"].nunique()), val_frac)
        if warning:
            warnings.append(warning + ("" if free.all() else " (among the pairs without a split of their own)"))
    both = frame.assign(split=split).groupby("patient")["split"].nunique()
    if (both > 1).any():
        patient = both.index[both > 1][0]
        names = sorted(set(split[frame["patient"] == patient]))
        raise ValueError(f"patient {patient!r} has scans in the splits {names} of its cohort; "
                         "export with --split patient to split by patient instead")
    return split, warnings


def share_warning(rows: int, valid_rows: int, patients: int, val_frac: float) -> str | None:
    """A warning when the realised validation share is far from the asked one: off by more than
    a quarter of the asked share and by more than 2 points (whole patients move together)."""
    realised = valid_rows / rows if rows else 0.0
    if abs(realised - val_frac) <= max(0.25 * val_frac, 0.02):
        return None
    return (f"validation holds {100 * realised:.0f}% of the pairs ({valid_rows} of {rows}), not the "
            f"{100 * val_frac:.0f}% asked for: whole patients move together and there are only "
            f"{patients} patient(s)")


def relative_images(paths: pd.Series, volume_names: pd.Series,
                    image_root: str | Path | None) -> tuple[pd.Series, str | None]:
    """(image per row, root): each scan path relative to `image_root` (default: the deepest folder
    holding every scan path), in forward slashes; a pair whose scan has no file is named by its
    volume name. A path outside a given root is an error naming it."""
    has_path = paths.notna() & paths.astype(str).str.len().gt(0)
    if not has_path.any():
        return volume_names.astype(str), None if image_root is None else _absolute(image_root)
    absolute = paths[has_path].map(_absolute)
    if image_root is None:
        root = os.path.commonpath([os.path.dirname(p) for p in absolute.unique()])
    else:
        root = _absolute(image_root)
    images = volume_names.astype(str).copy()
    for path in absolute.unique():
        if os.path.commonpath([root, path]) != root:
            raise ValueError(f"scan file {path} is not under the image root {root} (choose another --image-root)")
    images[has_path] = absolute.map(lambda p: PurePath(os.path.relpath(p, root)).as_posix())
    return images, root


def _absolute(path: str | Path) -> str:
    """Absolute without resolving links: a scan linked into the image root stays inside it."""
    return os.path.abspath(os.path.expanduser(str(path)))
