"""The 3D-RAD filter at its boundaries, the cap, the summary, and the rubric it rests on."""
from __future__ import annotations

import pandas as pd
import pytest

from annotation.curation import FilterRule, apply_filter, summarize
from annotation.rubric import DIMENSIONS, RUBRIC, SCORE_KEYS, validate_scores


def rating(qa_id: int, rater: str, scores, consistent=1, status="rated") -> dict:
    return {"qa_id": qa_id, "rater": rater, **dict(zip(SCORE_KEYS, scores)), "consistent": consistent,
            "status": status}


def qa_table(n: int, question=lambda i: f"question {i}", task="existence_detection") -> pd.DataFrame:
    return pd.DataFrame({"qa_id": range(1, n + 1), "task": task, "question": [question(i) for i in range(n)],
                         "answer": "kept column"})


@pytest.mark.parametrize("ratings, rule, passed, reason", [
    ([rating(1, "a", [3, 3, 3, 3, 3])], FilterRule(), True, ""),  # exactly 3 passes
    ([rating(1, "a", [5, 5, 5, 5, 2])], FilterRule(), False, "dimension < 3: linguistic_quality"),
    ([rating(1, "a", [2, 2, 2, 2, 2])], FilterRule(), False, "mean < 3"),  # mean beats dimension
    ([rating(1, "a", [2, 4, 4, 4, 4]), rating(1, "b", [4, 2, 2, 2, 2])], FilterRule(), True, ""),  # 3 on average
    ([rating(1, "a", [2, 5, 5, 5, 5]), rating(1, "b", [3, 3, 3, 3, 3])], FilterRule(), False,
     "dimension < 3: visual_verifiability"),  # 2.5 in one dimension
    ([rating(1, "a", [5] * 5, consistent=0)], FilterRule(), True, ""),  # flag ignored by default
    ([rating(1, "a", [5] * 5, consistent=0)], FilterRule(require_consistent=True), False, "inconsistent"),
    ([rating(1, "a", [5] * 5, 1), rating(1, "b", [5] * 5, 0)], FilterRule(require_consistent=True), False,
     "inconsistent"),  # a tie is inconsistent
    ([rating(1, "a", [5] * 5, 1), rating(1, "b", [5] * 5, 0), rating(1, "c", [5] * 5, 1)],
     FilterRule(require_consistent=True), True, ""),  # majority consistent
    ([rating(1, "a", [5] * 5, status="skipped")], FilterRule(), False, "unrated"),
    ([rating(1, "a", [4] * 5)], FilterRule(min_mean=4.5, min_dim=1), False, "mean < 4.5"),
])
def test_rule_boundaries(ratings, rule, passed, reason):
    out = apply_filter(pd.DataFrame(ratings), qa_table(1), rule).iloc[0]
    assert (bool(out.passed), out.reason) == (passed, reason)
    assert out.answer == "kept column"


def test_cap_keeps_the_best_per_question_deterministically():
    qa = qa_table(6, question=lambda i: "same question" if i < 5 else "other", task="image_observation")
    means = {1: 4, 2: 5, 3: 4, 4: 3, 5: 2, 6: 3}  # pair 5 fails on its scores, not on the cap
    ratings = pd.DataFrame([rating(i, "a", [m] * 5) for i, m in means.items()])
    out = apply_filter(ratings, qa, FilterRule(cap_per_question=2)).set_index("qa_id")
    assert list(out.index[out.passed]) == [1, 2, 6]  # best mean 2, then the tie 1/3 goes to the lower id
    assert out.loc[[3, 4], "reason"].tolist() == ["over cap per question"] * 2
    assert out.loc[5, "reason"] == "mean < 3"
    uncapped = apply_filter(ratings, qa, FilterRule(cap_per_question=None))
    assert uncapped.passed.sum() == 5


def test_cap_counts_identical_open_pairs_not_template_questions():
    """3D-RAD's cap: identical open (question, answer) pairs; a task-4 template asked of every scan
    and one open question answered differently for different scans both stay."""
    template = "Does the CT scan exhibit pleural effusion?"
    qa = pd.concat([
        pd.DataFrame({"task": "existence_detection", "question": template, "answer": "No", "question_type": "closed",
                      "subtask": "17"}, index=range(12)),
        pd.DataFrame({"task": "anomaly_detection", "question": "Where is the nodule?", "question_type": "open",
                      "subtask": "2", "answer": [f"Segment {i}" for i in range(12)]}),
        pd.DataFrame({"task": "anomaly_detection", "question": "Where are the nodules located?", "subtask": "2",
                      "question_type": "open", "answer": ["Both lungs", "both  lungs.", "BOTH LUNGS"] * 4}),
        pd.DataFrame({"task": "anomaly_detection", "question": "Where are the nodules located?", "subtask": "3",
                      "question_type": "open", "answer": "Both lungs"}, index=range(3)),
    ], ignore_index=True)
    qa.insert(0, "qa_id", range(1, len(qa) + 1))
    ratings = pd.DataFrame([rating(i, "a", [4] * 5) for i in qa["qa_id"]])
    out = apply_filter(ratings, qa, FilterRule(cap_per_question=10))
    assert out[out.task == "existence_detection"].passed.all()  # template: never capped
    assert out.iloc[12:24].passed.all()  # same question, different answers
    capped = out.iloc[24:36]
    assert capped.passed.sum() == 10 and (capped.reason[~capped.passed] == "over cap per question").all()
    assert out.iloc[36:].passed.all()  # another subtask is counted on its own


