"""Importers: 3D-RAD splits, CT-RATE reports/labels/metadata, M3D-VQA CSVs and ratings CSVs.

Each importer checks every row of every file before writing any of it and writes in one
transaction, so bad input leaves the database exactly as it was; all the bad rows of a run are
reported together (`BadInputError`, a capped list with file and line), so a file with six bad rows
takes one fix-up round, not six.
"""
from __future__ import annotations

from collections.abc import Sequence

#: Bad rows listed in one message; the rest are counted.
MAX_LISTED = 20


class BadInputError(ValueError):
    """Input that cannot be imported. The message names the file, the line and what is wrong; with
    several bad rows, its first line says how many and each following line names one.

    `problems` holds every (file, line, problem); `path`, `line` and `problem` are the first's."""

    def __init__(self, path: object, line: int | None, problem: str,
                 problems: Sequence[tuple[object, int | None, str]] | None = None) -> None:
        self.problems = list(problems) if problems else [(path, line, problem)]
        self.path, self.line, self.problem = path, line, problem
        super().__init__(_message(path, self.problems))

    @classmethod
    def of(cls, root: object, problems: Sequence[tuple[object, int | None, str]]) -> BadInputError:
        """One error for all the problems found in a run (files under `root`)."""
        path, line, problem = problems[0]
        return cls(path if len(problems) == 1 else root, line, problem, problems)


def _where(path: object, line: int | None) -> str:
    return f"{path}, line {line}" if line is not None else f"{path}"


def _listed(path: object, line: int | None, one_file: bool) -> str:
    if not one_file:
        return _where(path, line)
    return f"line {line}" if line is not None else "the file"


def _message(root: object, problems: list[tuple[object, int | None, str]]) -> str:
    if len(problems) == 1:
        path, line, problem = problems[0]
        return f"{_where(path, line)}: {problem}"
    files = {str(p) for p, _, _ in problems}
    one_file = len(files) == 1
    head = (f"{next(iter(files))}: {len(problems)} bad rows" if one_file
            else f"{root}: {len(problems)} bad rows in {len(files)} files") + "; nothing was imported"
    lines = [f"  {_listed(path, line, one_file)}: {problem}" for path, line, problem in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join([head, *lines])


class RowProblems:
    """Collects the bad rows of one import run, so that all of them are reported together."""

    def __init__(self, root: object) -> None:
        self.root = root
        self.items: list[tuple[object, int | None, str]] = []

    def add(self, path: object, line: int | None, problem: str) -> None:
        self.items.append((path, line, problem))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise BadInputError.of(self.root, self.items)

