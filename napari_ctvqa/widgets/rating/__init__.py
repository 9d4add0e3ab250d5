"""The rating dock widget: one annotator works through their queue of QA pairs, keyboard first.

Why it looks like this: 3D-RAD's raters scored 75 pairs each in 1.5-2 hours, so every second per
pair counts. Each pair opens its scan at the slice and window its own words point to, the report
sits beside the question, the five scores and the consistency flag are set from the keyboard, and
the next scan is already read in the background. All data goes through `annotation.Store`
(blind: only this annotator's own ratings are ever read), the CT through `model.read_ct`.

Keys (active while the rating panel has keyboard focus; shown on the controls):
  0-5 score the highlighted dimension and move to the next   Tab / Down, Shift+Tab / Up  move
  C toggle consistency   Enter submit and go on   Backspace / Left previous pair   Right next pair
  N note   S skip (asks a reason)   F flag (asks a reason)   PageUp / PageDown  slice up / down
While a text field has focus keys type text; Enter or Esc leaves the field. Keys the panel does
not use (e.g. the window presets L/M/B) fall through to napari, which gets them from the main
window. Clicking the canvas gives napari the keyboard (arrows then step slices); click the panel,
or any of its buttons, to take it back.
"""
from napari_ctvqa.widgets.rating.scan_layer import LAYER_NAME
from napari_ctvqa.widgets.rating.widget import RatingWidget

__all__ = ["LAYER_NAME", "RatingWidget"]
