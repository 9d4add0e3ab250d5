"""Qt-free core: CT I/O and preprocessing, the 3D vision-language model, generation, finetuning, metrics.

Public names are imported lazily so that `import model` (and `ctvqa --help`) stays fast and a
tool that only reads CT files never pays for importing torch/transformers.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CTVolume": "model.ct_io",
    "CTReadError": "model.ct_io",
    "read_ct": "model.ct_io",
    "WINDOW_PRESETS": "model.windows",
    "to_model_input": "model.preprocess",
    "to_model_input_with_crop": "model.preprocess",
    "VLM": "model.vlm",
    "Answer": "model.vlm",
    "load_vlm": "model.vlm",
    "build_vision_encoder": "model.vision",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'model' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
