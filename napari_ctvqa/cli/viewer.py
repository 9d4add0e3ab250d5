"""`ctvqa view`: open CT files in the reading room: three views, the window presets and the chat."""
from __future__ import annotations

from pathlib import Path

import typer

from napari_ctvqa.cli._common import fail, metadata_table_or_fail, screenshot_window

#: Window size of `--screenshot` (and the layout the docks are fitted to).
VIEW_SIZE = (1920, 1080)


def register(app: typer.Typer) -> None:
    """Add `ctvqa view` to the `ctvqa` app."""
    app.command("view")(view)


def view(
    paths: list[Path] = typer.Argument(..., help="CT files (.nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd/.npy/.dcm) or DICOM folders."),
    window: str = typer.Option("mediastinum", help="Initial window: lung, mediastinum, bone or full."),
    chat: bool = typer.Option(True, "--chat/--no-chat", help="Dock the chat panel (the model loads in its own process)."),
    three_views: bool = typer.Option(True, "--three-views/--one-view", help="Coronal and sagittal views beside the axial one."),
    db: str | None = typer.Option(None, help="Database URL (priors for Compare with prior, chat history); default $CTVQA_DB or the user data folder."),
    screenshot: Path | None = typer.Option(None, help="Save a screenshot of the window to this PNG and exit (headless checks)."),
    metadata: Path | None = typer.Option(None, "--metadata", help="CT-RATE metadata.csv: each file's row (by name) applies where the file lacks slope/intercept/spacing/orientation."),
) -> None:
    """Open one or more CTs in napari's reading room (mm scale, window keys L/M/B/F).

    Every file is read before the window opens, so a bad file stops here with its reason; what a
    read had to do (resampling a tilted series, replacing NaN, calibrating from the metadata
    row) is printed and shown on the canvas. The last file is shown; the scan list switches
    between them.
    """
    from model.ct.io import read_ct
    from model.ct.metadata import row_for
    from model.ct.modality import shows_hu
    from model.ct.volume import CTReadError
    from model.ct.windows import WINDOW_NAMES, window_limits

    from napari_ctvqa._reader import get_reader, layer_data

    if window.lower() not in WINDOW_NAMES:
        fail(f"unknown window {window!r}; choose one of {', '.join(WINDOW_NAMES)}")
    table = metadata_table_or_fail(metadata)
    layers, notes = [], []
    for path in paths:
        if not path.exists():
            fail(f"{path}: no such file or directory")
        if get_reader(str(path)) is None:
            fail(f"{path}: not a CT file or DICOM folder this plugin reads")
        try:
            volume = read_ct(path, metadata=row_for(table, path))
        except CTReadError as exc:
            fail(str(exc))
        data, kwargs, _ = layer_data(volume, path)
        if shows_hu(volume.meta):
            kwargs["contrast_limits"] = window_limits(window, data)
        layers.append((data, kwargs))
        notes += [f"{kwargs['name']}: {note}" for note in volume.meta.get("notes", [])]
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    store = _open_store(db)

    import napari

    from napari_ctvqa.widgets.reading import ReadingRoom
    from napari_ctvqa.widgets.window import WindowWidget

    viewer = napari.Viewer(title="ctvqa view")
    room = ReadingRoom(viewer, store=store, three_views=three_views)
    viewer.window.add_dock_widget(room, name="Reading room", area="left")
    viewer.window.add_dock_widget(WindowWidget(viewer), name="CT window", area="left")
    chat_widget = None
    if chat:
        from napari_ctvqa.widgets.chat import ChatWidget

        chat_widget = ChatWidget(viewer, store=store)
        viewer.window.add_dock_widget(chat_widget, name="Ask the model", area="right", add_vertical_stretch=False)
    for data, kwargs in layers:
        layer = viewer.add_image(data, **kwargs)
        layer.contrast_limits_range = window_limits("full", data)  # the slider spans all HU, not the window
    if notes:  # on the canvas, wrapped to fit it: what the read did is part of what the user looks at
        import textwrap

        viewer.text_overlay.text = "\n".join(textwrap.fill(note, 90) for note in notes)
        viewer.text_overlay.position = "top_left"
        viewer.text_overlay.font_size = 9
        viewer.text_overlay.visible = True
    if screenshot is not None:
        _screenshot(viewer, room, chat_widget, screenshot)
        return
    napari.run()


def _open_store(db: str | None):
    """The database, or None with a warning (the viewer works without one; history is then lost)."""
    from annotation.store import Store

    try:
        return Store.create(db)
    except Exception as exc:  # noqa: BLE001 - any database problem: say it, keep viewing
        typer.secho(f"warning: the database could not be opened ({exc}); no priors or chat history",
                    fg=typer.colors.YELLOW, err=True)
        return None


def _screenshot(viewer, room, chat_widget, path: Path) -> None:
    """Lay the window out at VIEW_SIZE, wait for the chat's model (at most a minute), save, close."""
    import time

    from qtpy.QtWidgets import QApplication

    viewer.window.resize(*VIEW_SIZE)
    deadline = time.monotonic() + 60
    while chat_widget is not None and not chat_widget.model_ready and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()
    room.fit()
    screenshot_window(viewer, path, VIEW_SIZE)
    if chat_widget is not None:
        chat_widget.shutdown()
    room.shutdown()
    viewer.close()
