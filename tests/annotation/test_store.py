"""Store behaviour the widgets rely on: scans, QA pairs, ratings with history, skip/flag, blind
queues, chat turns, model versions and finetune runs."""
from __future__ import annotations

import threading

import pytest

from annotation.store import Store

SCORES = {"visual_verifiability": 5, "specificity_clarity": 4, "answer_appropriateness": 3,
          "qa_alignment": 2, "linguistic_quality": 1}


def test_scans_patients_labels_and_paths(store: Store, tmp_path) -> None:
    b = store.add_scan("train_7_b_1.nii.gz", spacing=(1.5, 0.7, 0.7))
    a = store.add_scan("train_7_a_2.nii.gz", study_date="2020-01-02")
    other = store.add_scan("my_scan.nii.gz")
    assert (b.patient, b.timepoint, b.reconstruction, b.split, b.spacing) == ("train_7", "b", 1, "train", (1.5, 0.7, 0.7))
    assert other.patient is None
    assert [s.volume_name for s in store.patient_scans(b.id)] == ["train_7_a_2.nii.gz", "train_7_b_1.nii.gz"]
    assert store.patient_scans(other.id) == [other]
    assert store.scan_by_volume("train_7_a_2.nii.gz") == a
    assert store.scan_by_volume("missing.nii.gz") is None
    store.set_scan_path(a.id, tmp_path / "a.nii.gz")
    assert store.scan(a.id).path == str(tmp_path / "a.nii.gz")
    assert store.add_scan("train_7_a_2.nii.gz").id == a.id  # registering again returns the same scan
    assert store.labels(a.id) == {} and store.report(a.id) is None
    with pytest.raises(KeyError, match="no scan"):
        store.scan(12345)
    with pytest.raises(ValueError, match="unknown scan field"):
        store.add_scan("x.nii.gz", colour="red")


def test_set_report_stores_and_replaces_the_reference_text(store: Store) -> None:
    scan = store.add_scan("train_8_a_1.nii.gz")
    first = store.set_report(scan.id, findings="A 12 mm nodule.", impressions="Nodule.")
    assert (first.findings, first.impressions, first.technique) == ("A 12 mm nodule.", "Nodule.", None)
    store.set_report(scan.id, findings="No nodule.")
    assert store.report(scan.id).findings == "No nodule." and store.report(scan.id).impressions is None


def test_qa_pairs_round_trip_and_are_idempotent(store: Store) -> None:
    scan = store.add_scan("test_1_b_1.nii.gz")
    qa_id = store.add_qa_pair(scan.id, "longitudinal_temporal_diagnosis", "How did X evolve? [0, 1]",
                              "Resolved", subtask="1", choices=("A1", "B1", "C1", "D1"), answer_choice="B",
                              priors=[0, 1], source="template", provenance={"file": "f.csv", "line": 3})
    again = store.add_qa_pair(scan.id, "longitudinal_temporal_diagnosis", "How did X evolve? [0, 1]",
                              "Resolved", subtask="1", choices=("A1", "B1", "C1", "D1"), answer_choice="B",
                              priors=[0, 1], source="template")
    assert again == qa_id
    qa = store.qa_pair(qa_id)
    assert (qa.volume_name, qa.task, qa.task_number, qa.question_type, qa.choices, qa.answer_choice,
            qa.priors, qa.source, qa.provenance) == (
        "test_1_b_1.nii.gz", "longitudinal_temporal_diagnosis", 6, "closed", ("A1", "B1", "C1", "D1"), "B",
        (0, 1), "template", {"file": "f.csv", "line": 3})
    open_id = store.add_qa_pair(scan.id, "image_observation", "Where?", "Left.")
    assert store.qa_pair(open_id).choices is None and store.qa_pair(open_id).source == "chat"
    assert store.count_qa_pairs() == {"longitudinal_temporal_diagnosis": 1, "image_observation": 1}
    assert [q.id for q in store.qa_pairs(source="chat")] == [open_id]
    with pytest.raises(ValueError, match="source"):
        store.add_qa_pair(scan.id, "image_observation", "Q?", "A.", source="scraped")
    with pytest.raises(ValueError, match="answer choice"):
        store.add_qa_pair(scan.id, "image_observation", "Q?", "A.", choices=("a", "b", "c", "d"), answer_choice="E")


