"""Rating queues: shared overlap, even spread over tasks, no pair drawn twice, seeded."""
from __future__ import annotations

from collections import Counter

import pytest
from typer.testing import CliRunner

from annotation.assignments import plan_assignments
from tests.annotation.conftest import TASK_KEYS

POOL = [(i, TASK_KEYS[i % 6] if i < 600 else "existence_detection") for i in range(3000)]


def test_plan_shares_overlap_spreads_tasks_and_is_seeded() -> None:
    plan = plan_assignments(POOL, ["a", "b", "c"], per_annotator=120, overlap=60, seed=5)
    batches = {name: set(ids) for name, ids in plan.batches.items()}
    assert all(len(ids) == 120 for ids in plan.batches.values())
    assert batches["a"] & batches["b"] & batches["c"] == set(plan.shared) and len(plan.shared) == 60
    own = [batches[n] - set(plan.shared) for n in "abc"]
    assert not (own[0] & own[1] or own[0] & own[2] or own[1] & own[2])
    task_of = dict(POOL)
    per_task = Counter(task_of[q] for q in set().union(*batches.values()))
    assert max(per_task.values()) - min(per_task.values()) <= 1  # even, not proportional (existence is 80%)
    assert plan.per_task == dict(per_task)
    assert plan_assignments(POOL, ["a", "b", "c"], 120, 60, seed=5) == plan
    assert plan_assignments(POOL, ["a", "b", "c"], 120, 60, seed=6).shared != plan.shared
    assert plan.batches["a"] != tuple(sorted(plan.batches["a"]))  # shared and own pairs are mixed


def test_a_task_that_runs_out_leaves_its_share_to_the_others() -> None:
    pool = [(0, "image_observation")] + [(i, "existence_detection") for i in range(1, 50)]
    plan = plan_assignments(pool, ["a"], per_annotator=20, overlap=0)
    assert plan.per_task == {"image_observation": 1, "existence_detection": 19}


@pytest.mark.parametrize("kwargs, match", [
    ({"per_annotator": 5, "overlap": 6}, "overlap"),
    ({"per_annotator": 0, "overlap": 0}, "positive"),
    ({"per_annotator": 1000, "overlap": 0}, "only 3000"),
])
def test_bad_requests_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        plan_assignments(POOL, ["a", "b", "c", "d"], **kwargs)


def test_store_assign_appends_new_pairs_and_cli_reports(seeded) -> None:
    from napari_ctvqa.cli import app

    store, ids = seeded
    first = store.assign(["ann", "bob"], 10, 4, seed=1)
    second = store.assign(["ann", "bob"], 10, 4, seed=1, add=True)
    ann = store.queue("ann")
    assert [i.position for i in ann] == list(range(20))
    assert len({i.qa_id for i in ann}) == 20  # the second batch drew pairs not given before
    assert {i.qa_id for i in ann if i.shared} == set(first["shared"]) | set(second["shared"])
    result = CliRunner().invoke(app, ["assign", "--annotators", "cy,dee", "--per-annotator", "5", "--overlap", "2",
                                      "--tasks", "image_observation,anomaly_detection", "--db", store.url, "--json"])
    assert result.exit_code == 0, result.output
    assert {store.qa_pair(i.qa_id).task for i in store.queue("cy")} <= {"image_observation", "anomaly_detection"}
    too_many = CliRunner().invoke(app, ["assign", "--annotators", "x", "--per-annotator", "9999", "--db", store.url])
    assert too_many.exit_code != 0 and "unassigned" in too_many.output
