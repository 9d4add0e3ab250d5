"""Small pieces every CLI module shares: clean failures and progress bars."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    import napari


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error (no traceback) and exit non-zero: users read messages, not stacks."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


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
