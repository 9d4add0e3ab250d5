"""What the chat shows of an answer (issue 20): the chosen choice, the model's words only where they agree."""
from __future__ import annotations

import pytest

from annotation.qa_templates import EXISTENCE_CHOICES, TEMPORAL_CHOICES
from model.inference.answer_checks import degenerate_reason, is_yes_no_question, read_closed, written_choice


@pytest.mark.parametrize(("text", "letter"), [
    ("A. Refractory Lesion", "A"), ("(c) new lesion", "C"), ("D", "D"), ("Resolved Lesion", "B"),
    ("No Abnormality (Always absent)", "D"), ("New Lesion (Absent previously, now present)", "C"),
    ("The lesion is unchanged.", None), ("", None), ("E. Other", None),
])
def test_the_letter_the_text_names(text, letter):
    assert written_choice(text, TEMPORAL_CHOICES) == letter


def test_yes_and_no_are_not_confused_with_longer_choices():
    assert written_choice("No", EXISTENCE_CHOICES) == "B"
    assert written_choice("Yes, there is a small effusion.", EXISTENCE_CHOICES) == "A"
    assert written_choice("C. whatever", EXISTENCE_CHOICES) is None  # C is a dash: not offered


def test_a_closed_answer_shows_the_chosen_choice_and_flags_other_words():
    reading = read_closed("A. Refractory Lesion", TEMPORAL_CHOICES, "C")
    assert reading.shown == "C. New Lesion (Absent previously, now present)"
    assert not reading.agrees and reading.written == "A"
    assert "A. Refractory" in reading.note and "pick C" in reading.note
    agreeing = read_closed("C. New Lesion", TEMPORAL_CHOICES, "C")
    assert agreeing.agrees and agreeing.shown.startswith("C. ")
    assert not read_closed("I think so", EXISTENCE_CHOICES, "A").agrees
    assert read_closed("Yes", EXISTENCE_CHOICES, None).shown == ""


@pytest.mark.parametrize(("question", "yes_no"), [
    ("Is there a pleural effusion?", True), ("Are any nodules present in the right lung?", True),
    ("Does this scan show cardiomegaly?", True), ("  has the effusion resolved ?", True),
    ("What abnormality is seen?", False), ("Is the nodule in the left or the right lung?", False),
    ("Is there a pleural effusion", False), ("Describe the heart.", False), ("", False),
])
def test_yes_no_questions_are_recognised(question, yes_no):
    assert is_yes_no_question(question) is yes_no


@pytest.mark.parametrize(("text", "degenerate"), [
    ("", True), ("   \n", True), ("... ?!", True), ("the the the the lung", True),
    ("nodule lung nodule lung nodule lung nodule lung", True),
    ("A. Yes", False), ("No", False), ("The heart is enlarged; a small left effusion.", False),
])
def test_empty_and_looping_answers_are_degenerate(text, degenerate):
    assert (degenerate_reason(text) is not None) is degenerate


@pytest.mark.parametrize(("question", "box"), [
    ("Where is the left pleural effusion? Give the box.", True),
    ("Where is the pleural effusion? Give the bounding box.", True),
    ("Draw a box around the nodule.", True), ("Where is the nodule?", False),
    ("Is there a pleural effusion?", False), ("Describe the box-shaped device.", False),
])
def test_box_questions_are_recognised(question, box):
    from model.inference.answer_checks import asks_for_box

    assert asks_for_box(question) is box


def test_a_box_question_answered_without_a_readable_box_is_flagged():
    from model.inference.answer_checks import missing_box_reason

    question = "Where is the pleural effusion? Give the bounding box."
    assert "no box could be read" in missing_box_reason(question, None)  # "170, 0.21, 0.13, 0.42, 0.80, 0.78]"
    assert missing_box_reason(question, (0.1, 0.2, 0.5, 0.5, 0.8, 0.9)) is None
    assert missing_box_reason("Describe the heart.", None) is None
