"""How fast are the store's bulk paths: 3D-RAD import, rater agreement and curated export?

Import: builds a 3D-RAD-layout split of `--copies` x the real test split (33,910 rows each; copy k renames
every volume to split `rep<k>`, so each copy is new content), imports it with `import_3drad`
(Core bulk inserts, one transaction per file) into a fresh SQLite file, and in the same run times
the naive baseline on the first `--naive-rows` rows of the same files: per row an ORM query for
the scan (created when missing) and one `QAPair` object added and flushed, one commit per file.
Targets: bulk >= 10x the naive rows/s, and <= 30 s for 170,000 pairs (5 copies).

Agreement (same database): `Store.assign` gives `--raters` annotators the same `--agreement-pairs`
pairs (stratified over tasks, as 3D-RAD's 600-pair sample), each rates them through
`Store.save_rating` (noisy copies of a hidden quality), and `Store.agreement()` is timed, database
read included. Target < 1 s for 600 pairs x 4 raters.

Export (same database): a curator rates every pair (one bulk insert, set-up only), then
`Store.export` writes all of them (filter without the per-question cap, so all pass) in each
format, database read and filter included; a plain pandas `to_csv` of the same QA table is the
floor it is compared with. Target < 10 s for 170,000 pairs.

    .venv/bin/python bench/store.py [--copies 5] [--naive-rows 5000] [--agreement-pairs 600]
                                    [--raters 4] [--formats 3drad,m3d-vqa,jsonl,hf] [--db URL]
"""
from __future__ import annotations

import argparse
import csv
import importlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

from annotation.curation import FilterRule
from annotation.exports import EXPORT_FORMATS
from annotation.importers.bulk import content_key, insert_ignoring_conflicts, scan_fields
from annotation.importers.threedrad import import_3drad, parse_file
from annotation.rubric import MAX_SCORE, MIN_SCORE, SCORE_KEYS
from annotation.schema import Patient, QAPair, Rating, Scan, utcnow
from annotation.store import Store

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO.parent / "shared" / "data" / "3d-rad" / "test"
TARGET_SPEEDUP, TARGET_SECONDS, TARGET_ROWS = 10.0, 30.0, 170_000
TARGET_AGREEMENT_S, TARGET_EXPORT_S = 1.0, 10.0


