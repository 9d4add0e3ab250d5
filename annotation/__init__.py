"""Qt-free data backbone: schema and store, importers, QA generation, rubric, agreement,
curation filter, exporters and the synthetic cohort.

Public names are imported lazily (see `model/__init__.py` for why).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Store": "annotation.store",
    "default_db_url": "annotation.store",
    "CT_RATE_LABELS": "annotation.qa_templates",
    "TEMPORAL_CHOICES": "annotation.qa_templates",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'annotation' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
