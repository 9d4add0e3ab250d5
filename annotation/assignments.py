"""Rating queues: which pairs each annotator rates, and which ones everybody rates.

The shared pairs give the agreement statistics something to compare; the rest spreads the work.
Both are drawn evenly across tasks (3D-RAD rated 100 pairs per task, 600 in all) rather than
proportionally, or the 23k existence questions would crowd out the open tasks. Positions mix
shared and own pairs in a seeded shuffle so an annotator cannot tell which is which. A repeat
share shows some of an annotator's pairs to them a second time, well after the first showing
(intra-rater agreement, as medical annotation studies measure it).
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AssignmentPlan:
    shared: tuple[int, ...]
    batches: dict[str, tuple[int, ...]] = field(compare=False)
    per_task: dict[str, int] = field(compare=False)  # pairs drawn per task, all annotators together
    repeats: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False)  # shown twice


def stratified_sample(pool: dict[str, list[int]], n: int, rng: random.Random) -> list[int]:
    """Take `n` ids spread as evenly as possible over the tasks (a task that runs out leaves its
    share to the others), removing them from `pool`."""
    available = sum(len(v) for v in pool.values())
    if n > available:
        raise ValueError(f"need {n} QA pairs but only {available} are unassigned")
    quota = dict.fromkeys(pool, 0)
    remaining = n
    while remaining:
        open_tasks = [t for t in sorted(pool) if len(pool[t]) > quota[t]]
        share, extra = divmod(remaining, len(open_tasks))
        rng.shuffle(open_tasks)
        for i, task in enumerate(open_tasks):
            take = min(share + (i < extra), len(pool[task]) - quota[task])
            quota[task] += take
            remaining -= take
    taken = []
    for task, k in quota.items():
        chosen = rng.sample(pool[task], k)
        chosen_set = set(chosen)
        pool[task] = [q for q in pool[task] if q not in chosen_set]
        taken += chosen
    return taken


def plan_assignments(pool: Sequence[tuple[int, str]], annotators: Sequence[str], per_annotator: int,
                     overlap: int, seed: int = 0, repeat_share: float = 0.0) -> AssignmentPlan:
    """Draw `overlap` pairs for everybody plus `per_annotator - overlap` own pairs per annotator
    from `pool` ((qa_id, task) pairs); deterministic for a given seed. With `repeat_share`, that
    share of each annotator's pairs (at least one) appears a second time in their batch, after
    the first showing with at least a quarter of the batch in between where the batch allows."""
    if not 0.0 <= repeat_share <= 0.5:
        raise ValueError(f"repeat share must be between 0 and 0.5, got {repeat_share}")
    if not annotators:
        raise ValueError("at least one annotator is needed")
    if len(set(annotators)) != len(annotators):
        raise ValueError(f"annotator names repeat: {list(annotators)}")
    if per_annotator <= 0:
        raise ValueError(f"per-annotator must be positive, got {per_annotator}")
    if not 0 <= overlap <= per_annotator:
        raise ValueError(f"overlap must be between 0 and per-annotator ({per_annotator}), got {overlap}")
    rng = random.Random(seed)
    by_task: dict[str, list[int]] = defaultdict(list)
    for qa_id, task in pool:
        by_task[task].append(qa_id)
    task_of = dict(pool)
    needed = overlap + (per_annotator - overlap) * len(annotators)
    if needed > len(pool):
        raise ValueError(f"{len(annotators)} annotators x {per_annotator} with {overlap} shared need "
                         f"{needed} QA pairs, but only {len(pool)} are unassigned")
    shared = stratified_sample(by_task, overlap, rng)
    batches: dict[str, tuple[int, ...]] = {}
    repeats: dict[str, tuple[int, ...]] = {}
    for name in annotators:
        own = stratified_sample(by_task, per_annotator - overlap, rng)
        items = shared + own
        rng.shuffle(items)
        batches[name] = tuple(items)
        if repeat_share > 0:
            batches[name], repeats[name] = with_repeats(items, repeat_share, rng)
    per_task: dict[str, int] = defaultdict(int)
    for qa_id in {q for items in batches.values() for q in items}:
        per_task[task_of[qa_id]] += 1
    return AssignmentPlan(tuple(sorted(shared)), batches, dict(per_task), repeats)


def with_repeats(items: list[int], share: float, rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`items` with round(share * len) of them (at least one) shown again: each repeat is drawn
    from the first half and inserted at a random place after it, at least len/4 later, so the
    rater meets it again among other pairs rather than right after the first showing."""
    n = len(items)
    k = min(max(1, round(share * n)), max(1, n // 2))
    chosen = rng.sample(items[:max(1, n // 2)], k)
    gap = max(1, n // 4)
    order = list(items)
    for qa_id in chosen:
        first = order.index(qa_id)
        order.insert(rng.randint(min(first + gap, len(order)), len(order)), qa_id)
    return tuple(order), tuple(sorted(chosen))
