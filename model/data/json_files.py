"""Reading the small JSON files of model and run folders with one kind of error message."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_file(path: Path, error: type[Exception], missing: str) -> dict[str, Any]:
    """The JSON at `path`, or `error` naming the file: `missing` when it is absent (say what the
    folder then is not), "not valid JSON" with the parser's reason when it is corrupt."""
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
