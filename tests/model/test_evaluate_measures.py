"""The honest measures on answers whose right figures are known by hand, the box-question file,
and `ctvqa evaluate`'s refusals."""
from __future__ import annotations

import pytest

from model.evaluation import measures


def test_majority_baseline_is_always_giving_the_most_common_answer():
    assert measures.majority_baseline(["No", "no", "Yes", " No "]) == ("no", 75.0)


def test_balanced_accuracy_per_finding_and_its_macro_mean():
    findings = ["Nodule"] * 6 + ["Effusion"] * 3 + [None]
    truth = [True, True, False, False, False, False, True, False, False, True]
    said = [True, False, False, False, False, True, None, False, False, True]
    table = measures.balanced_by_finding(findings, truth, said)
    nodule = table["Nodule"]
    assert (nodule["present"], nodule["present_right"], nodule["absent"], nodule["absent_right"]) == (2, 1, 4, 3)
    assert nodule["balanced_accuracy"] == pytest.approx((50.0 + 75.0) / 2)
    # a non-yes/no answer counts as wrong: the effusion was present and not found
    assert table["Effusion"]["sensitivity"] == 0.0 and table["Effusion"]["specificity"] == 100.0
    assert measures.macro_balanced(table) == pytest.approx((62.5 + 50.0) / 2)
    one_sided = measures.balanced_by_finding(["Emphysema"] * 2, [False, False], [False, False])
    assert one_sided["Emphysema"]["balanced_accuracy"] is None and measures.macro_balanced(one_sided) is None


def test_always_no_scores_high_accuracy_but_balanced_50():
    truth = [True] + [False] * 9
    table = measures.balanced_by_finding(["Nodule"] * 10, truth, [False] * 10)
    assert table["Nodule"]["balanced_accuracy"] == 50.0
    assert measures.majority_baseline(["Yes"] + ["No"] * 9)[1] == 90.0


def test_rule_consistency_follows_the_stated_priors():
    questions = ["Earlier x sequences: [0, 1]. Now?", "Earlier x sequences: [0, 0]. Now?", "no priors here"]
    result = measures.rule_consistency(questions, ["B", "A", "C"])
    assert result == {"n": 2, "consistent": 1, "percent": 50.0}
    assert measures.rule_consistency(["no priors"], ["A"]) is None


def test_presence_ceiling_is_the_best_answer_of_each_side_of_the_scan():
    answers = (["No Abnormality (Always absent)"] * 6 + ["Resolved Lesion (now absent)"] * 2
               + ["Refractory Lesion (now present)"] * 1 + ["New Lesion (Absent previously, now present)"] * 3)
    # absent now: "no abnormality" 6 of 8; present now: "new" 3 of 4; the majority alone gives 6 of 12
    assert measures.presence_ceiling(answers) == pytest.approx(100.0 * 9 / 12)
    assert measures.majority_baseline(answers)[1] == 50.0
    assert [measures.present_now(a) for a in ("new lesion", " Resolved", "Yes")] == [True, False, None]
    assert measures.presence_ceiling(["Yes", "No abnormality"]) is None  # not a static-temporal answer set


def test_box_iou_and_box_figures():
    box = (0, 0, 0, 2, 2, 2)
    assert measures.box_iou(box, box) == 1.0
    assert measures.box_iou((1, 0, 0, 3, 2, 2), box) == pytest.approx(4 / 12)
    assert measures.box_iou((5, 5, 5, 6, 6, 6), box) == 0.0 and measures.box_iou(None, box) == 0.0
    figures = measures.box_figures(["A", "A", "B"], [box] * 3, [box, None, (1, 0, 0, 3, 2, 2)])
    assert figures["answered"] == pytest.approx(200 / 3) and figures["iou_at_50"] == pytest.approx(100 / 3)
    assert figures["by_finding"]["A"] == {"n": 2, "answered": 50.0, "iou_mean": 50.0, "iou_at_50": 50.0}


