"""`Store`: the only door to the annotation database for the UI, the CLI and scripts.

Every method is one short unit of work in its own Session, so a Store can be shared by the GUI
thread and worker threads; it returns frozen records (annotation/records.py), never ORM objects.
Writes go through `Database.write`, which takes SQLite's write lock up front and retries
transient lock errors, so callers never see "database is locked".
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation.db import Database, default_db_url, run_migrations
from annotation.importers.bulk import ensure_scans, insert_ignoring_conflicts, insert_qa_rows, qa_row
from annotation.records import (
    AnnotatorStats,
    ChatTurnRecord,
    FinetuneRunRecord,
    ModelVersionRecord,
    Progress,
    QAPairRecord,
    QueueItem,
    RatingRecord,
    RatingVersion,
    ReportRecord,
    ScanRecord,
)
from annotation.rubric import SCORE_KEYS, validate_scores
from annotation.schema import (
    RATER_KINDS,
    Assignment,
    ChatTurn,
    Export,
    FinetuneRun,
    Label,
    ModelVersion,
    Patient,
    QAPair,
    Rater,
    Rating,
    RatingHistory,
    Report,
    Scan,
    utcnow,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Store", "default_db_url"]

ProgressFn = Callable[[int, int | None], None]
_SCAN_FIELDS = ("path", "timepoint", "reconstruction", "study_date", "spacing", "shape",
                "content_hash", "split")


class Store:
    """The annotation database at `url` (None: `$CTVQA_DB`, else the per-user SQLite file).

    An empty database gets the schema on first use; an outdated one is refused with a message
    (upgrades are explicit: `ctvqa db upgrade`). `Store.create(url)` (or `init_schema()`) always
    runs the alembic migrations, exactly like `ctvqa db init`/`upgrade`.
    """

    def __init__(self, url: str | None = None, *, check_schema: bool = True, create_dir: bool = False) -> None:
        self.db = Database(url, create_dir)
        self.url = self.db.url
        if check_schema:
            self._check_schema()

    def _check_schema(self) -> None:
        """A brand-new (empty) database gets the schema, so a first run just works; one at an older
        schema, or holding someone else's tables, fails here with what to do, not at a query."""
        from alembic.migration import MigrationContext
        from sqlalchemy import inspect

        from annotation.db import head_revision

        with self.db.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            empty = current is None and not inspect(conn).get_table_names()
        head = head_revision()
        if current == head:
            return
        if empty:
            self.init_schema()
            return
        where = self.db.engine.url.render_as_string(hide_password=True)
        state = (f"is at schema {current}, this version needs {head}" if current is not None
                 else "holds tables that are not a napari-ctvqa schema")
        raise RuntimeError(f"database {where} {state}: run `ctvqa db upgrade --db URL` "
                           "(back it up first) or point --db/CTVQA_DB elsewhere")

    @classmethod
    def create(cls, url: str | None = None) -> Store:
        """Open the database at `url`, creating or upgrading its schema first."""
        store = cls(url, check_schema=False, create_dir=True)
        store.init_schema()
        return store

    def init_schema(self) -> None:
        """Create or upgrade the schema to the newest migration (idempotent)."""
        run_migrations(self.url)

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.db.engine.url.render_as_string(hide_password=True)!r})"

    # ------------------------------------------------------------------ scans
    def add_scan(self, volume_name: str, path: str | Path | None = None, **fields: Any) -> ScanRecord:
        """Register a scan (patient/timepoint parsed from CT-RATE names), or update an existing
        one's given fields; returns it."""
        unknown = set(fields) - set(_SCAN_FIELDS)
        if unknown:
            raise ValueError(f"unknown scan field(s) {sorted(unknown)}; allowed: {list(_SCAN_FIELDS)}")
        values = {k: (list(v) if k in ("spacing", "shape") and v is not None else v)
                  for k, v in fields.items()}
        if path is not None:
            values["path"] = str(path)

        def work(session: Session) -> int:
            ids, _ = ensure_scans(session, [volume_name], {volume_name: values})
            return ids[volume_name]

        return self.scan(self.db.write(work))

    def scan(self, scan_id: int) -> ScanRecord:
        with self.db.reading() as s:
            row = s.execute(_scan_query().where(Scan.id == scan_id)).one_or_none()
        if row is None:
            raise KeyError(f"no scan with id {scan_id}")
        return _scan_record(*row)

    def scan_by_volume(self, volume_name: str) -> ScanRecord | None:
        with self.db.reading() as s:
            row = s.execute(_scan_query().where(Scan.volume_name == volume_name)).one_or_none()
        return _scan_record(*row) if row else None

    def scans(self) -> list[ScanRecord]:
        with self.db.reading() as s:
            return [_scan_record(*r) for r in s.execute(_scan_query().order_by(Scan.volume_name))]

    def patient_scans(self, scan_id: int) -> list[ScanRecord]:
        """All scans of this scan's patient, oldest first (timepoint letter, then reconstruction)."""
        scan = self.scan(scan_id)
        if scan.patient is None:
            return [scan]
        with self.db.reading() as s:
            rows = s.execute(_scan_query().where(Patient.name == scan.patient)
                             .order_by(Scan.timepoint, Scan.study_date, Scan.reconstruction)).all()
        return [_scan_record(*r) for r in rows]

    def labels(self, scan_id: int) -> dict[str, int]:
        with self.db.reading() as s:
            return dict(s.execute(select(Label.name, Label.value).where(Label.scan_id == scan_id)).tuples().all())

    def report(self, scan_id: int) -> ReportRecord | None:
        with self.db.reading() as s:
            r = s.scalars(select(Report).where(Report.scan_id == scan_id)).one_or_none()
            return ReportRecord(r.scan_id, r.clinical_information, r.technique, r.findings,
                                r.impressions) if r else None

    def set_report(self, scan_id: int, *, findings: str | None = None, impressions: str | None = None,
                   clinical_information: str | None = None, technique: str | None = None) -> ReportRecord:
        """Store (or replace) a scan's report: the reference annotators judge consistency against."""
        sections = {"clinical_information": clinical_information, "technique": technique,
                    "findings": findings, "impressions": impressions}

        def work(session: Session) -> None:
            report = session.scalars(select(Report).where(Report.scan_id == scan_id)).one_or_none()
            if report is None:
                session.add(Report(scan_id=scan_id, **sections))
            else:
                for key, value in sections.items():
                    setattr(report, key, value)

        self.db.write(work)
        return self.report(scan_id)

    def set_scan_path(self, scan_id: int, path: str | Path | None) -> None:
        def work(session: Session) -> None:
            if session.execute(update(Scan).where(Scan.id == scan_id)
                               .values(path=None if path is None else str(path))).rowcount != 1:
                raise KeyError(f"no scan with id {scan_id}")

        self.db.write(work)

    # ------------------------------------------------------------------ QA pairs
    def add_qa_pair(self, scan_id: int, task: str, question: str, answer: str, *,
                    subtask: str | None = None, choices: Sequence[str] | None = None,
                    answer_choice: str | None = None, priors: Sequence[int] | None = None,
                    source: str = "chat", provenance: Mapping[str, Any] | None = None) -> int:
        """Add one pair and return its id; adding the same content again returns the existing id."""
        from annotation.qa_templates import TASKS

        task_number = TASKS[task].number if task in TASKS else None
        row = qa_row(scan_id, task, question, answer, task_number=task_number, subtask=subtask,
                     choices=choices, answer_choice=answer_choice, priors=priors, source=source,
                     provenance=provenance)

        def work(session: Session) -> int:
            if session.get(Scan, scan_id) is None:
                raise KeyError(f"no scan with id {scan_id}")
            insert_qa_rows(session, [row])
            return session.scalars(select(QAPair.id).where(QAPair.content_key == row["content_key"])).one()

        try:
            return self.db.write(work)
        except IntegrityError as exc:
            raise ValueError(f"QA pair refused by the database: {exc.orig}") from None

    def qa_pair(self, qa_id: int) -> QAPairRecord:
        with self.db.reading() as s:
            row = s.execute(_qa_query().where(QAPair.id == qa_id)).one_or_none()
        if row is None:
            raise KeyError(f"no QA pair with id {qa_id}")
        return _qa_record(*row)

    def qa_pairs(self, task: str | None = None, source: str | None = None,
                 limit: int | None = None, scan_id: int | None = None) -> list[QAPairRecord]:
        query = _qa_query().order_by(QAPair.id)
        if task is not None:
            query = query.where(QAPair.task == task)
        if source is not None:
            query = query.where(QAPair.source == source)
        if scan_id is not None:
            query = query.where(QAPair.scan_id == scan_id)
        if limit is not None:
            query = query.limit(limit)
        with self.db.reading() as s:
            return [_qa_record(*r) for r in s.execute(query)]

    def count_qa_pairs(self, task: str | None = None, source: str | None = None) -> dict[str, int]:
        """Pairs per task key."""
        query = select(QAPair.task, func.count()).group_by(QAPair.task)
        if task is not None:
            query = query.where(QAPair.task == task)
        if source is not None:
            query = query.where(QAPair.source == source)
        with self.db.reading() as s:
            return dict(s.execute(query).tuples().all())

    def qa_frame(self) -> pd.DataFrame:
        """All pairs as a DataFrame (input of the curation filter and the exporters)."""
        import pandas as pd

        query = (select(QAPair.id.label("qa_id"), QAPair.scan_id, Scan.volume_name, Scan.path,
                        Patient.name.label("patient"), QAPair.task, QAPair.task_number, QAPair.subtask,
                        QAPair.question, QAPair.answer, QAPair.question_type, QAPair.choice_a,
                        QAPair.choice_b, QAPair.choice_c, QAPair.choice_d, QAPair.answer_choice,
                        QAPair.priors, QAPair.source)
                 .join(Scan, Scan.id == QAPair.scan_id).outerjoin(Patient, Patient.id == Scan.patient_id)
                 .order_by(QAPair.id))
        with self.db.reading() as s:
            result = s.execute(query)
            # Plain tuples: pandas probes every SQLAlchemy Row for namedtuple fields, which costs
            # more than the copy (about 2x on the 170k pairs of a full 3D-RAD-scale export).
            frame = pd.DataFrame([tuple(r) for r in result], columns=list(result.keys()))
        frame["task_number"] = frame["task_number"].astype("Int64")  # chat/M3D pairs have none
        return frame

    # ------------------------------------------------------------------ raters & assignments
    def ensure_rater(self, name: str, kind: str = "human") -> int:
        """The id of rater `name`, created on first use (safe when processes race to create it)."""
        if not name or not name.strip():
            raise ValueError("rater name must not be empty")
        if kind not in RATER_KINDS:
            raise ValueError(f"rater kind must be one of {RATER_KINDS}, got {kind!r}")
        return self.db.write(lambda s: _rater_id(s, name.strip(), kind))

    def raters(self) -> list[tuple[str, str]]:
        """(name, kind) of every rater."""
        with self.db.reading() as s:
            return list(s.execute(select(Rater.name, Rater.kind).order_by(Rater.name)).tuples())

    def assign(self, annotators: Sequence[str], per_annotator: int, overlap: int, seed: int = 0,
               tasks: Sequence[str] | None = None, batch: str | None = None) -> dict[str, Any]:
        """Give each annotator `per_annotator` new pairs, `overlap` of them shared by all (for
        agreement), drawn evenly across tasks like 3D-RAD's 600-pair sample. Pairs already
        assigned to any of these annotators are not drawn again; returns the plan."""
        from annotation.assignments import plan_assignments

        names = [a.strip() for a in annotators if a.strip()]
        batch = batch or f"batch-{utcnow():%Y%m%d-%H%M%S}"

        def work(session: Session) -> dict[str, Any]:
            rater_ids = {n: _rater_id(session, n, "human") for n in names}
            taken = set(session.scalars(select(Assignment.qa_id)
                                        .where(Assignment.rater_id.in_(rater_ids.values()))))
            query = select(QAPair.id, QAPair.task)
            if tasks:
                query = query.where(QAPair.task.in_(list(tasks)))
            pool = [(i, t) for i, t in session.execute(query.order_by(QAPair.id)).tuples() if i not in taken]
            plan = plan_assignments(pool, names, per_annotator, overlap, seed)
            shared = set(plan.shared)
            rows = []
            for name, qa_ids in plan.batches.items():
                start = session.scalar(select(func.coalesce(func.max(Assignment.position) + 1, 0))
                                       .where(Assignment.rater_id == rater_ids[name]))
                rows += [{"rater_id": rater_ids[name], "qa_id": q, "position": start + k, "batch": batch,
                          "shared": q in shared, "created_at": utcnow()} for k, q in enumerate(qa_ids)]
            insert_ignoring_conflicts(session, Assignment.__table__, rows, ["rater_id", "qa_id"])
            return {"batch": batch, "shared": list(plan.shared), "per_task": plan.per_task,
                    "annotators": {n: list(q) for n, q in plan.batches.items()}}

        return self.db.write(work)

    def queue(self, annotator: str) -> list[QueueItem]:
        """The annotator's assigned pairs in order with THEIR status only (blind to others)."""
        with self.db.reading() as s:
            rater_id = s.scalar(select(Rater.id).where(Rater.name == annotator))
            if rater_id is None:
                return []
            rows = s.execute(
                select(Assignment.qa_id, Assignment.position, QAPair.task, Rating.status,
                       Assignment.batch, Assignment.shared)
                .join(QAPair, QAPair.id == Assignment.qa_id)
                .outerjoin(Rating, (Rating.qa_id == Assignment.qa_id) & (Rating.rater_id == rater_id))
                .where(Assignment.rater_id == rater_id).order_by(Assignment.position)).tuples()
            return [QueueItem(q, p, t, st or "todo", b, bool(sh)) for q, p, t, st, b, sh in rows]

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

    # ------------------------------------------------------------------ ratings
    def rating(self, annotator: str, qa_id: int) -> RatingRecord | None:
        """The annotator's own rating of the pair (never anybody else's)."""
        with self.db.reading() as s:
            r = s.scalars(select(Rating).join(Rater, Rater.id == Rating.rater_id)
                          .where(Rater.name == annotator, Rating.qa_id == qa_id)).one_or_none()
            return _rating_record(r, annotator) if r else None

    def save_rating(self, annotator: str, qa_id: int, scores: Mapping[str, int] | Sequence[int],
                    consistent: bool, note: str = "", seconds: float = 0.0) -> RatingRecord:
        """Insert or update the annotator's rating (the earlier version goes to rating_history).
        `seconds` is added to the time already spent on this pair. Raises ValueError naming the
        dimension for a missing or out-of-range score."""
        if not isinstance(scores, Mapping):
            values = list(scores)
            if len(values) != len(SCORE_KEYS):
                raise ValueError(f"expected {len(SCORE_KEYS)} scores ({', '.join(SCORE_KEYS)}), got {len(values)}")
            scores = dict(zip(SCORE_KEYS, values))
        clean = validate_scores(scores)
        if not isinstance(consistent, bool):
            raise ValueError(f"consistent must be True or False, got {consistent!r}")
        return self._upsert_rating(annotator, qa_id, {**clean, "consistent": consistent, "note": note,
                                                      "status": "rated", "reason": None}, seconds)

    def skip(self, annotator: str, qa_id: int, reason: str, seconds: float = 0.0) -> RatingRecord:
        """Mark the pair skipped by this annotator (e.g. "cannot judge: scan missing")."""
        return self._mark(annotator, qa_id, "skipped", reason, seconds)

    def flag(self, annotator: str, qa_id: int, reason: str, seconds: float = 0.0) -> RatingRecord:
        """Mark the pair as problematic (wrong answer, unsafe, duplicate...); the reason is kept."""
        return self._mark(annotator, qa_id, "flagged", reason, seconds)

    def _mark(self, annotator: str, qa_id: int, status: str, reason: str, seconds: float) -> RatingRecord:
        if not reason or not reason.strip():
            raise ValueError(f"a reason is required to mark a pair {status}")
        return self._upsert_rating(annotator, qa_id, {"status": status, "reason": reason.strip()}, seconds)

    def _upsert_rating(self, annotator: str, qa_id: int, values: dict[str, Any],
                       seconds: float) -> RatingRecord:
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")

        def work(session: Session) -> RatingRecord:
            return _rating_record(write_rating(session, annotator, qa_id, values, seconds), annotator)

        for attempt in range(3):
            try:
                return self.db.write(work)
            except IntegrityError:
                # Two writers created the same (pair, rater) row at once: the retry updates it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def rating_history(self, annotator: str, qa_id: int) -> list[RatingVersion]:
        """Earlier versions of the annotator's rating of the pair, oldest first."""
        with self.db.reading() as s:
            rows = s.scalars(select(RatingHistory).join(Rater, Rater.id == RatingHistory.rater_id)
                             .where(Rater.name == annotator, RatingHistory.qa_id == qa_id)
                             .order_by(RatingHistory.id)).all()
            return [RatingVersion(h.qa_id, annotator, {k: getattr(h, k) for k in SCORE_KEYS}, h.consistent,
                                  h.note, h.status, h.reason, h.seconds_spent, h.valid_from, h.replaced_at)
                    for h in rows]

    def ratings_frame(self) -> pd.DataFrame:
        """Every rating: qa_id, rater, task, the five scores, consistent, status, seconds (the
        input of annotation.agreement and annotation.curation)."""
        import pandas as pd

        query = (select(Rating.qa_id, Rater.name.label("rater"), QAPair.task,
                        *[getattr(Rating, k) for k in SCORE_KEYS], Rating.consistent, Rating.status,
                        Rating.seconds_spent.label("seconds"))
                 .join(Rater, Rater.id == Rating.rater_id).join(QAPair, QAPair.id == Rating.qa_id)
                 .order_by(Rating.qa_id, Rater.name))
        with self.db.reading() as s:
            result = s.execute(query)
            frame = pd.DataFrame([tuple(r) for r in result], columns=list(result.keys()))  # see qa_frame
        for key in SCORE_KEYS:
            frame[key] = frame[key].astype("Int64")
        frame["consistent"] = frame["consistent"].astype("boolean")
        return frame

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

    # ------------------------------------------------------------------ curation, agreement, export
    def agreement(self, top_k: int = 100) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rater-vs-rater agreement (pairwise) and its per-rater summary."""
        from annotation.agreement import pairwise_agreement, per_rater_agreement

        pairwise = pairwise_agreement(self.ratings_frame(), top_k=top_k)
        return pairwise, per_rater_agreement(pairwise)

    def curation_preview(self, rule: Any = None) -> Any:
        """What `rule` (annotation.curation.FilterRule) would keep, without exporting."""
        from annotation.curation import FilterRule, apply_filter, summarize

        return summarize(apply_filter(self.ratings_frame(), self.qa_frame(), rule or FilterRule()))

    def export(self, fmt: str, out_dir: str | Path, rule: Any = None, val_frac: float = 0.1,
               seed: int = 0, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Write the pairs that pass `rule` in format `fmt` with a patient-level split; the export
        and its manifest are recorded in the `exports` table."""
        from annotation.curation import FilterRule, apply_filter
        from annotation.exports import ExportRow, export_rows

        rule = rule or FilterRule()
        qa = self.qa_frame()
        filtered = apply_filter(self.ratings_frame(), qa, rule)
        kept = set(filtered.loc[filtered["passed"].astype(bool), "qa_id"].astype(int))
        chosen = qa[qa["qa_id"].isin(kept)]
        # pandas string columns hold NaN for SQL NULL (a scan without path or patient), which is
        # truthy: turn every missing value into None first (plain objects also iterate faster).
        chosen = chosen.astype(object).where(chosen.notna(), None)
        rows = [_export_row(ExportRow, r) for r in chosen.itertuples(index=False)]
        extra: dict[str, Any] = {"database": repr(self), "filter": rule.describe()}
        if fmt == "3drad":  # the 3D-RAD layout has a folder per 3D-RAD task and nothing else
            other = sum(r.task_number == 0 for r in rows)
            rows = [r for r in rows if r.task_number != 0]
            extra["left_out_not_3drad_tasks"] = other
        manifest = export_rows(rows, fmt, out_dir, val_frac=val_frac, seed=seed,
                               manifest_extra=extra, progress=progress)

        def work(session: Session) -> None:
            session.add(Export(format=fmt, path=str(Path(out_dir).resolve()),
                               filter=_jsonable(rule.describe()), manifest=_jsonable(manifest)))

        self.db.write(work)
        return manifest

    def exports(self) -> list[dict[str, Any]]:
        with self.db.reading() as s:
            return [{"id": e.id, "format": e.format, "path": e.path, "filter": e.filter,
                     "manifest": e.manifest, "created_at": e.created_at}
                    for e in s.scalars(select(Export).order_by(Export.id))]

    # ------------------------------------------------------------------ chat & models
    def add_chat_turn(self, scan_id: int, question: str, answer: str, *, conversation_id: str,
                      model_version: str | None = None, choices: Sequence[str] | None = None,
                      choice: str | None = None, choice_scores: Mapping[str, float] | None = None,
                      box: Sequence[float] | None = None, latency_first_token_s: float | None = None,
                      total_s: float | None = None, n_tokens: int | None = None) -> int:
        """Record one question/answer of a conversation (turn index = next in that conversation)."""
        def work(session: Session) -> int:
            if session.get(Scan, scan_id) is None:
                raise KeyError(f"no scan with id {scan_id}")
            mv_id = _model_version_id(session, model_version) if model_version else None
            index = session.scalar(select(func.coalesce(func.max(ChatTurn.turn_index) + 1, 0))
                                   .where(ChatTurn.conversation_id == conversation_id))
            turn = ChatTurn(scan_id=scan_id, conversation_id=conversation_id, turn_index=index,
                            question=question, answer=answer, choices=list(choices) if choices else None,
                            choice=choice, choice_scores=dict(choice_scores) if choice_scores else None,
                            box=list(box) if box is not None else None, model_version_id=mv_id,
                            latency_first_token_s=latency_first_token_s, total_s=total_s,
                            n_tokens=n_tokens)
            session.add(turn)
            session.flush()
            return turn.id

        for attempt in range(3):
            try:
                return self.db.write(work)
            except IntegrityError:  # another writer took the same turn index: take the next
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def chat_turns(self, scan_id: int | None = None, conversation_id: str | None = None) -> list[ChatTurnRecord]:
        query = (select(ChatTurn, Scan.volume_name, ModelVersion.name)
                 .join(Scan, Scan.id == ChatTurn.scan_id)
                 .outerjoin(ModelVersion, ModelVersion.id == ChatTurn.model_version_id)
                 .order_by(ChatTurn.conversation_id, ChatTurn.turn_index))
        if scan_id is not None:
            query = query.where(ChatTurn.scan_id == scan_id)
        if conversation_id is not None:
            query = query.where(ChatTurn.conversation_id == conversation_id)
        with self.db.reading() as s:
            return [_chat_record(t, v, m) for t, v, m in s.execute(query).tuples()]

    def chat_turn_to_qa(self, turn_id: int, task: str = "chat") -> int:
        """Turn a chat answer into a QA pair (source "chat") so it can be rated and curated."""
        with self.db.reading() as s:
            turn = s.get(ChatTurn, turn_id)
            if turn is None:
                raise KeyError(f"no chat turn with id {turn_id}")
            choices = turn.choices if turn.choices and len(turn.choices) == 4 else None
            return self.add_qa_pair(
                turn.scan_id, task, turn.question, turn.answer, choices=choices,
                answer_choice=turn.choice if choices else None, source="chat",
                provenance={"chat_turn": turn.id, "conversation_id": turn.conversation_id,
                            "model_version_id": turn.model_version_id})

    def register_model_version(self, name: str, path: str | Path | None, kind: str = "finetuned",
                               base: str | None = None, provenance: Mapping[str, Any] | None = None,
                               metrics: Mapping[str, Any] | None = None) -> ModelVersionRecord:
        """Add a model version (or update path/provenance/metrics of the one with this name)."""
        def work(session: Session) -> None:
            base_id = _model_version_id(session, base) if base else None
            mv = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).one_or_none()
            if mv is None:
                mv = ModelVersion(name=name)
                session.add(mv)
            mv.path = None if path is None else str(path)
            mv.kind, mv.base_version_id = kind, base_id
            mv.provenance = _jsonable(dict(provenance)) if provenance else None
            mv.metrics = _jsonable(dict(metrics)) if metrics else None

        try:
            self.db.write(work)
        except IntegrityError as exc:
            raise ValueError(f"model version {name!r} refused by the database: {exc.orig}") from None
        return self.model_version(name)

    def model_versions(self) -> list[ModelVersionRecord]:
        with self.db.reading() as s:
            return [_model_record(m, s) for m in s.scalars(select(ModelVersion).order_by(ModelVersion.id))]

    def model_version(self, name: str) -> ModelVersionRecord | None:
        with self.db.reading() as s:
            mv = s.scalars(select(ModelVersion).where(ModelVersion.name == name)).one_or_none()
            return _model_record(mv, s) if mv else None

    def add_finetune_run(self, config: Mapping[str, Any] | None = None, qa_ids: Sequence[int] | None = None,
                         filter: Mapping[str, Any] | None = None, base: str | None = None,
                         output_path: str | Path | None = None, status: str = "pending") -> int:
        def work(session: Session) -> int:
            run = FinetuneRun(status=status, config=_jsonable(dict(config or {})),
                              qa_ids=[int(q) for q in qa_ids] if qa_ids is not None else None,
                              filter=_jsonable(dict(filter)) if filter else None, base=base,
                              output_path=None if output_path is None else str(output_path))
            session.add(run)
            session.flush()
            return run.id

        return self.db.write(work)

    def update_finetune_run(self, run_id: int, **fields: Any) -> FinetuneRunRecord:
        """Update status/metrics/timestamps...; `model_version` (a name) links the result.
        Setting status "running" stamps started_at, "done"/"failed"/"cancelled" finished_at."""
        allowed = {"status", "config", "qa_ids", "filter", "base", "output_path", "metrics", "error",
                   "model_version", "started_at", "finished_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown finetune run field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")

        def work(session: Session) -> None:
            run = session.get(FinetuneRun, run_id)
            if run is None:
                raise KeyError(f"no finetune run with id {run_id}")
            values = dict(fields)
            if "model_version" in values:
                name = values.pop("model_version")
                run.model_version_id = _model_version_id(session, name) if name else None
            for key, value in values.items():
                setattr(run, key, _jsonable(value) if key in ("config", "filter", "metrics") else
                        str(value) if key == "output_path" and value is not None else value)
            status = values.get("status")
            if status == "running" and run.started_at is None:
                run.started_at = utcnow()
            if status in ("done", "failed", "cancelled") and run.finished_at is None:
                run.finished_at = utcnow()

        try:
            self.db.write(work)
        except IntegrityError as exc:
            raise ValueError(f"finetune run {run_id} update refused by the database: {exc.orig}") from None
        return self.finetune_run(run_id)

    def finetune_run(self, run_id: int) -> FinetuneRunRecord:
        with self.db.reading() as s:
            run = s.get(FinetuneRun, run_id)
            if run is None:
                raise KeyError(f"no finetune run with id {run_id}")
            mv = s.get(ModelVersion, run.model_version_id) if run.model_version_id else None
            return FinetuneRunRecord(run.id, run.status, run.config,
                                     tuple(run.qa_ids) if run.qa_ids is not None else None, run.filter,
                                     run.base, run.output_path, run.metrics, mv.name if mv else None,
                                     run.error, run.created_at, run.started_at, run.finished_at)

    def finetune_runs(self) -> list[FinetuneRunRecord]:
        with self.db.reading() as s:
            ids = s.scalars(select(FinetuneRun.id).order_by(FinetuneRun.id)).all()
        return [self.finetune_run(i) for i in ids]