def test_save_rating_updates_one_row_and_keeps_every_earlier_version(seeded) -> None:
    store, ids = seeded
    first = store.save_rating("ann", ids[0], SCORES, True, note="ok", seconds=4.0)
    second = store.save_rating("ann", ids[0], [1, 1, 1, 1, 1], False, note="wrong side", seconds=2.5)
    third = store.save_rating("ann", ids[0], [2, 2, 2, 2, 2], False, seconds=1.0)
    assert first.id == second.id == third.id
    assert third.scores == dict.fromkeys(SCORES, 2) and third.consistent is False
    assert third.seconds_spent == pytest.approx(7.5)
    history = store.rating_history("ann", ids[0])
    assert [h.scores["visual_verifiability"] for h in history] == [5, 1]
    assert [h.note for h in history] == ["ok", "wrong side"]
    assert history[0].valid_from == first.updated_at
    assert len(store.ratings_frame()) == 1


def test_a_blind_repeat_keeps_a_history_of_its_own(seeded) -> None:
    store, ids = seeded
    store.save_rating("ann", ids[0], SCORES, True, note="first")
    store.save_rating("ann", ids[0], [1, 1, 1, 1, 1], False, note="first, changed")
    store.save_rating("ann", ids[0], [3, 3, 3, 3, 3], True, note="repeat", repeat=True)
    store.save_rating("ann", ids[0], [4, 4, 4, 4, 4], True, note="repeat, changed", repeat=True)
    assert [h.note for h in store.rating_history("ann", ids[0])] == ["first"]
    assert [h.note for h in store.rating_history(" ann ", ids[0], repeat=True)] == ["repeat"]


@pytest.mark.parametrize("scores, match", [
    ({**SCORES, "qa_alignment": 6}, "qa_alignment"),
    ({k: v for k, v in SCORES.items() if k != "specificity_clarity"}, "specificity_clarity"),
    ([1, 2, 3, 4], "expected 5 scores"),
    ([1, 2, 3, 4, -1], "linguistic_quality"),
    ({**SCORES, "visual_verifiability": 2.5}, "visual_verifiability"),
])
def test_save_rating_refuses_bad_scores_naming_the_dimension(seeded, scores, match) -> None:
    store, ids = seeded
    with pytest.raises(ValueError, match=match):
        store.save_rating("ann", ids[0], scores, True)
    assert store.rating("ann", ids[0]) is None


def test_skip_and_flag_need_a_reason_and_show_in_the_queue(seeded) -> None:
    store, ids = seeded
    store.assign(["ann"], 4, 0, seed=3)
    queue = store.queue("ann")
    with pytest.raises(ValueError, match="reason"):
        store.skip("ann", queue[0].qa_id, "  ")
    store.skip("ann", queue[0].qa_id, "scan does not load")
    store.flag("ann", queue[1].qa_id, "answer contradicts the report", seconds=3)
    store.save_rating("ann", queue[2].qa_id, SCORES, True, seconds=10)
    statuses = [i.status for i in store.queue("ann")]
    assert statuses == ["skipped", "flagged", "rated", "todo"]
    assert store.rating("ann", queue[1].qa_id).reason == "answer contradicts the report"
    progress = store.progress("ann")
    assert (progress.done, progress.total, progress.skipped, progress.flagged) == (3, 4, 1, 1)
    assert progress.seconds == pytest.approx(13)
    assert sum(n for _, n in progress.per_task.values()) == 4
    frame = store.ratings_frame()
    assert sorted(frame["status"]) == ["flagged", "rated", "skipped"]


def test_queues_are_blind_to_other_raters(seeded) -> None:
    store, ids = seeded
    store.assign(["ann", "bob"], 6, 6, seed=1)
    shared = store.queue("ann")[0].qa_id
    store.save_rating("bob", shared, SCORES, True)
    assert store.rating("ann", shared) is None
    assert {i.qa_id: i.status for i in store.queue("ann")}[shared] == "todo"
    assert store.progress("ann").done == 0 and store.progress("bob").done == 1
    assert store.queue("nobody") == []
    stats = {s.name: s for s in store.annotator_stats()}
    assert (stats["ann"].assigned, stats["ann"].rated, stats["bob"].rated) == (6, 0, 1)


