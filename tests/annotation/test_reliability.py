"""Reliability, intra-rater agreement, adjudication list and heatmaps: the figures equal the
libraries' own on the same arrays (krippendorff, sklearn, pingouin), bootstrap replicates equal
the libraries on resampled arrays, and built cases give the known answers."""
from __future__ import annotations

import itertools

import krippendorff
import numpy as np
import pandas as pd
import pingouin
import pytest
from sklearn.metrics import cohen_kappa_score

from annotation.agreement import (
    agreement_report,
    intra_rater,
    mean_scores,
    most_disagreed,
    pairwise_agreement,
    reliability,
)
from annotation.agreement.plots import ranks, save_agreement_png
from annotation.agreement.stats import icc_a1, kappa_replicates, resample_counts
from annotation.rubric import SCORE_KEYS


def frame(rater: str, qa_ids, scores: np.ndarray, consistent=None) -> pd.DataFrame:
    qa_ids = list(qa_ids)
    return pd.DataFrame({"qa_id": qa_ids, "rater": rater, **{k: scores[:, i] for i, k in enumerate(SCORE_KEYS)},
                         "consistent": [True] * len(qa_ids) if consistent is None else list(consistent),
                         "status": "rated"})


@pytest.fixture(scope="module")
def noisy() -> pd.DataFrame:
    """Three raters around one truth; c misses pairs 0-9 (gaps, as real queues have)."""
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 6, size=(80, 5))
    parts = []
    for rater, ids in (("a", range(80)), ("b", range(80)), ("c", range(10, 80))):
        ids = np.array(list(ids))
        parts.append(frame(rater, ids, np.clip(truth[ids] + rng.integers(-1, 2, (len(ids), 5)), 0, 5),
                           rng.random(len(ids)) < 0.7))
    return pd.concat(parts, ignore_index=True)


def test_figures_equal_the_libraries(noisy):
    scores = mean_scores(noisy)
    table = reliability(scores, n_boot=200, seed=1).set_index("dimension")
    for dim in ("mean", *SCORE_KEYS):
        wide = scores.pivot(index="rater", columns="qa_id", values=dim)
        assert table.loc[dim, "alpha"] == pytest.approx(
            krippendorff.alpha(reliability_data=wide.to_numpy(float), level_of_measurement="ordinal"))
        factor, labels = (5, range(26)) if dim == "mean" else (1, range(6))
        kappas = []
        for x, y in itertools.combinations("abc", 2):
            both = wide.loc[[x, y]].dropna(axis=1)
            kappas.append(cohen_kappa_score(np.rint(both.loc[x] * factor).astype(int),
                                            np.rint(both.loc[y] * factor).astype(int),
                                            labels=list(labels), weights="quadratic"))
        assert table.loc[dim, "wkappa"] == pytest.approx(np.mean(kappas))
        complete = scores[scores.qa_id >= 10]
        icc = pingouin.intraclass_corr(complete, targets="qa_id", raters="rater", ratings=dim)
        assert table.loc[dim, "icc"] == pytest.approx(icc.set_index("Type").loc["ICC(A,1)", "ICC"])
        assert table.loc[dim, "icc_n"] == 70 and table.loc[dim, "icc_raters"] == "a, b, c"
        for stat in ("alpha", "wkappa", "icc"):
            assert table.loc[dim, f"{stat}_low"] < table.loc[dim, stat] < table.loc[dim, f"{stat}_high"]
    assert (table["n_units"] == 80).all() and (table["warning"] == "").all()


def test_bootstrap_replicates_equal_the_libraries_on_resampled_arrays():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 6, 40).astype(float)
    b = np.clip(a + rng.integers(-2, 3, 40), 0, 5)
    counts = resample_counts(40, 5, rng)
    for c, kappa in zip(counts, kappa_replicates(a, b, counts)):
        expected = cohen_kappa_score(np.repeat(a, c).astype(int), np.repeat(b, c).astype(int),
                                     labels=list(range(6)), weights="quadratic")
        assert kappa == pytest.approx(expected)
    block = np.column_stack([a, b, np.clip(a + 1, 0, 5)])
    draws = rng.integers(0, 40, size=(3, 40))
    for draw, icc in zip(draws, icc_a1(block[draws])):
        x = block[draw]
        long = pd.DataFrame({"t": np.repeat(np.arange(40), 3), "r": np.tile(np.arange(3), 40), "s": x.reshape(-1)})
        expected = pingouin.intraclass_corr(long, targets="t", raters="r", ratings="s")
        assert icc == pytest.approx(expected.set_index("Type").loc["ICC(A,1)", "ICC"])


