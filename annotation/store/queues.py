"""Raters and their queues: who rates which pairs, and how far each one has got.

The draw itself (shared pairs for agreement, the rest spread evenly over tasks) is plain Python in
annotation/assignments.py; this area only reads the pool and records the plan in one transaction,
so two curators assigning at once cannot hand out the same pair twice.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import count
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from annotation.assignments import plan_assignments
from annotation.importers.bulk import insert_ignoring_conflicts
from annotation.records import AnnotatorStats, BatchRecord, Progress, QueueItem
from annotation.rubric import annotator_name
from annotation.schema import RATER_KINDS, Assignment, QAPair, Rater, Rating, Scan, utcnow
from annotation.store.base import StoreArea
from annotation.store.rows import get_or_create_rater_id


class QueuesArea(StoreArea):
    """Raters, assignments, queues and progress (part of `Store`)."""

    def ensure_rater(self, name: str, kind: str = "human") -> int:
        """The id of rater `name`, created on first use (safe when processes race to create it)."""
        name = annotator_name(name)
        if kind not in RATER_KINDS:
            raise ValueError(f"rater kind must be one of {RATER_KINDS}, got {kind!r}")
        return self.db.write(lambda s: get_or_create_rater_id(s, name, kind))

    def raters(self) -> list[tuple[str, str]]:
        """(name, kind) of every rater."""
        with self.db.reading() as s:
            return list(s.execute(select(Rater.name, Rater.kind).order_by(Rater.name)).tuples())

    def assign(self, annotators: Sequence[str], per_annotator: int, overlap: int, seed: int = 0,
               tasks: Sequence[str] | None = None, batch: str | None = None,
               add: bool = False, repeat: float = 0.0) -> dict[str, Any]:
        """Give each annotator `per_annotator` new pairs, `overlap` of them shared by all (for
        agreement), drawn evenly across tasks like 3D-RAD's 600-pair sample, as batch `batch`
        (default: named after the request). The same batch again changes nothing and returns it
        (`"changed": False`), so re-running a script cannot double every queue; `add=True` draws
        a further batch (`<batch>+1`, `+2`...). A `repeat` share of each annotator's new pairs is
        shown to them a second time later in the queue (intra-rater agreement). Pairs already
        assigned to any of these annotators are never drawn again."""
        names = [annotator_name(a) for a in annotators]
        task_list = sorted(set(tasks)) if tasks else None
        batch = batch_name(batch) if batch else default_batch_name(names, per_annotator, overlap, seed, task_list)

        def work(session: Session) -> dict[str, Any]:
            name = batch
            if add:
                used = set(session.scalars(select(Assignment.batch).distinct()
                                           .where(Assignment.batch.startswith(f"{batch}+", autoescape=True))))
                name = next(f"{batch}+{k}" for k in count(1) if f"{batch}+{k}" not in used)
            else:
                existing = self._batch_plan(session, name)
                if existing is not None:
                    if set(existing["annotators"]) != set(names):
                        raise ValueError(
                            f"batch {name!r} already exists for annotator(s) {sorted(existing['annotators'])}: "
                            "use --add to draw more pairs, or --batch NAME for a new batch")
                    return existing
            rater_ids = {n: get_or_create_rater_id(session, n, "human") for n in names}
            taken = set(session.scalars(select(Assignment.qa_id)
                                        .where(Assignment.rater_id.in_(rater_ids.values()))))
            query = select(QAPair.id, QAPair.task)
            if task_list:
                query = query.where(QAPair.task.in_(task_list))
            pool = [(i, t) for i, t in session.execute(query.order_by(QAPair.id)).tuples() if i not in taken]
            plan = plan_assignments(pool, names, per_annotator, overlap, seed, repeat_share=repeat)
            shared = set(plan.shared)
            rows = []
            for rater, qa_ids in plan.batches.items():
                start = session.scalar(select(func.coalesce(func.max(Assignment.position) + 1, 0))
                                       .where(Assignment.rater_id == rater_ids[rater]))
                seen: set[int] = set()
                for k, q in enumerate(qa_ids):  # a pair's second appearance in the order is its repeat
                    rows.append({"rater_id": rater_ids[rater], "qa_id": q, "position": start + k, "batch": name,
                                 "shared": q in shared, "is_repeat": q in seen, "created_at": utcnow()})
                    seen.add(q)
            insert_ignoring_conflicts(session, Assignment.__table__, rows, ["rater_id", "qa_id", "is_repeat"])
            return {"batch": name, "changed": True, "shared": list(plan.shared), "per_task": plan.per_task,
                    "annotators": {n: list(q) for n, q in plan.batches.items()},
                    "repeats": {n: list(q) for n, q in plan.repeats.items()}}

        return self.db.write(work)

    @staticmethod
    def _batch_plan(session: Session, batch: str) -> dict[str, Any] | None:
        """An existing batch in the shape `assign` returns (None if there is no such batch)."""
        rows = session.execute(
            select(Rater.name, Assignment.qa_id, Assignment.shared, QAPair.task, Assignment.is_repeat)
            .join(Rater, Rater.id == Assignment.rater_id).join(QAPair, QAPair.id == Assignment.qa_id)
            .where(Assignment.batch == batch).order_by(Rater.name, Assignment.position)).tuples().all()
        if not rows:
            return None
        per_annotator: dict[str, list[int]] = defaultdict(list)
        task_of = {}
        repeats: dict[str, list[int]] = defaultdict(list)
        for rater, qa_id, _, task, is_repeat in rows:
            per_annotator[rater].append(qa_id)
            task_of[qa_id] = task
            if is_repeat:
                repeats[rater].append(qa_id)
        return {"batch": batch, "changed": False,
                "shared": sorted({q for _, q, shared, _, _ in rows if shared}),
                "per_task": dict(Counter(task_of.values())), "annotators": dict(per_annotator),
                "repeats": dict(repeats)}

    def batches(self) -> list[BatchRecord]:
        """Every assignment batch, oldest first, with its annotators and how far they got."""
        with self.db.reading() as s:
            rows = s.execute(
                select(Assignment.batch, Assignment.created_at, Rater.name, Assignment.qa_id,
                       Assignment.shared, Rating.id)
                .join(Rater, Rater.id == Assignment.rater_id)
                .outerjoin(Rating, (Rating.qa_id == Assignment.qa_id) & (Rating.rater_id == Assignment.rater_id)
                           & (Rating.is_repeat == Assignment.is_repeat))
                .order_by(Assignment.id)).tuples().all()
        grouped: dict[str, list[tuple]] = defaultdict(list)
        for row in rows:
            grouped[row[0]].append(row)
        records = []
        for name, items in grouped.items():
            records.append(BatchRecord(
                name, min(r[1] for r in items), tuple(sorted({r[2] for r in items})),
                len({r[3] for r in items}), len(items), len({r[3] for r in items if r[4]}),
                sum(r[5] is not None for r in items)))
        return sorted(records, key=lambda b: (b.created_at, b.name))

    def remove_batch(self, batch: str) -> dict[str, Any]:
        """Take a batch out of its annotators' queues. Entries already rated, skipped or flagged
        stay (their ratings are work nobody should lose); returns how many went and stayed."""

        def work(session: Session) -> dict[str, Any]:
            entries = session.execute(
                select(Assignment.id, Rating.id)
                .outerjoin(Rating, (Rating.qa_id == Assignment.qa_id) & (Rating.rater_id == Assignment.rater_id)
                           & (Rating.is_repeat == Assignment.is_repeat))
                .where(Assignment.batch == batch)).tuples().all()
            if not entries:
                known = sorted(session.scalars(select(Assignment.batch).distinct()))
                raise KeyError(f"no assignment batch named {batch!r}"
                               + (f" (batches: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''})"
                                  if known else " (there are no batches)"))
            doomed = [a for a, rating in entries if rating is None]
            for first in range(0, len(doomed), 900):
                session.execute(delete(Assignment).where(Assignment.id.in_(doomed[first:first + 900])))
            return {"batch": batch, "removed": len(doomed), "kept": len(entries) - len(doomed)}

        return self.db.write(work)

    def queue(self, annotator: str) -> list[QueueItem]:
        """The annotator's assigned pairs in order with THEIR status only (blind to others)."""
        annotator = annotator_name(annotator)
        with self.db.reading() as s:
            rater_id = s.scalar(select(Rater.id).where(Rater.name == annotator))
            if rater_id is None:
                return []
            rows = s.execute(
                select(Assignment.qa_id, Assignment.position, QAPair.task, Rating.status,
                       Assignment.batch, Assignment.shared, Assignment.is_repeat, Scan.volume_name)
                .join(QAPair, QAPair.id == Assignment.qa_id)
                .join(Scan, Scan.id == QAPair.scan_id)
                .outerjoin(Rating, (Rating.qa_id == Assignment.qa_id) & (Rating.rater_id == rater_id)
                           & (Rating.is_repeat == Assignment.is_repeat))
                .where(Assignment.rater_id == rater_id).order_by(Assignment.position)).tuples()
            return [QueueItem(q, p, t, st or "todo", b, bool(sh), bool(rp), v) for q, p, t, st, b, sh, rp, v in rows]

    def progress(self, annotator: str) -> Progress:
        annotator = annotator_name(annotator)
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


_BATCH_MAX_CHARS = 64  # assignments.batch is String(64)


def batch_name(name: str) -> str:
    """A batch name given by the user, trimmed; refused when blank or too long for the column."""
    clean = name.strip()
    if not clean or len(clean) > _BATCH_MAX_CHARS or not clean.isprintable():
        raise ValueError(f"batch name must be 1-{_BATCH_MAX_CHARS} printable characters, got {name!r}")
    return clean


def default_batch_name(names: Sequence[str], per_annotator: int, overlap: int, seed: int,
                       tasks: Sequence[str] | None) -> str:
    """A name that is the same for the same request, so running the same `ctvqa assign` twice is
    recognised as the same batch: `alice+bob-200x50-s0`, shortened with a digest when long."""
    request = f"{'+'.join(sorted(names))}-{per_annotator}x{overlap}-s{seed}" + (f"-{'+'.join(tasks)}" if tasks else "")
    if len(request) <= _BATCH_MAX_CHARS:
        return request
    digest = hashlib.sha1(request.encode()).hexdigest()[:10]
    return f"{request[:_BATCH_MAX_CHARS - 11]}~{digest}"
