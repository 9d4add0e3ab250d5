"""Can an answer be trusted as shown? Closed answers, yes/no questions, empty or degenerate text.

Why these rules exist: a closed question has two answers, the text the model generated and the
choice its likelihood scores pick (`VLM.answer`). They can disagree ("A. Refractory Lesion" written,
C scored best), and the score is what evaluation counts (3D-RAD's substring rule is the known
trap). So the chosen choice is what a reader is shown; the generated words are shown beside it
only when they name the same choice, and otherwise flagged. A yes/no question typed freely gets
an open answer from a model trained on closed ones (a free "Is there ...?" answered "D. No
Abnormality"), so such questions are recognised and offered as closed. Empty, punctuation-only
or looping text is not an answer and must not reach the rating queue; nor is an answer to a box
question from which no box can be read.

Qt-free and torch-free: the chat panel, the store (which refuses degenerate turns) and scripts
share these rules.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from model.inference.prompts import listed_choices

YES_NO_CHOICES = ("Yes", "No")
_AUXILIARIES = ("is", "are", "was", "were", "does", "do", "did", "has", "have", "had", "can", "could",
                "will", "would", "should", "shall", "may", "might", "must", "any")
_LEADING_LETTER = re.compile(r"^\s*\(?([A-Da-d])\s*[.):]\s*(.*)$", re.DOTALL)
_BARE_LETTER = re.compile(r"^\s*\(?([A-Da-d])\)?\s*$")
_WORD = re.compile(r"[A-Za-z0-9]+")
#: A word repeated this often in a row, or an answer of at least this many words using this
#: small a share of distinct words, is a generation loop, not an answer.
_MAX_RUN = 4
_MIN_WORDS_FOR_RATIO = 8
_MIN_DISTINCT_SHARE = 0.25


@dataclass(frozen=True)
class ClosedReading:
    """How a closed answer reads: `shown` is the chosen choice ("C. Resolved Lesion"); `written`
    the letter the generated text names (None when it names none); `agrees` whether the text may be
    shown beside the choice; `note` says why not."""

    shown: str
    written: str | None
    agrees: bool
    note: str = ""


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def written_choice(text: str, choices: Sequence[str] | None) -> str | None:
    """The letter the generated text names: a leading "B." / "(B)" / "B", else the one choice whose
    full text it starts with (choice texts that start with another, like "No" and "No
    Abnormality", are told apart by the longest match). None when it names no choice."""
    offered = listed_choices(choices)
    letters = {letter for letter, _ in offered}
    match = _LEADING_LETTER.match(text) or _BARE_LETTER.match(text)
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    said = _norm(text)
    named = [(len(name), letter) for letter, choice in offered for name in _names(choice)
             if name and (said == name or said.startswith(name + " "))]
    return max(named)[1] if named else None


def _names(choice: str) -> set[str]:
    """A choice's full text and its head before a parenthesis ("Resolved Lesion (Previously ...)")."""
    return {_norm(choice), _norm(choice.split("(")[0])}


def read_closed(text: str, choices: Sequence[str] | None, choice: str | None) -> ClosedReading:
    """The trustworthy reading of a closed answer (see the module docstring)."""
    offered = dict(listed_choices(choices))
    if choice is None or choice not in offered:
        return ClosedReading("", written_choice(text, choices), False, "no choice was scored")
    shown = f"{choice}. {offered[choice]}"
    written = written_choice(text, choices)
    if written == choice:
        return ClosedReading(shown, written, True)
    if written is None:
        note = "the model's text names no choice" if text.strip() else "the model wrote no text"
    else:
        note = f"the model's text says {written}. {offered[written]}, its scores pick {choice}"
    return ClosedReading(shown, written, False, note)


def is_yes_no_question(question: str) -> bool:
    """A question answered by yes or no: it opens with an auxiliary verb ("Is there...", "Does the
    ...", "Are any ..."), ends with a question mark, and offers no alternatives ("... left or right?")."""
    text = question.strip().lower()
    words = _WORD.findall(text)
    if not words or not text.endswith("?") or words[0] not in _AUXILIARIES:
        return False
    return " or " not in f" {' '.join(words[1:])} " and "choices:" not in text


_BOX_REQUEST = re.compile(r"\b(?:bounding\s+box|(?:give|draw|mark|show|return|with)\b[^.?!]*\bbox(?:es)?)\b",
                          re.IGNORECASE)


def asks_for_box(question: str) -> bool:
    """Whether a question asks for a location box ("Where is ...? Give the box.", "... bounding box")."""
    return bool(_BOX_REQUEST.search(question or ""))


def missing_box_reason(question: str, box: Sequence[float] | None) -> str | None:
    """Why an answer to a box question is no answer: no box could be read from it (a small model
    asked in other words than it learnt can write a box that is cut or malformed, and nothing is
    drawn); None when the question asks for none or a box was read."""
    if box is None and asks_for_box(question):
        return "the question asks for a box and no box could be read from the answer"
    return None


def degenerate_reason(text: str) -> str | None:
    """Why `text` is not an answer (empty, no words, a loop), or None when it is one."""
    if not text or not text.strip():
        return "the answer is empty"
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return "the answer has no words, only symbols"
    run = longest = 1
    for before, word in zip(words, words[1:]):
        run = run + 1 if word == before else 1
        longest = max(longest, run)
    if longest >= _MAX_RUN:
        return "the answer repeats one word over and over"
    if len(words) >= _MIN_WORDS_FOR_RATIO and len(set(words)) / len(words) <= _MIN_DISTINCT_SHARE:
        return "the answer loops over a few words"
    return None