# ---------------------------------------------------------------------- helpers
_VERSIONED = (*SCORE_KEYS, "consistent", "note", "status", "reason", "seconds_spent")


def write_rating(session: Session, annotator: str, qa_id: int, values: Mapping[str, Any],
                 seconds: float = 0.0) -> Rating:
    """Insert or update one rating inside the caller's transaction (the ratings CSV importer
    writes a whole file in one). A real change first copies the old version to rating_history;
    `seconds` is added to the time spent."""
    if session.scalar(select(QAPair.id).where(QAPair.id == qa_id)) is None:
        raise KeyError(f"no QA pair with id {qa_id}")
    rater_id = _rater_id(session, annotator, "human")
    rating = session.scalars(select(Rating).where(Rating.qa_id == qa_id, Rating.rater_id == rater_id)
                             .with_for_update()).one_or_none()
    now = utcnow()
    if rating is None:
        rating = Rating(qa_id=qa_id, rater_id=rater_id, created_at=now, seconds_spent=0.0, note="",
                        **{k: None for k in SCORE_KEYS})
        session.add(rating)
    elif any(getattr(rating, k) != v for k, v in values.items()):
        session.add(RatingHistory(rating_id=rating.id, qa_id=qa_id, rater_id=rater_id,
                                  valid_from=rating.updated_at, replaced_at=now,
                                  **{k: getattr(rating, k) for k in _VERSIONED}))
    for key, value in values.items():
        setattr(rating, key, value)
    rating.seconds_spent = (rating.seconds_spent or 0.0) + float(seconds)
    rating.updated_at = now
    session.flush()
    return rating