def test_box_question_file_errors_name_file_and_line(tmp_path):
    from model.data.box_questions import read_box_questions

    path = tmp_path / "boxes.csv"
    path.write_text("VolumeName,Finding,Question,Box\nv.nii.gz,Cardiomegaly,Where? Give the box.,\"[1, 2, 3, 4, 5, 6]\"\n"
                    "v.nii.gz,Cardiomegaly,Where?,\"[1, 2, 3]\"\n")
    with pytest.raises(ValueError, match=rf"{path}:3: Box '\[1, 2, 3\]' has 3 numbers"):
        read_box_questions(path)
    path.write_text("VolumeName,Finding,Question,Box\nv.nii.gz,X,Where?,\"[4, 2, 3, 4, 5, 6]\"\n")
    with pytest.raises(ValueError, match=r":2: Box .* is empty"):
        read_box_questions(path)
    path.write_text("VolumeName,Question\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Finding', 'Box'\]"):
        read_box_questions(path)


def test_ctvqa_evaluate_refuses_resume_without_a_folder_and_a_bad_labels_file(tiny_vlm_dir, tmp_path):
    from typer.testing import CliRunner

    from napari_ctvqa.cli import app
    from tests.model.test_evaluate import closed_row, write_csv

    qa = tmp_path / "qa"
    write_csv(qa / "Task4_Existence_Detection" / "Emphysema.csv",
              [closed_row(4, 7, "v_1_a_1.nii.gz", "Is emphysema present?", "A", ("Yes", "No", "-", "-"))])
    (tmp_path / "volumes").mkdir()
    args = ["evaluate", "--model", str(tiny_vlm_dir), "--qa", str(qa), "--volumes", str(tmp_path / "volumes")]
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 1 and "--resume and --processes need an answers folder" in result.stderr
    bad = tmp_path / "labels.csv"
    bad.write_text("Name,Emphysema\n")
    result = CliRunner().invoke(app, [*args, "--labels", str(bad)])
    assert result.exit_code == 1 and f"{bad}: no VolumeName column" in result.stderr
    assert "Traceback" not in result.output


def test_the_card_shows_the_single_scan_ceiling_beside_the_static_target():
    from model.training.default.card import honest_lines
    from model.training.default.evaluation import acceptance

    static = {"n": 12, "accuracy": 60.0, "majority_baseline": 50.0, "majority_answer": "no abnormality",
              "accuracy_over_baseline": 10.0, "presence_ceiling": 75.0}
    report = {"tasks": {"static_temporal_diagnosis": static}}
    text = "\n".join(honest_lines(report))
    assert "would score 75.0 on these questions; issue 16's target is 58.0" in text
    assert acceptance(report)["static_temporal_diagnosis"]["single_scan_ceiling"] == 75.0
    del static["presence_ceiling"]  # an evaluation written before the measure existed
    assert "would score" not in "\n".join(honest_lines(report))


def test_the_card_sets_the_readout_auc_beside_each_findings_answers():
    from model.training.default.card import size_lines

    findings = {"Lung nodule": {"present": 4, "present_right": 2, "absent": 6, "absent_right": 6,
                                "balanced_accuracy": 75.0},
                "Emphysema": {"present": 0, "present_right": 0, "absent": 10, "absent_right": 10,
                              "balanced_accuracy": None}}
    report = {"n": 10, "limit_per_task": 5, "tasks": {}, "cohort": "heldout",
              "existence_all_questions": {"findings": findings, "balanced_accuracy": 75.0},
              "readout_auc": {"Lung nodule": 0.875}}
    lines = size_lines("64x192x192", report)
    assert "| Lung nodule | 2/4 | 6/6 | 75.0 | 0.88 |" in lines
    assert "| Emphysema | 0/0 | 10/10 | - | - |" in lines
    assert any(line.startswith("Readout AUC:") for line in lines)
    del report["readout_auc"]  # an evaluation written before the readout was measured: the old table
    assert "| Lung nodule | 2/4 | 6/6 | 75.0 |" in size_lines("64x192x192", report)
