"""The feedback demonstration's curator (scripts/feedback_demo.py): the existence replay about the
other findings is balanced per finding, so the finetune is not taught to call them absent."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import feedback_demo  # noqa: E402


def test_existence_replay_takes_as_many_yes_as_no_per_other_finding(tmp_path: Path) -> None:
    store, _ = feedback_demo.build_store(tmp_path, patients=4, seed=7, size=(24, 64, 64))
    try:
        rated = feedback_demo.curate(store, "Pleural effusion", replay_per_task=5, seed=0, replay_per_finding=2)
        names = feedback_demo.asked_findings(store)
        ids = set(store.ratings_frame()["qa_id"])
        existence = [q for q in store.qa_pairs(task="existence_detection") if q.id in ids]
        answers: dict[str, Counter] = {}
        for q in existence:
            answers.setdefault(names[q.id], Counter())[q.answer] += 1
        target = answers.pop("Pleural effusion")
        assert len(set(target.values())) == 1 and rated >= sum(target.values())  # balanced, all of the rarer
        assert answers, "no other finding was replayed"
        pool = Counter((names[q.id], q.answer) for q in store.qa_pairs(task="existence_detection"))
        for name, counts in answers.items():
            assert len(counts) == 2 and len(set(counts.values())) == 1, (name, counts)  # as many Yes as No
            assert max(counts.values()) == min(2, *(n for (f, _), n in pool.items() if f == name))
    finally:
        store.close()
