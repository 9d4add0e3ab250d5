"""The training core on a tiny random model: data reading, loss going down, cancel + resume ending
with the same steps and losses as an uninterrupted run, adapter loading and merging."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from model.training.finetune.config import FinetuneConfig, FinetuneError, stop_file
from model.training.finetune.samples import batch_indices, collate, read_samples
from model.inference.loading import load_finetuned
from model.training.finetune.adapters import merge_adapter
from model.training.finetune.loop import train
from tests.model.conftest import TINY_IMAGE_SIZE


def write_volumes(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Random M3D-style .npy volumes in [0, 1] (read_ct reads them as they are)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"train_{k}_a_1.npy"
        np.save(path, rng.random(TINY_IMAGE_SIZE, dtype=np.float32))
        paths.append(path)
    return paths


def jsonl_folder(tmp_path: Path, n_volumes: int = 4) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    records = []
    for k, path in enumerate(write_volumes(tmp_path / "volumes", n_volumes)):
        records.append({"qa_id": k, "image": str(path), "volume_name": path.name, "task": "existence_detection",
                        "question": "Is there a lung nodule?", "choices": ["Yes", "No", "-", "-"],
                        "answer": "Yes" if k % 2 else "No", "answer_choice": "A" if k % 2 else "B"})
        records.append({"qa_id": 100 + k, "image": path.name, "volume_name": path.name, "task": "image_observation",
                        "question": "What abnormalities are seen?", "choices": None,
                        "answer": "The heart is enlarged.", "answer_choice": None})
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return data


CONFIG = dict(lr=5e-3, batch_size=4, save_every=3, seed=1)


def test_read_samples_resolves_images_and_names_bad_rows(tmp_path):
    data = jsonl_folder(tmp_path)
    with pytest.raises(FinetuneError, match="not found"):
        read_samples(data)  # the open rows name only the file: they need the volumes folder
    samples = read_samples(data, volumes_dir=tmp_path / "volumes")
    assert len(samples) == 8 and all(Path(s.image).is_file() for s in samples)
    assert read_samples(data, "valid") == []
    (data / "train.jsonl").write_text((data / "train.jsonl").read_text() + '{"question": "no answer"}\n')
    with pytest.raises(FinetuneError, match=r"train\.jsonl:9"):
        read_samples(data, volumes_dir=tmp_path / "volumes")


def test_batches_cover_every_example_once_per_epoch_across_processes():
    seen = [i for step in range(3) for rank in range(2) for i in batch_indices(12, step, 2, 2, rank, seed=5)]
    assert sorted(seen) == list(range(12))
    assert batch_indices(12, 3, 2, 2, 0, seed=5) != batch_indices(12, 0, 2, 2, 0, seed=5)  # a new epoch reshuffles
    ids, mask, labels = collate([([1, 2, 3], [-100, -100, 3]), ([4, 5], [-100, 5])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 5, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert labels.tolist() == [[-100, -100, 3], [-100, 5, -100]]


def test_loss_goes_down_and_the_adapter_answers(tiny_vlm_dir, tmp_path):
    data = jsonl_folder(tmp_path)
    result = train(tiny_vlm_dir, data, tmp_path / "run", FinetuneConfig(max_steps=12, **CONFIG),
                   volumes_dir=tmp_path / "volumes")
    assert result.status == "done" and result.step == 12
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3]) - 0.05
    assert result.train_qa_ids == [0, 1, 2, 3, 100, 101, 102, 103]
    vlm = load_finetuned(result.adapter_dir)
    image = np.load(tmp_path / "volumes" / "train_1_a_1.npy")
    answer = vlm.answer(image, "Is there a lung nodule?", choices=["Yes", "No", "-", "-"], max_new_tokens=8)
    assert answer.choice in ("A", "B") and isinstance(answer.text, str)

    from model.inference.loading import load_vlm

    merged = load_vlm(merge_adapter(result.adapter_dir, tmp_path / "merged"))
    assert merged.answer(image, "What abnormalities are seen?", max_new_tokens=8).text == \
        vlm.answer(image, "What abnormalities are seen?", max_new_tokens=8).text
    with pytest.raises(FinetuneError, match="--resume"):
        train(tiny_vlm_dir, data, tmp_path / "run", FinetuneConfig(max_steps=2))


def test_cancelled_run_resumes_to_the_same_steps_and_losses(tiny_vlm_dir, tmp_path):
    data = jsonl_folder(tmp_path)
    volumes = tmp_path / "volumes"
    config = FinetuneConfig(max_steps=8, **CONFIG)
    straight = train(tiny_vlm_dir, data, tmp_path / "straight", config, volumes_dir=volumes)

    stop = threading.Event()

    def cancel_at_5(progress) -> None:  # noqa: ANN001
        if progress.step == 5:
            stop.set()

    first = train(tiny_vlm_dir, data, tmp_path / "cut", config, volumes_dir=volumes, progress=cancel_at_5, stop=stop)
    assert (first.status, first.step, first.adapter_dir) == ("cancelled", 5, None)
    resumed = train(None, "ignored", tmp_path / "cut", resume=True)  # everything comes from run.json
    assert (resumed.status, resumed.step, resumed.total_steps) == ("done", 8, 8)
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-5)

    def crash_at_7(progress) -> None:  # noqa: ANN001
        if progress.step == 7:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny_vlm_dir, data, tmp_path / "crash", config, volumes_dir=volumes, progress=crash_at_7)
    recovered = train(None, "ignored", tmp_path / "crash", resume=True)  # from the step-6 checkpoint
    assert recovered.step == 8 and recovered.losses == pytest.approx(straight.losses, abs=1e-5)

    stop_file(tmp_path / "cut").touch()  # a finished run resumed again trains nothing more
    again = train(None, "ignored", tmp_path / "cut", resume=True)
    assert again.step == 8 and not stop_file(tmp_path / "cut").exists()


def test_bad_settings_and_missing_runs_are_refused(tmp_path):
    with pytest.raises(FinetuneError, match="lora_r=0"):
        FinetuneConfig(lora_r=0)
    with pytest.raises(FinetuneError, match="nothing to resume"):
        train(None, tmp_path, tmp_path / "none", resume=True)
    with pytest.raises(FinetuneError, match="no train.jsonl"):
        train(None, tmp_path, tmp_path / "run")


def test_ctrl_c_checkpoints_instead_of_killing(tiny_vlm_dir, tmp_path):
    import signal

    data = jsonl_folder(tmp_path)

    def ctrl_c_at_2(progress) -> None:  # noqa: ANN001
        if progress.step == 2:
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    result = train(tiny_vlm_dir, data, tmp_path / "run", FinetuneConfig(max_steps=4, **CONFIG),
                   volumes_dir=tmp_path / "volumes", progress=ctrl_c_at_2, handle_sigint=True)
    assert (result.status, result.step) == ("cancelled", 2)
    assert (tmp_path / "run" / "checkpoint" / "state.pt").is_file()
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_training_the_projector_and_vision_lora_changes_the_image_features(tiny_vlm_dir, tmp_path):
    """`train_modules="all"`: the projector and a LoRA on the tower's blocks train too (the image
    runs through them every step), so the finetuned model encodes the same scan differently; the
    adapter loads and merges like an LM-only one, and "lm" leaves the features as they were."""
    import torch

    from model.inference.loading import load_vlm

    data = jsonl_folder(tmp_path)
    image = np.load(tmp_path / "volumes" / "train_1_a_1.npy")
    base = load_vlm(tiny_vlm_dir).prepare(image).features
    features = {}
    for modules in ("lm", "all"):
        result = train(tiny_vlm_dir, data, tmp_path / modules, FinetuneConfig(max_steps=4, train_modules=modules,
                                                                               **CONFIG),
                       volumes_dir=tmp_path / "volumes")
        assert result.status == "done"
        features[modules] = load_finetuned(result.adapter_dir).prepare(image).features
    torch.testing.assert_close(features["lm"], base)
    assert (features["all"] - base).abs().max() > 1e-4
    merged = load_vlm(merge_adapter(tmp_path / "all" / "adapter", tmp_path / "merged"))
    torch.testing.assert_close(merged.prepare(image).features, features["all"], atol=1e-5, rtol=1e-4)
    with pytest.raises(FinetuneError, match="train_modules is one of lm, lm\\+projector, all"):
        FinetuneConfig(train_modules="vision")
