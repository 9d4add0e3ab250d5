"""Batched answers (model/inference/batched.py) against one question at a time on the shipped
default model: the same text, choice and scores, and closed answers that the scoring pass already
shows are not generated again."""
from __future__ import annotations

import numpy as np
import pytest

OPEN = [("What abnormalities are seen in this image?", None), ("Where is the enlarged heart? Give the box.", None)]


@pytest.fixture(scope="module")
def vlm():
    from model import load_vlm

    return load_vlm(None)


@pytest.fixture(scope="module")
def scan_and_questions() -> tuple[np.ndarray, list[tuple[str, tuple[str, ...] | None]]]:
    """A phantom with an enlarged heart and a pleural effusion, at a size users meet, with the
    cohort's own existence questions about three findings (as `ctvqa synth` writes them) and two
    open ones."""
    from annotation.qa_templates import closed_qa_for_scan
    from annotation.synth import Grid, default_spacing, synthesize_patient

    size = (64, 192, 192)
    findings = {"Cardiomegaly": (1.0,), "Pleural effusion": (1.0,)}
    scan = synthesize_patient(Grid(size, default_spacing(size)), np.random.default_rng(7), 1,
                              findings=findings).scans[0]
    rows = [r for r in closed_qa_for_scan("test_7_a_1.nii.gz", scan.labels, [])
            if any(f in r.question.lower() for f in ("cardiomegaly", "pleural effusion", "lung nodule"))]
    return scan.hu, [(r.question, tuple(r.choices)) for r in rows] + OPEN


def _spy_generate(monkeypatch) -> list[int]:
    """Rows each real `generate_batch` call was given."""
    from model.inference import batched

    rows: list[int] = []
    real = batched.generate_batch

    def counted(vlm, prepared, question_ids, max_new_tokens):
        rows.append(len(question_ids))
        return real(vlm, prepared, question_ids, max_new_tokens)

    monkeypatch.setattr(batched, "generate_batch", counted)
    return rows


@pytest.mark.parametrize("max_new_tokens", [48, 1], ids=["room to finish", "cut short"])
def test_batched_answers_equal_one_at_a_time(vlm, scan_and_questions, monkeypatch, max_new_tokens: int) -> None:
    from model.inference.batched import Question, answer_batch

    scan, questions = scan_and_questions
    assert len(questions) == 5
    prepared = vlm.prepare(scan)
    single = [vlm.answer(prepared, q, choices=c, max_new_tokens=max_new_tokens) for q, c in questions]
    generated = _spy_generate(monkeypatch)
    batch = answer_batch(vlm, prepared, [Question(q, c) for q, c in questions], max_new_tokens, batch_size=8)
    for one, many in zip(single, batch):
        assert (many.text, many.choice, many.n_tokens) == (one.text, one.choice, one.n_tokens)
        assert many.box == one.box
        if one.choice_scores:
            assert many.choice_scores == pytest.approx(one.choice_scores, abs=1e-4)
    closed = sum(1 for _, c in questions if c)
    if max_new_tokens == 48:  # the closed answers are choices ("A. Yes"): read off the scoring pass
        assert sum(generated) == len(questions) - closed
        assert [many.text for many in batch[:closed]] == [f"{a.choice}. {'Yes' if a.choice == 'A' else 'No'}"
                                                          for a in single[:closed]]
    else:  # a choice and its end do not fit in one token: every answer is generated, and cut
        assert sum(generated) == len(questions)
        assert all(many.n_tokens <= 1 for many in batch)
