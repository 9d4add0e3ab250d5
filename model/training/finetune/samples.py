"""Finetuning data: QA pairs from an exported folder, encoded exactly as the model prompts, and
the seeded data order that makes an interrupted run resume onto the same examples.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from model.ct.io import read_ct
from model.ct.metadata import row_for
from model.data.qa_folders import QAFolderError, index_volumes, read_qa_folder
from model.inference import prompts
from model.training.finetune.config import FinetuneError, Sample


# ----- data ---------------------------------------------------------------------------------------
def read_samples(data_dir: str | Path, split: str = "train", volumes_dir: str | Path | None = None) -> list[Sample]:
    """The QA pairs of one split of an exported folder: `{split}.jsonl` (the jsonl export), or a
    3D-RAD layout (`{split}/Task*/` as the 3drad export writes, or `Task*/` directly for "train").
    Images are the rows' paths (absolute, or relative to the folder or to the `image_root` its
    `manifest.json` names), else found by file name under `volumes_dir`."""

    data_dir = Path(data_dir)
    jsonl = data_dir / f"{split}.jsonl"
    if jsonl.is_file():
        samples = _read_jsonl(jsonl)
    else:
        folder = data_dir / split if (data_dir / split).is_dir() else data_dir if split == "train" else None
        if folder is None or not any(p.name.startswith("Task") for p in folder.iterdir() if p.is_dir()):
            if split != "train":
                return []
            raise FinetuneError(f"{data_dir}: no {split}.jsonl and no 3D-RAD task folders (export with "
                                "`ctvqa export --format jsonl` or `--format 3drad`)")
        try:
            questions = read_qa_folder(folder)
        except QAFolderError as exc:
            raise FinetuneError(str(exc)) from None
        samples = [Sample(q.volume_name, q.question, q.answer, q.choices if q.closed else None, q.answer_choice,
                          q.task, None, q.source) for items in questions.values() for q in items]
    return _resolve_images(samples, data_dir, volumes_dir)



def _read_jsonl(path: Path) -> list[Sample]:
    samples = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
                choices = row.get("choices")
                samples.append(Sample(
                    image=str(row.get("image") or row["volume_name"]), question=str(row["question"]),
                    answer=str(row["answer"]), choices=tuple(choices) if choices else None,
                    answer_choice=row.get("answer_choice") or None, task=str(row.get("task", "")),
                    qa_id=int(row["qa_id"]) if row.get("qa_id") is not None else None, source=where))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise FinetuneError(f"{where}: not a QA record ({type(exc).__name__}: {exc}); "
                                    "expected the fields of the jsonl export") from None
    return samples



def _resolve_images(samples: list[Sample], data_dir: Path, volumes_dir: str | Path | None) -> list[Sample]:
    index = index_volumes(volumes_dir) if volumes_dir is not None else {}
    roots = [data_dir, *_image_root(data_dir)]
    resolved, missing = [], []
    for s in samples:
        path = Path(s.image)
        candidates = [path, *(root / path for root in roots)] if not path.is_absolute() else [path]
        found = next((str(c) for c in candidates if c.exists()), None) or index.get(path.name)
        if found is None:
            missing.append(s)
        else:
            resolved.append(Sample(str(found), *(getattr(s, f.name) for f in fields(Sample)[1:])))
    if missing:
        first = missing[0]
        raise FinetuneError(f"{first.source}: image {first.image!r} not found ({len(missing)} row(s) without an "
                            "image file; pass the volumes folder or import the scans with their paths)")
    return resolved



def _image_root(data_dir: Path) -> list[Path]:
    """The image root an export's manifest records (exports write image paths relative to it)."""
    manifest = data_dir / "manifest.json"
    try:
        root = json.loads(manifest.read_text(encoding="utf-8")).get("image_root") if manifest.is_file() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
    return [Path(root)] if isinstance(root, str) and root else []


def encode_sample(vlm: Any, sample: Sample) -> tuple[list[int], list[int]]:
    """(input ids, labels): BOS + image placeholders + prompt + target + EOS, labels only on the target."""
    prompt_ids = vlm.prompt_ids(vlm.build_prompt(sample.question, sample.choices))[0].tolist()
    target = prompts.format_target(sample.answer, sample.answer_choice if sample.choices else None)
    target_ids = vlm.tokenizer(target, add_special_tokens=False)["input_ids"] + [vlm.tokenizer.eos_token_id]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids



def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); padding is masked and never scored."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for k, (row, target) in enumerate(encoded):
        ids[k, : len(row)] = torch.tensor(row)
        mask[k, : len(row)] = 1
        labels[k, : len(target)] = torch.tensor(target)
    return ids, mask, labels



class FeatureCache:
    """Per image file, computed on first use: the projected image features (a frozen encoder), or
    the model input and organ masks (`inputs=True`, when the projector or tower trains and must see
    the image at every step).

    `metadata`: CT-RATE rows by volume file name (the data folder's metadata.csv), so a scan is
    calibrated exactly as the viewer and the chat show it."""

    def __init__(self, vlm: Any, metadata: Mapping[str, Mapping[str, Any]] | None = None,
                 inputs: bool = False) -> None:
        self.vlm = vlm
        self.metadata = metadata
        self.inputs = inputs
        self._prepared: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _get(self, image: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if image not in self._prepared:
            volume = read_ct(image, metadata=row_for(self.metadata, image))
            # VLM.prepare, as when answering: the same window, crop and (OmniCT) organ masks
            # clone(): tensors made under inference_mode cannot take part in autograd otherwise
            prepared = self.vlm.prepare(volume)
            masks = prepared.organ_masks.clone() if prepared.organ_masks is not None else None
            self._prepared[image] = (prepared.pixels.clone(), masks) if self.inputs else (prepared.features.clone(), None)
        return self._prepared[image]

    def __call__(self, image: str) -> torch.Tensor:
        """Projected features (frozen encoder) or the model input (`inputs=True`)."""
        return self._get(image)[0]

    def organ_masks(self, image: str) -> torch.Tensor | None:
        return self._get(image)[1]



def batch_indices(n: int, step: int, batch_size: int, world_size: int, rank: int, seed: int) -> list[int]:
    """The example indices this process trains on at global `step`: epoch-wise seeded permutations
    cut into global batches (wrapping at the epoch's end), each process taking its own slice."""
    global_batch = batch_size * world_size
    per_epoch = steps_per_epoch(n, batch_size, world_size)
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    start = offset * global_batch + rank * batch_size
    return [order[(start + j) % n] for j in range(batch_size)]



def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return max(1, math.ceil(n / (batch_size * world_size)))
