"""The chat panel's only way into the store: turns, scans, model versions and patient history.

The chat must keep working without a database (answers are then just not saved) and a store
error must never surface as a traceback, so every call is guarded the same way: no store means
no-op, a failure is reported as one panel message and reads as None. Keeping every call here
keeps that rule in one place.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_ctvqa.widgets.chat.turn import TurnState

#: The name the embedded default model has in the store and in stored turns.
DEFAULT_MODEL_NAME = "default"


def volume_name_of(layer: Any) -> str:
    """The scan's name in the store: the file the reader recorded, the sample data's volume name,
    else the layer name (so a reopened scan finds its turns again)."""
    metadata = layer.metadata or {}
    if metadata.get("path"):
        return Path(metadata["path"]).name
    return str(metadata.get("volume_name") or layer.name)


def earlier_scans(store: Any, scan_id: int) -> list[Any]:
    """The patient's scans before this one, oldest first (`ScanRecord`s; empty when none are
    stored): the priors the compare view opens and the longitudinal template's sequence."""
    earlier = []
    for scan in store.patient_scans(scan_id):
        if scan.id == scan_id:
            break
        earlier.append(scan)
    return earlier


def earlier_labels(store: Any, scan_id: int) -> list[Mapping[str, int]]:
    """Labels of the patient's scans before this one, oldest first (empty when none are stored)."""
    return [store.labels(scan.id) for scan in earlier_scans(store, scan_id)]


class ChatHistory:
    """The store (an `annotation.Store`, or None) behind the guard; `report` shows a failure."""

    def __init__(self, store: Any, report: Callable[[str], None]) -> None:
        self.store = store
        self._report = report

    def open_default(self) -> None:
        """Open the default database when no store was given; one that cannot be opened is reported."""
        if self.store is not None:
            return
        try:
            # deferred: SQLAlchemy loads only when no store is given
            from annotation.store import Store

            self.store = Store.create()
        except Exception as exc:  # noqa: BLE001 - the chat still works, only history is lost
            self.store = None
            self._report(f"The database could not be opened ({exc}); answers will not be saved.")

    def _call(self, what: str, func: Callable[[Any], Any]) -> Any:
        """`func(store)`; None when there is no store or the call failed (then `what` is reported)."""
        if self.store is None:
            return None
        try:
            return func(self.store)
        except Exception as exc:  # noqa: BLE001
            self._report(f"Could not {what}: {exc}")
            return None

    def scan(self, volume_name: str) -> Any:
        return self._call("read the scan", lambda store: store.scan_by_volume(volume_name))

    def add_scan(self, volume_name: str, path: str | None) -> int | None:
        """Register the scan on its first saved turn; its id, or None when that failed."""
        scan = self._call("register the scan", lambda store: store.add_scan(volume_name, path))
        return scan.id if scan else None

    def earlier_scans(self, scan_id: int) -> list[Any]:
        return self._call("read earlier scans", lambda store: earlier_scans(store, scan_id)) or []

    def earlier_labels(self, scan_id: int) -> list[Mapping[str, int]]:
        return self._call("read earlier scans", lambda store: earlier_labels(store, scan_id)) or []

    def turns(self, scan_id: int) -> list[Any]:
        return self._call("read earlier turns", lambda store: store.chat_turns(scan_id=scan_id)) or []

    def model_versions(self) -> list[Any]:
        return self._call("list model versions", lambda store: store.model_versions()) or []

    def model_version(self, name: str | None, path: str | None) -> str | None:
        """The name turns are stored under, registering the model version on first use."""
        name = name or DEFAULT_MODEL_NAME
        if self._call("look up the model version", lambda store: store.model_version(name)) is not None:
            return name
        kind = "default" if path is None else "external"
        registered = self._call("register the model version",
                                lambda store: store.register_model_version(name, path, kind=kind))
        return name if registered is not None else None

    def save_turn(self, scan_id: int, state: TurnState, conversation_id: str, model_name: str | None,
                  model_path: str | None) -> int | None:
        """Store a finished turn; its id, or None when it could not be saved."""
        model_version = self.model_version(model_name, model_path)
        return self._call("save the turn", lambda store: store.add_chat_turn(
            scan_id, state.question, state.text, conversation_id=conversation_id, model_version=model_version,
            choices=state.choices, choice=state.choice, choice_scores=state.choice_scores, box=state.box,
            latency_first_token_s=state.latency_first_token_s, total_s=state.total_s, n_tokens=state.n_tokens,
            task=None if state.task == "chat" else state.task, encoding_s=state.encoding_s))

    def send_to_queue(self, turn_id: int, task: str) -> int | None:
        """Make a stored turn a QA pair (source "chat"); the pair's id."""
        return self._call("send the turn to the rating queue", lambda store: store.chat_turn_to_qa(turn_id, task))
