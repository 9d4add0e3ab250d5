"""Building a vision encoder of either family, from explicit sizes or from a LaMed config.

The families share the wrapper's interface (CT input in, LM-ready tokens out, `num_tokens`), so
the LaMed wrapper, prompts and loaders do not care which one a model uses; the config field
`vision_family` ("m3d" or "omnict") decides. This module sits above both families so that neither
imports the other.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from model.nets.omnict.encoder import DEFAULT_ORGANS, OmniCTEncoder
from model.nets.vision import VisionEncoder

FAMILIES = ("m3d", "omnict")
_DEFAULT_GEOMETRY = {"m3d": ((32, 256, 256), (4, 16, 16)), "omnict": ((30, 256, 256), (3, 16, 16))}


def build_vision_encoder(
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    out_dim: int,
    image_size: Sequence[int] | None = None,
    patch_size: Sequence[int] | None = None,
    *,
    family: str = "m3d",
    unshuffle: int = 2,
    position_dims: Sequence[int] = (32, 32, 32),
    organs: Sequence[str] = DEFAULT_ORGANS,
    tokens_per_organ: int = 8,
) -> nn.Module:
    """The vision tower + projector alone, for benchmarks and experiments.

    m3d: M3D's ViT3D with the spatial pooling projector (pooling 2, 2-layer MLP); image_size and
    patch_size default to (32, 256, 256) and (4, 16, 16). omnict: slice units, a 2D ViT over
    3 x K x K patches, tri-axial positions (`position_dims`), token unshuffle by `unshuffle`, the MoE
    hybrid projection and `tokens_per_organ` tokens per organ in `organs`; defaults
    (30, 256, 256) and (3, 16, 16). The unused family's keywords are ignored."""
    if family not in FAMILIES:
        raise ValueError(f"unknown vision family {family!r}; choose one of {FAMILIES}")
    default_image, default_patch = _DEFAULT_GEOMETRY[family]
    image_size = tuple(image_size or default_image)
    patch_size = tuple(patch_size or default_patch)
    if family == "m3d":
        return VisionEncoder(hidden_size, num_layers, num_heads, mlp_dim, out_dim, image_size, patch_size)
    return OmniCTEncoder(hidden_size, num_layers, num_heads, mlp_dim, out_dim, image_size, patch_size, unshuffle,
                         position_dims, organs, tokens_per_organ)


def vision_encoder_from_config(config: Any) -> nn.Module:
    """The encoder a LaMed config describes (sizes, family), projecting into its LM's hidden size."""
    sizes = dict(hidden_size=config.mm_hidden_size, num_layers=config.vision_num_layers,
                 num_heads=config.vision_num_heads, mlp_dim=config.vision_mlp_dim,
                 out_dim=config.text_config.hidden_size)
    if config.vision_family == "m3d":
        return VisionEncoder(**sizes, image_size=config.image_size, patch_size=config.patch_size,
                             pooling_size=config.proj_pooling_size, proj_layer_num=config.proj_layer_num,
                             stem_channels=config.vision_stem_channels,
                             stem_depth=config.vision_stem_depth,
                             n_findings=len(config.vision_finding_names),
                             box_findings=[list(config.vision_finding_names).index(n)
                                           for n in config.vision_box_findings],
                             box_context=config.vision_box_context,
                             box_refined=[list(config.vision_finding_names).index(n)
                                          for n in config.vision_box_refined],
                             finding_tokens=config.vision_finding_tokens,
                             finding_calibration=config.vision_finding_calibrated,
                             finding_asked=config.vision_finding_asked)
    return OmniCTEncoder(**sizes, image_size=config.image_size, patch_size=config.patch_size,
                         unshuffle=config.token_unshuffle, position_dims=config.position_dims,
                         organs=config.organ_names, tokens_per_organ=config.organ_tokens)
