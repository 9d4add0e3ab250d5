"""The default model's training data: the cohort's cached model inputs, tokenised QA examples
and the task-balanced sampler (rare answers drawn more often).
"""
from __future__ import annotations

import csv
import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.ct.io import read_ct
from model.ct.preprocess import InputGeometry, to_model_input_with_crop
from model.data.qa_folders import read_qa_folder
from model.evaluation.findings import finding_asked
from model.inference import prompts
from model.inference.boxes import to_normalized
from model.training.default.recipe import (
    CACHE_NAME,
    CAPTION_QUESTION,
    CLOSED_TASK_LETTERS,
    TASK_WEIGHTS,
    Recipe,
)


@dataclass
class Example:
    """One training sequence: which cached volume, the text after the image tokens, the target."""

    volume: int
    task: str
    answer_class: str
    prompt_ids: list[int]  # the ids after BOS + image tokens (" " + prompt)
    target_ids: list[int]  # answer ids + EOS
    choices: tuple[str, ...] = ()  # closed questions: the offered choice texts, A first
    finding: str | None = None  # the CT-RATE label a closed question asks about



@dataclass
class Dataset:
    """One split in memory: model inputs, labels (per volume and per patch) and examples by volume."""

    names: list[str]
    pixels: torch.Tensor  # (V, 1, D, H, W) float16 in [0, 1]
    labels: torch.Tensor  # (V, n_labels) float
    label_names: list[str]
    patch_labels: torch.Tensor  # (V, n_patches, n_labels): the label's lesion overlaps the patch
    by_volume: dict[int, dict[str, list[Example]]] = field(default_factory=dict)



# ----- data -------------------------------------------------------------------------------------
def synth_command(cohort_dir: Path, recipe: Recipe) -> str:
    """The `ctvqa synth` call that makes the cohort this recipe trains on."""
    return (f"ctvqa synth --out {cohort_dir} --patients {recipe.patients} --seed {recipe.seed} "
            f"--size {','.join(str(n) for n in recipe.synth_size)}")



def check_cohort(cohort_dir: Path, recipe: Recipe) -> Path:
    """Refuse a missing cohort, or one made with another seed/size/patient count than the recipe.

    The generator lives in `annotation`, which `model` never imports: the cohort is made first by
    `ctvqa synth` (`make default-model` runs both steps)."""
    truth = cohort_dir / "ground_truth.json"
    if not truth.is_file():
        raise SystemExit(f"no synthetic cohort in {cohort_dir}: make it first with `{synth_command(cohort_dir, recipe)}` "
                         "(or run `make default-model`)")
    document = json.loads(truth.read_text())
    patients = {v["patient"] for v in document["volumes"].values()}
    wanted = (recipe.seed, list(recipe.synth_size), recipe.patients)
    found = (document.get("seed"), document.get("size"), len(patients))
    if found != wanted:
        raise SystemExit(f"{cohort_dir} holds a cohort with (seed, size, patients) = {found}, "
                         f"this recipe needs {wanted}: pass another --cohort folder")
    print(f"[data] using cohort {cohort_dir} ({len(document['volumes'])} volumes)", flush=True)
    return cohort_dir



def load_model_inputs(cohort_dir: Path, split: str, names: Sequence[str], size: Sequence[int]
                      ) -> tuple[torch.Tensor, list[Any]]:
    """(V,1,D,H,W) float16 model inputs of a split's volumes and their crop geometry, from the
    cache or computed once."""

    cache = cohort_dir / CACHE_NAME.format(split=split, d=size[0], h=size[1], w=size[2])
    if cache.is_file():
        stored = torch.load(cache, weights_only=True)
        if stored["names"] == list(names):
            return stored["pixels"], [InputGeometry(tuple(c), tuple(o), tuple(size))
                                      for c, o in zip(stored["crops"], stored["shapes"])]
    start = time.perf_counter()
    pixels = torch.empty((len(names), 1, *size), dtype=torch.float16)
    geometries = []
    for k, name in enumerate(names):
        tensor, geometry = to_model_input_with_crop(read_ct(cohort_dir / "volumes" / name), size=size)
        pixels[k] = tensor.half()
        geometries.append(geometry)
        if (k + 1) % 50 == 0 or k + 1 == len(names):
            print(f"[data] preprocessed {k + 1}/{len(names)} volumes ({time.perf_counter() - start:.0f} s)", flush=True)
    torch.save({"names": list(names), "pixels": pixels, "crops": [list(g.crop) for g in geometries],
                "shapes": [list(g.original_shape) for g in geometries]}, cache)
    return pixels, geometries



def patch_targets(lesions: Sequence[dict], geometry: Any, grid: Sequence[int], label_names: Sequence[str]
                  ) -> torch.Tensor:
    """(n_patches, n_labels): 1 where a lesion's box (ground truth, voxels of the volume) overlaps a
    patch of the model input. Dense targets tell the vision tower where each finding is, a far
    stronger signal per image than one yes/no per label."""

    target = torch.zeros((*grid, len(label_names)))
    for lesion in lesions:
        box = to_normalized(lesion["bbox_voxel"], geometry)
        lo = [min(int(box[i] * grid[i]), grid[i] - 1) for i in range(3)]
        hi = [max(lo[i] + 1, math.ceil(box[i + 3] * grid[i])) for i in range(3)]
        target[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2], label_names.index(lesion["label"])] = 1.0
    return target.reshape(-1, len(label_names))