def replicate(split: Path, out: Path, copies: int) -> int:
    """Write `copies` renamed copies of every CSV of `split` under `out`; returns the row count."""
    rows = 0
    for path in sorted(split.glob("*/*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header, body = next(reader), list(reader)
        for k in range(copies):
            target = out / path.parent.name / f"{path.stem}_rep{k}.csv"
            target.parent.mkdir(parents=True, exist_ok=True)
            prefix = f"rep{'abcdefghijklmnopqrstuvwxyz'[k % 26] * (k // 26 + 1)}"
            with target.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(header)
                writer.writerows([r[:2] + [prefix + r[2][r[2].index("_"):]] + r[3:] for r in body])
            rows += len(body)
    return rows


def naive_import(store: Store, split: Path, limit: int) -> int:
    """The baseline: what a first importer usually looks like (ORM object per row, flushed)."""
    done = 0
    for path in sorted(split.glob("*/*.csv")):
        if done >= limit:
            break
        parsed = parse_file(path, split)
        with store.db._write() as session, session.begin():
            for line, row, priors in parsed.rows[: limit - done]:
                scan = session.scalars(select(Scan).where(Scan.volume_name == row.volume_name)).one_or_none()
                if scan is None:
                    fields = scan_fields(row.volume_name)
                    patient = session.scalars(select(Patient).where(Patient.name == fields["patient"])).one_or_none()
                    if patient is None:
                        patient = Patient(name=fields["patient"], split=fields["split"])
                        session.add(patient)
                        session.flush()
                    scan = Scan(volume_name=row.volume_name, patient_id=patient.id, timepoint=fields["timepoint"],
                                reconstruction=fields["reconstruction"], split=fields["split"])
                    session.add(scan)
                    session.flush()
                closed = not parsed.task.open
                session.add(QAPair(
                    scan_id=scan.id, task=parsed.task.key, task_number=parsed.task.number, subtask=str(row.subtask),
                    question=row.question, answer=row.answer, question_type="closed" if closed else "open",
                    choice_a=row.choices[0] if closed else None, choice_b=row.choices[1] if closed else None,
                    choice_c=row.choices[2] if closed else None, choice_d=row.choices[3] if closed else None,
                    answer_choice=row.answer_choice if closed else None, priors=priors, source="imported",
                    provenance={"file": parsed.relative, "line": line},
                    content_key=content_key(scan.id, parsed.task.key, str(row.subtask), row.question, row.answer,
                                            row.choices if closed else None, row.answer_choice if closed else None,
                                            line)))
                session.flush()
                done += 1
    return done


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def timed_import(module: str) -> None:
    """Import a heavy library outside the timed region and say what it cost (paid once per process)."""
    t = time.perf_counter()
    importlib.import_module(module)
    print(f"import {module:<11}: {time.perf_counter() - t:6.2f} s (once per process, not in the figures below)")


def bench_agreement(store: Store, n_pairs: int, n_raters: int, seed: int = 0) -> None:
    """Rate `n_pairs` shared pairs by `n_raters` annotators, then time `Store.agreement()`."""
    timed_import("annotation.agreement")
    names = [f"rater{i + 1}" for i in range(n_raters)]
    plan = store.assign(names, per_annotator=n_pairs, overlap=n_pairs, seed=seed, batch="bench-agreement")
    rng = np.random.default_rng(seed)
    quality = rng.integers(MIN_SCORE + 1, MAX_SCORE + 1, size=(len(plan["shared"]), 1))
    t = time.perf_counter()
    for name in names:
        noisy = np.clip(quality + rng.integers(-1, 2, size=(len(plan["shared"]), len(SCORE_KEYS))),
                        MIN_SCORE, MAX_SCORE)
        for qa_id, scores in zip(plan["shared"], noisy.tolist()):
            store.save_rating(name, qa_id, scores, consistent=bool(rng.random() < 0.95))
    n_saved = len(plan["shared"]) * n_raters
    save_s = time.perf_counter() - t
    print(f"save_rating       : {n_saved:>9,} ratings in {save_s:6.2f} s = {save_s / n_saved * 1e3:.1f} ms each")
    t, c = time.perf_counter(), time.process_time()
    pairwise, _ = store.agreement()
    agreement_s, agreement_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"agreement         : {len(plan['shared'])} pairs x {n_raters} raters ({len(pairwise)} rater pairs, "
          f"mean Spearman {pairwise['spearman_rho'].mean():.2f}) in {agreement_s:.3f} s (CPU {agreement_cpu:.3f} s) "
          f"(target < {TARGET_AGREEMENT_S:.0f} s): {_verdict(agreement_s < TARGET_AGREEMENT_S)}")


def rate_everything(store: Store, seed: int = 0) -> int:
    """Give every pair a passing rating by one curator in a single bulk insert (set-up only)."""
    rater_id = store.ensure_rater("bench-curator")
    with store.db.reading() as session:
        qa_ids = session.scalars(select(QAPair.id)).all()
    rng = np.random.default_rng(seed)
    scores = rng.integers(3, MAX_SCORE + 1, size=(len(qa_ids), len(SCORE_KEYS))).tolist()
    now = utcnow()
    rows = [{"qa_id": q, "rater_id": rater_id, **dict(zip(SCORE_KEYS, s)), "consistent": True, "note": "",
             "status": "rated", "reason": None, "seconds_spent": 0.0, "created_at": now, "updated_at": now}
            for q, s in zip(qa_ids, scores)]
    store.db.write(lambda session: insert_ignoring_conflicts(session, Rating.__table__, rows, ["qa_id", "rater_id", "is_repeat"]))
    return len(rows)


def bench_export(store: Store, out: Path, formats: list[str]) -> None:
    """Time `Store.export` of every pair in each format against a plain pandas CSV of the QA table."""
    if "hf" in formats:
        timed_import("datasets")
    t = time.perf_counter()
    n_rated = rate_everything(store)
    print(f"set-up            : {n_rated:>9,} curator ratings bulk-inserted in {time.perf_counter() - t:6.2f} s")
    t, c = time.perf_counter(), time.process_time()
    qa = store.qa_frame()
    qa.to_csv(out / "baseline.csv", index=False)
    baseline_s, baseline_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"baseline          : {len(qa):>9,} rows read (qa_frame) + pandas to_csv in {baseline_s:6.2f} s "
          f"(CPU {baseline_cpu:.2f} s)")
    rule = FilterRule(cap_per_question=None)
    t = time.perf_counter()
    preview = store.curation_preview(rule)
    print(f"curation preview  : {preview.passed:>9,} of {preview.total:,} pass in {time.perf_counter() - t:6.2f} s")
    for fmt in formats:
        t, c = time.perf_counter(), time.process_time()
        manifest = store.export(fmt, out / fmt, rule, val_frac=0.1, seed=0)
        export_s, export_cpu = time.perf_counter() - t, time.process_time() - c
        print(f"export {fmt:<10} : {manifest['total']:>9,} rows in {export_s:6.2f} s (CPU {export_cpu:.2f} s; "
              f"{export_s / baseline_s:.1f}x the baseline; {TARGET_ROWS:,} would take "
              f"{export_s * TARGET_ROWS / manifest['total']:.1f} s, target < {TARGET_EXPORT_S:.0f} s): "
              f"{_verdict(export_s * TARGET_ROWS / manifest['total'] < TARGET_EXPORT_S)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--naive-rows", type=int, default=5000)
    parser.add_argument("--agreement-pairs", type=int, default=600)
    parser.add_argument("--raters", type=int, default=4)
    parser.add_argument("--formats", default=",".join(EXPORT_FORMATS),
                        help="comma-separated export formats to time (empty: skip the export part)")
    parser.add_argument("--db", help="database URL for the bulk import (default: a temporary SQLite file)")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        parser.error(f"unknown export format(s) {unknown}; expected some of {list(EXPORT_FORMATS)}")
    if not SPLIT.is_dir():
        print(f"3D-RAD test split not found at {SPLIT}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ctvqa-bench-") as tmp:
        tmp_path = Path(tmp)
        t = time.perf_counter()
        rows = replicate(SPLIT, tmp_path / "split", args.copies)
        print(f"built {rows:,} rows ({args.copies} copies of the test split) in {time.perf_counter() - t:.1f} s")

        naive_store = Store.create(str(tmp_path / "naive.sqlite"))
        t, c = time.perf_counter(), time.process_time()
        n_naive = naive_import(naive_store, SPLIT, args.naive_rows)
        naive_s, naive_cpu = time.perf_counter() - t, time.process_time() - c
        naive_rate = n_naive / naive_s
        print(f"naive ORM per row : {n_naive:>9,} rows in {naive_s:6.2f} s = {naive_rate:>9,.0f} rows/s "
              f"(CPU {naive_cpu:.2f} s)")

        store = Store.create(args.db or str(tmp_path / "bulk.sqlite"))
        t, c = time.perf_counter(), time.process_time()
        summary = import_3drad(store.db, tmp_path / "split")
        bulk_s, bulk_cpu = time.perf_counter() - t, time.process_time() - c
        bulk_rate = summary.added / bulk_s
        print(f"bulk import_3drad : {summary.added:>9,} rows in {bulk_s:6.2f} s = {bulk_rate:>9,.0f} rows/s "
              f"(CPU {bulk_cpu:.2f} s, {summary.files} files)")
        t = time.perf_counter()
        again = import_3drad(store.db, tmp_path / "split")
        print(f"re-import         : {again.added:>9,} rows added in {time.perf_counter() - t:6.2f} s")

        print(f"CPU per row: naive {naive_cpu / n_naive * 1e6:.0f} us, bulk {bulk_cpu / summary.added * 1e6:.0f} us "
              "(wall figures include other load on the machine)")
        speedup = bulk_rate / naive_rate
        per_target = bulk_s * TARGET_ROWS / max(summary.added, 1)
        print(f"speed-up {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x): "
              f"{'OK' if speedup >= TARGET_SPEEDUP else 'MISSED'}")
        print(f"{TARGET_ROWS:,} pairs would take {per_target:.1f} s (target <= {TARGET_SECONDS:.0f} s): "
              f"{'OK' if per_target <= TARGET_SECONDS else 'MISSED'}")
        naive_store.close()

        bench_agreement(store, args.agreement_pairs, args.raters)
        if formats:
            bench_export(store, tmp_path, formats)
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
