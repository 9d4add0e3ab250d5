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