def test_store_is_safe_to_use_from_worker_threads(seeded) -> None:
    store, ids = seeded
    errors: list[BaseException] = []

    def rate(name: str) -> None:
        try:
            for qa_id in ids[:15]:
                store.save_rating(name, qa_id, SCORES, True)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=rate, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.ratings_frame()) == 60


def test_chat_turns_become_qa_pairs(store: Store) -> None:
    scan = store.add_scan("valid_3_a_1.nii.gz")
    store.register_model_version("default", "/models/default", kind="default")
    first = store.add_chat_turn(scan.id, "Is there an effusion?", "B. No", conversation_id="c1",
                                model_version="default", choices=["Yes", "No", "-", "-"], choice="B",
                                choice_scores={"A": 0.2, "B": 0.8}, box=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                                latency_first_token_s=0.12, total_s=0.9, n_tokens=4)
    second = store.add_chat_turn(scan.id, "Where?", "Left lower lobe.", conversation_id="c1")
    turns = store.chat_turns(conversation_id="c1")
    assert [t.turn_index for t in turns] == [0, 1] and [t.id for t in turns] == [first, second]
    assert (turns[0].model_version, turns[0].choice_scores, turns[0].box) == (
        "default", {"A": 0.2, "B": 0.8}, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6))
    qa_id = store.chat_turn_to_qa(first)
    qa = store.qa_pair(qa_id)
    assert (qa.source, qa.question, qa.answer_choice, qa.provenance["chat_turn"]) == ("chat", "Is there an effusion?", "B", first)
    assert store.chat_turn_to_qa(first) == qa_id
    with pytest.raises(KeyError, match="model version"):
        store.add_chat_turn(scan.id, "Q", "A", conversation_id="c2", model_version="nope")


def test_model_versions_and_finetune_runs(store: Store) -> None:
    store.register_model_version("default", "/m/default", kind="default")
    run = store.add_finetune_run(config={"lora_r": 16}, qa_ids=[3, 1, 2], filter={"min_mean": 3}, base="default",
                                 output_path="/m/ft1")
    assert store.update_finetune_run(run, status="running").started_at is not None
    mv = store.register_model_version("ft1", "/m/ft1", base="default", provenance={"run": run},
                                      metrics={"accuracy": 51.0})
    done = store.update_finetune_run(run, status="done", metrics={"loss": 0.5}, model_version="ft1")
    assert (mv.base, mv.metrics, done.model_version, done.qa_ids, done.finished_at is not None) == (
        "default", {"accuracy": 51.0}, "ft1", (3, 1, 2), True)
    assert [m.name for m in store.model_versions()] == ["default", "ft1"]
    assert store.model_version("missing") is None
    with pytest.raises(ValueError, match="refused"):
        store.update_finetune_run(run, status="exploded")
    with pytest.raises(ValueError, match="unknown finetune run field"):
        store.update_finetune_run(run, colour="red")


def test_curation_preview_agreement_and_export_use_the_ratings(seeded, tmp_path) -> None:
    store, ids = seeded
    for rater, base in (("ann", 4), ("bob", 3)):
        for k, qa_id in enumerate(ids[:40]):
            store.save_rating(rater, qa_id, [base + (k % 2)] * 4 + [max(0, base - 2 + k % 3)], k % 5 != 0)
    summary = store.curation_preview()
    assert summary.total == len(ids) and 0 < summary.passed < 40
    pairwise, per_rater = store.agreement(top_k=10)
    assert set(pairwise[["rater_a", "rater_b"]].iloc[0]) == {"ann", "bob"}
    assert len(per_rater) == 2
    manifest = store.export("jsonl", tmp_path / "out", val_frac=0.5, seed=1, split="patient")
    assert manifest["total"] == summary.passed
    assert (tmp_path / "out" / "train.jsonl").is_file()
    recorded = store.exports()
    assert len(recorded) == 1 and recorded[0]["manifest"]["total"] == summary.passed
    assert recorded[0]["filter"]["min_mean"] == 3.0

