"""M3D's 3D vision tower (ViT3D) and spatial pooling projector, with M3D's module names.

The module and parameter names mirror the published M3D-LaMed state dicts (a MONAI ViT), so
published weights load by a plain prefix mapping. Attention goes through PyTorch's
`scaled_dot_product_attention` (fused kernels) instead of M3D's explicit softmax; the result is
the same computation, faster and lighter on memory.
"""
from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
import torch.nn.functional as F
from torch import nn

from model.nets.conv import Conv3d
from model.nets.findings import FindingBoxes, FindingReadout, box_from_map
from model.nets.refine import BoxRefiner


def grid_shape(image_size: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int, int]:
    """Patch grid (d, h, w); a size that does not tile exactly would silently drop voxels, so refuse it."""
    if len(image_size) != 3 or len(patch_size) != 3:
        raise ValueError(f"image_size and patch_size need 3 values, got {image_size} and {patch_size}")
    bad = [(i, p) for i, p in zip(image_size, patch_size) if i % p]
    if bad:
        raise ValueError(f"image_size {tuple(image_size)} is not a multiple of patch_size {tuple(patch_size)}")
    return tuple(int(i) // int(p) for i, p in zip(image_size, patch_size))  # type: ignore[return-value]


def num_image_tokens(image_size: Sequence[int], patch_size: Sequence[int], pooling_size: int) -> int:
    """How many projected image features (= `<im_patch>` placeholders) a config produces."""
    grid = grid_shape(image_size, patch_size)
    if any(g % pooling_size for g in grid):
        raise ValueError(f"patch grid {grid} is not divisible by proj_pooling_size {pooling_size}")
    return prod(g // pooling_size for g in grid)


class _PatchFlatten(nn.Module):
    """einops `b c (d p1) (h p2) (w p3) -> b (d h w) (p1 p2 p3 c)` with plain reshapes (no einops dependency)."""

    def __init__(self, patch_size: Sequence[int]) -> None:
        super().__init__()
        self.patch_size = tuple(int(p) for p in patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        p1, p2, p3 = self.patch_size
        x = x.reshape(b, c, d // p1, p1, h // p2, p2, w // p3, p3)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, d, h, w, p1, p2, p3, c
        return x.reshape(b, (d // p1) * (h // p2) * (w // p3), p1 * p2 * p3 * c)


class PatchEmbedding(nn.Module):
    """Linear patch embedding plus a learnt position embedding (MONAI's "perceptron" variant)."""

    def __init__(self, in_channels: int, image_size: Sequence[int], patch_size: Sequence[int], hidden_size: int,
                 stem_channels: int = 0, stem_depth: int = 0) -> None:
        super().__init__()
        n_patches = prod(grid_shape(image_size, patch_size))
        patch_dim = in_channels * prod(patch_size)
        if stem_channels:
            self.patch_embeddings: nn.Module = ConvStem(image_size, patch_size, stem_channels, hidden_size,
                                                             stem_depth)
        else:  # index 1 holds the Linear so that names match M3D's `patch_embeddings.1.weight`
            self.patch_embeddings = nn.Sequential(_PatchFlatten(patch_size), nn.Linear(patch_dim, hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_patches, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens, and the convolutional stem's feature map (None for the linear embedding)."""
        if isinstance(self.patch_embeddings, ConvStem):
            tokens, features = self.patch_embeddings.encode(x)
            return tokens + self.position_embeddings, features
        return self.patch_embeddings(x) + self.position_embeddings, None


class ConvStem(nn.Module):
    """A small convolutional front end in place of the linear patch embedding (`stem_channels` > 0).

    A linear embedding of a 2,048-voxel patch cannot tell a 5 mm calcification anywhere in it from
    the patch's anatomy (it only shifts the patch mean by a thousandth); two 3x3x3 convolutions with
    a nonlinearity between them detect such a spot wherever it lies, and the third (strided)
    convolution cuts the result into the same token grid as the patches would. `depth` 1 adds four
    more (two more scales of context, to an eighth of the in-plane resolution): a nodule is told
    from a vessel cross-section by its shape over several slices, which two convolutions do not see.
    `reference` and `scale` standardise the input first (the training set's mean volume and spread,
    stored as weights so the saved model takes ordinary [0, 1] inputs)."""

    def __init__(self, image_size: Sequence[int], patch_size: Sequence[int], channels: int, hidden_size: int,
                 depth: int = 0) -> None:
        super().__init__()
        shrink = (2, 4, 4) if depth == 0 else (4, 8, 8)  # the stride of the feature map the tokens are cut from
        self.shrink = shrink
        if depth not in (0, 1):
            raise ValueError(f"a convolutional stem has depth 0 or 1, got {depth}")
        if any(int(p) % s for p, s in zip(patch_size, shrink)):
            raise ValueError(f"this convolutional stem needs patch sizes divisible by {shrink}, got {tuple(patch_size)}")
        self.register_buffer("reference", torch.zeros(1, 1, *(int(v) for v in image_size)))
        self.register_buffer("scale", torch.ones(()))
        layers = [(1, channels, (1, 2, 2)), (channels, 2 * channels, 2)]
        if depth:  # two more scales of context: a nodule is told from a vessel by its shape
            layers += [(2 * channels, 2 * channels, 1), (2 * channels, 4 * channels, 2),
                       (4 * channels, 4 * channels, 1), (4 * channels, 4 * channels, 1)]
        modules: list[nn.Module] = []
        for inputs, outputs, stride in layers:
            modules += [Conv3d(inputs, outputs, 3, stride=stride, padding=1),
                        nn.GroupNorm(min(4, outputs), outputs), nn.GELU()]
        cut = tuple(int(p) // s for p, s in zip(patch_size, shrink))
        self.convs = nn.Sequential(*modules, Conv3d(layers[-1][1], hidden_size, cut, stride=cut))

    @property
    def feature_channels(self) -> int:
        """Channels of the last feature map before the tokens are cut (what a dense head reads)."""
        return self.convs[-3].num_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """That feature map, for inputs already standardised (training on crops of volumes)."""
        return self.convs[:-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, hidden) and the feature map they are cut from (what the finding readout reads)."""
        x = (x - self.reference.to(x.dtype)) / self.scale.to(x.dtype)
        features = self.convs[:-1](x)
        return self.convs[-1](features).flatten(2).transpose(1, 2), features


class SelfAttention(nn.Module):
    """Multi-head self-attention; qkv laid out as M3D's `b h (qkv l d)` so its weights load unchanged."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, hidden_size * 3, bias=False)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT3D(nn.Module):
    """M3D's vision tower: returns the final-normed patch tokens (CLS dropped), (B, N, hidden)."""

    def __init__(
        self,
        image_size: Sequence[int] = (32, 256, 256),
        patch_size: Sequence[int] = (4, 16, 16),
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        in_channels: int = 1,
        stem_channels: int = 0,
        stem_depth: int = 0,
    ) -> None:
        super().__init__()
        self.image_size = tuple(int(s) for s in image_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.patch_embedding = PatchEmbedding(in_channels, image_size, patch_size, hidden_size, stem_channels,
                                              stem_depth)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.blocks = nn.ModuleList(TransformerBlock(hidden_size, mlp_dim, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[0]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The patch tokens, and the convolutional stem's feature map (None without a stem)."""
        if tuple(images.shape[2:]) != self.image_size:
            raise ValueError(f"vision tower expects images of size {self.image_size}, got {tuple(images.shape[2:])}")
        x, features = self.patch_embedding.encode(images)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:], features


class SpatialPoolingProjector(nn.Module):
    """Average-pool the patch grid (fewer LM tokens), then an MLP into the LM's embedding space."""

    def __init__(
        self,
        image_size: Sequence[int],
        patch_size: Sequence[int],
        in_dim: int,
        out_dim: int,
        pooling_size: int = 2,
        layer_num: int = 2,
    ) -> None:
        super().__init__()
        self.grid = grid_shape(image_size, patch_size)
        self.pooling_size = int(pooling_size)
        num_image_tokens(image_size, patch_size, self.pooling_size)  # validates divisibility
        modules: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(1, layer_num):
            modules += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.projector = nn.Sequential(*modules)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # avg_pool3d over non-overlapping windows written as a reshape + mean: same numbers, and it
        # also runs in bfloat16 on CPU (avg_pool3d does not); tokens are depth-major, channels last
        b, _, dim = tokens.shape
        (d, h, w), p = self.grid, self.pooling_size
        pooled = tokens.reshape(b, d // p, p, h // p, p, w // p, p, dim).mean(dim=(2, 4, 6))
        return self.projector(pooled.reshape(b, -1, dim))


class VisionEncoder(nn.Module):
    """Vision tower + projector: CT input (B,1,D,H,W) to LM-ready image features (B, tokens, out_dim)."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        out_dim: int,
        image_size: Sequence[int] = (32, 256, 256),
        patch_size: Sequence[int] = (4, 16, 16),
        pooling_size: int = 2,
        proj_layer_num: int = 2,
        stem_channels: int = 0,
        stem_depth: int = 0,
        n_findings: int = 0,
        box_findings: Sequence[int] = (),
        box_context: int = 0,
        box_refined: Sequence[int] = (),
        finding_tokens: bool = False,
        finding_calibration: bool = False,
        finding_asked: bool = False,
    ) -> None:
        super().__init__()
        self.vision_tower = ViT3D(image_size, patch_size, hidden_size, num_layers, num_heads, mlp_dim,
                                  stem_channels=stem_channels, stem_depth=stem_depth)
        self.mm_projector = SpatialPoolingProjector(
            image_size, patch_size, hidden_size, out_dim, pooling_size, proj_layer_num
        )
        self.num_tokens = num_image_tokens(image_size, patch_size, pooling_size)
        self.findings: FindingReadout | None = None
        if n_findings:
            stem = self.vision_tower.patch_embedding.patch_embeddings
            if not isinstance(stem, ConvStem):
                raise ValueError("a finding readout reads the convolutional stem's map: set vision_stem_channels > 0")
            self.findings = FindingReadout(
                stem.feature_channels, n_findings, [int(i) // s for i, s in zip(image_size, stem.shrink)],
                [g // int(pooling_size) for g in grid_shape(image_size, patch_size)], out_dim, finding_tokens,
                finding_calibration, finding_asked)
            self.num_tokens += n_findings if finding_tokens else int(finding_asked)  # placeholders in a prompt
        elif finding_tokens or finding_calibration or finding_asked:
            raise ValueError("finding tokens and calibration need a finding readout: give the readout's findings")
        self.box_findings: tuple[int, ...] = ()  # readout findings the box head locates
        self.boxes: FindingBoxes | None = None
        if box_findings:
            self.add_boxes(box_findings, box_context)
        self.refined: tuple[int, ...] = ()  # located findings whose box a second look at the input redraws
        self.refiner: BoxRefiner | None = None
        if box_refined:
            self.add_refiner(box_refined)

    def add_boxes(self, findings: Sequence[int], context: int = 0) -> FindingBoxes:
        """A new box head for these readout findings (training adds it once the stem is final)."""
        n = 0 if self.findings is None else self.findings.head.out_channels
        if not findings or not all(0 <= int(k) < n for k in findings):
            raise ValueError(f"box findings {tuple(findings)} must be findings of the readout ({n})")
        self.box_findings = tuple(int(k) for k in findings)
        self.boxes = FindingBoxes(self.findings.head.in_channels, len(self.box_findings),  # type: ignore[union-attr]
                                  context=context)
        return self.boxes

    def add_refiner(self, findings: Sequence[int]) -> BoxRefiner:
        """A new box refiner for these located findings (training adds it after the box head)."""
        if not findings or not {int(k) for k in findings} <= set(self.box_findings):
            raise ValueError(f"refined findings {tuple(findings)} must be located by the box head {self.box_findings}")
        self.refined = tuple(int(k) for k in findings)
        self.refiner = BoxRefiner(self.vision_tower.image_size, len(self.refined))
        return self.refiner

    def tower(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the projector reads: the tower's tokens and the finding logits (None without a readout)."""
        tokens, features = self.vision_tower.encode(images)
        return tokens, None if self.findings is None else self.findings(features)

    def project(self, tokens: torch.Tensor, findings: torch.Tensor | None = None,
                stage2_parts: bool = True) -> torch.Tensor:
        """LM-ready image features from `tower`'s outputs (stage 2 of training caches those).
        `stage2_parts` False: without the finding tokens and calibration stage 2 trains, what stage
        1's label head reads, so that the tower it trains is the same with or without them."""
        features = self.mm_projector(tokens)
        if findings is None:
            return features
        features = features + self.findings.embed(findings, calibrated=stage2_parts).to(features.dtype)
        if self.findings.tokens is None or not stage2_parts:
            return features
        return torch.cat((features, self.findings.embed_tokens(findings).to(features.dtype)), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(*self.tower(images))

    @torch.no_grad()
    def locate(self, images: torch.Tensor) -> dict[int, tuple[float, ...]]:
        """(1,1,D,H,W) input to the box (0-1 over the input) of every finding the box head
        locates, by readout index: one pass of the stem, whether or not the finding is there
        (the readout says that; a box question presumes it)."""
        return self.encode_and_locate(images)[1]

    @torch.no_grad()
    def encode_and_locate(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, tuple[float, ...]]]:
        """`forward` and `locate` of a (1,1,D,H,W) input from one pass of the tower: the stem is
        most of an encode, and answering a box question after the scan was encoded ran it again
        (a sixth of `ctvqa evaluate`'s batched answering time on the default model)."""
        tokens, features = self.vision_tower.encode(images)
        logits = None if self.findings is None else self.findings(features)
        located: dict[int, tuple[float, ...]] = {}
        if self.boxes is not None and logits is not None:
            distances = self.boxes(features)[0]
            located = {k: box_from_map(logits[0][k], distances[j]) for j, k in enumerate(self.box_findings)}
            if self.refiner is not None:
                coarse = torch.tensor([located[k] for k in self.refined], device=images.device)
                redrawn = self.refiner.refine(images, coarse, torch.arange(len(self.refined)))
                located.update({k: tuple(float(v) for v in box) for k, box in zip(self.refined, redrawn)})
        return self.project(tokens, logits), located
