"""The whole loop on a real SQLite store: rated pairs -> curated training set (patient split) ->
LoRA run -> evaluation of base and new model on the held-out patients -> registered version with
provenance that `load_vlm` loads and that answers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.model.test_finetune import write_volumes

EXISTENCE = ("Yes", "No", "-", "-")


def rated_store(tmp_path: Path, n_patients: int = 6):
    """A store with two pairs per scan (one closed, one open) on `n_patients` .npy scans; every
    pair rated 4 except the open pair of patient 0, rated 1 (the filter must drop it).
    Returns (store, ids of the pairs that pass)."""
    from annotation.store import Store

    store = Store.create(f"sqlite:///{tmp_path / 'ctvqa.sqlite'}")
    passing = []
    for k, path in enumerate(write_volumes(tmp_path / "volumes", n_patients)):
        scan = store.add_scan(f"train_{k}_a_1.nii.gz", path=path)
        closed = store.add_qa_pair(scan.id, "existence_detection", "Is there a lung nodule?",
                                   "Yes" if k % 2 else "No", subtask="1", choices=EXISTENCE,
                                   answer_choice="A" if k % 2 else "B", source="imported")
        open_ = store.add_qa_pair(scan.id, "image_observation", "What abnormalities are seen?",
                                  "The heart is enlarged.", subtask="1", source="imported")
        store.save_rating("ann", closed, [4] * 5, consistent=True)
        store.save_rating("ann", open_, [1 if k == 0 else 4] * 5, consistent=True)
        passing += [closed] + ([open_] if k else [])
    return store, passing


def test_finetune_from_store_registers_a_loadable_version(tiny_vlm_dir, tmp_path):
    from annotation.curation import FilterRule
    from annotation.training_set import run_finetune
    from model.training.finetune.config import FinetuneConfig
    from model.inference.loading import load_vlm

    store, passing = rated_store(tmp_path)
    seen = []
    outcome = run_finetune(
        store, tmp_path / "run", base=str(tiny_vlm_dir), rule=FilterRule(cap_per_question=None),
        config=FinetuneConfig(lr=5e-3, max_steps=10, batch_size=4, save_every=5), val_frac=0.3,
        merge=True, eval_limit=4, progress=seen.append)
    assert outcome.status == "done" and [p.step for p in seen] == list(range(1, 11))
    assert np.mean(outcome.train.losses[-3:]) < np.mean(outcome.train.losses[:3])

    version = store.model_version(outcome.version)
    assert version.kind == "finetuned" and version.base == tiny_vlm_dir.name
    prov = version.provenance
    assert prov["hyperparameters"]["lora_r"] == 16 and prov["source"]["filter"]["min_mean"] == 3.0
    assert set(prov["train_qa_ids"]) | set(prov["heldout_qa_ids"]) == set(passing)  # the failing pair is out
    assert not set(prov["train_qa_ids"]) & set(prov["heldout_qa_ids"])
    assert prov["heldout_qa_ids"]  # at least one held-out patient
    for key in ("base", "finetuned"):
        assert "existence_detection" in version.metrics[key]["tasks"]
    assert "accuracy" in version.metrics["delta"]["existence_detection"]
    assert outcome.version in [v.name for v in store.model_versions()]  # the chat picker's list

    run = store.finetune_run(outcome.run_id)
    assert (run.status, run.model_version) == ("done", outcome.version) and run.finished_at is not None
    assert sorted(run.qa_ids) == prov["train_qa_ids"]

    vlm = load_vlm(version.path)
    image = np.load(tmp_path / "volumes" / "train_1_a_1.npy")
    assert vlm.answer(image, "Is there a lung nodule?", choices=EXISTENCE, max_new_tokens=6).choice in ("A", "B")


def test_refuses_a_used_folder_unknown_base_and_an_empty_training_set(tiny_vlm_dir, tmp_path):
    from annotation.curation import FilterRule
    from annotation.training_set import run_finetune
    from model.training.finetune.config import FinetuneError

    store, _ = rated_store(tmp_path, n_patients=2)
    with pytest.raises(FinetuneError, match="neither a registered model version nor a model folder"):
        run_finetune(store, tmp_path / "a", base="no-such-model")
    with pytest.raises(FinetuneError, match="unknown task"):
        run_finetune(store, tmp_path / "b", base=str(tiny_vlm_dir), tasks=["lung_nodules"])
    with pytest.raises(ValueError, match="nothing to export"):
        run_finetune(store, tmp_path / "c", base=str(tiny_vlm_dir), rule=FilterRule(min_mean=5, min_dim=5))
    assert not (tmp_path / "c").exists()  # nothing half-made is left: the same --out works next time
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("a user's file")
    with pytest.raises(FinetuneError, match="not empty"):
        run_finetune(store, tmp_path / "d", base=str(tiny_vlm_dir))
    assert (tmp_path / "d" / "keep.txt").read_text() == "a user's file"
    assert store.finetune_runs() == []  # refused runs leave no row behind


def test_resume_honours_max_steps_times_and_loads_the_run_folder_as_its_model(tiny_vlm_dir, tmp_path):
    """Cancelled at step 3, resumed with a new total: the run ends there, the time left counts this
    session's pace only, finished_at is the end (not the cancel), and `load_vlm(run folder)` works."""
    import threading

    from annotation.curation import FilterRule
    from annotation.training_set import run_finetune
    from model.inference.loading import load_vlm
    from model.training.finetune.config import FinetuneConfig, FinetuneError

    store, _ = rated_store(tmp_path, n_patients=4)
    stop, out = threading.Event(), tmp_path / "run"
    common = dict(rule=FilterRule(cap_per_question=None), val_frac=0.0)
    first = run_finetune(store, out, base=str(tiny_vlm_dir), stop=stop,
                         config=FinetuneConfig(lr=5e-3, max_steps=20, batch_size=2, save_every=50),
                         progress=lambda p: stop.set() if p.step == 3 else None, **common)
    assert first.status == "cancelled" and first.train.step == 3
    cancelled_at = store.finetune_run(first.run_id).finished_at
    with pytest.raises(FinetuneError, match="already at step 3; --max-steps 2 would undo"):
        run_finetune(store, out, resume=True, max_steps=2)
    assert '"max_steps": 20' in (out / "run.json").read_text()  # a refused total changes nothing
    seen = []
    done = run_finetune(store, out, resume=True, max_steps=6, progress=seen.append)
    assert (done.status, done.train.step, done.train.total_steps) == ("done", 6, 6)
    assert [p.step for p in seen] == [4, 5, 6] and {p.start_step for p in seen} == {3}
    assert seen[0].eta_s == pytest.approx(2 * seen[0].elapsed_s, rel=1e-6)  # 2 steps left at 1 step per elapsed
    run = store.finetune_run(done.run_id)
    assert run.finished_at > cancelled_at and run.started_at < cancelled_at and run.status == "done"

    vlm = load_vlm(out)  # the run folder stands for its model (adapter/ here)
    image = np.load(tmp_path / "volumes" / "train_1_a_1.npy")
    assert vlm.answer(image, "Is there a lung nodule?", choices=EXISTENCE, max_new_tokens=6).choice in ("A", "B")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="training has not finished.*--resume"):
        load_vlm(tmp_path / "unfinished")


