"""Hostile-situation corpus for the store (issue 19): read-only files, databases from a newer
version, files that are not databases, blank names, NaN times, repeated assignments, racing
first opens. Each case asserts the message names the database, the row or the key, and that
nothing was written."""
from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from annotation.db import StoreError, current_revision
from annotation.store import Store
from tests.annotation.conftest import seed
from tests.annotation.test_error_corpus_imports import table_counts

REPO = Path(__file__).resolve().parents[2]


def _read_only_copy(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    path = tmp_path / "shared.sqlite"
    store = Store.create(str(path))
    seed(store, n_scans=2, per_task=1)
    store.assign(["ann"], 3, 0)
    counts = table_counts(store)
    store.close()
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return path, counts


WRITES = {
    "save a rating": lambda s, qa: s.save_rating("ann", qa, [3, 3, 3, 3, 3], True),
    "skip a pair": lambda s, qa: s.skip("ann", qa, "cannot judge"),
    "create a rater": lambda s, qa: s.ensure_rater("newcomer"),
    "assign": lambda s, qa: s.assign(["bob"], 2, 0),
    "add a scan": lambda s, qa: s.add_scan("test_9_a_1.nii.gz"),
}


@pytest.mark.parametrize("action", list(WRITES))
def test_read_only_file_opens_read_only_and_says_so_on_the_first_write(tmp_path: Path, action: str) -> None:
    path, counts = _read_only_copy(tmp_path)
    try:
        store = Store(str(path))
        qa = store.qa_pairs()[0].id
        assert len(store.queue("ann")) == 3  # reads work
        with pytest.raises(StoreError) as info:
            WRITES[action](store, qa)
        assert str(path) in str(info.value) and "read-only" in str(info.value)
        assert table_counts(store) == counts
        store.close()
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_read_only_file_refuses_db_init_and_the_cli_says_so_in_one_line(tmp_path: Path) -> None:
    from napari_ctvqa.cli import app

    path, _ = _read_only_copy(tmp_path)
    try:
        with pytest.raises(StoreError, match="not writable"):
            Store.create(str(path))
        csv_file = tmp_path / "r.csv"
        csv_file.write_text("VolumeName,Question,Annotator,VisualVerifiability,SpecificityClarity,"
                            "AnswerAppropriateness,QAAlignment,LinguisticQuality,Consistent\n"
                            "test_0_a_1.nii.gz,image_observation question 0?,ann,3,3,3,3,3,1\n")
        result = CliRunner().invoke(app, ["ratings", "import", str(csv_file), "--db", str(path)])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.count("\n") == 1 and "read-only" in result.output and str(path) in result.output
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_database_from_a_newer_version_says_the_tool_is_older(tmp_path: Path) -> None:
    from napari_ctvqa.cli import app

    path = tmp_path / "future.sqlite"
    Store.create(str(path)).close()
    with Store(str(path), check_schema=False).db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    for opening in (lambda: Store(str(path)), lambda: Store.create(str(path))):
        with pytest.raises(StoreError, match="this tool is older than the database") as info:
            opening()
        assert str(path) in str(info.value) and "0099" in str(info.value)
    result = CliRunner().invoke(app, ["db", "upgrade", "--db", str(path)])
    assert result.exit_code == 1 and "older than the database" in result.output and "Traceback" not in result.output
    assert current_revision(str(path)) == "0099"  # nothing was migrated


@pytest.mark.parametrize("content, words", [
    (b"this is a spreadsheet, not a database" * 200, "not a database"),
    (b"SQLite format 3\x00" + b"\xff" * 200, "database"),
], ids=["text file", "corrupt header"])
def test_a_file_that_is_not_a_database_is_named(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=words) as info:
        Store(str(path))
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_a_folder_or_a_missing_folder_is_named(tmp_path: Path) -> None:
    for target, words in ((tmp_path, "it is a folder"), (tmp_path / "nowhere" / "x.sqlite", "does not exist")):
        with pytest.raises(StoreError, match=words) as info:
            Store(str(target))
        assert str(target) in str(info.value)
    assert not (tmp_path / "nowhere").exists()


BAD_NAMES = ["", "   ", "\t\n", "a" * 129, "ann\nbob", "ann\x00", None, 42]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:12] for n in BAD_NAMES])
def test_annotator_names_are_checked_everywhere(seeded, name: object) -> None:
    store, ids = seeded
    before = table_counts(store)
    for write in (lambda: store.save_rating(name, ids[0], [3] * 5, True), lambda: store.skip(name, ids[0], "why"),
                  lambda: store.ensure_rater(name), lambda: store.assign([name], 2, 0)):
        with pytest.raises(ValueError, match="annotator name"):
            write()
    assert table_counts(store) == before


def test_annotator_names_are_trimmed(seeded) -> None:
    store, ids = seeded
    store.save_rating("  alice ", ids[0], [3] * 5, True)
    assert store.raters() == [("alice", "human")]
    assert store.rating("alice", ids[0]) is not None and store.rating(" alice", ids[0]) is not None