def _rater_id(session: Session, name: str, kind: str) -> int:
    rater_id = session.scalar(select(Rater.id).where(Rater.name == name))
    if rater_id is not None:
        return rater_id
    insert_ignoring_conflicts(session, Rater.__table__, [{"name": name, "kind": kind, "created_at": utcnow()}],
                              ["name"])
    return session.scalars(select(Rater.id).where(Rater.name == name)).one()


def _model_version_id(session: Session, name: str) -> int:
    mv_id = session.scalar(select(ModelVersion.id).where(ModelVersion.name == name))
    if mv_id is None:
        raise KeyError(f"no model version named {name!r} (register it first)")
    return mv_id


def _scan_query():  # noqa: ANN202
    return select(Scan, Patient.name).outerjoin(Patient, Patient.id == Scan.patient_id)


def _scan_record(scan: Scan, patient: str | None) -> ScanRecord:
    return ScanRecord(scan.id, scan.volume_name, scan.path, patient, scan.timepoint, scan.reconstruction,
                      scan.study_date, tuple(scan.spacing) if scan.spacing else None,
                      tuple(scan.shape) if scan.shape else None, scan.split)


def _qa_query():  # noqa: ANN202
    return (select(QAPair, Scan.volume_name, Scan.path, Patient.name)
            .join(Scan, Scan.id == QAPair.scan_id).outerjoin(Patient, Patient.id == Scan.patient_id))


