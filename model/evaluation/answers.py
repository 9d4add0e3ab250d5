"""The answers folder of an evaluation: every answer written as it is made, so a run can resume.

Layout: `run.json` (the settings the answers depend on) and one `part-{rank}.jsonl` per process,
appended to. A unit of work is one volume under one run ("normal", "wrong_volume",
"noise_volume", "boxes"): its answer lines are written together and followed by a marker line
`{"done": volume, "run": run}`. Answer lines without their marker (a run killed mid-unit) are
ignored on reading, so a resumed run redoes that whole unit and its batches, and hence its
figures, are those of an uninterrupted run. Processes of a sharded run write their own part
files; reading merges them all.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
PART_GLOB = "part-*.jsonl"


class AnswersFolderError(ValueError):
    """An answers folder that cannot be resumed; the message says why and what to do."""


@dataclass
class Done:
    """What an answers folder already holds."""

    answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (question key, run) -> answer
    units: set[tuple[str, str]] = field(default_factory=set)  # (volume, run)
    unreadable: dict[str, str] = field(default_factory=dict)  # volume -> reason


class AnswerLog:
    """One process's view of an answers folder."""

    def __init__(self, folder: str | Path, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.rank = rank

    @property
    def part(self) -> Path:
        return self.folder / f"part-{self.rank}.jsonl"

    def check_resumable(self, settings: dict[str, Any]) -> None:
        """Refuse to resume answers made with other settings (their figures would mix)."""
        path = self.folder / RUN_FILE
        if not path.exists():
            return  # nothing to resume: a fresh run
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AnswersFolderError(f"{path}: not valid JSON ({exc}); rerun without --resume") from None
        changed = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in settings.items() if stored.get(k) != v]
        if changed:
            raise AnswersFolderError(f"{self.folder}: --resume with other settings than the answers there "
                                     f"({'; '.join(changed)}); rerun without --resume, or with the same settings")

    def start(self, settings: dict[str, Any], resume: bool) -> None:
        """Create the folder; without resume, drop earlier answers (ours only) and record the settings."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not resume:
            for old in self.folder.glob(PART_GLOB):
                old.unlink()
        (self.folder / RUN_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    def read(self) -> Done:
        """Every finished unit's answers, from all part files."""
        done = Done()
        for path in sorted(self.folder.glob(PART_GLOB)):
            pending: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a killed run: its unit has no marker either
                if "unreadable" in entry:
                    done.unreadable[entry["unreadable"]] = entry["reason"]
                elif "done" in entry:
                    unit = (entry["done"], entry["run"])
                    done.units.add(unit)
                    for answer in pending.pop(unit, []):
                        done.answers[(answer["key"], answer["run"])] = answer
                else:
                    pending.setdefault((entry["volume"], entry["run"]), []).append(entry)
        return done

    def _append(self, entries: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        if self.part.exists() and self.part.stat().st_size:
            with self.part.open("rb") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a line cut short by a killed run: start a new one
                    text = "\n" + text
        with self.part.open("a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def write_unit(self, volume: str, run: str, answers: list[dict[str, Any]]) -> None:
        """A unit's answers and its marker, in one write."""
        self._append([*({**a, "volume": volume, "run": run} for a in answers), {"done": volume, "run": run}])

    def write_unreadable(self, volume: str, reason: str) -> None:
        self._append([{"unreadable": volume, "reason": reason}])
