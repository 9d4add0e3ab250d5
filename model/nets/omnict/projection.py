"""Token unshuffle and the slice-volume MoE hybrid projection into the LM's space.

A volume has N_s times the tokens of a slice; merging m x m neighbours into one token (their
features side by side) cuts that by m^2 without throwing features away, and slices keep m = 1.
The two kinds then go through their own expert (their inputs differ: m^2 times wider for volumes)
into one shared layer, so both land in the same LM space.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def token_unshuffle(tokens: torch.Tensor, m: int) -> torch.Tensor:
    """(B, N, H', W', C) to (B, N, H'/m, W'/m, m*m*C): output (j, i) holds, in this order, the
    features of inputs (m*j + a, m*i + b) for a, b = 0..m-1 (row-major over the m x m block)."""
    if m == 1:
        return tokens
    b, n, h, w, c = tokens.shape
    if h % m or w % m:
        raise ValueError(f"a {h}x{w} token grid cannot be unshuffled by {m}")
    x = tokens.reshape(b, n, h // m, m, w // m, m, c).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, n, h // m, w // m, m * m * c)


class MoEHybridProjection(nn.Module):
    """psi(Z) = W_share GELU(W_s Z 1_slice + W_v Z 1_volume); `slice_expert` is W_s, `volume_expert` W_v."""

    def __init__(self, slice_dim: int, volume_dim: int, out_dim: int) -> None:
        super().__init__()
        self.slice_expert = nn.Linear(slice_dim, out_dim)
        self.volume_expert = nn.Linear(volume_dim, out_dim)
        self.shared = nn.Linear(out_dim, out_dim)

    def forward(self, tokens: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "slice":
            routed = self.slice_expert(tokens)
        elif kind == "volume":
            routed = self.volume_expert(tokens)
        else:
            raise ValueError(f"input kind must be 'slice' or 'volume', got {kind!r}")
        return self.shared(F.gelu(routed))
