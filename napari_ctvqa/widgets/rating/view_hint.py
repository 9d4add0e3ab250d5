"""Where a rater should first look: the slice and CT window a QA pair's own words point to.

Opening every scan at the middle slice in one window forces the rater to scroll and re-window for
nearly every pair; the question or answer usually names a place ("upper lobe", "aortic arch") or a
tissue ("lung", "calcification"). This module turns those words into a starting slice and window.
It is a heuristic for a chest CT in the canonical orientation of `model.ct` (slice index
increasing inferior -> superior); the rater can always scroll from there. Qt-free on purpose.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

# (pattern, fraction of the way from the most inferior to the most superior slice). First match
# wins, so the more specific phrases come first ("aortic arch" before "aort").
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

_BONE = r"bone|osseous|calcif|rib\b|ribs|vertebra|spine|spinal|sternum|sternal|fracture|osteo|sclero|lytic|scapula|clavic"
_LUNG = (
    r"lung|lobe|pulmonar|nodul|emphysem|consolidat|opacit|atelecta|bronch|ground[- ]glass|septal"
    r"|mosaic|fibro|pneumothora|airway|parenchym|cavit|tree[- ]in[- ]bud|interstiti|pleura"
)
# Bone first: "calcified nodule" is judged in a bone window, where calcium stands out.
_WINDOWS: tuple[tuple[str, str], ...] = ((_BONE, "bone"), (_LUNG, "lung"))
T = TypeVar("T")


@dataclass(frozen=True)
class ViewHint:
    """Starting slice (index into axis 0) and window preset name, with the words that chose them."""

    slice_index: int
    window: str
    reason: str


def _first_cue(table: tuple[tuple[str, T], ...], texts: tuple[str, ...]) -> tuple[str, T] | None:
    """The first cue of `table` found in the first text that has any: (matched word, its value)."""
    for text in texts:
        for pattern, value in table:
            match = re.search(rf"[\w-]*(?:{pattern})[\w-]*", text)  # whole words, for the reason
            if match:
                return match.group(0), value
    return None


def initial_view(question: str, answer: str, n_slices: int) -> ViewHint:
    """Choose the first slice and window for a pair; a cue in the question outranks one in the
    answer. Without any cue: the middle slice in the mediastinum window."""
    if n_slices < 1:
        raise ValueError(f"a volume needs at least one slice, got n_slices={n_slices}")
    texts = (question.lower(), (answer or "").lower())
    fraction, window, reasons = 0.5, "mediastinum", []
    place = _first_cue(_LOCATIONS, texts)
    if place:
        word, fraction = place
        reasons.append(f"'{word}' -> slice at {round(fraction * 100)}% of the height")
    tissue = _first_cue(_WINDOWS, texts)
    if tissue:
        word, window = tissue
        reasons.append(f"'{word}' -> {window} window")
    index = min(n_slices - 1, max(0, round(fraction * (n_slices - 1))))
    return ViewHint(index, window, "; ".join(reasons) or "no location named: middle slice")
