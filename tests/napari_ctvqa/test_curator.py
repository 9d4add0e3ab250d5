"""Curator panel acceptance (issue 8): agreement table, annotator progress, filter counts and an
export written off the GUI thread, on a small constructed store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from annotation.rubric import SCORE_KEYS

from napari_ctvqa.widgets.curator import CuratorWidget
from tests.napari_ctvqa.test_rating import copy_store, rating_template  # noqa: F401 (fixture)


@pytest.fixture
def rated_store(rating_template: Path, tmp_path: Path):
    """Alice and Bob rate all four pairs: the same order of quality, one pair failing the filter."""
    store = copy_store(rating_template, tmp_path)
    qa_ids = sorted(item.qa_id for item in store.queue("alice"))
    for rater, scores in (("alice", (2, 3, 4, 5)), ("bob", (1, 3, 4, 5))):  # the first pair fails
        for rank, (qa_id, score) in enumerate(zip(qa_ids, scores)):
            store.save_rating(rater, qa_id, dict.fromkeys(SCORE_KEYS, score), consistent=rank != 1,
                              seconds=30.0)
    yield store
    store.close()


def table_rows(table) -> list[list[str]]:
    return [[table.item(i, j).text() for j in range(table.columnCount())] for i in range(table.rowCount())]


def headers(table) -> list[str]:
    return [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]


def test_agreement_and_annotator_tables(make_napari_viewer, qtbot, rated_store):
    widget = CuratorWidget(make_napari_viewer(), store=rated_store)
    qtbot.addWidget(widget)
    pairwise = dict(zip(headers(widget.pairwise_table), table_rows(widget.pairwise_table)[0]))
    assert {pairwise["Rater A"], pairwise["Rater B"]} == {"alice", "bob"}
    assert pairwise["Common"] == "4"
    assert pairwise["Spearman"] == "1.00"  # same order of quality
    assert pairwise["MAE"] == "0.25"  # bob is one point lower on one pair of four
    assert [row[0] for row in table_rows(widget.per_rater_table)] == ["alice", "bob"]
    annotators = {row[0]: dict(zip(headers(widget.annotators_table), row))
                  for row in table_rows(widget.annotators_table)}
    assert annotators["alice"]["Rated"] == "4" and annotators["alice"]["Done %"] == "100.00"
    assert annotators["bob"]["Minutes"] == "2.00"
    widget.close()


def test_filter_preview_counts_follow_the_rule(make_napari_viewer, qtbot, rated_store):
    widget = CuratorWidget(make_napari_viewer(), store=rated_store)
    qtbot.addWidget(widget)
    assert "3 of 4 pairs pass" in widget.preview_label.text()
    reasons = " ".join(row[3] for row in table_rows(widget.preview_table))
    assert "mean < 3: 1" in reasons
    widget.require_consistent.setChecked(True)  # the second pair was judged inconsistent by both
    assert "2 of 4 pairs pass" in widget.preview_label.text()
    assert "inconsistent: 1" in " ".join(row[3] for row in table_rows(widget.preview_table))
    widget.min_mean.setValue(1.5)  # the first pair's mean over both raters is exactly 1.5
    widget.min_dim.setValue(1.5)
    assert "3 of 4 pairs pass" in widget.preview_label.text()
    widget.close()


@pytest.mark.parametrize("fmt", ["jsonl", "3drad"])
def test_export_writes_files_off_the_gui_thread(make_napari_viewer, qtbot, rated_store, tmp_path, fmt):
    widget = CuratorWidget(make_napari_viewer(), store=rated_store)
    qtbot.addWidget(widget)
    out = tmp_path / f"export-{fmt}"
    widget.format.setCurrentText(fmt)
    widget.out_dir.setText(str(out))
    widget.val_frac.setValue(0.0)
    with qtbot.waitSignal(widget.exported, timeout=30000) as done:
        widget.start_export()
    manifest = done.args[0]
    assert manifest["total"] == 3
    assert json.loads((out / "manifest.json").read_text())["total"] == 3
    written = [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert written, "no data files were written"
    assert widget.export_progress.value() == widget.export_progress.maximum()
    assert "Exported 3 pairs" in widget.message.text()
    assert widget.export_button.isEnabled()
    widget.close()


def test_export_into_a_full_folder_reports_the_error(make_napari_viewer, qtbot, rated_store, tmp_path):
    widget = CuratorWidget(make_napari_viewer(), store=rated_store)
    qtbot.addWidget(widget)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.csv").write_text("keep me")
    widget.out_dir.setText(str(tmp_path / "full"))
    with qtbot.waitSignal(widget.failed, timeout=30000):
        widget.start_export()
    assert "must be new or empty" in widget.message.text()
    assert (tmp_path / "full" / "old.csv").read_text() == "keep me"
    widget.close()


def test_agreement_report_heatmap_and_adjudication_list(make_napari_viewer, qtbot, rated_store, tmp_path):
    widget = CuratorWidget(make_napari_viewer(), store=rated_store)
    qtbot.addWidget(widget)
    panel = widget.agreement
    with qtbot.waitSignal(panel.report_ready, timeout=60000):
        widget.refresh_agreement()  # the bootstrap runs on a worker thread
    pairwise = dict(zip(headers(widget.pairwise_table), table_rows(widget.pairwise_table)[0]))
    assert pairwise["k"] == "4" and pairwise["Top-k"] == "–"  # k capped at n = 4: no overlap figure
    assert "only 4 common pairs" in pairwise["Warning"]
    assert "fewer than 30" in panel.warnings.text()
    reliability = table_rows(panel.reliability_table)
    assert [row[0] for row in reliability][:2] == ["mean", "visual_verifiability"] and len(reliability) == 6
    first = table_rows(panel.disagreements_table)[0]
    assert first[0] == str(panel.report.disagreements.qa_id.iloc[0]) and "alice" in " ".join(first)
    assert len(panel.canvas.figure.axes) >= 2  # consistency and ranking heatmaps drawn
    png = panel.save_png(tmp_path / "heatmaps.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_export_part_keeps_unrated_curated_pairs_splits_by_patient_and_warns(make_napari_viewer, qtbot,
                                                                             rated_store, tmp_path):
    """The panel's export part passes the new options through: unrated imported pairs kept, a patient
    split whose realised share is far from the asked one said in the message, relative image paths."""
    scan = rated_store.add_scan("train_77_a_1.nii.gz", tmp_path / "ct" / "train_77_a_1.nii.gz")
    rated_store.add_qa_pair(scan.id, "image_observation", "What is seen?", "A nodule.", subtask="1", source="imported")
    widget = CuratorWidget(make_napari_viewer(), store=rated_store)
    qtbot.addWidget(widget)
    widget.include_unrated.setChecked(True)
    assert "(1 of them unrated)" in widget.preview_label.text()
    widget.format.setCurrentText("jsonl")
    widget.out_dir.setText(str(tmp_path / "out"))
    widget.split.setCurrentIndex(widget.split.findData("patient"))
    widget.val_frac.setValue(0.1)
    widget.image_root.setText(str(tmp_path / "ct"))  # the other scans lie elsewhere: refused, by name
    with qtbot.waitSignal(widget.failed, timeout=30000):
        widget.start_export()
    assert "is not under the image root" in widget.message.text() and not (tmp_path / "out").exists()
    widget.image_root.setText("")
    with qtbot.waitSignal(widget.exported, timeout=30000) as done:
        widget.start_export()
    manifest = done.args[0]
    assert manifest["unrated_included"] == 1 and manifest["split"] == "patient" and manifest["warnings"]
    assert "1 of them unrated" in widget.message.text() and "Warning: validation holds" in widget.message.text()
    records = [json.loads(line) for f in (tmp_path / "out").glob("*.jsonl") for line in f.open()]
    root = Path(manifest["image_root"])
    assert all(not Path(r["image"]).is_absolute() for r in records)
    assert root / next(r["image"] for r in records if r["volume_name"] == "train_77_a_1.nii.gz") == Path(scan.path)
    widget.close()