def test_identical_raters_give_alpha_one_and_random_raters_alpha_near_zero():
    rng = np.random.default_rng(11)
    same = rng.integers(0, 6, size=(50, 5))
    table = reliability(mean_scores(pd.concat([frame(r, range(50), same) for r in "xyz"])), n_boot=100)
    assert np.allclose(table[["alpha", "wkappa", "icc"]].to_numpy(float), 1.0)
    independent = pd.concat([frame(r, range(400), rng.integers(0, 6, size=(400, 5))) for r in "xyz"])
    table = reliability(mean_scores(independent), n_boot=300).set_index("dimension")
    for dim in ("mean", *SCORE_KEYS):
        assert abs(table.loc[dim, "alpha"]) < 0.08
        assert table.loc[dim, "alpha_low"] < 0 < table.loc[dim, "alpha_high"]
        assert abs(table.loc[dim, "wkappa"]) < 0.08 and abs(table.loc[dim, "icc"]) < 0.08


def test_small_overlap_is_warned_and_top_k_capped_at_n():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 6, size=(28, 5))
    ratings = pd.concat([frame("a", range(28), scores), frame("b", range(28), np.clip(scores + 1, 0, 5))])
    row = pairwise_agreement(ratings, top_k=100).iloc[0]
    assert row.k_used == 28 and np.isnan(row.top_k_overlap)  # not the old 1.000
    assert "only 28 common pairs (< 30)" in row.warning and "asked 100" in row.warning
    row = pairwise_agreement(ratings, top_k=10).iloc[0]
    assert row.k_used == 10 and 0 <= row.top_k_overlap <= 1
    report = agreement_report(ratings, top_k=100, n_boot=50)
    assert any("fewer than 30" in w for w in report.warnings) and any("capped" in w for w in report.warnings)
    assert "only 28 common pairs" in report.reliability.loc[0, "warning"]


def test_icc_leaves_out_the_rater_who_costs_the_most_common_pairs():
    rng = np.random.default_rng(4)
    base = rng.integers(0, 6, size=(40, 5))
    ratings = pd.concat([frame("a", range(40), base), frame("b", range(40), base),
                         frame("late", range(38, 40), base[38:])])
    table = reliability(mean_scores(ratings), n_boot=0)
    assert table.loc[0, "icc_raters"] == "a, b" and table.loc[0, "icc_n"] == 40
    assert np.isnan(table.loc[0, "icc_low"])  # no resamples asked: no interval


def test_disagreements_are_ordered_by_spread():
    good, bad = np.full((3, 5), 5), np.full((3, 5), 1)
    mixed = np.array([[5, 5, 5, 5, 1]] * 3)
    ratings = pd.concat([frame("a", [1, 2, 3], good, [True, True, False]),
                         frame("b", [1, 2, 3], np.vstack([bad[0], mixed[0], good[0]]), [True, True, True]),
                         frame("c", [4], good[:1])])
    table = most_disagreed(mean_scores(ratings), n=5)
    assert list(table.qa_id) == [1, 2, 3]  # 4 has one rater: nothing to adjudicate
    assert table.loc[0, "mean_spread"] == pytest.approx(4.0) and table.loc[0, "scores"] == "a 5.0 · b 1.0"
    assert table.loc[1, "worst_dimension"] == "LQ" and table.loc[1, "dimension_spread"] == 4
    assert table.loc[2, "consistent_split"] == "1 yes / 1 no"
    assert len(most_disagreed(mean_scores(ratings), n=1)) == 1
    with pytest.raises(ValueError, match="at least 1"):
        most_disagreed(mean_scores(ratings), n=0)


def test_intra_rater_equals_sklearn_and_is_one_for_stable_raters():
    rng = np.random.default_rng(8)
    first = rng.integers(0, 6, size=(30, 5))
    again = np.clip(first + rng.integers(-1, 2, (30, 5)), 0, 5)
    firsts = mean_scores(pd.concat([frame("a", range(30), first), frame("b", range(30), first)]))
    repeats = mean_scores(pd.concat([frame("a", range(30), again), frame("b", range(30), first)]))
    table = intra_rater(firsts, repeats, n_boot=100).set_index(["rater", "dimension"])
    key = SCORE_KEYS[0]
    assert table.loc[("a", key), "wkappa"] == pytest.approx(
        cohen_kappa_score(first[:, 0], again[:, 0], labels=list(range(6)), weights="quadratic"))
    assert table.loc[("a", key), "n_repeats"] == 30
    assert table.loc[("b", "mean"), "wkappa"] == pytest.approx(1) and table.loc[("b", "mean"), "mae"] == 0
    assert table.loc[("a", "mean"), "wkappa_low"] <= table.loc[("a", "mean"), "wkappa"] <= table.loc[("a", "mean"), "wkappa_high"]
    assert intra_rater(firsts, firsts.iloc[:0]).empty


def test_heatmap_png_and_ranks(noisy, tmp_path):
    report = agreement_report(noisy, top_k=20, n_boot=50)
    rank = ranks(report.per_rater)
    best_mae = report.per_rater.set_index("rater")["mae"].idxmin()
    assert rank.loc[best_mae, "mae"] == 1 and set(rank["spearman_rho"]) == {1, 2, 3}
    path = save_agreement_png(report.per_rater, report.reliability, tmp_path / "agreement.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_agreement_png(report.per_rater, None, tmp_path / "missing" / "x.png")
