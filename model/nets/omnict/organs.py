"""Organ-level tokens: a fixed number L_c of tokens per organ, aggregated from the global tokens
its mask covers, appended after the global tokens.

Why a fixed number: a lymph node covers two tokens and a lung hundreds; aggregating each organ
to L_c tokens magnifies the small ones and compresses the large ones, and keeps the prompt length
independent of the anatomy. The aggregation is attention pooling with L_c learnt queries per organ
over exactly the selected tokens (a masked softmax), so nothing outside the organ leaks in.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: A token belongs to an organ when at least this fraction of its voxels is inside the mask.
COVERAGE = 0.5


def token_coverage(masks: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """(B, O, D, H, W) masks in [0, 1] to (B, O, L): the fraction of each token's voxel block
    (d, h, w voxels per token) inside the mask, tokens in depth-major, row-major order."""
    bd, bh, bw = (int(v) for v in block)
    b, o, d, h, w = masks.shape
    usable = masks[:, :, : d // bd * bd, : h // bh * bh, : w // bw * bw].float()
    pooled = F.avg_pool3d(usable.reshape(b * o, 1, *usable.shape[2:]), kernel_size=(bd, bh, bw))
    return pooled.reshape(b, o, -1)


def select_tokens(coverage: torch.Tensor) -> torch.Tensor:
    """(B, O, L) bool: tokens at least COVERAGE inside the organ; an organ smaller than one token
    keeps the tokens it covers most (so a small organ is never lost); an absent organ none."""
    selected = coverage >= COVERAGE
    best = coverage.amax(dim=-1, keepdim=True)
    fallback = (coverage == best) & (best > 0)
    return torch.where(selected.any(dim=-1, keepdim=True), selected, fallback)


class OrganAggregation(nn.Module):
    """Agg: for organ o, softmax(Q_o F_o^T / sqrt(d)) F_o over its selected tokens F_o (L_c x d out);
    an organ with no selected token gets its learnt `absent` tokens instead."""

    def __init__(self, dim: int, num_organs: int, tokens_per_organ: int) -> None:
        super().__init__()
        self.num_organs, self.tokens_per_organ = int(num_organs), int(tokens_per_organ)
        self.queries = nn.Parameter(torch.zeros(self.num_organs, self.tokens_per_organ, dim))
        self.absent = nn.Parameter(torch.zeros(self.num_organs, self.tokens_per_organ, dim))
        self.init_parameters(0.02)

    def init_parameters(self, std: float) -> None:
        with torch.no_grad():
            self.queries.normal_(0.0, std)
            self.absent.normal_(0.0, std)

    def forward(self, tokens: torch.Tensor, selected: torch.Tensor | None) -> torch.Tensor:
        """(B, L, d) tokens and (B, O, L) selections (None: every organ absent) to (B, O * L_c, d)."""
        b, _, dim = tokens.shape
        absent = self.absent.to(tokens.dtype)[None].expand(b, -1, -1, -1)
        if selected is None:
            return absent.reshape(b, -1, dim)
        if selected.shape[:2] != (b, self.num_organs) or selected.shape[2] != tokens.shape[1]:
            raise ValueError(f"organ selection {tuple(selected.shape)} does not fit {b} x {self.num_organs} organs "
                             f"over {tokens.shape[1]} tokens")
        scores = torch.einsum("ocd,bld->bocl", self.queries.to(tokens.dtype), tokens) * dim ** -0.5
        scores = scores.masked_fill(~selected[:, :, None, :], float("-inf"))
        present = selected.any(dim=-1)  # (B, O)
        weights = torch.softmax(scores.masked_fill(~present[:, :, None, None], 0.0), dim=-1)
        pooled = torch.einsum("bocl,bld->bocd", weights, tokens)
        out = torch.where(present[:, :, None, None], pooled, absent)
        return out.reshape(b, -1, dim)
