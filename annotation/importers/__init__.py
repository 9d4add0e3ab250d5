"""Importers: 3D-RAD splits, CT-RATE reports/labels/metadata, M3D-VQA CSVs and ratings CSVs.

Each importer validates a whole file before writing any of it and writes it in one transaction,
so a bad row (reported with file and line) leaves the database exactly as it was.
"""
from __future__ import annotations


class BadInputError(ValueError):
    """A file that cannot be imported; the message names the file, the line and what is wrong."""

    def __init__(self, path: object, line: int | None, problem: str) -> None:
        where = f"{path}, line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = path, line, problem
