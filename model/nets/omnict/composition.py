"""Volumetric slice composition: how a volume or a lone slice becomes 3-channel units.

A 2D encoder sees three channels; filling them with three adjacent slices gives it the local
through-plane context an RGB encoder can use, and a lone slice (copied into three) goes through
the very same encoder, which is what lets one model answer about slices and volumes.
"""
from __future__ import annotations

import torch

SLICES_PER_UNIT = 3


def input_kind(images: torch.Tensor) -> str:
    """"slice" for a (B, 1, 1, H, W) input, "volume" for (B, 1, D, H, W) with D > 1."""
    if images.ndim != 5 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, D, H, W), got {tuple(images.shape)}")
    return "slice" if images.shape[2] == 1 else "volume"


def compose_units(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, D, H, W) to (B, N_s, 3, H, W): unit i holds slices 3i, 3i+1, 3i+2 (the paper's
    V_{3i-2}, V_{3i-1}, V_{3i}, counted from 1) for i < floor(D/3); one slice is copied into three."""
    kind = input_kind(images)
    b, _, d, h, w = images.shape
    if kind == "slice":
        return images[:, :, 0][:, None].expand(b, 1, SLICES_PER_UNIT, h, w)
    n_units = d // SLICES_PER_UNIT
    if n_units == 0:
        raise ValueError(f"a volume needs at least {SLICES_PER_UNIT} slices, got {d}")
    return images[:, 0, : n_units * SLICES_PER_UNIT].reshape(b, n_units, SLICES_PER_UNIT, h, w)
