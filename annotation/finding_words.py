"""Which CT-RATE finding a QA pair's words name, and which CT window judges it.

The rating view opens each pair at its finding (through the scan's finding boxes) and in the
window its words call for. Both need the same reading of the words: "pleural fluid" is the
pleural effusion and is judged in the mediastinum window, although "pleural" alone is a lung
word. The tables are ordered: the first pattern that matches wins, so the specific come first
("pericardial effusion" before "effusion", "coronary" before "calcified plaque").
"""
from __future__ import annotations

import re

# (pattern, CT-RATE label). Patterns match whole words from their start.
FINDING_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"pericardi\w*\s+(?:effusion|fluid)|pericardial", "Pericardial effusion"),
    (r"pleural\s+(?:effusion|fluid)|effusion|hydrothorax|pleural\s+collection", "Pleural effusion"),
    (r"coronary", "Coronary artery wall calcification"),
    (r"arterial\s+wall|aort\w*\s+(?:wall\s+)?calcif|calcified\s+plaque|atheroscl|vascular\s+calcif",
     "Arterial wall calcification"),
    (r"cardiomegal|enlarged\s+heart|heart\s+(?:is\s+)?enlarged|heart\s+size|cardiothoracic", "Cardiomegaly"),
    (r"nodul", "Lung nodule"),
    (r"ground[- ]glass|opacit", "Lung opacity"),
    (r"consolidat", "Consolidation"),
    (r"atelecta", "Atelectasis"),
    (r"emphysem", "Emphysema"),
    (r"bronchiecta", "Bronchiectasis"),
    (r"fibro", "Pulmonary fibrotic sequela"),
    (r"mosaic", "Mosaic attenuation pattern"),
    (r"peribronch", "Peribronchial thickening"),
    (r"septal", "Interlobular septal thickening"),
    (r"lymph|adenopath", "Lymphadenopathy"),
    (r"hiatal|hiatus|hernia", "Hiatal hernia"),
    (r"medical\s+material|pacemaker|catheter|port\b|device|\blead\b|stent|\btube\b|sternotomy\s+wire",
     "Medical material"),
)

# The window each finding is read in: fluid and soft tissue in the mediastinum window, lung
# parenchyma in the lung window, calcium (where it stands out) in the bone window.
FINDING_WINDOWS: dict[str, str] = {
    "Pericardial effusion": "mediastinum", "Pleural effusion": "mediastinum", "Cardiomegaly": "mediastinum",
    "Lymphadenopathy": "mediastinum", "Hiatal hernia": "mediastinum", "Medical material": "mediastinum",
    "Coronary artery wall calcification": "bone", "Arterial wall calcification": "bone",
    "Lung nodule": "lung", "Lung opacity": "lung", "Consolidation": "lung", "Atelectasis": "lung",
    "Emphysema": "lung", "Bronchiectasis": "lung", "Pulmonary fibrotic sequela": "lung",
    "Mosaic attenuation pattern": "lung", "Peribronchial thickening": "lung",
    "Interlobular septal thickening": "lung",
}

# Tissue words without a named finding; fluid first ("pleural fluid" is fluid), then bone
# ("calcified nodule" is judged where calcium stands out), then lung.
_FLUID = r"fluid|effusion|collection|hemothorax|haemothorax|ascites|soft[- ]tissue|mediastin|heart|cardi|vessel|aort|node"
_BONE = r"bone|osseous|calcif|rib\b|ribs|vertebra|spine|spinal|sternum|sternal|fracture|osteo|sclero|lytic|scapula|clavic"
_LUNG = (r"lung|lobe|pulmonar|bronch|airway|parenchym|pneumothora|interstiti|tree[- ]in[- ]bud|cavit|pleura"
         r"|infiltrat")
TISSUE_WINDOWS: tuple[tuple[str, str], ...] = ((_BONE, "bone"), (_FLUID, "mediastinum"), (_LUNG, "lung"))
_SIDES = (("right", r"\bright\b"), ("left", r"\bleft\b"), ("bilateral", r"\bbilateral|\bboth\b"))
GENERIC_FINDING = r"abnormal|anomal|lesion|finding|patholog|disease"


def first_match(table: tuple[tuple[str, str], ...], text: str) -> tuple[str, str] | None:
    """(the matched words, the table's value) for the first pattern of `table` found in `text`."""
    for pattern, value in table:
        match = re.search(rf"[\w-]*(?:{pattern})[\w-]*", text)
        if match:
            return match.group(0), value
    return None


def named_finding(*texts: str) -> tuple[str, str] | None:
    """(words, CT-RATE label) of the finding the first text that names one names."""
    for text in texts:
        found = first_match(FINDING_PATTERNS, (text or "").lower())
        if found:
            return found
    return None


def named_side(*texts: str) -> str | None:
    """'right', 'left' or 'bilateral' if the first text that names a side names one."""
    for text in texts:
        for side, pattern in _SIDES:
            if re.search(pattern, (text or "").lower()):
                return side
    return None
