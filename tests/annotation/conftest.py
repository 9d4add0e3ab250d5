"""Fixtures of the annotation tests: a fresh SQLite Store, a small seeded one, and a real
PostgreSQL server (session-scoped; started from the system's initdb/pg_ctl, skipped only when
those binaries are missing)."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from annotation.store import Store

TASK_KEYS = ("image_observation", "anomaly_detection", "medical_computation", "existence_detection",
             "static_temporal_diagnosis", "longitudinal_temporal_diagnosis")
CHOICES = ("Yes", "No", "-", "-")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.create(str(tmp_path / "ctvqa.sqlite"))
    yield s
    s.close()


def seed(store: Store, n_scans: int = 4, per_task: int = 5) -> list[int]:
    """`per_task` pairs of every task on each of `n_scans` scans (one bulk transaction, as the
    importers write); returns the QA ids in insertion order."""
    from annotation.importers.bulk import ensure_scans, insert_qa_rows, qa_row
    from annotation.qa_templates import TASKS

    names = [f"test_{p // 2}_{'ab'[p % 2]}_1.nii.gz" for p in range(n_scans)]

    def work(session) -> None:  # noqa: ANN001
        scan_ids, _ = ensure_scans(session, names)
        insert_qa_rows(session, [
            qa_row(scan_ids[name], task, f"{task} question {k}?",
                   "Yes" if task == "existence_detection" else f"answer {k}", subtask="1",
                   task_number=TASKS[task].number,
                   choices=CHOICES if task == "existence_detection" else None,
                   answer_choice="A" if task == "existence_detection" else None, source="imported")
            for name in names for task in TASK_KEYS for k in range(per_task)])

    store.db.write(work)
    return [q.id for q in store.qa_pairs()]


@pytest.fixture
def seeded(store: Store) -> tuple[Store, list[int]]:
    return store, seed(store)


# ---------------------------------------------------------------------- PostgreSQL
def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    """PostgreSQL refuses to run as root: drop to the `postgres` system user when we are root."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, check=True, capture_output=True, text=True, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback; yields the server URL without a database."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="ctvqa-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
    _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"])
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


_db_numbers = count()


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A new, empty database on the session's server (one per test)."""
    import psycopg

    name = f"ctvqa_{os.getpid()}_{next(_db_numbers)}"
    with psycopg.connect(postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"
