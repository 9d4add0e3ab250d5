"""Agreement, curation preview and exports: the read side that turns ratings into a training set.

The statistics and file formats live in annotation/agreement.py, curation.py and exports.py; this
area only feeds them the store's frames and records each export with its filter and manifest, so
what left the tool, and under which rule, stays on record.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotation.schema import Export, Report
from annotation.store.ratings import RatingsArea
from annotation.store.rows import jsonable
from annotation.store.scans import ScansArea

if TYPE_CHECKING:
    import pandas as pd

ProgressFn = Callable[[int, int | None], None]


class ExportsArea(ScansArea, RatingsArea):
    """Agreement, curation and exports over the pairs and their ratings (part of `Store`)."""

    def agreement(self, top_k: int = 100) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rater-vs-rater agreement (pairwise) and its per-rater summary."""
        # deferred: annotation.agreement pulls in pandas, scipy and scikit-learn
        from annotation.agreement import pairwise_agreement, per_rater_agreement

        pairwise = pairwise_agreement(self.ratings_frame(), top_k=top_k)
        return pairwise, per_rater_agreement(pairwise)

    def agreement_report(self, top_k: int = 100, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                         disagreements: int = 20) -> Any:
        """Every agreement table (annotation.agreement.AgreementReport): between raters, per
        dimension with bootstrap intervals, intra-rater on repeats, and the most-disagreed pairs."""
        from annotation.agreement import agreement_report  # deferred: see agreement

        return agreement_report(self.ratings_frame(), self.ratings_frame(repeats=True), self.qa_frame(),
                                top_k=top_k, n_boot=n_boot, seed=seed, level=level,
                                n_disagreements=disagreements)

    def curation_preview(self, rule: Any = None) -> Any:
        """What `rule` (annotation.curation.FilterRule) would keep, without exporting."""
        from annotation.curation import FilterRule, apply_filter, summarize  # deferred: pandas

        return summarize(apply_filter(self.ratings_frame(), self.qa_frame(), rule or FilterRule()))

    def export(self, fmt: str, out_dir: str | Path, rule: Any = None, val_frac: float = 0.1,
               seed: int = 0, progress: ProgressFn | None = None, split: str = "keep",
               image_root: str | Path | None = None) -> dict[str, Any]:
        """Write the pairs that pass `rule` in format `fmt`, in the cohort's own split (`split`
        "keep", by patient where a scan has none) or split by patient ("patient"), image paths
        relative to `image_root`; the export and its manifest are recorded in the `exports` table."""
        # deferred: both pull in pandas and numpy
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
        texts = self._report_texts(set(chosen["scan_id"])) if fmt == "m3d-vqa" else {}
        rows = [_export_row(ExportRow, r, texts.get(r.scan_id, "")) for r in chosen.itertuples(index=False)]
        passed = filtered["passed"].astype(bool)
        extra: dict[str, Any] = {"database": repr(self), "filter": rule.describe(),
                                 "unrated_included": int((passed & (filtered["n_raters"] == 0)).sum())}
        if fmt == "3drad":  # the 3D-RAD layout has a folder per 3D-RAD task and nothing else
            other = sum(r.task_number == 0 for r in rows)
            rows = [r for r in rows if r.task_number != 0]
            extra["left_out_not_3drad_tasks"] = other
        if not rows:
            raise ValueError(_nothing_passed(filtered, rule))
        manifest = export_rows(rows, fmt, out_dir, split=split, val_frac=val_frac, seed=seed,
                               image_root=image_root, manifest_extra=extra, progress=progress)

        def work(session: Session) -> None:
            session.add(Export(format=fmt, path=str(Path(out_dir).resolve()),
                               filter=jsonable(rule.describe()), manifest=jsonable(manifest)))

        self.db.write(work)
        return manifest

    def _report_texts(self, scan_ids: set[int]) -> dict[int, str]:
        """Each scan's report as one text (findings, then impressions), for M3D-VQA's Text column."""
        texts: dict[int, str] = {}
        with self.db.reading() as s:
            for scan_id, findings, impressions in s.execute(
                    select(Report.scan_id, Report.findings, Report.impressions)):
                if scan_id in scan_ids:
                    parts = [p.strip() for p in (findings, impressions) if p and p.strip() not in ("", "Not given.")]
                    texts[scan_id] = " ".join(parts)
        return texts

    def exports(self) -> list[dict[str, Any]]:
        with self.db.reading() as s:
            return [{"id": e.id, "format": e.format, "path": e.path, "filter": e.filter,
                     "manifest": e.manifest, "created_at": e.created_at}
                    for e in s.scalars(select(Export).order_by(Export.id))]


def _nothing_passed(filtered: Any, rule: Any) -> str:  # noqa: ANN401
    """Why an export would be empty, in the words a curator can act on."""
    reasons = filtered["reason"].value_counts()
    top = ", ".join(f"{n} {r}" for r, n in reasons.head(3).items())
    hint = ""
    if reasons.get("unrated", 0) and not rule.include_unrated:
        hint = "; pairs imported as curated can be kept unrated with --include-unrated"
    elif reasons.get("unrated", 0):
        hint = "; --include-unrated keeps only pairs imported as curated (source 'imported'), not generated ones"
    return f"nothing to export: none of {len(filtered)} QA pairs passed the filter ({top or 'the store is empty'}){hint}"


def _export_row(export_row_cls: type, r: Any, text: str = "") -> Any:  # noqa: ANN401
    """An annotation.exports.ExportRow in 3D-RAD's spelling (Open/Close, "-" for no choice);
    task_number 0 marks pairs of no 3D-RAD task (chat, M3D-VQA). The class is passed in so this
    module need not import annotation.exports (and pandas) at import time."""
    closed = r.question_type == "closed"
    choices = (r.choice_a, r.choice_b, r.choice_c, r.choice_d) if closed else ("-",) * 4
    subtask = int(r.subtask) if r.subtask and str(r.subtask).isdigit() else 0
    return export_row_cls(
        qa_id=int(r.qa_id), patient=r.patient or Path(r.volume_name).name.split(".")[0],
        volume_name=r.volume_name, image_path=r.path or "", task=r.task,
        task_number=0 if r.task_number is None else int(r.task_number),
        subtask=subtask, question=r.question, answer=r.answer,
        question_type="Close" if closed else "Open", answer_choice=r.answer_choice if closed else "-",
        choices=tuple(c or "-" for c in choices), priors=tuple(r.priors) if r.priors else None,
        cohort_split=r.cohort_split, text=text)
