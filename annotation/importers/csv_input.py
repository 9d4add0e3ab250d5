"""Reading an import's CSV files so that every problem is found in one pass and named by file and
line: bytes that are not UTF-8 (each row that holds them), rows with the wrong number of fields, a
field over the csv module's 131,072-character limit (almost always an unclosed quote, which
swallows the rest of the file), an empty file, an unreadable one.

The importers' own row checks report into the same `RowProblems`, so a user sees every bad row of
a run at once.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from annotation.importers import BadInputError, RowProblems

FIELD_LIMIT = csv.field_size_limit()  # 131,072 characters by default
_UTF16_BOMS = ("\udcff\udcfe", "\udcfe\udcff")  # FF FE / FE FF read as UTF-8 with surrogateescape


def _not_utf8(value: str) -> list[str]:
    """The undecodable bytes (as 0x.. strings) hidden in `value` by the surrogateescape handler."""
    return [f"0x{ord(c) - 0xDC00:02x}" for c in value if "\udc80" <= c <= "\udcff"]


def _header_problem(fieldnames: Sequence[str], required: Sequence[str], exact: bool) -> str | None:
    text = ",".join(fieldnames)
    if text.startswith(_UTF16_BOMS):
        return "the file is UTF-16 (Excel's 'Unicode text'); save it as 'CSV UTF-8'"
    bad = _not_utf8(text)
    if bad:
        return f"the header holds bytes that are not UTF-8 ({' '.join(bad[:8])}); save the file as UTF-8"
    if exact and tuple(fieldnames) != tuple(required):
        return f"header {list(fieldnames)} differs from {list(required)}"
    missing = [c for c in required if c not in fieldnames]
    if missing:
        return f"missing column(s) {missing}; expected {list(required)}"
    return None


def csv_records(path: Path, required: Sequence[str], problems: RowProblems, *, exact: bool = False,
                name: object | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, record) for every structurally sound row of `path`; a row that is not is added to
    `problems` (named `name`, default the path) and skipped. A file whose header is unusable raises
    BadInputError at once, since none of its rows can be checked without it."""
    where = path if name is None else name
    try:
        handle = path.open(newline="", encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise BadInputError(where, None, f"cannot read the file ({exc.strerror or exc})") from None
    with handle as fh:
        reader = csv.DictReader(fh)
        try:
            fieldnames = reader.fieldnames
        except csv.Error as exc:
            raise BadInputError(where, 1, f"the header row cannot be read ({exc})") from None
        except OSError as exc:
            raise BadInputError(where, None, f"cannot read the file ({exc.strerror or exc})") from None
        if not fieldnames:
            raise BadInputError(where, None, f"empty file (expected a header row {list(required)})")
        problem = _header_problem(fieldnames, required, exact)
        if problem:
            raise BadInputError(where, 1, problem)
        yield from _rows(reader, required, problems, where)


def _rows(reader: csv.DictReader, required: Sequence[str], problems: RowProblems,
          where: object) -> Iterator[tuple[int, dict[str, str]]]:
    n_columns = len(reader.fieldnames or ())
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "field limit" in str(exc):
                problems.add(where, start, f"a field longer than {FIELD_LIMIT:,} characters (an unclosed "
                                           "quote?); the rows after it were not checked")
                return
            problems.add(where, reader.line_num, f"not a valid CSV row ({exc})")
            continue
        line = reader.line_num
        extra = record.pop(None, None)  # DictReader's key for fields beyond the header
        if extra is not None:
            problems.add(where, line, f"{n_columns + len(extra)} fields where the header has {n_columns}")
            continue
        missing = [c for c, v in record.items() if v is None]
        if missing and not set(missing) & set(required):  # spreadsheets drop trailing empty optional cells
            record.update(dict.fromkeys(missing, ""))
            missing = []
        if missing:
            problems.add(where, line, f"{n_columns - len(missing)} fields where the header has {n_columns} "
                                      f"(missing column(s) {missing[:5]}{' ...' if len(missing) > 5 else ''})")
            continue
        bad = {col: _not_utf8(value) for col, value in record.items() if value}
        bad = {col: b for col, b in bad.items() if b}
        if bad:
            col, found = next(iter(bad.items()))
            problems.add(where, line, f"column {col!r} holds bytes that are not UTF-8 ({' '.join(found[:8])}); "
                                      "save the file as UTF-8")
            continue
        yield line, record