def _qa_record(qa: QAPair, volume_name: str, path: str | None, patient: str | None) -> QAPairRecord:
    choices = (qa.choice_a, qa.choice_b, qa.choice_c, qa.choice_d)
    return QAPairRecord(
        qa.id, qa.scan_id, volume_name, path, patient, qa.task, qa.task_number, qa.subtask, qa.question,
        qa.answer, qa.question_type, choices if qa.question_type == "closed" else None, qa.answer_choice,
        tuple(qa.priors) if qa.priors is not None else None, qa.source, qa.provenance)


def _rating_record(r: Rating, rater: str) -> RatingRecord:
    return RatingRecord(r.id, r.qa_id, rater, {k: getattr(r, k) for k in SCORE_KEYS}, r.consistent,
                        r.note or "", r.status, r.reason, float(r.seconds_spent or 0.0),
                        r.created_at, r.updated_at)


def _chat_record(t: ChatTurn, volume_name: str, model: str | None) -> ChatTurnRecord:
    return ChatTurnRecord(t.id, t.scan_id, volume_name, t.conversation_id, t.turn_index, t.question,
                          t.answer, tuple(t.choices) if t.choices else None, t.choice, t.choice_scores,
                          tuple(t.box) if t.box is not None else None, model, t.latency_first_token_s,
                          t.total_s, t.n_tokens, t.created_at)


