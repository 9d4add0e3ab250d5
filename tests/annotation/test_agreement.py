"""Rater agreement: figures equal scipy/sklearn on the same arrays; known answers on built cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import cohen_kappa_score, ndcg_score

from annotation.agreement import PAIRWISE_COLUMNS, pairwise_agreement, per_rater_agreement
from annotation.rubric import SCORE_KEYS


def ratings_for(rater: str, qa_ids, scores: np.ndarray, consistent) -> pd.DataFrame:
    return pd.DataFrame({"qa_id": list(qa_ids), "rater": rater,
                         **{key: scores[:, i] for i, key in enumerate(SCORE_KEYS)},
                         "consistent": list(consistent), "status": "rated"})


@pytest.fixture
def three_raters() -> pd.DataFrame:
    """a and b share pairs 0-149, c rates 50-199 (so a-c share 100, b-c share 100)."""
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 6, size=(200, 5))
    frames = []
    for rater, ids in (("a", range(0, 150)), ("b", range(0, 150)), ("c", range(50, 200))):
        ids = np.array(list(ids))
        noisy = np.clip(truth[ids] + rng.integers(-1, 2, size=(len(ids), 5)), 0, 5)
        frames.append(ratings_for(rater, ids, noisy, rng.random(len(ids)) < 0.8))
    return pd.concat(frames, ignore_index=True)


def test_figures_equal_scipy_and_sklearn(three_raters):
    top_k = 40
    result = pairwise_agreement(three_raters, top_k=top_k)
    assert list(result.columns) == list(PAIRWISE_COLUMNS)
    assert list(zip(result.rater_a, result.rater_b)) == [("a", "b"), ("a", "c"), ("b", "c")]
    row = result.iloc[1]  # a vs c
    a = three_raters[three_raters.rater == "a"].set_index("qa_id").loc[range(50, 150)]
    c = three_raters[three_raters.rater == "c"].set_index("qa_id").loc[range(50, 150)]
    mean_a, mean_c = a[list(SCORE_KEYS)].mean(axis=1).to_numpy(), c[list(SCORE_KEYS)].mean(axis=1).to_numpy()
    assert row.n_common == 100 and row.k_used == top_k
    assert row.spearman_rho == pytest.approx(spearmanr(mean_a, mean_c).statistic)
    assert row.kendall_tau == pytest.approx(kendalltau(mean_a, mean_c).statistic)
    assert row.ndcg_at_k == pytest.approx(ndcg_score([mean_c], [mean_a], k=top_k))
    assert row.ndcg_at_k_ba == pytest.approx(ndcg_score([mean_a], [mean_c], k=top_k))
    assert row.mae == pytest.approx(np.abs(mean_a - mean_c).mean())
    for key in SCORE_KEYS:
        assert row[f"mae_{key}"] == pytest.approx(np.abs(a[key].to_numpy() - c[key].to_numpy()).mean())
    assert row.kappa_consistent == pytest.approx(cohen_kappa_score(a.consistent, c.consistent))
    ids = np.arange(50, 150)
    top = lambda m: set(pd.DataFrame({"id": ids, "m": m}).sort_values(["m", "id"], ascending=[False, True]).id[:top_k])
    assert row.top_k_overlap == pytest.approx(len(top(mean_a) & top(mean_c)) / top_k)


def test_identical_raters_agree_perfectly():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, size=(30, 5))
    flags = rng.random(30) < 0.5
    frame = pd.concat([ratings_for("x", range(30), scores, flags), ratings_for("y", range(30), scores, flags)])
    row = pairwise_agreement(frame, top_k=10).iloc[0]
    assert row.spearman_rho == pytest.approx(1) and row.kendall_tau == pytest.approx(1)
    assert row.mae == 0 and row.top_k_overlap == 1 and row.kappa_consistent == pytest.approx(1)
    assert row.ndcg_at_k == pytest.approx(1)


def test_reversed_raters_anticorrelate():
    up = np.repeat(np.arange(6)[:, None], 5, axis=1)
    flags = [True] * 6
    frame = pd.concat([ratings_for("x", range(6), up, flags), ratings_for("y", range(6), up[::-1], flags)])
    row = pairwise_agreement(frame).iloc[0]
    assert row.spearman_rho == pytest.approx(-1) and row.kendall_tau == pytest.approx(-1)
    assert row.k_used == 6  # fewer common pairs than k: all of them are used
    assert np.isnan(row.top_k_overlap)  # with k = n the top-k sets are everything: not a figure
    assert "k = n = 6" in row.warning and "only 6 common pairs" in row.warning
    assert np.isnan(row.kappa_consistent) and row.consistent_agreement == 1  # constant flags


def test_unrated_rows_are_dropped_and_disjoint_raters_give_nan():
    scores = np.full((4, 5), 3)
    x = ratings_for("x", range(4), scores, [1, 1, 0, 0])
    x.loc[3, "status"] = "skipped"
    x.loc[3, "visual_verifiability"] = None  # a skipped pair has no scores: must not raise
    frame = pd.concat([x, ratings_for("y", range(4), scores, [1, 1, 0, 1]), ratings_for("z", [9], scores[:1], [1])])
    # the nullable dtypes Store.ratings_frame() returns
    frame = frame.astype({**dict.fromkeys(SCORE_KEYS, "Int64"), "consistent": "boolean"})
    result = pairwise_agreement(frame).set_index(["rater_a", "rater_b"])
    assert result.loc[("x", "y"), "n_common"] == 3
    assert result.loc[("x", "z"), "n_common"] == 0 and np.isnan(result.loc[("x", "z"), "mae"])


def test_per_rater_averages_against_all_others(three_raters):
    pairwise = pairwise_agreement(three_raters, top_k=40)
    per = per_rater_agreement(pairwise).set_index("rater")
    assert set(per.index) == {"a", "b", "c"} and (per.n_others == 2).all()
    assert per.loc["c", "spearman_rho"] == pytest.approx(pairwise.spearman_rho.iloc[1:].mean())
    # rater b is rater_b against a: its NDCG is the one where b's order ranks a's scores
    assert per.loc["b", "ndcg_at_k"] == pytest.approx((pairwise.ndcg_at_k_ba.iloc[0] + pairwise.ndcg_at_k.iloc[2]) / 2)
    assert per.spearman_rho.is_monotonic_decreasing


@pytest.mark.parametrize("column, value, message", [
    ("qa_alignment", 6, "qa_alignment"), ("linguistic_quality", 2.5, "linguistic_quality"),
    ("consistent", "maybe", "consistent"),
])
def test_bad_rating_names_row_and_field(column, value, message):
    frame = ratings_for("x", range(3), np.full((3, 5), 3), [1, 1, 1])
    frame[column] = frame[column].astype(object)
    frame.loc[2, column] = value
    with pytest.raises(ValueError, match=rf"qa_id 2 by 'x'.*{message}"):
        pairwise_agreement(frame)


def test_duplicate_and_missing_columns_are_refused():
    frame = ratings_for("x", [1, 1], np.full((2, 5), 3), [1, 1])
    with pytest.raises(ValueError, match="more than once"):
        pairwise_agreement(frame)
    with pytest.raises(ValueError, match="lacks column"):
        pairwise_agreement(frame.drop(columns=["consistent"]))


def test_a_single_rater_gives_empty_tables_with_the_columns():
    pairwise = pairwise_agreement(ratings_for("solo", range(5), np.full((5, 5), 4), [1] * 5))
    assert pairwise.empty and list(pairwise.columns) == list(PAIRWISE_COLUMNS)
    per = per_rater_agreement(pairwise)
    assert per.empty and "spearman_rho" in per.columns
