"""Where a rater should first look: the slice and CT window a QA pair's own words point to.

Opening every scan at the middle slice in one window forces the rater to scroll and re-window for
nearly every pair. In order of trust, the slice comes from:
1. the scan's finding box for the finding the question or answer names (its side too, when the
   words name one), or for a generic "abnormality" question, the box of a finding the scan's
   labels mark present;
2. a place the words name ("upper lobe", "aortic arch"), as a height within the lungs when the
   lungs' extent is known (a scan that also covers the abdomen), else within the volume;
3. the middle slice.
The window comes from bone words first (calcium), then the named finding (fluid in the
mediastinum window, lung parenchyma in the lung window), then tissue words, else mediastinum.
Qt-free (the rating widget and tests use it); slice index increases inferior -> superior, the
canonical orientation of `model.ct`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from annotation.finding_words import (
    FINDING_WINDOWS,
    GENERIC_FINDING,
    TISSUE_WINDOWS,
    first_match,
    named_finding,
    named_side,
)
from annotation.records import FindingBoxRecord

# (pattern, fraction of the way from the lung bases (0) to the apices (1); of the volume when the
# lungs are not found). First match wins: the more specific phrases come first.
_LOCATIONS: tuple[tuple[str, float], ...] = (
    (r"thyroid|neck|supraclavicular", 0.95),
    (r"apex|apical|apices", 0.88),
    (r"upper lobe|upper zone|superior segment", 0.75),
    (r"aortic arch|arch of the aorta|brachiocephalic|trachea", 0.75),
    (r"middle lobe|lingula|hil(um|ar)|carina|main bronch", 0.6),
    (r"pulmonary arter|ascending aorta", 0.6),
    (r"aorta|aortic|mediastin", 0.55),
    (r"heart|cardi|pericardi|coronary|atri(um|al)|ventric", 0.45),
    (r"lower lobe|lower zone|lung bases?|basal|bibasilar", 0.3),
    (r"diaphragm|hiatal|hiatus|esophag", 0.2),
    (r"liver|hepat|spleen|adrenal|kidney|renal|abdom|gallbladder|stomach", 0.1),
)
_LUNG_HU = (-950.0, -500.0)


@dataclass(frozen=True)
class ViewHint:
    """Starting slice (index into axis 0) and window preset name, with the words that chose them."""

    slice_index: int
    window: str
    reason: str


def lung_extent(array: np.ndarray) -> tuple[int, int] | None:
    """(lowest, highest) slice with a real share of lung (-950..-500 HU) in it, or None when
    the scan has hardly any (not a chest CT, or not in HU). Slices below a quarter of the largest
    lung area do not count, so a sliver of bowel gas does not stretch the range."""
    if array.ndim != 3 or array.shape[0] < 2:
        return None
    area = ((array > _LUNG_HU[0]) & (array < _LUNG_HU[1])).sum(axis=(1, 2))
    if area.max() < 0.02 * array.shape[1] * array.shape[2]:
        return None
    rows = np.flatnonzero(area >= 0.25 * area.max())
    return int(rows[0]), int(rows[-1])


def _box_slice(box: FindingBoxRecord, n_slices: int) -> int:
    """The slice through the middle of the box (its z range is stop-exclusive fractions)."""
    z1, z2 = box.box[0] * n_slices, box.box[3] * n_slices
    return min(n_slices - 1, max(0, int((z1 + z2) / 2)))


def _choose_box(boxes: Sequence[FindingBoxRecord], label: str | None, side: str | None,
                labels: Mapping[str, int] | None, generic: bool) -> FindingBoxRecord | None:
    if label is not None:
        candidates = [b for b in boxes if b.label == label]
    elif generic and labels:
        candidates = [b for b in boxes if labels.get(b.label) == 1]
    else:
        return None
    if side in ("right", "left"):
        candidates = [b for b in candidates if b.side in (side, "bilateral", "both")] or candidates
    if not candidates:
        return None
    # the largest box: the finding the rater is most likely to be asked about
    return max(candidates, key=lambda b: np.prod(np.subtract(b.box[3:], b.box[:3])))


def initial_view(question: str, answer: str, n_slices: int, boxes: Sequence[FindingBoxRecord] = (),
                 labels: Mapping[str, int] | None = None, lungs: tuple[int, int] | None = None) -> ViewHint:
    """Choose the first slice and window for a pair; a cue in the question outranks one in the
    answer. `boxes` and `labels` are the scan's (store), `lungs` its `lung_extent`."""
    if n_slices < 1:
        raise ValueError(f"a volume needs at least one slice, got n_slices={n_slices}")
    texts = (question.lower(), (answer or "").lower())
    finding = named_finding(*texts)
    generic = any(re.search(GENERIC_FINDING, t) for t in texts)
    box = _choose_box(boxes, finding[1] if finding else None, named_side(*texts), labels, generic)
    reasons = []
    if box is not None:
        index = _box_slice(box, n_slices)
        words = finding[0] if finding else "abnormality"
        reasons.append(f"'{words}' -> the {box.label.lower()}'s box" + (f" ({box.side})" if box.side else ""))
    else:
        index, reason = _place_slice(texts, n_slices, lungs)
        reasons.append(reason)
    window, why = _window(texts, finding[1] if finding else (box.label if box else None))
    if why:
        reasons.append(why)
    return ViewHint(index, window, "; ".join(reasons))


def _place_slice(texts: tuple[str, ...], n_slices: int, lungs: tuple[int, int] | None) -> tuple[int, str]:
    place = None
    for text in texts:
        place = first_match(tuple((p, str(f)) for p, f in _LOCATIONS), text)
        if place:
            break
    if place is None:
        middle = (lungs[0] + lungs[1]) / 2 if lungs else (n_slices - 1) / 2
        return int(round(middle)), "no location named: middle of the lungs" if lungs else "no location named: middle slice"
    word, fraction = place[0], float(place[1])
    if lungs:
        low, high = lungs
        where = low + fraction * (high - low)
        reason = f"'{word}' -> {round(fraction * 100)}% of the lungs' height"
    else:
        where = fraction * (n_slices - 1)
        reason = f"'{word}' -> slice at {round(fraction * 100)}% of the height"
    return min(n_slices - 1, max(0, int(round(where)))), reason


def _window(texts: tuple[str, ...], label: str | None) -> tuple[str, str]:
    tissue = next((m for m in (first_match(TISSUE_WINDOWS, t) for t in texts) if m), None)
    if tissue and tissue[1] == "bone":
        return "bone", f"'{tissue[0]}' -> bone window"
    if label in FINDING_WINDOWS:
        return FINDING_WINDOWS[label], f"{label.lower()} -> {FINDING_WINDOWS[label]} window"
    if tissue:
        return tissue[1], f"'{tissue[0]}' -> {tissue[1]} window"
    return "mediastinum", ""
