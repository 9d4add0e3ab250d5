"""`ctvqa rate`: open napari on one annotator's rating queue (the rating widget, docked)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from napari_ctvqa.cli._common import fail, screenshot_window


def register(app: typer.Typer) -> None:
    """Add `ctvqa rate` to the `ctvqa` app."""
    app.command("rate")(rate)


def rate(
    annotator: str = typer.Option(..., "--annotator", "-a", help="Your annotator name (as assigned with `ctvqa assign`)."),
    db: str | None = typer.Option(None, "--db", help="Database URL (default: $CTVQA_DB, else the per-user SQLite file)."),
    status: bool = typer.Option(False, "--status", help="Print the queue's progress instead of opening napari."),
    as_json: bool = typer.Option(False, "--json", help="With --status: print the progress as JSON."),
    screenshot: Path | None = typer.Option(None, help="Save a screenshot of the window to this PNG and exit (headless checks)."),
) -> None:
    """Rate your queue of QA pairs in napari: five 0-5 scores and a consistency flag per pair.

    Keys (rating panel focused): 0-5 score, Tab/Up/Down move, C consistency, Enter submit, Backspace/Left back, Right forward, U next unrated, N note, S skip, F flag, PageUp/PageDown slice, L/M/B/A lung/mediastinum/bone/all window, R rubric.
    """  # noqa: E501 (one line: the help text would break where the source line breaks)
    from annotation.store import Store

    name = annotator.strip()
    if not name:
        fail("--annotator must not be empty")
    try:
        store = Store(db)
        known = [n for n, kind in store.raters() if kind == "human"]
        progress = store.progress(name)
    except Exception as exc:  # a wrong URL or an uninitialised database: one line, not a traceback
        fail(f"cannot open the rating queue in {db or 'the default database'}: {exc}. "
             "Create it with `ctvqa db init` and fill it with `ctvqa import ...` and `ctvqa assign ...`.")
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        fail(f"no annotator named {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
             + (f"; known: {', '.join(known)}" if known else "; a curator adds annotators with `ctvqa assign`"))
    if status:
        figures = {"annotator": name, "done": progress.done, "total": progress.total,
                   "skipped": progress.skipped, "flagged": progress.flagged, "seconds": progress.seconds,
                   "per_task": {t: {"done": d, "total": n} for t, (d, n) in progress.per_task.items()}}
        if as_json:
            typer.echo(json.dumps(figures))
        else:
            typer.echo(f"{name}: {progress.done}/{progress.total} done ({progress.skipped} skipped, "
                       f"{progress.flagged} flagged), {progress.seconds / 60:.1f} min")
            for task, (done, total) in sorted(progress.per_task.items()):
                typer.echo(f"  {task}: {done}/{total}")
        return
    if progress.total == 0:
        fail(f"no pairs are assigned to {name!r}; a curator assigns them with "
             f"`ctvqa assign --annotators {name} --per-annotator N --overlap K`")

    import napari

    from napari_ctvqa.widgets.rating import RatingWidget
    from napari_ctvqa.widgets.window import WindowWidget

    viewer = napari.Viewer(title=f"ctvqa rate: {name}")
    widget = RatingWidget(viewer, store=store, annotator=name)
    # the window presets also as keys on the canvas (L/M/B/F), as in `ctvqa view`
    viewer.window.add_dock_widget(WindowWidget(viewer), name="CT window", area="left")
    viewer.window.add_dock_widget(widget, name="Rate QA pairs", area="right")
    if screenshot is not None:
        screenshot_window(viewer, screenshot, (1500, 950))
        widget.close()
        viewer.close()
        return
    widget.setFocus()
    napari.run()
