"""Open questions (3D-RAD tasks 1-3) from a report's findings by deterministic sentence extraction.

No language model: a few patterns pick sentences that name a finding with a location or a
measurement, and turn them into short-answer questions ("Where is the nodule observed?" ->
"Right upper lobe."; "What is the size of the nodule in the right upper lobe?" -> "14 x 11 mm").
The same report always gives the same pairs, so re-imports add nothing, and every answer is a
verbatim span of the report, so it is as right as the report is.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NUM = r"\d+(?:\.\d+)?"
MEASUREMENT = rf"{_NUM}(?:\s*(?:x|×|by)\s*{_NUM})*\s*(?:mm|cm)"
_PLACE = r"(?:in|at|on|within|along|adjacent to)"
_LOC = r"(?P<loc>(?:the|both) [a-z][a-z0-9 ,'-]*?)"
_END = r"(?=[.;]|,? (?:and|with|which|measuring)\b|$)"
_SUBJECT = r"(?P<subject>[a-z][a-z -]{1,60}?)"
_SEEN = r"(?:is|are|was|were) (?:seen|observed|noted|present|detected|identified|visualized)"
_LEAD = r"(?:there (?:is|are) )?(?:an? |the |some |multiple |several |two |three |few )?"
_FRONT_LOC = rf"^{_PLACE} {_LOC}, "  # "In the left lung upper lobe, a nodule ..."

# Patterns are tried in order on each sentence (lower-cased); the first match wins.
_SIZE_PATTERNS = (
    re.compile(rf"^{_LEAD}{_SUBJECT} measuring (?P<size>{MEASUREMENT})(?: in (?P<dim>diameter|thickness|size))?"
               rf"(?: {_SEEN})?(?: {_PLACE} {_LOC}{_END})?"),
    re.compile(rf"^{_LEAD}{_SUBJECT} {_SEEN} {_PLACE} {_LOC}, measuring (?P<size>{MEASUREMENT})"),
    re.compile(rf"{_FRONT_LOC}{_LEAD}{_SUBJECT} measuring (?P<size>{MEASUREMENT})"),
    re.compile(rf"^{_LEAD}{_SUBJECT} of (?P<size>{MEASUREMENT})(?: {_SEEN})? {_PLACE} {_LOC}{_END}"),
    re.compile(rf"^{_LEAD}(?P<size>{MEASUREMENT}) {_SUBJECT}(?: {_SEEN})? {_PLACE} {_LOC}{_END}"),
    re.compile(rf"^{_LEAD}{_SUBJECT}(?: {_PLACE} {_LOC})? with an? (?P<dim>diameter|thickness|size) of "
               rf"(?P<size>{MEASUREMENT})"),
    re.compile(rf"(?:^|; )(?:the )?(?P<whole>[a-z][a-z ]*?(?P<dim>diameter|thickness|size)) "
               rf"(?:is|was|measures|measured|measuring) (?P<size>{MEASUREMENT})"),
)
_WHERE_PATTERNS = (
    re.compile(rf"^{_LEAD}{_SUBJECT} {_SEEN} {_PLACE} {_LOC}{_END}"),
    re.compile(rf"{_FRONT_LOC}{_LEAD}{_SUBJECT}(?: measuring {MEASUREMENT})? {_SEEN}"),
    re.compile(rf"^there (?:is|are) (?:an? |some |multiple |several )?{_SUBJECT} {_PLACE} {_LOC}{_END}"),
)
_NEGATION = re.compile(r"\b(?:no|not|without|absent|negative|unremarkable|normal)\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")

# 3D-RAD subtask numbers (file order): task 1 Anatomical=1/Pathological=2, task 2
# Abnormality_feature=1/position=2/type=3/Diagnosis=4, task 3 Diameter=1/Size=2/Thickness=3.
_SIZE_SUBTASK = {"diameter": 1, "size": 2, "thickness": 3}


@dataclass(frozen=True)
class OpenQA:
    task: str  # a key of annotation.qa_templates.TASKS
    subtask: int
    question: str
    answer: str
    sentence: int  # index of the source sentence in the findings


def sentences(text: str) -> list[str]:
    """Split findings into sentences without breaking decimals like "3.5 mm"."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _clean(phrase: str) -> str:
    return re.sub(r"\s+", " ", phrase).strip(" ,")


def _answer(phrase: str) -> str:
    phrase = _clean(phrase)
    phrase = re.sub(r"^the ", "", phrase)
    return phrase[:1].upper() + phrase[1:] + "."


def _be(subject: str) -> str:
    """"is" or "are" for a finding phrase ("plaques" are, "bronchiectasis" is)."""
    head = subject.split(" with ")[0].split(" consistent ")[0].split()[-1]
    plural = head.endswith("s") and not head.endswith(("sis", "ss", "us", "ous"))
    return "are" if plural else "is"


def open_qa_from_findings(findings: str | None) -> list[OpenQA]:
    """Open QA pairs from one report's findings (empty for "Not given." or no usable sentence)."""
    if not findings or findings.strip().lower().rstrip(".") in ("", "not given"):
        return []
    out: list[OpenQA] = []
    seen: set[str] = set()

    def add(qa: OpenQA) -> None:
        if qa.question not in seen:
            seen.add(qa.question)
            out.append(qa)

    for index, sentence in enumerate(sentences(findings)):
        text = sentence.lower().rstrip(".")
        if _NEGATION.search(text):
            continue  # "No nodule is seen in ..." has no location to ask about
        for pattern in _SIZE_PATTERNS:
            m = pattern.search(text)
            if m:
                groups = m.groupdict()
                dim = groups.get("dim") or "size"
                if groups.get("whole"):
                    question = f"What is the {_clean(groups['whole'])}?"
                else:
                    place = f" in {_clean(groups['loc'])}" if groups.get("loc") else ""
                    question = f"What is the {dim} of the {_clean(groups['subject'])}{place}?"
                add(OpenQA("medical_computation", _SIZE_SUBTASK[dim], question,
                           re.sub(r"\s+", " ", m["size"]), index))
                break
        for pattern in _WHERE_PATTERNS:
            m = pattern.search(text)
            if m and m["loc"]:
                subject, loc = _clean(m["subject"]), _clean(m["loc"])
                add(OpenQA("anomaly_detection", 2, f"Where {_be(subject)} the {subject} observed?", _answer(loc),
                           index))
                add(OpenQA("image_observation", 2, f"What abnormality is observed in {loc}?",
                           _answer(subject), index))
                break
    return out