def test_a_held_out_drop_beyond_its_standard_error_is_a_regression():
    from annotation.heldout import comparisons, describe, standard_error

    base = {"tasks": {"static_temporal_diagnosis": {"n": 2, "accuracy": 50.0},
                      "existence_detection": {"n": 400, "accuracy": 80.0},
                      "image_observation": {"n": 5, "rouge1": 40.0, "bleu1": 30.0}}}
    new = {"tasks": {"static_temporal_diagnosis": {"n": 2, "accuracy": 0.0},
                     "existence_detection": {"n": 400, "accuracy": 78.5},
                     "image_observation": {"n": 5, "rouge1": 45.0, "bleu1": 20.0}}}
    rows = {r["task"]: r for r in comparisons(base, new)}
    assert standard_error(50.0, 2) == pytest.approx(35.355, abs=1e-3)
    assert rows["static_temporal_diagnosis"]["regression"]  # -50 with a standard error of 35
    assert not rows["existence_detection"]["regression"]  # -1.5 within 2.9
    assert rows["image_observation"]["metric"] == "rouge1" and not rows["image_observation"]["regression"]
    assert describe(rows["static_temporal_diagnosis"]) == \
        "static_temporal_diagnosis: accuracy 50.0 -> 0.0 (n 2, -50.0 ± 35.4)"
