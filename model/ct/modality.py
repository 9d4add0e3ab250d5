"""CT or not: a series of another modality (MR, PET, ...) is shown, but not as Hounsfield units,
and the model, trained on CT only, refuses it unless the user asks for an answer anyway.

Override: `allow_non_ct=True` (`ctvqa ask --allow-non-ct`), or the environment variable
``CTVQA_ALLOW_NON_CT=1`` (the chat panel's model process reads it).
"""
from __future__ import annotations

import os
from typing import Any

from model.ct.volume import add_note

ALLOW_ENV = "CTVQA_ALLOW_NON_CT"


class NotCTError(ValueError):
    """The model was asked about a volume that is not CT."""


def is_ct(meta: dict[str, Any] | None) -> bool:
    """True unless the file says it is another modality (files that do not say count as CT)."""
    modality = (meta or {}).get("modality")
    return modality is None or str(modality).upper() == "CT"


def shows_hu(meta: dict[str, Any] | None) -> bool:
    """Whether the HU window presets mean anything for a volume (not for M3D's normalised arrays,
    nor for MR and other non-CT series)."""
    meta = meta or {}
    return not meta.get("normalised") and meta.get("hu", True) is not False


def mark_modality(meta: dict[str, Any]) -> None:
    """Tell a non-CT read what it is: no HU windows, and the model's refusal."""
    if not is_ct(meta):
        meta["hu"] = False
        add_note(
            meta, f"{meta['modality']} series, not CT: shown without the HU windows; the model (trained on CT) "
            f"refuses it unless asked anyway ({ALLOW_ENV}=1 or ctvqa ask --allow-non-ct)")


def require_ct(volume: Any, allow_non_ct: bool | None = None) -> None:
    """Raise NotCTError for a non-CT volume unless overridden (argument, else the environment)."""
    meta = getattr(volume, "meta", None)
    if is_ct(meta):
        return
    allowed = allow_non_ct if allow_non_ct is not None else os.environ.get(ALLOW_ENV, "") not in ("", "0")
    if not allowed:
        raise NotCTError(f"this is a {meta['modality']} series, not CT: the model was trained on CT only and would "
                         f"answer meaninglessly (set {ALLOW_ENV}=1, or ctvqa ask --allow-non-ct, to ask anyway)")
