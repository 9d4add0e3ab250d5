"""Hostile-input corpus for the importers (issue 19): every case is generated here, run through the
real importer into a real SQLite file, and must fail with a BadInputError whose message names the
file and each bad line, while every table keeps exactly the rows it had (nothing half-written)."""
from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from annotation.importers import MAX_LISTED, BadInputError
from annotation.importers.ctrate import import_ctrate
from annotation.importers.m3d_vqa import COLUMNS as M3D_COLUMNS
from annotation.importers.m3d_vqa import import_m3d_vqa
from annotation.importers.ratings_csv import REQUIRED_COLUMNS, import_ratings_csv
from annotation.importers.threedrad import import_3drad
from annotation.qa_templates import CSV_COLUMNS as RAD_COLUMNS
from annotation.qa_templates import CT_RATE_LABELS
from annotation.store import Store

GOOD = ["test_0_a_1.nii.gz", "image_observation question 0?", "ann", "3", "4", "3", "5", "2", "1", "fine"]
BIG = "x" * 140_000  # over the csv module's 131,072-character field limit


def table_counts(store: Store) -> dict[str, int]:
    with store.db.engine.connect() as conn:
        return {t: conn.execute(text(f'SELECT COUNT(*) FROM "{t}"')).scalar()
                for t in inspect(conn).get_table_names()}


# The ten columns of DESIGN.md's ratings CSV (Status, Reason and Answer are optional extras).
COLUMNS = [*REQUIRED_COLUMNS, "Note"]


