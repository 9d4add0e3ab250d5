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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from model.ct.io import read_ct
from model.ct.preprocess import InputGeometry, to_model_input_with_crop
from model.data.box_questions import BOX_FILE, read_box_questions
from model.data.qa_folders import read_qa_folder
from model.evaluation.findings import finding_asked
from model.evaluation.runner import patient_of
from model.inference import prompts
from model.inference.boxes import format_box, to_normalized
from model.training.default.recipe import (
    BOX_DIGITS,
    CACHE_NAME,
    CAPTION_QUESTION,
    CLOSED_TASK_LETTERS,
    TASK_WEIGHTS,
    Cohort,
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
    finding: str | None = None  # the CT-RATE label a closed question asks about (a box question: its box's)
    asked: str | None = None  # the label the question's words name (finding_asked): what inference reads



@dataclass
class Dataset:
    """One split in memory: model inputs, labels (per volume and per patch) and examples by volume."""

    names: list[str]
    pixels: torch.Tensor  # (V, 1, D, H, W) float16 in [0, 1]
    labels: torch.Tensor  # (V, n_labels) float
    label_names: list[str]
    patch_labels: torch.Tensor  # (V, n_patches, n_labels): the label's lesion overlaps the patch
    by_volume: dict[int, dict[str, list[Example]]] = field(default_factory=dict)
    boxes: list[list[tuple[int, tuple[float, ...]]]] = field(default_factory=list)  # per volume: (label, 0-1 box)
    # per volume, the lesion each of its boxes belongs to (a many-part lesion has several boxes:
    # stage 0 then centres crops on lesions, not parts); empty: every box is its own lesion
    box_lesions: list[list[int]] = field(default_factory=list)
    lesions: list[list[tuple[int, tuple[float, ...]]]] = field(default_factory=list)  # per volume: whole boxes



# ----- data -------------------------------------------------------------------------------------
def synth_command(folder: Path, cohort: Cohort, valid_frac: float) -> str:
    """The `ctvqa synth` call that makes one cohort of the recipe."""
    seed, size, patients = cohort
    return (f"ctvqa synth --out {folder} --patients {patients} --seed {seed} "
            f"--size {','.join(str(n) for n in size)} --valid-frac {valid_frac:g}")



def check_cohort(folder: Path, cohort: Cohort, valid_frac: float) -> Path:
    """Refuse a missing cohort, or one made with another seed/size/patient count than the recipe.

    The generator lives in `annotation`, which `model` never imports: the cohorts are made first by
    `ctvqa synth` (`make default-model` runs both steps)."""
    truth = folder / "ground_truth.json"
    if not truth.is_file():
        raise SystemExit(f"no synthetic cohort in {folder}: make it first with "
                         f"`{synth_command(folder, cohort, valid_frac)}` (or run `make default-model`)")
    document = json.loads(truth.read_text())
    patients = {v["patient"] for v in document["volumes"].values()}
    seed, size, n = cohort
    found = (document.get("seed"), tuple(document.get("size") or ()), len(patients))
    if found != (seed, tuple(size), n):
        raise SystemExit(f"{folder} holds a cohort with (seed, size, patients) = {found}, "
                         f"this recipe needs {(seed, tuple(size), n)}: make it with "
                         f"`{synth_command(folder, cohort, valid_frac)}`")
    print(f"[data] using cohort {folder} ({len(document['volumes'])} volumes)", flush=True)
    return folder



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



def box_targets(boxes: Sequence[Sequence[tuple[int, Sequence[float]]]], grid: Sequence[int], n_labels: int,
                margin: int = 1) -> torch.Tensor:
    """(B, n_labels, *grid): 1 in every cell a lesion's box (0-1 coordinates of the model input)
    overlaps, grown by `margin` cells, per label. Dense targets tell the vision tower where each
    finding is, a far stronger signal per image than one yes/no per label: per 8x16x16 patch
    (margin 0, `Dataset.patch_labels`) and on the convolutional stem's finer grid (margin 1, which
    covers the training shifts)."""
    target = torch.zeros((len(boxes), n_labels, *grid))
    for k, volume in enumerate(boxes):
        for label, box in volume:
            lo, hi = box_cells(box, grid, margin)
            target[k, label, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1.0
    return target


def box_cells(box: Sequence[float], grid: Sequence[int], margin: int) -> tuple[list[int], list[int]]:
    """The cells (start, stop per axis) a 0-1 box overlaps on `grid`, grown by `margin` cells and
    never empty: what the dense targets mark for a lesion."""
    lo = [min(max(0, int(box[i] * grid[i]) - margin), grid[i] - 1) for i in range(3)]
    hi = [min(grid[i], max(lo[i] + 1, math.ceil(box[i + 3] * grid[i])) + margin) for i in range(3)]
    return lo, hi



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
                   letter: str | None, choices: Sequence[str] | None, finding: str | None = None,
                   label_names: Sequence[str] = ()) -> Example:
    """Token ids exactly as `VLM.prompt_ids` and `VLM.score_choices` build them at inference, and
    the finding the question's words name among `label_names`, as inference reads it (the asked
    finding's token, nets.findings): "the enlarged heart" names none, whatever box it asks for.
    `finding` None: the named one (a closed question's); a box question gives its box's."""
    prompt = prompts.format_prompt(question, choices if letter else None)
    prompt_ids = tokenizer(" " + prompt, add_special_tokens=False)["input_ids"]
    target = prompts.format_target(answer, letter)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    offered = tuple(text for _, text in prompts.listed_choices(choices)) if letter else ()
    asked = finding_asked(question, label_names)
    return Example(volume, task, letter or "open", prompt_ids, target_ids, offered,
                   asked if finding is None else finding, asked)



def lesion_boxes(lesion: dict[str, Any], parts: bool) -> list[list[int]]:
    """Where a lesion is, as the stem's dense targets see it: with `parts`, each painted part of a
    lesion drawn in several (ground_truth.json's parts_bbox_voxel: spots, clusters, bands), else
    (and for one-piece lesions) its whole box."""
    return (lesion.get("parts_bbox_voxel") if parts else None) or [lesion["bbox_voxel"]]


def lesion_ids(data: Dataset) -> list[list[int]]:
    """Per volume, the lesion of each box (`Dataset.box_lesions`, or each box its own)."""
    return data.box_lesions or [list(range(len(b))) for b in data.boxes]


def build_dataset(cohort_dir: Path, split: str, tokenizer: Any, recipe: Recipe) -> Dataset:
    """One cohort split's volumes (model inputs), their 18 labels, and their QA, box and caption
    examples; box answers are the ground-truth box in the model input's 0-1 coordinates, as
    `VLM` writes them."""

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
    boxes = [[(label_names.index(l["label"]), to_normalized(box, g)) for l in truth[n]["lesions"]
              for box in lesion_boxes(l, recipe.dense_parts)] for n, g in zip(names, geometries)]
    box_lesions = [[k for k, l in enumerate(truth[n]["lesions"]) for _ in lesion_boxes(l, recipe.dense_parts)]
                   for n in names]
    lesions = [[(label_names.index(l["label"]), to_normalized(l["bbox_voxel"], g)) for l in truth[n]["lesions"]]
               for n, g in zip(names, geometries)]  # what box questions ask for (stage3)
    if recipe.dense_parts and not any("parts_bbox_voxel" in l for n in names for l in truth[n]["lesions"]):
        print(f"[data] {cohort_dir.name}: its ground truth has no per-part boxes (made before they were written): "
              "the lesions' whole boxes are the dense targets; regenerate it with `ctvqa synth`", flush=True)
    patches = box_targets(boxes, grid, len(label_names), margin=0).flatten(2).transpose(1, 2)
    data = Dataset([f"{cohort_dir.name}/{n}" for n in names], pixels, labels, label_names, patches, boxes=boxes,
                   box_lesions=box_lesions, lesions=lesions)
    for name, k in index.items():
        data.by_volume[k] = {"caption": [encode_example(
            tokenizer, k, "caption", CAPTION_QUESTION, reports[name]["Impressions_EN"], None, None)]}
    for task, items in questions.items():
        for item in items:
            example = encode_example(tokenizer, index[item.volume_name], task, item.question, item.answer,
                                     item.answer_choice, item.choices, label_names=label_names)
            data.by_volume[example.volume].setdefault(task, []).append(example)
    box_file = cohort_dir / "qa" / split / BOX_FILE
    for item in read_box_questions(box_file) if box_file.is_file() else []:
        k = index.get(item.volume_name)
        if k is not None:
            answer = format_box(to_normalized(item.box, geometries[k]), BOX_DIGITS)
            data.by_volume[k].setdefault("box", []).append(
                encode_example(tokenizer, k, "box", item.question, answer, None, None, item.finding, label_names))
    return data



def join_datasets(parts: Sequence[Dataset]) -> Dataset:
    """One dataset of several cohorts (phantom sizes): volumes renumbered in order."""
    first = parts[0]
    if any(p.label_names != first.label_names for p in parts):
        raise ValueError("cohorts with different label columns cannot be joined")
    joined = Dataset([n for p in parts for n in p.names], torch.cat([p.pixels for p in parts]),
                     torch.cat([p.labels for p in parts]), first.label_names,
                     torch.cat([p.patch_labels for p in parts]), boxes=[b for p in parts for b in p.boxes],
                     box_lesions=[b for p in parts for b in lesion_ids(p)], lesions=[b for p in parts for b in p.lesions])
    offset = 0
    for part in parts:
        for k, tasks in part.by_volume.items():
            joined.by_volume[k + offset] = {task: [replace(e, volume=e.volume + offset) for e in examples]
                                            for task, examples in tasks.items()}
        offset += len(part.names)
    return joined



def without_finding(data: Dataset, label: str, tokenizer: Any) -> Dataset:
    """The dataset with every question about `label` removed (closed, open and box questions that
    name it, and report impressions that mention it): a variant trained on it has never been
    asked about that finding, which the feedback demonstration then teaches through the store.
    The volumes and their stage-1 labels stay (alignment is not instruction data)."""
    word = label.lower()

    def mentions(e: Example) -> bool:
        text = tokenizer.decode(e.prompt_ids + e.target_ids).lower()
        return e.finding == label or word in text

    kept = Dataset(data.names, data.pixels, data.labels, data.label_names, data.patch_labels, boxes=data.boxes,
                   box_lesions=data.box_lesions, lesions=data.lesions)
    for k, tasks in data.by_volume.items():
        kept.by_volume[k] = {t: [e for e in examples if not mentions(e)] for t, examples in tasks.items()}
        kept.by_volume[k] = {t: v for t, v in kept.by_volume[k].items() if v}
    return kept



def patient_groups(names: Sequence[str]) -> list[list[int]]:
    """Volume indices per patient (`cohort/train_12_b_1.nii.gz` -> `cohort/train_12`), patients
    with two or more scans only."""
    groups: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        folder, _, file = name.rpartition("/")
        groups.setdefault(f"{folder}/{patient_of(file)}", []).append(k)
    return [g for g in groups.values() if len(g) > 1]



def paired_volumes(rng: random.Random, groups: Sequence[Sequence[int]], n: int) -> list[int]:
    """`n` volumes as n/2 pairs of scans of one patient. A patient's scans share the phantom's
    anatomy voxel for voxel and differ in their findings, so within a pair only the findings can
    explain a different answer: the network must look at them, not at the anatomy."""
    chosen = []
    for group in rng.sample(list(groups), min(len(groups), max(1, n // 2))):
        chosen += rng.sample(list(group), 2)
    return chosen



# The answer letters of a closed task that say the finding is there on this scan (the 3D-RAD rule,
# annotation.qa_templates.temporal_answer: A refractory, C new; B resolved, D none).
PRESENT_NOW = {"static_temporal_diagnosis": frozenset("AC")}


class Sampler:
    """Seeded draws of (volumes, questions) per step: tasks by `TASK_WEIGHTS`, answers within a
    task by 1/sqrt(frequency) so rare answers (a present finding, a resolved lesion) are seen;
    volumes in pairs of one patient's scans where `paired`.

    Existence questions about findings the tower does not see (not in `seen`) keep their answers'
    own frequency: the image cannot tell the language model the answer there, and a prior lifted
    towards "yes" only makes it call absent findings present (the model card's earlier runs). So do
    every answer of the `own_frequency` tasks: a static temporal answer depends on earlier scans
    the model is never shown, so an answer drawn more often than it happens (a new or a resolved
    lesion) is a prior the image cannot correct, and the session-6 model answered below the
    most common answer there (68 % against 75 %). With `balance_presence`, such questions about a
    seen finding are drawn, per scan, as often about a finding present on it now as about one that
    is not (within each half, the answers keep their own frequency): what the image can tell is
    then worth as much of the loss as the prior, as for existence questions; at their own
    frequency a present finding is one question in five and the language model learnt the prior
    alone (session 7, a class-balanced validation accuracy of 25 % throughout)."""

    def __init__(self, data: Dataset, seed: int, paired: bool = False, seen: Sequence[str] | None = None,
                 own_frequency: Sequence[str] = (), balance_presence: bool = False) -> None:
        self.data = data
        self.rng = random.Random(seed)
        self.groups = patient_groups(data.names) if paired else []
        self.seen = None if seen is None else set(seen)
        self.own_frequency = set(own_frequency)
        examples = [e for tasks in data.by_volume.values() for found in tasks.values() for e in found]
        counts = Counter((e.task, e.answer_class) for e in examples)
        self.weight = {key: 1.0 / math.sqrt(n) for key, n in counts.items()}
        # the weight of a task's most common answer, given to every answer that keeps its own frequency
        self._prior = {task: min(w for (t, _), w in self.weight.items() if t == task) for task, _ in self.weight}
        self.balance_presence = balance_presence

    def _weight(self, e: Example) -> float:
        if e.task in self.own_frequency:
            return self._prior[e.task]
        if self.seen is not None and e.task == "existence_detection" and e.finding not in self.seen:
            return self._prior[e.task]
        return self.weight[(e.task, e.answer_class)]

    def _weights(self, pool: Sequence[Example]) -> list[float]:
        """Draw weights of one scan's questions of one task. With `balance_presence`, the
        own-frequency questions about seen findings keep their share of the scan's draws, half of
        it for those whose finding is on this scan and half for the rest (where both kinds exist)."""
        weights = [self._weight(e) for e in pool]
        task = pool[0].task if pool else ""
        if not (self.balance_presence and self.seen and task in self.own_frequency and task in PRESENT_NOW):
            return weights
        about = [k for k, e in enumerate(pool) if e.finding in self.seen]
        present = [k for k in about if pool[k].answer_class in PRESENT_NOW[task]]
        absent = [k for k in about if pool[k].answer_class not in PRESENT_NOW[task]]
        if present and absent:
            share = sum(weights[k] for k in about) / 2
            for half in (present, absent):
                for k in half:
                    weights[k] = share / len(half)
        return weights

    def volumes(self, n: int) -> list[int]:
        if self.groups:
            return paired_volumes(self.rng, self.groups, n)
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
            if findings:  # none about these findings: an ordinary draw, never a balanced one about others
                about = [e for e in pool if e.finding in findings]
                balanced, pool = (balanced, about) if about else (False, pool)
            if balanced:
                classes = sorted({e.answer_class for e in pool})
                wanted = self.rng.choice(classes)
                chosen.append(self.rng.choice([e for e in pool if e.answer_class == wanted]))
            else:
                chosen.append(self.rng.choices(pool, weights=self._weights(pool))[0])
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
