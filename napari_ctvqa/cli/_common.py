"""Small pieces every CLI module shares: clean failures and progress bars."""
from __future__ import annotations

import sys
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    import napari


_DEBUG = {"on": False}  # set by the global --debug option for the command being run


def set_debug(on: bool) -> None:
    _DEBUG["on"] = on


def debugging() -> bool:
    return _DEBUG["on"]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error (no traceback) and exit non-zero: users read messages, not stacks.
    Under `ctvqa --debug`, a call made while handling an exception lets that exception through
    instead, traceback and all."""
    active = sys.exc_info()[1]
    if _DEBUG["on"] and active is not None:
        raise active
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def metadata_table_or_fail(path: Path | None) -> dict[str, dict[str, str]] | None:
    """`--metadata CSV` read (CT-RATE metadata.csv rows by VolumeName), or a one-line failure."""
    if path is None:
        return None
    from model.ct.metadata import read_metadata_table

    if not path.is_file():
        fail(f"{path}: metadata table not found")
    try:
        return read_metadata_table(path)
    except ValueError as exc:
        fail(str(exc))


def finite_json(value: Any) -> Any:  # noqa: ANN401
    """`value` with NaN/Inf floats as null: JSON has no NaN, and a script parsing our output must not break."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


@contextmanager
def progress_bar(description: str, total: int | None = None, show: bool = True) -> Iterator:
    """A rich progress bar on stderr; yields `advance(n=1)`-style callback `update(done, total)`.
    With `show=False` (the other processes of a sharded run) the callback does nothing."""
    if not show:
        yield lambda done, total_=None: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.console import Console

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
    ) as prog:
        task = prog.add_task(description, total=total)

        def update(done: int, total_: int | None = None) -> None:
            prog.update(task, completed=done, total=total_ if total_ is not None else prog.tasks[0].total)

        yield update


def screenshot_window(viewer: napari.Viewer, path: Path, size: tuple[int, int]) -> None:
    """Save the whole window at `size` (for headless checks and docs)."""
    from qtpy.QtWidgets import QApplication

    viewer.window.resize(*size)
    QApplication.processEvents()
    viewer.reset_view()
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False)
    typer.echo(f"saved {path}")