BAD_SECONDS = [math.nan, math.inf, -math.inf, -1.0, "12", True]


@pytest.mark.parametrize("seconds", BAD_SECONDS, ids=[repr(s) for s in BAD_SECONDS])
def test_times_must_be_finite_numbers(seeded, seconds: object) -> None:
    store, ids = seeded
    before = table_counts(store)
    for write in (lambda: store.save_rating("ann", ids[0], [3] * 5, True, seconds=seconds),
                  lambda: store.flag("ann", ids[0], "wrong answer", seconds=seconds)):
        with pytest.raises(ValueError, match="seconds must"):
            write()
    assert table_counts(store) == before


def test_assign_is_idempotent_add_adds_and_batches_list_and_remove(seeded) -> None:
    store, ids = seeded
    first = store.assign(["ann", "bob"], 6, 2, seed=1)
    counts = table_counts(store)
    again = store.assign([" bob", "ann"], 6, 2, seed=1)
    assert not again["changed"] and again["batch"] == first["batch"] and table_counts(store) == counts
    assert sorted(again["annotators"]["ann"]) == sorted(first["annotators"]["ann"])
    more = store.assign(["ann", "bob"], 6, 2, seed=1, add=True)
    assert more["changed"] and more["batch"] == f"{first['batch']}+1" and len(store.queue("ann")) == 12
    assert not set(more["annotators"]["ann"]) & set(first["annotators"]["ann"])
    listed = {b.name: b for b in store.batches()}
    assert set(listed) == {first["batch"], more["batch"]}
    assert listed[first["batch"]].annotators == ("ann", "bob") and listed[first["batch"]].pairs == 10
    assert listed[first["batch"]].shared == 2 and listed[first["batch"]].assignments == 12
    store.save_rating("ann", more["annotators"]["ann"][0], [3] * 5, True)
    removed = store.remove_batch(more["batch"])
    assert removed == {"batch": more["batch"], "removed": 11, "kept": 1}
    assert len(store.queue("ann")) == 7 and len(store.queue("bob")) == 6
    with pytest.raises(ValueError, match="already exists for annotator"):
        store.assign(["ann", "carl"], 6, 2, batch=first["batch"])
    before = table_counts(store)
    with pytest.raises(KeyError, match="no assignment batch named 'nope'"):
        store.remove_batch("nope")
    assert table_counts(store) == before


def test_assign_cli_twice_changes_nothing_and_batches_cli(seeded) -> None:
    from napari_ctvqa.cli import app

    store, _ = seeded
    args = ["assign", "--annotators", "ann,bob", "--per-annotator", "5", "--overlap", "1", "--db", store.url]
    assert CliRunner().invoke(app, args).exit_code == 0
    counts = table_counts(store)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "nothing changed" in again.output and table_counts(store) == counts
    assert CliRunner().invoke(app, [*args, "--add"]).exit_code == 0 and len(store.queue("ann")) == 10
    listed = CliRunner().invoke(app, ["batches", "list", "--db", store.url, "--json"])
    names = [b["name"] for b in __import__("json").loads(listed.output)]
    assert len(names) == 2
    removed = CliRunner().invoke(app, ["batches", "remove", names[1], "--db", store.url])
    assert removed.exit_code == 0 and "removed 10" in removed.output and len(store.queue("ann")) == 5
    missing = CliRunner().invoke(app, ["batches", "remove", "nope", "--db", store.url])
    assert missing.exit_code == 1 and "no assignment batch named 'nope'" in missing.output


# ---------------------------------------------------------------------- racing first opens
OPENER = """
import sys
from annotation.store import Store
store = Store(sys.argv[1])
store.ensure_rater(sys.argv[2])
store.close()
"""


@pytest.mark.slow  # 80 interpreter starts: about 2 minutes on 2 busy cores
def test_four_processes_open_a_brand_new_database_twenty_times_with_no_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    failures = []
    for round_ in range(20):
        path = tmp_path / f"new{round_}.sqlite"
        procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(path), f"rater{k}"], cwd=REPO, env=env,
                                  stderr=subprocess.PIPE, text=True) for k in range(4)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            if proc.returncode:
                failures.append(err.strip().splitlines()[-1])
        if not failures:
            store = Store(str(path))
            assert [n for n, _ in store.raters()] == [f"rater{k}" for k in range(4)]
            store.close()
    assert failures == []


def test_two_db_inits_at_once_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "ctvqa.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ctvqa = [sys.executable, "-c", "from napari_ctvqa.cli import main; main()"]
    for _ in range(2):
        procs = [subprocess.Popen([*ctvqa, "db", "init", "--db", str(path)], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(120), p.stderr.read()) for p in procs]
        assert all(code == 0 for code, _ in results), results
        path.unlink()
