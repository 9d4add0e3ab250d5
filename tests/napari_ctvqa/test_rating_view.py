"""What a pair's own words decide: where its scan opens (slice and window) and what is
highlighted in its report."""
from __future__ import annotations

import pytest
from annotation.records import ReportRecord

from napari_ctvqa.widgets.rating.pair import key_terms, report_html
from annotation.view_hint import initial_view


@pytest.mark.parametrize(
    ("question", "answer", "low", "high", "window"),
    [
        ("Where is the nodule in the right upper lobe?", "", 70, 80, "lung"),
        ("Is there consolidation in the lower lobe?", "Yes", 25, 35, "lung"),
        ("Is there arterial wall calcification?", "Yes", 50, 50, "bone"),
        ("What is seen at the lung apex?", "Emphysema.", 85, 90, "lung"),
        ("What is the size of the heart?", "Enlarged.", 40, 50, "mediastinum"),
        ("Is there a fracture of the rib?", "No.", 50, 50, "bone"),
        ("What abnormality is present?", "None.", 50, 50, "mediastinum"),
        ("What abnormality is present?", "Calcified plaque in the aortic arch.", 75, 75, "bone"),
    ],
)
def test_location_and_tissue_words_pick_slice_and_window(question, answer, low, high, window):
    hint = initial_view(question, answer, n_slices=101)  # slice index == percent of the height
    assert low <= hint.slice_index <= high
    assert hint.window == window
    assert hint.reason


def test_question_outranks_answer():
    hint = initial_view("Where is the lesion in the lower lobe?", "Near the apex.", n_slices=11)
    assert hint.slice_index == 3


def test_tiny_and_empty_volumes():
    assert initial_view("upper lobe nodule?", "", n_slices=1).slice_index == 0
    with pytest.raises(ValueError, match="at least one slice"):
        initial_view("q", "a", n_slices=0)


def test_report_highlights_the_pairs_words_and_measurements():
    terms = key_terms("Is there arterial wall calcification?", "A 10x10 mm plaque.")
    report = ReportRecord(1, None, None, "Calcified plaques in the arteries, 10x10 mm. Not 110 mm.", None)
    text = report_html(report, terms)
    for word in ("Calcified", "arteries", "10x10", "plaques"):
        assert f">{word}</span>" in text
    assert ">110" not in text and "wall" not in terms  # no partial numbers, no filler words
    assert "Not given." in text  # the missing impressions say so
    assert "No report stored" in report_html(None, terms)
