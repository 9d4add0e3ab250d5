"""How fast does the 3D-RAD importer write QA pairs, against a naive one-ORM-object-per-row import?

Builds a 3D-RAD-layout split of `--copies` x the real test split (33,910 rows each; copy k renames
every volume to split `rep<k>`, so each copy is new content), imports it with `import_3drad`
(Core bulk inserts, one transaction per file) into a fresh SQLite file, and in the same run times
the naive baseline on the first `--naive-rows` rows of the same files: per row an ORM query for
the scan (created when missing) and one `QAPair` object added and flushed, one commit per file.
Targets: bulk >= 10x the naive rows/s, and <= 30 s for 170,000 pairs (5 copies).

    .venv/bin/python bench/store.py [--copies 5] [--naive-rows 5000] [--db URL]
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from annotation.importers.bulk import content_key, scan_fields
from annotation.importers.threedrad import import_3drad, parse_file
from annotation.schema import Patient, QAPair, Scan
from annotation.store import Store

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO.parent / "shared" / "data" / "3d-rad" / "test"
TARGET_SPEEDUP, TARGET_SECONDS, TARGET_ROWS = 10.0, 30.0, 170_000


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--naive-rows", type=int, default=5000)
    parser.add_argument("--db", help="database URL for the bulk import (default: a temporary SQLite file)")
    args = parser.parse_args()
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
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
