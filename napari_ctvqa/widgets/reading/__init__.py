"""The radiologist's reading room (GitHub issue 20): several scans, three views the right way up,
a crosshair and a ruler in millimetres, and the prior beside the current scan.

Why a package of small parts: napari knows layers, not scans, and has one canvas. `scans` makes
the open scans a list with one shown at a time (each placed where it can be seen), `views` adds
the coronal and sagittal viewers and the crosshair that links all three, `ruler` measures in mm,
`compare` registers a prior (SimpleITK, off the GUI thread) and shows it beside the current scan,
`geometry` turns viewer points into the patient's mm, and `panel` ties them into one dock widget.
The chat and the window panel follow the same selection (the selected layer), so they always
talk about the scan on screen.
"""
from napari_ctvqa.widgets.reading.panel import ReadingRoom

__all__ = ["ReadingRoom"]
