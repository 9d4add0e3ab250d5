"""Tri-axial positional encodings: fixed sinusoids over unit (depth), row and column.

They are concatenated to the features rather than added, so the 2D encoder's own features are
left untouched (a pretrained tower keeps what it learnt) and the projection learns how much
position to use. Being fixed functions, they cost no parameters and extend to any grid.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

BASE = 10000.0


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """The Transformer encoding: PE(p, 2i) = sin(p / BASE^(2i/dim)), PE(p, 2i+1) = cos(...)."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"a sinusoidal encoding needs an even, positive size, got {dim}")
    freqs = BASE ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    angles = positions.float()[:, None] * freqs[None]
    out = torch.empty(positions.shape[0], dim, dtype=torch.float32, device=positions.device)
    out[:, 0::2], out[:, 1::2] = torch.sin(angles), torch.cos(angles)
    return out


def tri_axial(grid: Sequence[int], dims: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """(N_s, H', W', dz + dy + dx): at (k, j, i) the depth encoding of k, then the row encoding of j,
    then the column encoding of i (P^{N_s} + P^{H'} + P^{W'} concatenated)."""
    n, h, w = (int(g) for g in grid)
    dz, dy, dx = (int(d) for d in dims)
    pz = sinusoid(torch.arange(n, device=device), dz)[:, None, None].expand(n, h, w, dz)
    py = sinusoid(torch.arange(h, device=device), dy)[None, :, None].expand(n, h, w, dy)
    px = sinusoid(torch.arange(w, device=device), dx)[None, None, :].expand(n, h, w, dx)
    return torch.cat((pz, py, px), dim=-1)


def with_positions(features: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Z = F (+) P: (B, N_s, H', W', d_v) features with the tri-axial encodings appended."""
    b, n, h, w, _ = features.shape
    positions = tri_axial((n, h, w), dims, features.device).to(features.dtype)
    return torch.cat((features, positions[None].expand(b, -1, -1, -1, -1)), dim=-1)
