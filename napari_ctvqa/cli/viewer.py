"""`ctvqa view`: open CT files in napari with the window presets docked."""
from __future__ import annotations

from pathlib import Path

import typer

from napari_ctvqa.cli._common import fail, metadata_table_or_fail, screenshot_window


def register(app: typer.Typer) -> None:
    """Add `ctvqa view` to the `ctvqa` app."""
    app.command("view")(view)


def view(
    paths: list[Path] = typer.Argument(..., help="CT files (.nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd/.npy/.dcm) or DICOM folders."),
    window: str = typer.Option("mediastinum", help="Initial window: lung, mediastinum, bone or full."),
    screenshot: Path | None = typer.Option(None, help="Save a screenshot of the window to this PNG and exit (headless checks)."),
    metadata: Path | None = typer.Option(None, "--metadata", help="CT-RATE metadata.csv: each file's row (by name) applies where the file lacks slope/intercept/spacing/orientation."),
) -> None:
    """Open one or more CTs in napari (mm scale, CT window presets on keys L/M/B/F).

    Every file is read before the window opens, so a bad file stops here with its reason; what a
    read had to do (resampling a tilted series, replacing NaN, calibrating from the metadata
    row) is printed and shown on the canvas.
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

    import napari

    from napari_ctvqa.widgets.window import WindowWidget

    viewer = napari.Viewer(title="ctvqa view")
    for data, kwargs in layers:
        layer = viewer.add_image(data, **kwargs)
        layer.contrast_limits_range = window_limits("full", data)  # the slider spans all HU, not the window
    viewer.window.add_dock_widget(WindowWidget(viewer), name="CT window", area="right")
    if notes:  # on the canvas, wrapped to fit it: what the read did is part of what the user looks at
        import textwrap

        viewer.text_overlay.text = "\n".join(textwrap.fill(note, 90) for note in notes)
        viewer.text_overlay.position = "top_left"
        viewer.text_overlay.font_size = 9
        viewer.text_overlay.visible = True
    if screenshot is not None:
        screenshot_window(viewer, screenshot, (1400, 900))
        viewer.close()
        return
    napari.run()
