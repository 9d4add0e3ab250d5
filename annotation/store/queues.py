"""Raters and their queues: who rates which pairs, and how far each one has got.

The draw itself (shared pairs for agreement, the rest spread evenly over tasks) is plain Python in
annotation/assignments.py; this area only reads the pool and records the plan in one transaction,
so two curators assigning at once cannot hand out the same pair twice.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from annotation.assignments import plan_assignments
from annotation.importers.bulk import insert_ignoring_conflicts
from annotation.records import AnnotatorStats, Progress, QueueItem
from annotation.schema import RATER_KINDS, Assignment, QAPair, Rater, Rating, utcnow
from annotation.store.base import StoreArea
from annotation.store.rows import get_or_create_rater_id


class QueuesArea(StoreArea):
    """Raters, assignments, queues and progress (part of `Store`)."""

    def ensure_rater(self, name: str, kind: str = "human") -> int:
        """The id of rater `name`, created on first use (safe when processes race to create it)."""
        if not name or not name.strip():
            raise ValueError("rater name must not be empty")
        if kind not in RATER_KINDS:
            raise ValueError(f"rater kind must be one of {RATER_KINDS}, got {kind!r}")
        return self.db.write(lambda s: get_or_create_rater_id(s, name.strip(), kind))

    def raters(self) -> list[tuple[str, str]]:
        """(name, kind) of every rater."""
        with self.db.reading() as s:
            return list(s.execute(select(Rater.name, Rater.kind).order_by(Rater.name)).tuples())

    def assign(self, annotators: Sequence[str], per_annotator: int, overlap: int, seed: int = 0,
               tasks: Sequence[str] | None = None, batch: str | None = None,
               repeat: float = 0.0) -> dict[str, Any]:
        """Give each annotator `per_annotator` new pairs, `overlap` of them shared by all (for
        agreement), drawn evenly across tasks like 3D-RAD's 600-pair sample. A `repeat` share of
        each annotator's new pairs is shown to them a second time later in the queue (intra-rater
        agreement). Pairs already assigned to any of these annotators are not drawn again;
        returns the plan."""
        names = [a.strip() for a in annotators if a.strip()]
        batch = batch or f"batch-{utcnow():%Y%m%d-%H%M%S}"

        def work(session: Session) -> dict[str, Any]:
            rater_ids = {n: get_or_create_rater_id(session, n, "human") for n in names}
            taken = set(session.scalars(select(Assignment.qa_id)
                                        .where(Assignment.rater_id.in_(rater_ids.values()))))
            query = select(QAPair.id, QAPair.task)
            if tasks:
                query = query.where(QAPair.task.in_(list(tasks)))
            pool = [(i, t) for i, t in session.execute(query.order_by(QAPair.id)).tuples() if i not in taken]
            plan = plan_assignments(pool, names, per_annotator, overlap, seed, repeat_share=repeat)
            shared = set(plan.shared)
            rows = []
            for name, qa_ids in plan.batches.items():
                start = session.scalar(select(func.coalesce(func.max(Assignment.position) + 1, 0))
                                       .where(Assignment.rater_id == rater_ids[name]))
                seen: set[int] = set()
                for k, q in enumerate(qa_ids):  # a pair's second appearance in the order is its repeat
                    rows.append({"rater_id": rater_ids[name], "qa_id": q, "position": start + k, "batch": batch,
                                 "shared": q in shared, "is_repeat": q in seen, "created_at": utcnow()})
                    seen.add(q)
            insert_ignoring_conflicts(session, Assignment.__table__, rows, ["rater_id", "qa_id", "is_repeat"])
            return {"batch": batch, "shared": list(plan.shared), "per_task": plan.per_task,
                    "annotators": {n: list(q) for n, q in plan.batches.items()},
                    "repeats": {n: list(q) for n, q in plan.repeats.items()}}

        return self.db.write(work)

    def queue(self, annotator: str) -> list[QueueItem]:
        """The annotator's assigned pairs in order with THEIR status only (blind to others)."""
        with self.db.reading() as s:
            rater_id = s.scalar(select(Rater.id).where(Rater.name == annotator))
            if rater_id is None:
                return []
            rows = s.execute(
                select(Assignment.qa_id, Assignment.position, QAPair.task, Rating.status,
                       Assignment.batch, Assignment.shared, Assignment.is_repeat)
                .join(QAPair, QAPair.id == Assignment.qa_id)
                .outerjoin(Rating, (Rating.qa_id == Assignment.qa_id) & (Rating.rater_id == rater_id)
                           & (Rating.is_repeat == Assignment.is_repeat))
                .where(Assignment.rater_id == rater_id).order_by(Assignment.position)).tuples()
            return [QueueItem(q, p, t, st or "todo", b, bool(sh), bool(rp)) for q, p, t, st, b, sh, rp in rows]

    def progress(self, annotator: str) -> Progress:
        items = self.queue(annotator)
        per_task: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for item in items:
            per_task[item.task][1] += 1
            per_task[item.task][0] += item.status != "todo"
        status = Counter(i.status for i in items)
        with self.db.reading() as s:
            seconds = s.scalar(select(func.coalesce(func.sum(Rating.seconds_spent), 0.0))
                               .join(Rater, Rater.id == Rating.rater_id).where(Rater.name == annotator))
        return Progress(done=len(items) - status["todo"], total=len(items),
                        per_task={t: (d, n) for t, (d, n) in per_task.items()}, seconds=float(seconds),
                        skipped=status["skipped"], flagged=status["flagged"])

    def annotator_stats(self) -> list[AnnotatorStats]:
        """Per rater: assigned, rated, skipped, flagged, seconds spent (the curator's overview)."""
        with self.db.reading() as s:
            assigned = dict(s.execute(select(Assignment.rater_id, func.count()).group_by(Assignment.rater_id)).tuples().all())
            by_status: dict[int, Counter] = defaultdict(Counter)
            seconds: dict[int, float] = defaultdict(float)
            for rid, status, n, secs in s.execute(
                    select(Rating.rater_id, Rating.status, func.count(), func.sum(Rating.seconds_spent))
                    .group_by(Rating.rater_id, Rating.status)).tuples():
                by_status[rid][status] += n
                seconds[rid] += float(secs or 0.0)
            raters = s.execute(select(Rater.id, Rater.name, Rater.kind).order_by(Rater.name)).tuples().all()
        return [AnnotatorStats(name, kind, assigned.get(rid, 0), by_status[rid]["rated"],
                               by_status[rid]["skipped"], by_status[rid]["flagged"], seconds[rid])
                for rid, name, kind in raters]
