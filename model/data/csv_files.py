"""Reading the CSV files of QA folders (3D-RAD task CSVs, box questions) with one kind of error
message: a missing column or an unreadable file names the file; each row comes with its
`path:line` for the caller's own row checks."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


def read_csv_records(path: Path, columns: Sequence[str], kind: str, error: type[Exception]
                     ) -> list[tuple[str, dict[str, str]]]:
    """(`path:line`, row) for every row of the CSV at `path`; `error` when a column of `columns`
    is missing (saying what a `kind` has) or the file is not readable UTF-8 CSV."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise error(f"{path}: missing column(s) {missing}; a {kind} has {list(columns)}")
            return [(f"{path}:{reader.line_num}", row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise error(f"{path}: not a readable UTF-8 CSV ({exc})") from None
