"""Metric values against hand-computed cases, so a change of tokenisation or formula shows up."""
from __future__ import annotations

import math

import pytest

from model.evaluation import metrics


def test_bleu1_identical_disjoint_and_hand_computed_partial():
    assert metrics.bleu1("The nodule is 5 mm.", "the nodule is 5 mm .") == pytest.approx(100.0)
    assert metrics.bleu1("left lung", "right kidney") == 0.0
    # 2 of 2 predicted unigrams match; 2 predicted vs 4 reference words -> BP = exp(1 - 4/2).
    assert metrics.bleu1("pleural effusion", "small right pleural effusion") == pytest.approx(100 * math.exp(-1))
    # Clipping: "the" appears once in the reference, so 3 predicted "the" count once: 1/3, BP = 1.
    assert metrics.bleu1("the the the", "the cat") == pytest.approx(100 / 3)
    assert metrics.bleu1("", "anything") == 0.0


def test_rouge1_identical_disjoint_and_hand_computed_partial():
    assert metrics.rouge1("Right hilar region.", "right hilar region") == pytest.approx(100.0)
    assert metrics.rouge1("aorta", "spine") == 0.0
    # 2 overlapping unigrams, P = 2/3, R = 2/4 -> F1 = 2PR/(P+R) = 4/7.
    assert metrics.rouge1("lower lobe nodule", "nodule in lower zone") == pytest.approx(100 * 4 / 7)


def test_meteor_uses_stems_without_wordnet_and_penalises_fragmentation():
    # 8 matched words in one chunk: penalty 0.5 * (1/8)^3.
    assert metrics.meteor("there is a nodule in the left lung", "there is a nodule in the left lung") == pytest.approx(
        100 * (1 - 0.5 / 512))
    assert metrics.meteor("heart", "kidneys") == 0.0
    # "nodules" ~ "nodule" only through the Porter stem: P = R = 1, 1 chunk of 2 -> 1 - 0.5/8.
    assert metrics.meteor("nodules seen", "nodule seen") == pytest.approx(100 * (1 - 0.5 / 8))
    # Same words, reversed order: 2 chunks of 1 -> penalty 0.5 * (2/2)^3.
    assert metrics.meteor("seen nodule", "nodule seen") == pytest.approx(50.0)


def test_bertscore_identical_near_100_and_unrelated_lower():
    scores = metrics.bertscore_f1(
        ["A nodule in the right upper lobe.", "A nodule in the right upper lobe."],
        ["A nodule in the right upper lobe.", "The weather was sunny on Tuesday."],
    )
    assert scores[0] == pytest.approx(100.0, abs=0.01)
    assert 0.0 <= scores[1] < scores[0] - 20
    assert metrics.bertscore_f1([""], ["pleural effusion"]) == [0.0]
    assert "MiniLM" in metrics.default_encoder().name


def test_bertscore_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.bertscore_f1(["a", "b"], ["a"])


@pytest.mark.parametrize(("text", "letter", "expected"), [
    ("B. No", "B", True),
    ("The answer is B.", "B", True),
    ("Bee", "B", False),
    ("B", "B", False),
    ("A. Yes", "B", False),
    ("c. new lesion", "C", False),
])
def test_closed_correct_reference_follows_the_substring_rule(text, letter, expected):
    assert metrics.closed_correct_reference(text, letter) is expected


def test_aggregates_are_percent_and_refuse_empty():
    assert metrics.mean_percent([10.0, 30.0]) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="no values"):
        metrics.mean_percent([])
    rows = metrics.closed_sample_scores(["B", "A", None], ["B. No", "B. No", "A."], ["B", "B", "A"])
    assert [r["accuracy"] for r in rows] == [100.0, 0.0, 0.0]
    assert metrics.mean_scores(rows) == {"accuracy": pytest.approx(100 / 3), "accuracy_reference": pytest.approx(100.0)}
    # Keys missing from some rows (a robustness run that could not pair a volume) average over the rest.
    assert metrics.mean_scores([{"a": 10.0, "b": 50.0}, {"a": 30.0}]) == {"a": 20.0, "b": 50.0}


def test_open_sample_scores_has_the_four_contract_metrics_per_sample():
    rows = metrics.open_sample_scores(["right hilar region", "aorta"], ["Right hilar region.", "spine"])
    assert [set(r) for r in rows] == [set(metrics.OPEN_METRICS)] * 2
    assert rows[0]["rouge1"] == pytest.approx(100.0) and rows[1]["bleu1"] == 0.0
