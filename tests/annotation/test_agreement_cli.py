"""`ctvqa assign --repeat`, `ctvqa agreement --disagreements N --plot PNG` and `ctvqa import boxes`
on a real SQLite store: repeats are blind second showings that feed intra-rater agreement only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from annotation.assignments import plan_assignments
from annotation.rubric import SCORE_KEYS
from napari_ctvqa.cli import app


def test_repeats_come_later_in_the_queue_and_stay_blind(seeded):
    store, ids = seeded
    plan = store.assign(["ann", "bob"], per_annotator=40, overlap=20, seed=3, repeat=0.1)
    for name in ("ann", "bob"):
        queue = store.queue(name)
        repeats = [item for item in queue if item.repeat]
        assert len(queue) == 44 and len(repeats) == 4 == len(plan["repeats"][name])
        positions = {item.qa_id: item.position for item in queue if not item.repeat}
        assert all(item.position - positions[item.qa_id] >= 10 for item in repeats)  # a quarter of the batch later
    item = next(i for i in store.queue("ann") if i.repeat)
    store.save_rating("ann", item.qa_id, [5, 5, 5, 5, 5], True)
    assert store.rating("ann", item.qa_id, repeat=True) is None  # the first showing knows nothing of...
    store.save_rating("ann", item.qa_id, [1, 1, 1, 1, 1], False, repeat=True)
    assert store.rating("ann", item.qa_id).scores[SCORE_KEYS[0]] == 5  # ...and the repeat overwrites nothing
    statuses = {(i.qa_id, i.repeat): i.status for i in store.queue("ann")}
    assert statuses[(item.qa_id, False)] == statuses[(item.qa_id, True)] == "rated"
    assert len(store.ratings_frame()) == 1 and len(store.ratings_frame(repeats=True)) == 1
    with pytest.raises(ValueError, match="repeat share"):
        plan_assignments([(1, "t"), (2, "t")], ["a"], 2, 0, repeat_share=0.9)


def test_agreement_cli_lists_disagreements_plots_and_reports_intra(seeded, tmp_path: Path):
    store, ids = seeded
    store.assign(["ann", "bob", "cy"], per_annotator=40, overlap=40, seed=1, repeat=0.1)
    rng = np.random.default_rng(0)
    truth = {q: rng.integers(1, 6, 5) for q in ids}
    for name in ("ann", "bob", "cy"):
        for item in store.queue(name):
            noisy = np.clip(truth[item.qa_id] + rng.integers(-1, 2, 5), 0, 5)
            if name == "cy" and item.qa_id == store.queue("ann")[0].qa_id and not item.repeat:
                noisy = 5 - truth[item.qa_id]  # one pair cy sees upside down
            store.save_rating(name, item.qa_id, [int(v) for v in noisy], True, repeat=item.repeat)
    runner = CliRunner()
    png = tmp_path / "agreement.png"
    result = runner.invoke(app, ["agreement", "--db", store.url, "--disagreements", "3", "--plot", str(png),
                                 "--bootstrap", "200", "--top-k", "10"])
    assert result.exit_code == 0, result.output
    assert "most-disagreed pairs (top 3)" in result.stdout and "intra-rater" in result.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(runner.invoke(app, ["agreement", "--db", store.url, "--json", "--disagreements", "3",
                                          "--bootstrap", "100"]).stdout)
    assert len(data["disagreements"]) == 3 and data["disagreements"][0]["question"]
    assert {r["dimension"] for r in data["reliability"]} == {"mean", *SCORE_KEYS}
    assert all(r["n_units"] == 40 for r in data["reliability"])
    assert {r["rater"] for r in data["intra_rater"]} == {"ann", "bob", "cy"}
    assert all(r["n_repeats"] == 4 for r in data["intra_rater"])
    assert data["pairwise"][0]["n_common"] == 40  # repeats never count as another rater's rating
    bad = runner.invoke(app, ["agreement", "--db", store.url, "--plot", str(tmp_path / "no" / "x.png")])
    assert bad.exit_code != 0 and "does not exist" in bad.output


def test_import_boxes_checks_the_whole_file(seeded, tmp_path: Path):
    store, _ = seeded
    name = store.scans()[0].volume_name
    good = {"volumes": {name: {"lesions": [{"label": "Pleural effusion", "side": "left",
                                            "bbox_norm": [0.2, 0.5, 0.6, 0.5, 0.9, 0.9]}]}}}
    path = tmp_path / "boxes.json"
    runner = CliRunner()
    for document, message in (({"volumes": {name: {"lesions": [{"label": "x", "bbox_norm": [0.5, 0, 0, 0.4, 1, 1]}]}}},
                               "start below its stop"),
                              ({"volumes": {"nope.nii.gz": good["volumes"][name]}}, "not in the database"),
                              ({"volumes": {name: {"lesions": [{"bbox_norm": [0, 0, 0, 1, 1, 1]}]}}}, "lesion 1")):
        path.write_text(json.dumps(document))
        result = runner.invoke(app, ["import", "boxes", str(path), "--db", store.url])
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    path.write_text("{not json")
    assert "not valid JSON" in runner.invoke(app, ["import", "boxes", str(path), "--db", store.url]).output
    assert store.finding_boxes(store.scans()[0].id) == []  # nothing half-written
    path.write_text(json.dumps(good))
    for _ in range(2):  # idempotent: a re-import replaces, never doubles
        assert runner.invoke(app, ["import", "boxes", str(path), "--db", store.url]).exit_code == 0
    boxes = store.finding_boxes(store.scans()[0].id)
    assert [(b.label, b.side, b.box[0]) for b in boxes] == [("Pleural effusion", "left", 0.2)]
