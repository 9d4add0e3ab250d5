"""Prompt layouts as M3D and 3D-RAD wrote them."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from model.inference import prompts

TEMPORAL = [
    "Refractory Lesion (Persistent or recurrent, now present)",
    "Resolved Lesion (Previously present or recurrent, now absent)",
    "New Lesion (Absent previously, now present)",
    "No Abnormality (Always absent)",
]


def test_open_question_is_the_question() -> None:
    assert prompts.format_prompt("  What is seen?  ") == "What is seen?"
    assert prompts.format_prompt("What is seen?", ["-", "-", "-", "-"]) == "What is seen?"


def test_closed_m3d_lists_only_real_choices() -> None:
    got = prompts.format_prompt("Is there a lung nodule?", ["Yes", "No", "-", "-"])
    assert got == "Is there a lung nodule? Choices: A. Yes B. No"
    four = prompts.format_prompt("Q?", TEMPORAL)
    assert four == "Q? Choices: " + " ".join(f"{l}. {c}" for l, c in zip("ABCD", TEMPORAL))


def test_closed_3drad_style() -> None:
    got = prompts.format_prompt("Is there a lung nodule?", ["Yes", "No", "-", "-"], style="3drad")
    assert got == "Is there a lung nodule?\nChoices: A. Yes B. No\nAnswer:"
    with pytest.raises(ValueError, match="prompt style"):
        prompts.format_prompt("Q?", ["Yes", "No"], style="llava")


def test_target_and_input_text() -> None:
    assert prompts.format_target("No", "B") == "B. No"
    assert prompts.format_target("An enlarged heart.") == "An enlarged heart."
    with pytest.raises(ValueError, match="answer choice"):
        prompts.format_target("No", "E")
    text = prompts.build_input_text("Q?")
    assert text == prompts.IMAGE_TOKEN * 256 + " Q?"
    assert prompts.build_input_text("Q?", 8).count(prompts.IMAGE_TOKEN) == 8


def test_with_priors_reproduces_3drad_task6(shared_data: Path) -> None:
    folder = shared_data / "3d-rad" / "test" / "Task6_Longitudinal_Temporal_Diagnosis"
    pattern = re.compile(r"^Earlier (.+?) sequences: \[([01, ]+)\]\. \(Note: .*?\) CT reflects pattern of prior sequences\. (.+)$")
    checked = 0
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                match = pattern.match(row["Question"])
                if match:
                    label, seq, question = match.groups()
                    priors = [int(v) for v in seq.split(",")]
                    assert prompts.with_priors(question, label, priors) == row["Question"]
                    checked += 1
        if checked >= 20:
            break
    assert checked > 0


def test_with_priors_rejects_non_binary() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        prompts.with_priors("Q?", "consolidation", [0, 2])


def test_priors_in_question_reads_the_task6_sequence_back() -> None:
    question = prompts.with_priors("What is the current status?", "Consolidation", [0, 1, 1])
    assert prompts.priors_in_question(question) == [0, 1, 1]
    assert prompts.priors_in_question("Scans showed it as: [1]. (Note: ...)") == [1]
    assert prompts.priors_in_question("Is there a nodule?") is None
