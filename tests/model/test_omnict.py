"""OmniCT's encoder against the paper's equations (section 2), written out here element by element."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.nets.encoders import build_vision_encoder
from model.nets.omnict.composition import compose_units
from model.nets.omnict.encoder import OmniCTEncoder, omnict_token_counts
from model.nets.omnict.organs import OrganAggregation, select_tokens, token_coverage
from model.nets.omnict.positions import tri_axial, with_positions
from model.nets.omnict.projection import MoEHybridProjection, token_unshuffle


def test_volumetric_slice_composition_follows_the_paper() -> None:
    volume = torch.rand(2, 1, 10, 5, 6)  # D = 10: floor(10/3) = 3 units, the last slice unused
    units = compose_units(volume)
    assert units.shape == (2, 3, 3, 5, 6)
    for i in range(1, 4):  # s_i = Concat(V_{3i-2}, V_{3i-1}, V_{3i}), slices counted from 1
        expected = torch.stack([volume[:, 0, 3 * i - 3], volume[:, 0, 3 * i - 2], volume[:, 0, 3 * i - 1]], dim=1)
        assert torch.equal(units[:, i - 1], expected)
    one = torch.rand(1, 1, 1, 5, 6)
    replicated = compose_units(one)
    assert replicated.shape == (1, 1, 3, 5, 6)
    assert all(torch.equal(replicated[0, 0, c], one[0, 0, 0]) for c in range(3))


def test_tri_axial_encodings_are_the_sinusoidal_formula_concatenated() -> None:
    dims = (4, 6, 8)
    table = tri_axial((3, 4, 5), dims)
    assert table.shape == (3, 4, 5, sum(dims))

    def pe(pos: int, i: int, d: int) -> float:
        angle = pos / 10000 ** (2 * (i // 2) / d)
        return math.sin(angle) if i % 2 == 0 else math.cos(angle)

    for k, j, w in [(0, 0, 0), (2, 3, 4), (1, 2, 0), (2, 0, 3)]:
        expected = [pe(k, i, dims[0]) for i in range(dims[0])] + [pe(j, i, dims[1]) for i in range(dims[1])] \
            + [pe(w, i, dims[2]) for i in range(dims[2])]
        torch.testing.assert_close(table[k, j, w], torch.tensor(expected), atol=1e-6, rtol=0)
    features = torch.rand(2, 3, 4, 5, 7)
    z = with_positions(features, dims)  # Z = F (+) P^{N_s} (+) P^{H'} (+) P^{W'}
    assert torch.equal(z[..., :7], features) and torch.equal(z[0, ..., 7:], table) and torch.equal(z[1, ..., 7:], table)


def test_token_unshuffle_merges_m_by_m_neighbours() -> None:
    tokens = torch.rand(2, 3, 4, 6, 5)
    out = token_unshuffle(tokens, 2)
    assert out.shape == (2, 3, 2, 3, 4 * 5)
    for j in range(2):
        for i in range(3):
            expected = torch.cat([tokens[:, :, 2 * j + a, 2 * i + b] for a in range(2) for b in range(2)], dim=-1)
            assert torch.equal(out[:, :, j, i], expected)
    assert token_unshuffle(tokens, 1) is tokens  # m = 1 (slices) keeps the resolution
    with pytest.raises(ValueError, match="cannot be unshuffled"):
        token_unshuffle(tokens, 4)


def test_moe_hybrid_projection_routes_by_input_kind() -> None:
    torch.manual_seed(0)
    mhp = MoEHybridProjection(6, 24, 10)
    z_slice, z_volume = torch.rand(2, 5, 6), torch.rand(2, 5, 24)

    def psi(z: torch.Tensor, w: torch.nn.Linear) -> torch.Tensor:  # W_share sigma(W_x z)
        hidden = F.gelu(z @ w.weight.T + w.bias, approximate="none")
        return hidden @ mhp.shared.weight.T + mhp.shared.bias

    torch.testing.assert_close(mhp(z_slice, "slice"), psi(z_slice, mhp.slice_expert))
    torch.testing.assert_close(mhp(z_volume, "volume"), psi(z_volume, mhp.volume_expert))
    before = mhp(z_slice, "slice")
    with torch.no_grad():
        mhp.volume_expert.weight.add_(1.0)  # 1_volume = 0 for a slice: the volume expert plays no part
    assert torch.equal(mhp(z_slice, "slice"), before)
    with pytest.raises(ValueError, match="slice' or 'volume"):
        mhp(z_slice, "video")


def test_organ_tokens_aggregate_exactly_the_masked_tokens() -> None:
    torch.manual_seed(0)
    agg = OrganAggregation(dim=8, num_organs=2, tokens_per_organ=3)
    tokens = torch.randn(2, 10, 8)
    selected = torch.zeros(2, 2, 10, dtype=torch.bool)
    selected[0, 0, [1, 4, 5]] = True
    selected[0, 1, [9]] = True
    selected[1, 0, :] = True  # organ 1 is absent in the second scan
    out = agg(tokens, selected)
    assert out.shape == (2, 2 * 3, 8)
    for b in range(2):
        for o in range(2):
            got = out[b, 3 * o : 3 * o + 3]
            if not selected[b, o].any():
                assert torch.equal(got, agg.absent[o])
                continue
            chosen = tokens[b][selected[b, o]]  # F_o = F[M_o]
            weights = torch.softmax(agg.queries[o] @ chosen.T / math.sqrt(8), dim=-1)
            torch.testing.assert_close(got, weights @ chosen)
    changed = tokens.clone()
    changed[0, [0, 2, 3, 6, 7, 8]] += 5.0  # tokens outside both organs of scan 0
    assert torch.equal(agg(changed, selected)[0], out[0])


def test_mask_to_token_mapping_follows_the_token_grid() -> None:
    masks = torch.zeros(1, 2, 6, 8, 8)
    masks[0, 0, 3:6, 4:8, 0:4] = 1.0  # exactly token (unit 1, row 1, column 0) of a 2x2 grid of 4x4 blocks
    masks[0, 1, 0, 0, 0] = 1.0  # one voxel: smaller than any token, still gets its best token
    coverage = token_coverage(masks, (3, 4, 4))
    assert coverage.shape == (1, 2, 2 * 2 * 2)
    selected = select_tokens(coverage)
    assert selected[0, 0].nonzero().flatten().tolist() == [1 * 4 + 1 * 2 + 0]
    assert selected[0, 1].nonzero().flatten().tolist() == [0]
    assert not select_tokens(torch.zeros(1, 1, 8)).any()


def test_encoder_is_the_composition_of_its_parts_and_counts_tokens() -> None:
    torch.manual_seed(0)
    enc = OmniCTEncoder(16, 1, 2, 32, out_dim=12, image_size=(6, 16, 16), patch_size=(3, 4, 4), unshuffle=2,
                        position_dims=(4, 4, 4), organs=("a", "b"), tokens_per_organ=3).eval()
    assert (enc.num_tokens, enc.num_slice_tokens) == (2 * 2 * 2 + 6, 4 * 4 + 6)
    assert omnict_token_counts((6, 16, 16), (3, 4, 4), 2, 2, 3) == (14, 22)
    volume, masks = torch.rand(1, 1, 6, 16, 16), torch.zeros(1, 2, 6, 16, 16)
    masks[0, 0, :, :8] = 1.0
    with torch.no_grad():
        out = enc(volume, masks)
        units = compose_units(volume)[0]  # (2, 3, 16, 16)
        feats = enc.vision_tower(units).reshape(1, 2, 4, 4, 16)
        z = token_unshuffle(with_positions(feats, (4, 4, 4)), 2).reshape(1, 8, -1)
        global_tokens = enc.mm_projector(z, "volume")
        selected = select_tokens(token_coverage(masks, (3, 8, 8)))
        expected = torch.cat([global_tokens, enc.organ_aggregation(global_tokens, selected)], dim=1)
        torch.testing.assert_close(out, expected)
        assert enc(torch.rand(3, 1, 1, 16, 16)).shape == (3, 22, 12)
        with pytest.raises(ValueError, match="organ masks must be"):
            enc(volume, masks[:, :1])
        with pytest.raises(ValueError, match="takes volumes of"):
            enc(torch.rand(1, 1, 9, 16, 16))


def test_builder_selects_the_family_and_refuses_bad_geometry() -> None:
    m3d = build_vision_encoder(32, 1, 1, 64, 16, image_size=(8, 32, 32), patch_size=(4, 16, 16))
    assert type(m3d).__name__ == "VisionEncoder" and m3d(torch.rand(1, 1, 8, 32, 32)).shape == (1, 1, 16)
    omni = build_vision_encoder(32, 1, 1, 64, 16, image_size=(6, 32, 32), patch_size=(3, 8, 8), family="omnict")
    assert isinstance(omni, OmniCTEncoder) and omni(torch.rand(1, 1, 6, 32, 32)).shape == (1, omni.num_tokens, 16)
    with pytest.raises(ValueError, match="multiple of 3"):
        build_vision_encoder(32, 1, 1, 64, 16, image_size=(8, 32, 32), patch_size=(3, 8, 8), family="omnict")
    with pytest.raises(ValueError, match="3 x K x K"):
        build_vision_encoder(32, 1, 1, 64, 16, image_size=(6, 32, 32), patch_size=(4, 8, 8), family="omnict")
    with pytest.raises(ValueError, match="unknown vision family"):
        build_vision_encoder(32, 1, 1, 64, 16, family="siglip")
