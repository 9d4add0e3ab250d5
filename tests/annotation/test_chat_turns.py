"""Chat turns keep their task, choices and timings (migration 0004), and only real answers are rated (issue 20)."""
from __future__ import annotations

import pytest

from annotation.qa_templates import TEMPORAL_CHOICES
from annotation.store import Store


def test_a_yes_no_template_turn_keeps_task_and_choices_across_a_restart(tmp_path) -> None:
    url = str(tmp_path / "chat.sqlite")
    store = Store.create(url)
    scan = store.add_scan("train_1_a_1.nii.gz")
    turn = store.add_chat_turn(scan.id, "Is pleural effusion present?", "A. Yes", conversation_id="c",
                               choices=["Yes", "No"], choice="A", task="existence_detection",
                               encoding_s=0.8, latency_first_token_s=0.1, total_s=1.2)
    store.close()

    reopened = Store(url)
    record = reopened.chat_turns(scan_id=scan.id)[0]
    assert (record.task, record.choices, record.encoding_s) == ("existence_detection", ("Yes", "No"), 0.8)
    qa = reopened.qa_pair(reopened.chat_turn_to_qa(turn))
    assert qa.task == "existence_detection"
    assert (tuple(qa.choices), qa.answer_choice, qa.answer) == (("Yes", "No", "-", "-"), "A", "Yes")
    reopened.close()


def test_a_closed_turn_goes_to_the_queue_as_its_chosen_choice(store: Store) -> None:
    scan = store.add_scan("train_2_b_1.nii.gz")
    turn = store.add_chat_turn(scan.id, "What is the status?", "A. Refractory Lesion", conversation_id="c",
                               choices=list(TEMPORAL_CHOICES), choice="C", task="static_temporal_diagnosis")
    qa = store.qa_pair(store.chat_turn_to_qa(turn))
    assert (qa.answer_choice, qa.answer) == ("C", TEMPORAL_CHOICES[2])
    assert qa.provenance["model_text"] == "A. Refractory Lesion"


@pytest.mark.parametrize("answer", ["", "  ", "lung lung lung lung lung"])
def test_an_empty_or_looping_answer_cannot_be_rated(store: Store, answer: str) -> None:
    scan = store.add_scan("train_3_a_1.nii.gz")
    turn = store.add_chat_turn(scan.id, "What is seen?", answer, conversation_id="c")
    with pytest.raises(ValueError, match=f"chat turn {turn} cannot be rated"):
        store.chat_turn_to_qa(turn)
    assert store.qa_pairs() == []
