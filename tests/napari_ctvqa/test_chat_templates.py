"""The chat panel's template menu (3D-RAD wording, prior sequence from the store) and the pure
geometry of box outlines; no model needed."""
from __future__ import annotations

import numpy as np
import pytest
from annotation.qa_templates import CT_RATE_LABELS, TEMPORAL_CHOICES, question_templates
from annotation.schema import Label
from annotation.store import Store

from napari_ctvqa.widgets.chat.history import earlier_labels
from napari_ctvqa.widgets.chat.overlays import box_centre, box_rectangles, box_slices
from napari_ctvqa.widgets.chat.templates import TemplatePicker, parse_priors, prior_sequence, template_question
from napari_ctvqa.widgets.chat.turn import TurnState, breakable, turns_markdown


def test_closed_templates_use_the_3drad_wording_and_choices():
    existence = template_question("existence_detection", "Pleural effusion")
    assert existence.question == question_templates()["existence_detection"][0].format(label="pleural effusion")
    assert existence.choices == ("Yes", "No")
    static = template_question("static_temporal_diagnosis", "Consolidation")
    assert static.choices == TEMPORAL_CHOICES and "consolidation" in static.question
    longitudinal = template_question("longitudinal_temporal_diagnosis", "Emphysema", [0, 1, 1])
    assert "[0, 1, 1]" in longitudinal.question and longitudinal.task == "longitudinal_temporal_diagnosis"
    with pytest.raises(ValueError, match="earlier scan"):
        template_question("longitudinal_temporal_diagnosis", "Emphysema", [])
    with pytest.raises(ValueError, match="not a label"):
        template_question("static_temporal_diagnosis", "Medical material")
    assert template_question("medical_computation").choices is None


@pytest.mark.parametrize(("text", "expected"), [("0, 1, 1", [0, 1, 1]), ("[1 0]", [1, 0]), ("1", [1])])
def test_parse_priors_accepts_lists_of_0_and_1(text, expected):
    assert parse_priors(text) == expected


@pytest.mark.parametrize(("text", "message"), [("", "empty"), ("0, 2", "'2'"), ("yes", "'yes'")])
def test_parse_priors_names_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_priors(text)


def test_prior_sequence_comes_from_the_patients_earlier_scans(tmp_path, qtbot):
    store = Store.create(f"sqlite:///{tmp_path / 'p.sqlite'}")
    try:
        ids = [store.add_scan(f"train_3_{letter}_1.nii.gz").id for letter in "abc"]
        other = store.add_scan("train_4_a_1.nii.gz").id
        values = {ids[0]: 0, ids[1]: 1, other: 1}

        def add_labels(session) -> None:
            for scan_id, value in values.items():
                session.add_all(Label(scan_id=scan_id, name=name, value=value if name == "Emphysema" else 0)
                                for name in CT_RATE_LABELS)

        store.db.write(add_labels)
        earlier = earlier_labels(store, ids[2])
        assert prior_sequence(earlier, "Emphysema") == [0, 1]
        assert prior_sequence(earlier, "Consolidation") == [0, 0]
        assert prior_sequence(earlier_labels(store, ids[0]), "Emphysema") is None  # no earlier scan

        picker = TemplatePicker()
        qtbot.addWidget(picker)
        picker.set_earlier_labels(earlier)
        emitted = []
        picker.changed.connect(emitted.append)
        picker.set_task("longitudinal_temporal_diagnosis", "Emphysema")
        assert picker.priors_edit.text() == "0, 1"
        assert "emphysema showed [0, 1]" in emitted[-1].question
        picker.priors_edit.setText("1, 1, 0")
        assert "[1, 1, 0]" in picker.current().question
        picker.set_earlier_labels([])
        picker.priors_edit.setText("0, x")
        with pytest.raises(ValueError, match="'x'"):
            picker.current()
    finally:
        store.close()


def test_box_outline_covers_the_slices_the_box_spans():
    box = (2.0, 10.0, 20.0, 5.0, 14.0, 30.0)
    assert box_slices(box) == [2, 3, 4]
    rectangles = box_rectangles(box)
    assert [r[0, 0] for r in rectangles] == [2, 3, 4]
    assert rectangles[0][:, 1].min() == 9.5 and rectangles[0][:, 1].max() == 13.5
    assert rectangles[0][:, 2].min() == 19.5 and rectangles[0][:, 2].max() == 29.5
    np.testing.assert_allclose(box_centre(box), [3.0, 11.5, 24.5])
    assert box_slices((4.2, 0, 0, 4.4, 1, 1)) == [4]  # thinner than a slice: still drawn once
    with pytest.raises(ValueError, match="6 numbers"):
        box_rectangles((1, 2, 3))


def test_markdown_and_long_words():
    turn = TurnState("Is there a nodule?", choices=("Yes", "No"), text="A. Yes", choice="A",
                     choice_scores={"A": 0.75, "B": 0.25}, model_version="m", total_s=1.0, status="done")
    text = turns_markdown("train_1_a_1.nii.gz", [turn])
    assert "## Q1. Is there a nodule?" in text and "**Choice:** A. Yes" in text and "A 75%, B 25%" in text
    assert breakable("x" * 100).replace("\u200b", "") == "x" * 100
    assert "\u200b" in breakable("x" * 100) and breakable("short words") == "short words"