def csv_bytes(header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def row(**changes: str) -> list[str]:
    names = COLUMNS
    values = list(GOOD)
    for key, value in changes.items():
        values[names.index(key)] = value
    return values


def raw(values: list[str]) -> bytes:
    return b",".join(x.encode() for x in values) + b"\n"


def with_bytes(line_text: bytes) -> bytes:
    """A ratings file whose line 3 is `line_text` (raw bytes), between two good rows."""
    return csv_bytes(COLUMNS, [GOOD]) + line_text + b"\n" + raw(row(Annotator="carl"))


def names(message: str, path: Path, line: int) -> bool:
    """Whether the message names `path` and `line`: "path, line N:" for one problem or in a list
    over several files, "path: K bad rows" then "  line N:" in a list for one file."""
    return f"{path}, line {line}:" in message or (
        message.startswith(f"{path}: ") and f"\n  line {line}:" in message)


# (name, file bytes, bad lines that must be named, words that must be in the message)
RATINGS_CASES: list[tuple[str, bytes, list[int], list[str]]] = [
    ("latin-1 byte in the question", with_bytes(b'test_0_a_1.nii.gz,Gr\xf6\xdfe?,ann,3,3,3,3,3,1,'), [3], ["not UTF-8", "0xf6"]),
    ("windows-1252 quote in the note", with_bytes(b'test_0_a_1.nii.gz,q,ann,3,3,3,3,3,1,\x93ok\x94'), [3], ["not UTF-8"]),
    ("two non-UTF-8 lines", csv_bytes(COLUMNS, [GOOD]) + b"a\xe4,q,ann,3,3,3,3,3,1,\n"
     + raw(row(Annotator="carl")) + b"b\xe4,q,bob,3,3,3,3,3,1,\n", [3, 5], ["2 bad rows"]),
    ("UTF-16 file", csv_bytes(COLUMNS, [GOOD], "utf-16"), [1], ["UTF-16"]),
    ("non-UTF-8 header", b"VolumeName,Qu\xe9stion\n" + b",".join(x.encode() for x in GOOD) + b"\n", [1], ["not UTF-8"]),
    ("field over 131,072 characters", csv_bytes(COLUMNS, [GOOD, row(Note=BIG)]), [3], ["131,072"]),
    ("unclosed quote swallowing the rest", csv_bytes(COLUMNS, [GOOD]) + b'test_0_a_1.nii.gz,"open quote\n'
     + (b"more text\n" * 20_000), [3], ["unclosed quote"]),
    ("six bad scores", csv_bytes(COLUMNS, [row(QAAlignment="9")] * 6), [2, 3, 4, 5, 6, 7], ["6 bad rows"]),
    ("thirty bad rows, capped", csv_bytes(COLUMNS, [row(Consistent="maybe")] * 30),
     list(range(2, 2 + MAX_LISTED)), ["30 bad rows", f"and {30 - MAX_LISTED} more"]),
    ("too many fields", csv_bytes(COLUMNS, [GOOD + ["extra", "more"]]), [2], ["12 fields"]),
    ("too few fields", csv_bytes(COLUMNS, [GOOD[:4]]), [2], ["missing column"]),
    ("empty annotator", csv_bytes(COLUMNS, [row(Annotator="")]), [2], ["annotator name"]),
    ("blank annotator", csv_bytes(COLUMNS, [row(Annotator="   \t")]), [2], ["annotator name"]),
    ("annotator with a line break", csv_bytes(COLUMNS, [row(Annotator="ann\nbob")]), [3], ["line breaks"]),
    ("overlong annotator", csv_bytes(COLUMNS, [row(Annotator="a" * 300)]), [2], ["300 characters"]),
    ("NaN score", csv_bytes(COLUMNS, [row(VisualVerifiability="NaN")]), [2], ["visual_verifiability"]),
    ("infinite score", csv_bytes(COLUMNS, [row(LinguisticQuality="inf")]), [2], ["linguistic_quality"]),
    ("fractional score", csv_bytes(COLUMNS, [row(SpecificityClarity="3.5")]), [2], ["specificity_clarity"]),
    ("negative score", csv_bytes(COLUMNS, [row(AnswerAppropriateness="-1")]), [2], ["answer_appropriateness"]),
    ("consistency not a flag", csv_bytes(COLUMNS, [row(Consistent="maybe")]), [2], ["Consistent"]),
    ("the same rating twice", csv_bytes(COLUMNS, [GOOD, GOOD]), [3], ["repeats the rating of line 2"]),
    ("missing column", csv_bytes(COLUMNS[:-3], [GOOD[:-3]]), [1], ["missing column", "Consistent"]),
    ("NUL byte in a field", with_bytes(b"test_0_a_1.nii.gz,q\x00q,ann,3,3,3,3,3,1,"), [3], []),
    ("unknown QA pairs", csv_bytes(COLUMNS, [GOOD, row(Question="Not asked?"),
                                                        row(VolumeName="test_9_a_1.nii.gz")]), [3, 4], ["no QA pair"]),
    ("bad bytes, a bad score and good rows", with_bytes(b"test_0_a_1.nii.gz,\xff,ann,3,3,3,3,3,1,")
     + raw(row(QAAlignment="6", Annotator="dee")), [3, 5], ["2 bad rows"]),
]


@pytest.mark.parametrize("name, content, lines, words", RATINGS_CASES, ids=[c[0] for c in RATINGS_CASES])
def test_ratings_csv_corpus(seeded, tmp_path: Path, name: str, content: bytes, lines: list[int],
                            words: list[str]) -> None:
    store, _ = seeded
    path = tmp_path / "ratings.csv"
    path.write_bytes(content)
    before = table_counts(store)
    with pytest.raises(BadInputError) as info:
        import_ratings_csv(store, path)
    message = str(info.value)
    assert str(path) in message.splitlines()[0]
    for line in lines:
        assert names(message, path, line), (line, message)
    for word in words:
        assert word in message, (word, message)
    assert "Traceback" not in message and len(message.splitlines()) <= MAX_LISTED + 2
    assert table_counts(store) == before


def test_ratings_csv_corpus_names_the_folder_and_the_empty_file(seeded, tmp_path: Path) -> None:
    store, _ = seeded
    before = table_counts(store)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    for path, words in ((empty, "empty file"), (tmp_path, "cannot read")):
        with pytest.raises(BadInputError, match=words) as info:
            import_ratings_csv(store, path)
        assert str(path) in str(info.value)
    assert table_counts(store) == before


# ---------------------------------------------------------------------- the other importers
OPEN_ROW = ["1", "1", "test_1_a_1.nii.gz", "Where is the node?", "Right hilar region.", "Open", "-", "-", "-", "-", "-"]


def _split(root: Path, files: dict[str, bytes]) -> Path:
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return root


T1 = "Task1_Image_Observation/a.csv"
T2 = "Task1_Image_Observation/b.csv"
RAD_CASES: list[tuple[str, dict[str, bytes], list[tuple[str, int]], list[str]]] = [
    ("bad rows in two files", {T1: csv_bytes(list(RAD_COLUMNS), [OPEN_ROW, ["2", *OPEN_ROW[1:]]]),
                               T2: csv_bytes(list(RAD_COLUMNS), [["x", *OPEN_ROW[1:]], OPEN_ROW])},
     [(T1, 3), (T2, 2)], ["2 bad rows in 2 files"]),
    ("non-UTF-8 answer", {T1: csv_bytes(list(RAD_COLUMNS), [OPEN_ROW]) + b"1,1,test_1_a_1.nii.gz,Q?,R\xe9gion,Open,-,-,-,-,-\n"},
     [(T1, 3)], ["not UTF-8"]),
    ("wrong header and a bad row elsewhere", {T1: b"Task,Sub\n1,1\n", T2: csv_bytes(list(RAD_COLUMNS), [OPEN_ROW[:3]])},
     [(T1, 1), (T2, 2)], ["header"]),
    ("over-long question", {T1: csv_bytes(list(RAD_COLUMNS), [OPEN_ROW, [*OPEN_ROW[:3], BIG, *OPEN_ROW[4:]]])},
     [(T1, 3)], ["131,072"]),
    ("not a CT-RATE name and an empty answer", {T1: csv_bytes(list(RAD_COLUMNS), [
        [*OPEN_ROW[:2], "scan.nii.gz", *OPEN_ROW[3:]], [*OPEN_ROW[:4], " ", *OPEN_ROW[5:]]])},
     [(T1, 2), (T1, 3)], ["CT-RATE", "empty Question or Answer"]),
]


@pytest.mark.parametrize("name, files, where, words", RAD_CASES, ids=[c[0] for c in RAD_CASES])
def test_3drad_corpus(store: Store, tmp_path: Path, name: str, files: dict[str, bytes],
                      where: list[tuple[str, int]], words: list[str]) -> None:
    root = _split(tmp_path / "split", files)
    before = table_counts(store)
    with pytest.raises(BadInputError) as info:
        import_3drad(store.db, root)
    message = str(info.value)
    for relative, line in where:
        assert names(message, root / relative, line), message
    for word in words:
        assert word in message, (word, message)
    assert table_counts(store) == before


M3D_ROW = ["ct_case/000001/Axial.npy", "A mass.", "1", "Which plane?", "Axial", "Sagittal", "Coronal", "Oblique",
           "Axial", "A"]


@pytest.mark.parametrize("rows, extra, lines, word", [
    ([[*M3D_ROW[:2], "7", *M3D_ROW[3:]], [*M3D_ROW[:9], "F"], [*M3D_ROW[:3], "", *M3D_ROW[4:]]], b"", [2, 3, 4], "3 bad rows"),
    ([M3D_ROW], b"ct_case/2.npy,Le\xf3n,1,Q?,a,b,c,d,a,A\n", [3], "not UTF-8"),
], ids=["three bad rows", "non-UTF-8 report"])
def test_m3d_vqa_corpus(store: Store, tmp_path: Path, rows: list[list[str]], extra: bytes, lines: list[int],
                        word: str) -> None:
    path = tmp_path / "m3d.csv"
    path.write_bytes(csv_bytes(list(M3D_COLUMNS), rows) + extra)
    before = table_counts(store)
    with pytest.raises(BadInputError) as info:
        import_m3d_vqa(store.db, path)
    assert all(names(str(info.value), path, n) for n in lines) and word in str(info.value)
    assert str(path) in str(info.value) and table_counts(store) == before


SCANS = ["train_1_a_1.nii.gz", "train_1_b_1.nii.gz"]
REPORT_HEADER = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
META_HEADER = ["VolumeName", "XYSpacing", "ZSpacing", "StudyDate"]


def _ctrate(tmp_path: Path, labels: Callable[[str], list[str]], meta: Callable[[str], list[str]],
            report_extra: bytes = b"") -> dict[str, Path]:
    paths = {"labels": tmp_path / "labels.csv", "reports": tmp_path / "reports.csv", "metadata": tmp_path / "meta.csv"}
    paths["labels"].write_bytes(csv_bytes(["VolumeName", *CT_RATE_LABELS], [[n, *labels(n)] for n in SCANS]))
    paths["reports"].write_bytes(csv_bytes(REPORT_HEADER, [[n, "Cough.", "CT.", "No effusion.", "Normal."] for n in SCANS])
                                 + report_extra)
    paths["metadata"].write_bytes(csv_bytes(META_HEADER, [[n, *meta(n)] for n in SCANS]))
    return paths


ZEROS = ["0"] * len(CT_RATE_LABELS)
CTRATE_CASES = [
    ("bad label and bad spacing in two files", lambda n: ["2", *ZEROS[1:]] if n == SCANS[1] else ZEROS,
     lambda n: ["[0.7]", "1.5", "20210101"] if n == SCANS[0] else ["[0.7, 0.7]", "1.5", "20210101"], b"",
     [("labels", 3), ("metadata", 2)]),
    ("NaN and infinite spacing", lambda n: ZEROS, lambda n: ["[NaN, 0.7]", "1.5", ""] if n == SCANS[0]
     else ["[0.7, 0.7]", "inf", ""], b"", [("metadata", 2), ("metadata", 3)]),
    ("non-UTF-8 report and a bad date", lambda n: ZEROS, lambda n: ["[0.7, 0.7]", "1.5", "2021-01-01"], 
     b"train_2_a_1.nii.gz,Tos\xeds,CT,x,y\n", [("reports", 4), ("metadata", 2), ("metadata", 3)]),
]


@pytest.mark.parametrize("name, labels, meta, report_extra, where", CTRATE_CASES, ids=[c[0] for c in CTRATE_CASES])
def test_ctrate_corpus(store: Store, tmp_path: Path, name: str, labels, meta, report_extra: bytes,
                       where: list[tuple[str, int]]) -> None:
    paths = _ctrate(tmp_path, labels, meta, report_extra)
    before = table_counts(store)
    with pytest.raises(BadInputError) as info:
        import_ctrate(store.db, paths["reports"], paths["labels"], paths["metadata"])
    for key, line in where:
        assert names(str(info.value), paths[key], line), str(info.value)
    assert table_counts(store) == before


def test_ctrate_duplicate_volume_is_named_with_both_lines(store: Store, tmp_path: Path) -> None:
    paths = _ctrate(tmp_path, lambda n: ZEROS, lambda n: ["[0.7, 0.7]", "1.5", "20210101"])
    paths["labels"].write_bytes(paths["labels"].read_bytes() + f"{SCANS[0]},{','.join(ZEROS)}\n".encode())
    with pytest.raises(BadInputError, match="already listed on line 2") as info:
        import_ctrate(store.db, paths["reports"], paths["labels"], paths["metadata"])
    assert names(str(info.value), paths["labels"], 4)
    assert sum(store.count_qa_pairs().values()) == 0