def read_csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = {row["VolumeName"]: row for row in csv.DictReader(handle)}
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows



def cohort_label_names(labels_rows: dict[str, dict[str, str]]) -> list[str]:
    """The finding columns of a CT-RATE labels.csv, in file order."""
    return [c for c in next(iter(labels_rows.values())) if c != "VolumeName"]



def encode_example(tokenizer: Any, volume: int, task: str, question: str, answer: str,
                   letter: str | None, choices: Sequence[str] | None, finding: str | None = None) -> Example:
    """Token ids exactly as `VLM.prompt_ids` and `VLM.score_choices` build them at inference."""
    prompt = prompts.format_prompt(question, choices if letter else None)
    prompt_ids = tokenizer(" " + prompt, add_special_tokens=False)["input_ids"]
    target = prompts.format_target(answer, letter)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    offered = tuple(text for _, text in prompts.listed_choices(choices)) if letter else ()
    return Example(volume, task, letter or "open", prompt_ids, target_ids, offered, finding)



def build_dataset(cohort_dir: Path, split: str, tokenizer: Any, recipe: Recipe) -> Dataset:
    """The split's volumes (model inputs), their 18 labels, and their QA + caption examples."""

    labels_rows = read_csv_rows(cohort_dir / "labels.csv")
    reports = read_csv_rows(cohort_dir / "reports.csv")
    questions = read_qa_folder(cohort_dir / "qa" / split)
    names = sorted({item.volume_name for items in questions.values() for item in items})
    unknown = [n for n in names if n not in labels_rows]
    if unknown:
        raise ValueError(f"{cohort_dir / 'labels.csv'}: no labels for {unknown[:3]} (of {len(unknown)})")
    label_names = cohort_label_names(labels_rows)
    labels = torch.tensor([[float(labels_rows[n][c]) for c in label_names] for n in names])
    index = {name: k for k, name in enumerate(names)}
    pixels, geometries = load_model_inputs(cohort_dir, split, names, recipe.image_size)
    truth = json.loads((cohort_dir / "ground_truth.json").read_text())["volumes"]
    grid = [i // p for i, p in zip(recipe.image_size, recipe.patch_size)]
    patches = torch.stack([patch_targets(truth[n]["lesions"], g, grid, label_names) for n, g in zip(names, geometries)])
    data = Dataset(names, pixels, labels, label_names, patches)
    for name, k in index.items():
        data.by_volume[k] = {"caption": [encode_example(
            tokenizer, k, "caption", CAPTION_QUESTION, reports[name]["Impressions_EN"], None, None)]}
    for task, items in questions.items():
        for item in items:
            example = encode_example(tokenizer, index[item.volume_name], task, item.question, item.answer,
                                     item.answer_choice, item.choices, finding_asked(item.question, label_names))
            data.by_volume[example.volume].setdefault(task, []).append(example)
    return data



class Sampler:
    """Seeded draws of (volumes, questions) per step: tasks by `TASK_WEIGHTS`, answers within a
    task by 1/sqrt(frequency) so rare answers (a present finding, a resolved lesion) are seen."""

    def __init__(self, data: Dataset, seed: int) -> None:
        self.data = data
        self.rng = random.Random(seed)
        counts = Counter((e.task, e.answer_class) for tasks in data.by_volume.values()
                         for examples in tasks.values() for e in examples)
        self.weight = {key: 1.0 / math.sqrt(n) for key, n in counts.items()}

    def volumes(self, n: int) -> list[int]:
        return self.rng.sample(range(len(self.data.names)), min(n, len(self.data.names)))

    def questions(self, volume: int, n: int, tasks: Sequence[str], balanced: bool = False,
                  findings: Sequence[str] = ()) -> list[Example]:
        """`balanced`: every answer class of the volume's pool equally likely, so that the answer
        cannot be guessed from the question and only the image lowers the loss; `findings`: only
        questions about these labels (where there are any)."""
        available = [t for t in tasks if self.data.by_volume[volume].get(t)]
        chosen = []
        for task in self.rng.choices(available, weights=[TASK_WEIGHTS[t] for t in available], k=n):
            pool = self.data.by_volume[volume][task]
            pool = [e for e in pool if e.finding in findings] or pool if findings else pool
            if balanced:
                classes = sorted({e.answer_class for e in pool})
                wanted = self.rng.choice(classes)
                chosen.append(self.rng.choice([e for e in pool if e.answer_class == wanted]))
            else:
                chosen.append(self.rng.choices(pool, weights=[self.weight[(e.task, e.answer_class)] for e in pool])[0])
        return chosen



def validation_examples(data: Dataset, n: int, seed: int) -> list[Example]:
    """A fixed, class-balanced set of closed valid questions (so a rare answer counts)."""
    rng = random.Random(seed + 1)
    groups: dict[tuple[str, str], list[Example]] = {}
    for tasks in data.by_volume.values():
        for task in CLOSED_TASK_LETTERS:
            for e in tasks.get(task, []):
                groups.setdefault((e.task, e.answer_class), []).append(e)
    per_group = max(1, n // max(1, len(groups)))
    return [e for key in sorted(groups) for e in rng.sample(groups[key], min(per_group, len(groups[key])))]
