"""Qt-free core, one sub-package per concern (docs/architecture.md draws them):

- `model.ct`: reading CT files (`read_ct`), windows, preprocessing to the model's input;
- `model.nets`: the networks (vision encoders, the LaMed wrapper), published-checkpoint
  conversion and the tokenizer builder;
- `model.inference`: `VLM` (answer, stream, choice scores), `load_vlm`, prompts, boxes;
- `model.data`: QA folders and volume indexes that training and evaluation share;
- `model.training`: the default model's stages (`python -m model.training.default`) and LoRA
  finetuning (`python -m model.training.finetune`);
- `model.evaluation`: metrics and `evaluate_vlm`.

Public names are imported lazily so that `import model` (and `ctvqa --help`) stays fast and a
tool that only reads CT files never pays for importing torch/transformers.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CTVolume": "model.ct.volume",
    "CTReadError": "model.ct.volume",
    "read_ct": "model.ct.io",
    "WINDOW_PRESETS": "model.ct.windows",
    "to_model_input": "model.ct.preprocess",
    "to_model_input_with_crop": "model.ct.preprocess",
    "VLM": "model.inference.vlm",
    "Answer": "model.inference.vlm",
    "load_vlm": "model.inference.loading",
    "build_vision_encoder": "model.nets.encoders",
    "find_rois": "model.ct.rois",
    "read_roi_labels": "model.ct.rois",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'model' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
