"""Prompt and target text exactly as M3D-LaMed and 3D-RAD trained and evaluated them.

A model only answers well when it sees the text layout it was trained on, so every place that
talks to a model (chat, `ctvqa ask`, evaluation, finetuning data) builds its text here. The
closed-question layout differs between the references ("m3d" vs "3drad"); which one a model
expects is a per-model setting stored with it (`ctvqa.json`, key `prompt_style`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

IMAGE_TOKEN = "<im_patch>"
BOX_START = "<bx_start>"
BOX_END = "<bx_end>"
SEG_TOKEN = "[SEG]"
SPECIAL_TOKENS = (IMAGE_TOKEN, BOX_START, BOX_END, SEG_TOKEN)
NUM_IMAGE_TOKENS = 256  # the M3D config value; a model's own count comes from its config
CHOICE_LETTERS = "ABCD"
EMPTY_CHOICE = "-"  # 3D-RAD writes unused choice columns as a literal dash
PROMPT_STYLES = ("m3d", "3drad")


def listed_choices(choices: Sequence[str] | None) -> list[tuple[str, str]]:
    """(letter, text) of the choices a question really offers: dashes and blanks are unused slots."""
    if not choices:
        return []
    if len(choices) > len(CHOICE_LETTERS):
        raise ValueError(f"at most {len(CHOICE_LETTERS)} choices are supported, got {len(choices)}")
    return [
        (letter, str(text).strip())
        for letter, text in zip(CHOICE_LETTERS, choices)
        if text is not None and str(text).strip() not in ("", EMPTY_CHOICE)
    ]


def format_prompt(question: str, choices: Sequence[str] | None = None, style: str = "m3d") -> str:
    """The text that follows the image tokens: the question, plus the choices for closed questions."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
    question = question.strip()
    offered = listed_choices(choices)
    if not offered:
        return question
    listed = " ".join(f"{letter}. {text}" for letter, text in offered)
    if style == "3drad":
        return f"{question}\nChoices: {listed}\nAnswer:"
    return f"{question} Choices: {listed}"


def format_target(answer: str, answer_choice: str | None = None) -> str:
    """The training target: closed answers carry their letter, which the reference scoring looks for."""
    answer = answer.strip()
    if answer_choice is None or str(answer_choice).strip() in ("", EMPTY_CHOICE):
        return answer
    letter = str(answer_choice).strip().upper()
    if letter not in CHOICE_LETTERS:
        raise ValueError(f"answer choice must be one of {list(CHOICE_LETTERS)}, got {answer_choice!r}")
    return f"{letter}. {answer}"


def with_priors(question: str, label: str, priors: Sequence[int]) -> str:
    """Prefix the prior-scan label sequence the way 3D-RAD task 6 phrases it (chronological, priors only)."""
    values = [int(v) for v in priors]
    bad = [v for v in values if v not in (0, 1)]
    if bad:
        raise ValueError(f"priors must be 0 or 1, got {list(priors)!r}")
    if not values:
        raise ValueError("priors must list at least one earlier scan")
    sequence = "[" + ", ".join(str(v) for v in values) + "]"
    return (
        f"Earlier {label.strip().lower()} sequences: {sequence}. "
        "(Note: 0 indicates absence, and 1 indicates presence.) "
        f"CT reflects pattern of prior sequences. {question.strip()}"
    )


_PRIORS_IN_QUESTION = re.compile(r"\[\s*([01](?:\s*,\s*[01])*)\s*\]")


def priors_in_question(question: str) -> list[int] | None:
    """The prior-scan label sequence a task-6 question embeds (e.g. `[0, 0, 1]`), or None."""
    match = _PRIORS_IN_QUESTION.search(question)
    return [int(v) for v in match.group(1).split(",")] if match else None


def parse_prior_list(text: str) -> list[int]:
    """What a user types for the prior scans ("0, 1, 1", "0,1,1" or "[0 1 1]") as 0/1 values
    (0/1 only; a wrong item is named in the error)."""
    items = [t for t in text.replace("[", " ").replace("]", " ").replace(",", " ").split() if t]
    if not items:
        raise ValueError("the prior sequence is empty: give the label of each earlier scan, e.g. 0, 1, 1")
    bad = [t for t in items if t not in ("0", "1")]
    if bad:
        raise ValueError(f"the prior sequence may hold only 0/1 values, got {bad[0]!r}")
    return [int(t) for t in items]


def build_input_text(question_prompt: str, num_image_tokens: int = NUM_IMAGE_TOKENS) -> str:
    """The full model input (before BOS): image placeholders, one space, then the prompt."""
    return IMAGE_TOKEN * num_image_tokens + " " + question_prompt