def test_include_unrated_keeps_only_pairs_imported_as_curated():
    qa = qa_table(4).assign(source=["imported", "imported", "generated", "imported"])
    ratings = pd.DataFrame([rating(4, "a", [2] * 5)])  # a rated imported pair must still pass
    out = apply_filter(ratings, qa, FilterRule(include_unrated=True)).set_index("qa_id")
    assert out.passed.tolist() == [True, True, False, False]
    assert out.reason.tolist() == ["", "", "unrated", "mean < 3"]
    assert summarize(out.reset_index()).unrated_passed == 2
    assert not apply_filter(ratings, qa, FilterRule()).passed.any()
    assert "unrated pairs imported as curated are kept" in FilterRule(include_unrated=True).describe()["text"]


def test_means_and_majority_per_pair():
    ratings = pd.DataFrame([rating(1, "a", [1, 2, 3, 4, 5], 1), rating(1, "b", [3, 4, 5, 0, 1], 1)])
    out = apply_filter(ratings, qa_table(2), FilterRule()).set_index("qa_id")
    assert out.loc[1, SCORE_KEYS].tolist() == [2, 3, 4, 2, 3]
    assert out.loc[1, "mean"] == pytest.approx(2.8) and out.loc[1, "n_raters"] == 2
    assert bool(out.loc[1, "consistent"]) and pd.isna(out.loc[2, "consistent"])
    assert out.loc[2, "n_raters"] == 0 and out.loc[2, "reason"] == "unrated"


def test_summary_counts_and_factual_accuracy():
    qa = pd.concat([qa_table(3), qa_table(2, task="image_observation").assign(qa_id=[4, 5])])
    ratings = pd.DataFrame([rating(1, "a", [4] * 5), rating(2, "a", [1] * 5, 0), rating(3, "a", [5, 5, 5, 5, 0]),
                            rating(4, "a", [3] * 5)])
    summary = summarize(apply_filter(ratings, qa, FilterRule()))
    assert summary.to_dict() == {
        "total": 5, "passed": 2, "failed": 3, "factual_accuracy_rate": 0.75, "unrated_passed": 0,
        "per_task": {
            "existence_detection": {"passed": 1, "failed": 2,
                                    "reasons": {"dimension < 3: linguistic_quality": 1, "mean < 3": 1}},
            "image_observation": {"passed": 1, "failed": 1, "reasons": {"unrated": 1}},
        }}


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="qa_id 9.*not in the QA table"):
        apply_filter(pd.DataFrame([rating(9, "a", [3] * 5)]), qa_table(1), FilterRule())
    with pytest.raises(ValueError, match="lacks column"):
        apply_filter(pd.DataFrame([rating(1, "a", [3] * 5)]), qa_table(1).drop(columns=["task"]), FilterRule())
    with pytest.raises(ValueError, match="min_dim"):
        FilterRule(min_dim=6)
    assert FilterRule().describe()["text"] == ("mean >= 3 and every dimension >= 3, at most 10 identical open "
                                                "question-answer pairs per subtask")


def test_validate_scores_names_the_dimension():
    good = dict(zip(SCORE_KEYS, [0, 1, 2, 4, "5"]))
    assert validate_scores({**good, "consistent": 1}) == dict(zip(SCORE_KEYS, [0, 1, 2, 4, 5]))
    for bad, message in (({**good, "qa_alignment": 6}, "qa_alignment"), ({**good, "specificity_clarity": 2.5},
                          "specificity_clarity"), ({**good, "linguistic_quality": True}, "linguistic_quality")):
        with pytest.raises(ValueError, match=message):
            validate_scores(bad)
    with pytest.raises(ValueError, match="missing score for visual_verifiability"):
        validate_scores({k: v for k, v in good.items() if k != "visual_verifiability"})


def test_rubric_covers_every_dimension_and_its_examples_pass_and_fail():
    assert [d.key for d in RUBRIC.dimensions] == [key for key, _, _ in DIMENSIONS]
    assert all(set(d.anchors) == {0, 3, 5} for d in RUBRIC.dimensions)
    good, flawed = RUBRIC.examples
    for example in (good, flawed):
        assert validate_scores(example.scores) == example.scores and set(example.justifications) == set(SCORE_KEYS)
    ratings = pd.DataFrame([rating(i, "ref", [ex.scores[k] for k in SCORE_KEYS], ex.consistent)
                            for i, ex in enumerate((good, flawed), start=1)])
    out = apply_filter(ratings, qa_table(2), FilterRule(require_consistent=True))
    assert out.passed.tolist() == [True, False]
    assert "Visual Verifiability" in RUBRIC.to_markdown()
