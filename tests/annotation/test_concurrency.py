"""Many annotators at once: 8 processes each writing 200 ratings into one SQLite file and into a
real PostgreSQL server lose nothing and never raise a lock error; a writer killed with SIGKILL
leaves every rating it reported as saved and an intact database."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from annotation.importers.bulk import insert_qa_rows, qa_row
from annotation.store import Store

REPO = Path(__file__).resolve().parents[2]
N_PROCESSES, N_RATINGS = 8, 200

# Each worker rates every pair under its own name, then all of them rate the same pairs under one
# shared name (same rows, racing updates); it prints each qa_id only after its commit returned.
WORKER = """
import sys
from annotation.importers.bulk import insert_qa_rows, qa_row
from annotation.store import Store
url, worker, ids = sys.argv[1], int(sys.argv[2]), [int(i) for i in sys.argv[3].split(",")]
store = Store(url)
for k, qa_id in enumerate(ids):
    store.save_rating(f"w{worker}", qa_id, [k % 6, worker % 6, 3, 4, 5], k % 2 == 0, seconds=1.0)
    print(qa_id, flush=True)
for qa_id in ids[: int(sys.argv[4])]:
    store.save_rating("everyone", qa_id, [worker % 6, 1, 2, 3, 4], True)
"""


def _seed_pairs(store: Store, n: int) -> list[int]:
    scan = store.add_scan("test_0_a_1.nii.gz")
    rows = [qa_row(scan.id, "image_observation", f"Question {k}?", "Yes.", source="imported") for k in range(n)]
    store.db.write(lambda session: insert_qa_rows(session, rows))
    return [q.id for q in store.qa_pairs()]


def _hammer(store: Store, n_shared: int) -> None:
    ids = ",".join(map(str, _seed_pairs(store, N_RATINGS)))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, store.url, str(w), ids, str(n_shared)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(N_PROCESSES)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
        assert "locked" not in err and len(out.split()) == N_RATINGS
    frame = store.ratings_frame()
    own = frame[frame["rater"] != "everyone"]
    assert len(own) == N_PROCESSES * N_RATINGS
    assert not own.duplicated(["qa_id", "rater"]).any()
    assert own.groupby("rater").size().eq(N_RATINGS).all()
    shared = frame[frame["rater"] == "everyone"]
    assert len(shared) == n_shared
    with store.db.engine.connect() as conn:
        history = conn.execute(text("SELECT count(*) FROM rating_history h JOIN raters r ON r.id = h.rater_id "
                                    "WHERE r.name = 'everyone'")).scalar()
    # Every write after the first changed the row (workers differ in the first score), except when
    # the same worker value repeats (worker % 6): at least one version per later writer.
    assert history >= n_shared * (len({w % 6 for w in range(N_PROCESSES)}) - 1)


@pytest.mark.slow
def test_eight_processes_write_into_one_sqlite_file(store: Store) -> None:
    _hammer(store, n_shared=20)
    with store.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


@pytest.mark.slow
@pytest.mark.postgres
def test_eight_processes_write_into_postgresql(postgres_url: str) -> None:
    store = Store.create(postgres_url)
    try:
        _hammer(store, n_shared=20)
    finally:
        store.close()


def test_sigkill_while_writing_loses_no_reported_rating(store: Store) -> None:
    ids = _seed_pairs(store, N_RATINGS)
    proc = subprocess.Popen([sys.executable, "-c", WORKER, store.url, "1", ",".join(map(str, ids)), "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reported = []
    deadline = time.monotonic() + 120
    while len(reported) < 40 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        reported.append(int(line))
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    reported += [int(v) for v in rest.split()]
    assert proc.returncode == -signal.SIGKILL
    assert 40 <= len(reported) < N_RATINGS  # it really died mid-way
    saved = set(store.ratings_frame()["qa_id"])
    assert set(reported) <= saved
    with store.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
