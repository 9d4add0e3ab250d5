"""napari plugin and app shell of napari-ctvqa (the only package that imports Qt or napari)."""

__version__ = "0.1.0"
