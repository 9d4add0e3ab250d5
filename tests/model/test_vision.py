"""ViT3D and the projector against a plain re-statement of M3D's equations (MONAI ViT blocks)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.nets.encoders import build_vision_encoder
from model.nets.vision import SpatialPoolingProjector, ViT3D, num_image_tokens


def reference_vit(vit: ViT3D, images: torch.Tensor, heads: int) -> torch.Tensor:
    """M3D's forward written out: einops patching, pre-norm blocks, `b h (qkv l d)` split, explicit softmax."""
    b, c, d, h, w = images.shape
    p1, p2, p3 = vit.patch_size
    tokens = torch.stack([
        images[:, :, i * p1:(i + 1) * p1, j * p2:(j + 1) * p2, k * p3:(k + 1) * p3].permute(0, 2, 3, 4, 1).reshape(b, -1)
        for i in range(d // p1) for j in range(h // p2) for k in range(w // p3)
    ], dim=1)  # depth-major token order, (p1 p2 p3 c) features
    linear = vit.patch_embedding.patch_embeddings[1]
    x = tokens @ linear.weight.T + linear.bias + vit.patch_embedding.position_embeddings
    x = torch.cat([vit.cls_token.expand(b, -1, -1), x], dim=1)
    for blk in vit.blocks:
        y = F.layer_norm(x, x.shape[-1:], blk.norm1.weight, blk.norm1.bias)
        n, dim = y.shape[1], y.shape[2] // heads
        q, k, v = (y @ blk.attn.qkv.weight.T).reshape(b, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * dim ** -0.5, dim=-1)
        y = (att @ v).permute(0, 2, 1, 3).reshape(b, n, heads * dim)
        x = x + y @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
        y = F.layer_norm(x, x.shape[-1:], blk.norm2.weight, blk.norm2.bias)
        y = F.gelu(y @ blk.mlp.linear1.weight.T + blk.mlp.linear1.bias, approximate="none")
        x = x + y @ blk.mlp.linear2.weight.T + blk.mlp.linear2.bias
    x = F.layer_norm(x, x.shape[-1:], vit.norm.weight, vit.norm.bias)
    return x[:, 1:]


def test_vit3d_matches_m3d_equations() -> None:
    torch.manual_seed(0)
    heads = 2  # head dim 64, as in M3D (768 / 12)
    vit = ViT3D(image_size=(8, 32, 32), patch_size=(4, 16, 16), hidden_size=128, num_layers=2, num_heads=heads,
                mlp_dim=256).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.05)
        images = torch.rand(2, 1, 8, 32, 32)
        ours = vit(images)
        reference = reference_vit(vit, images, heads)
    assert ours.shape == (2, 8, 128)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_module_names_follow_m3d() -> None:
    names = set(ViT3D((8, 32, 32), (4, 16, 16), 64, 1, 1, 128).state_dict())
    for expected in (
        "cls_token", "patch_embedding.position_embeddings", "patch_embedding.patch_embeddings.1.weight",
        "patch_embedding.patch_embeddings.1.bias", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight",
        "blocks.0.attn.out_proj.weight", "blocks.0.norm2.bias", "blocks.0.mlp.linear1.weight",
        "blocks.0.mlp.linear2.bias", "norm.weight",
    ):
        assert expected in names
    assert "blocks.0.attn.qkv.bias" not in names  # M3D's qkv has no bias


def test_projector_pools_the_grid_in_token_order() -> None:
    torch.manual_seed(1)
    proj = SpatialPoolingProjector((8, 32, 32), (4, 8, 8), in_dim=4, out_dim=6, pooling_size=2)
    tokens = torch.randn(1, 2 * 4 * 4, 4)
    grid = tokens.transpose(1, 2).reshape(1, 4, 2, 4, 4)  # M3D: b (p1 p2 p3) d -> b d p1 p2 p3
    pooled = F.avg_pool3d(grid, kernel_size=2, stride=2).flatten(2).transpose(1, 2)
    expected = proj.projector(pooled)
    torch.testing.assert_close(proj(tokens), expected, atol=1e-6, rtol=1e-6)
    assert [n for n, _ in proj.named_parameters()] == [
        "projector.0.weight", "projector.0.bias", "projector.2.weight", "projector.2.bias"]


def test_build_vision_encoder_m3d_token_count() -> None:
    assert num_image_tokens((32, 256, 256), (4, 16, 16), 2) == 256
    encoder = build_vision_encoder(32, 1, 2, 64, 48, image_size=(16, 64, 64), patch_size=(4, 16, 16))
    out = encoder(torch.rand(1, 1, 16, 64, 64))
    assert out.shape == (1, num_image_tokens((16, 64, 64), (4, 16, 16), 2), 48) == (1, 8, 48)


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        ViT3D(image_size=(30, 256, 256))
    vit = ViT3D((8, 32, 32), (4, 16, 16), 64, 1, 1, 128)
    with pytest.raises(ValueError, match="expects images of size"):
        vit(torch.rand(1, 1, 8, 32, 48))