def _model_record(mv: ModelVersion, session: Session) -> ModelVersionRecord:
    base = session.get(ModelVersion, mv.base_version_id) if mv.base_version_id else None
    return ModelVersionRecord(mv.id, mv.name, mv.path, mv.kind, base.name if base else None,
                              mv.provenance, mv.metrics, mv.created_at)


def _export_row(export_row_cls: type, r: Any) -> Any:  # noqa: ANN401
    """An annotation.exports.ExportRow in 3D-RAD's spelling (Open/Close, "-" for no choice);
    task_number 0 marks pairs of no 3D-RAD task (chat, M3D-VQA)."""
    closed = r.question_type == "closed"
    choices = (r.choice_a, r.choice_b, r.choice_c, r.choice_d) if closed else ("-",) * 4
    subtask = int(r.subtask) if r.subtask and str(r.subtask).isdigit() else 0
    return export_row_cls(
        qa_id=int(r.qa_id), patient=r.patient or Path(r.volume_name).name.split(".")[0],
        volume_name=r.volume_name, image_path=r.path or "", task=r.task,
        task_number=0 if r.task_number is None else int(r.task_number),
        subtask=subtask, question=r.question, answer=r.answer,
        question_type="Close" if closed else "Open", answer_choice=r.answer_choice if closed else "-",
        choices=tuple(c or "-" for c in choices), priors=tuple(r.priors) if r.priors else None)


def _jsonable(value: Any) -> Any:  # noqa: ANN401
    """JSON columns take plain data: paths and numpy scalars become str/float."""
    import json

    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
