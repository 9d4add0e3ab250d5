"""Model versions and finetune runs: which weights answered a chat turn, and how each finetuned
version was made (config, the exact pairs it saw, its metrics).

Runs are recorded before training starts and updated as it goes, so a failed or cancelled run
still leaves a trace, and a finetuned version can be followed back to the pairs it was trained on.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotation.records import FinetuneRunRecord, ModelVersionRecord
from annotation.schema import FinetuneRun, ModelVersion, utcnow
from annotation.store.base import StoreArea
from annotation.store.rows import finetune_run_record, jsonable, model_record, model_version_id

_FINETUNE_FIELDS = {"status", "config", "qa_ids", "filter", "base", "output_path", "metrics", "error",
                    "model_version", "started_at", "finished_at"}


class ModelsArea(StoreArea):
    """Model versions and finetune runs (part of `Store`)."""

    def register_model_version(self, name: str, path: str | Path | None, kind: str = "finetuned",
                               base: str | None = None, provenance: Mapping[str, Any] | None = None,
                               metrics: Mapping[str, Any] | None = None) -> ModelVersionRecord:
        """Add a model version (or update path/provenance/metrics of the one with this name)."""
        def work(session: Session) -> None:
            base_id = model_version_id(session, base) if base else None
            mv = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).one_or_none()
            if mv is None:
                mv = ModelVersion(name=name)
                session.add(mv)
            mv.path = None if path is None else str(path)
            mv.kind, mv.base_version_id = kind, base_id
            mv.provenance = jsonable(dict(provenance)) if provenance else None
            mv.metrics = jsonable(dict(metrics)) if metrics else None

        self._write_or_refuse(work, f"model version {name!r}")
        return self.model_version(name)

    def model_versions(self) -> list[ModelVersionRecord]:
        with self.db.reading() as s:
            return [model_record(m, s) for m in s.scalars(select(ModelVersion).order_by(ModelVersion.id))]

    def model_version(self, name: str) -> ModelVersionRecord | None:
        with self.db.reading() as s:
            mv = s.scalars(select(ModelVersion).where(ModelVersion.name == name)).one_or_none()
            return model_record(mv, s) if mv else None

    def add_finetune_run(self, config: Mapping[str, Any] | None = None, qa_ids: Sequence[int] | None = None,
                         filter: Mapping[str, Any] | None = None, base: str | None = None,
                         output_path: str | Path | None = None, status: str = "pending") -> int:
        def work(session: Session) -> int:
            run = FinetuneRun(status=status, config=jsonable(dict(config or {})),
                              qa_ids=[int(q) for q in qa_ids] if qa_ids is not None else None,
                              filter=jsonable(dict(filter)) if filter else None, base=base,
                              output_path=None if output_path is None else str(output_path))
            session.add(run)
            session.flush()
            return run.id

        return self.db.write(work)

    def update_finetune_run(self, run_id: int, **fields: Any) -> FinetuneRunRecord:
        """Update status/metrics/timestamps...; `model_version` (a name) links the result.
        Setting status "running" stamps started_at (the first start) and clears finished_at (a
        resumed run is not finished); "done"/"failed"/"cancelled" stamps finished_at."""
        unknown = set(fields) - _FINETUNE_FIELDS
        if unknown:
            raise ValueError(f"unknown finetune run field(s) {sorted(unknown)}; allowed: {sorted(_FINETUNE_FIELDS)}")

        def work(session: Session) -> None:
            run = session.get(FinetuneRun, run_id)
            if run is None:
                raise KeyError(f"no finetune run with id {run_id}")
            values = dict(fields)
            if "model_version" in values:
                name = values.pop("model_version")
                run.model_version_id = model_version_id(session, name) if name else None
            for key, value in values.items():
                setattr(run, key, jsonable(value) if key in ("config", "filter", "metrics") else
                        str(value) if key == "output_path" and value is not None else value)
            status = values.get("status")
            if status == "running":
                run.started_at = run.started_at or utcnow()
                run.finished_at = None
            if status in ("done", "failed", "cancelled") and "finished_at" not in values:
                run.finished_at = utcnow()

        self._write_or_refuse(work, f"finetune run {run_id} update")
        return self.finetune_run(run_id)

    def finetune_run(self, run_id: int) -> FinetuneRunRecord:
        with self.db.reading() as s:
            run = s.get(FinetuneRun, run_id)
            if run is None:
                raise KeyError(f"no finetune run with id {run_id}")
            return finetune_run_record(run, s)

    def finetune_runs(self) -> list[FinetuneRunRecord]:
        with self.db.reading() as s:
            ids = s.scalars(select(FinetuneRun.id).order_by(FinetuneRun.id)).all()
        return [self.finetune_run(i) for i in ids]
