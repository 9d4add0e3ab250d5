"""The OmniCT encoder family: slice units -> shared 2D ViT -> tri-axial positions -> unshuffle ->
MoE hybrid projection -> global tokens, followed by the organ tokens.

The 2D tower is a small pre-norm ViT (the M3D ViT's blocks over 3 x K x K patches) so that it
trains on two CPU cores; it attends within one unit at a time, which is why a volume costs N_s
small attentions instead of one over all its patches. Sizes come from the LaMed config
(`vision_family="omnict"`), so `save_pretrained`/`from_pretrained` rebuild it exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.nets.omnict.composition import SLICES_PER_UNIT, compose_units, input_kind
from model.nets.omnict.organs import OrganAggregation, select_tokens, token_coverage
from model.nets.omnict.positions import with_positions
from model.nets.omnict.projection import MoEHybridProjection, token_unshuffle
from model.nets.vision import TransformerBlock

#: The organs whose tokens follow the global ones unless a config names others (model.ct.rois).
DEFAULT_ORGANS = ("lung_left", "lung_right", "mediastinum")


def omnict_grid(image_size: Sequence[int], patch_size: Sequence[int], unshuffle: int) -> tuple[int, int, int]:
    """(N_s, H', W') of a volume input; refuses sizes that would silently drop slices or pixels."""
    if len(image_size) != 3 or len(patch_size) != 3:
        raise ValueError(f"image_size and patch_size need 3 values, got {image_size} and {patch_size}")
    d, h, w = (int(v) for v in image_size)
    pd, ph, pw = (int(v) for v in patch_size)
    if pd != SLICES_PER_UNIT or ph != pw:
        raise ValueError(f"OmniCT patches are {SLICES_PER_UNIT} x K x K, got patch_size {tuple(patch_size)}")
    if d % SLICES_PER_UNIT:
        raise ValueError(f"OmniCT image depth must be a multiple of {SLICES_PER_UNIT} (slice units), got {d}")
    if h % (ph * unshuffle) or w % (ph * unshuffle):
        raise ValueError(f"image size {h}x{w} is not a multiple of patch {ph} x unshuffle {unshuffle}")
    return d // SLICES_PER_UNIT, h // ph, w // ph


def omnict_token_counts(image_size: Sequence[int], patch_size: Sequence[int], unshuffle: int,
                        num_organs: int, tokens_per_organ: int) -> tuple[int, int]:
    """(volume, slice) token counts: N_s (H'/m)(W'/m) resp. H' W' global tokens, plus O x L_c organ tokens."""
    n, h, w = omnict_grid(image_size, patch_size, unshuffle)
    organ = int(num_organs) * int(tokens_per_organ)
    return n * (h // unshuffle) * (w // unshuffle) + organ, h * w + organ


class SliceViT(nn.Module):
    """The 2D patch encoder shared by all units: (B, 3, H, W) to (B, H' W', hidden), final-normed."""

    def __init__(self, image_size: Sequence[int], patch: int, hidden_size: int, num_layers: int,
                 num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        h, w = (int(v) // patch for v in image_size)
        self.patch_embedding = nn.Conv2d(SLICES_PER_UNIT, hidden_size, kernel_size=patch, stride=patch)
        self.position_embeddings = nn.Parameter(torch.zeros(1, h * w, hidden_size))
        self.blocks = nn.ModuleList(TransformerBlock(hidden_size, mlp_dim, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.init_parameters(0.02)

    def init_parameters(self, std: float) -> None:
        with torch.no_grad():
            self.position_embeddings.normal_(0.0, std)

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(units).flatten(2).transpose(1, 2) + self.position_embeddings
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class OmniCTEncoder(nn.Module):
    """CT input (B, 1, D, H, W) (volume) or (B, 1, 1, H, W) (one axial slice), optional organ masks
    (B, O, D, H, W) in [0, 1] on the same grid, to (B, global + O * L_c, out_dim) LM-ready tokens."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        out_dim: int,
        image_size: Sequence[int] = (30, 256, 256),
        patch_size: Sequence[int] = (3, 16, 16),
        unshuffle: int = 2,
        position_dims: Sequence[int] = (32, 32, 32),
        organs: Sequence[str] = DEFAULT_ORGANS,
        tokens_per_organ: int = 8,
    ) -> None:
        super().__init__()
        self.image_size = tuple(int(v) for v in image_size)
        self.patch = int(patch_size[1])
        self.unshuffle = int(unshuffle)
        self.position_dims = tuple(int(v) for v in position_dims)
        self.organs = tuple(organs)
        self.num_tokens, self.num_slice_tokens = omnict_token_counts(
            self.image_size, patch_size, self.unshuffle, len(self.organs), tokens_per_organ)
        self.vision_tower = SliceViT(self.image_size[1:], self.patch, hidden_size, num_layers, num_heads, mlp_dim)
        token_dim = hidden_size + sum(self.position_dims)
        self.mm_projector = MoEHybridProjection(token_dim, token_dim * self.unshuffle**2, out_dim)
        self.organ_aggregation = OrganAggregation(out_dim, len(self.organs), tokens_per_organ) if self.organs else None

    def global_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, str]:
        """The L global tokens (B, L, out_dim) and the input kind."""
        kind = input_kind(images)
        expected_depth = 1 if kind == "slice" else self.image_size[0]
        if (images.shape[2], *images.shape[3:]) != (expected_depth, *self.image_size[1:]):
            raise ValueError(f"this encoder takes volumes of {self.image_size} or single slices of "
                             f"{self.image_size[1:]}, got {tuple(images.shape[2:])}")
        units = compose_units(images)
        b, n = units.shape[:2]
        features = self.vision_tower(units.reshape(b * n, *units.shape[2:]))
        h, w = (s // self.patch for s in self.image_size[1:])
        z = with_positions(features.reshape(b, n, h, w, -1), self.position_dims)
        z = token_unshuffle(z, 1 if kind == "slice" else self.unshuffle)
        return self.mm_projector(z.reshape(b, -1, z.shape[-1]), kind), kind

    def token_block(self, kind: str) -> tuple[int, int, int]:
        """Voxels (d, h, w) of the input behind one global token."""
        m = 1 if kind == "slice" else self.unshuffle
        return (1 if kind == "slice" else SLICES_PER_UNIT, self.patch * m, self.patch * m)

    def forward(self, images: torch.Tensor, organ_masks: torch.Tensor | None = None) -> torch.Tensor:
        tokens, kind = self.global_tokens(images)
        if self.organ_aggregation is None:
            return tokens
        selected = None
        if organ_masks is not None:
            expected = (images.shape[0], len(self.organs), *images.shape[2:])
            if tuple(organ_masks.shape) != expected:
                raise ValueError(f"organ masks must be {expected} (batch, organs {list(self.organs)}, input grid), "
                                 f"got {tuple(organ_masks.shape)}")
            selected = select_tokens(token_coverage(organ_masks.to(tokens.device), self.token_block(kind)))
        return torch.cat((tokens, self.organ_aggregation(tokens, selected)), dim=1)
