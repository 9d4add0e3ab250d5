"""A prepared image as a prompt about one question takes it, for a model whose finding readout
gives the asked finding's token (nets.findings, `vision_finding_asked`): its grid tokens and the
token of the finding the question names.

The finding is read from the question's words as the evaluation and the training data read it
(`finding_asked`), so a question answers from the same token it was trained on. Each finding asked
about a scan gets its own view with its own KV prefix cache; the views share the scan's encoding,
so a chat's second finding costs one prefix pass of the language model, not another encoding.
Every other model gets the prepared image itself.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from model.evaluation.findings import finding_asked


def asks_about(model: Any, question: str) -> str | None:
    """The readout finding `question` names (longest match), or None; always None for a model
    without an asked-finding readout."""
    config = model.config
    if not getattr(config, "vision_finding_asked", False):
        return None
    return finding_asked(question, list(config.vision_finding_names))


def question_view(model: Any, prepared: Any, question: str) -> Any:
    """`prepared` as a prompt about `question` takes it (the image itself where the model has no
    asked-finding readout, or `prepared` is already a view)."""
    if not getattr(model.config, "vision_finding_asked", False) or prepared.views is None:
        return prepared
    finding = asks_about(model, question)
    view = prepared.views.get(finding)
    if view is None:
        view = dataclasses.replace(prepared, key=f"{prepared.key}:asked={finding}", prefix_cache=None, views=None,
                                   features=model.select_asked(prepared.features, [finding]))
        view = prepared.views.setdefault(finding, view)  # two threads asking at once keep one view
    return view
