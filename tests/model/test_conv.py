"""The stem's 3-D convolution takes oneDNN on a CPU (model.nets.conv): same weights, same results
to float rounding, gradients for training, and the plain path where oneDNN is not the fast one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.nets.conv import Conv3d
from model.nets.vision import ConvStem


@pytest.mark.parametrize("stride", [1, 2, (1, 2, 2)])
def test_it_computes_what_a_plain_convolution_computes_and_trains(stride) -> None:
    torch.manual_seed(0)
    conv = Conv3d(8, 16, 3, stride=stride, padding=1)
    x = torch.randn(1, 8, 16, 32, 32, requires_grad=True)  # one volume: torch's own rule picks im2col here
    out = conv(x)
    plain = F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    assert conv.weight.grad is not None and x.grad is not None and conv.weight.grad.abs().sum() > 0
    assert set(conv.state_dict()) == {"weight", "bias"}  # checkpoints load unchanged


def test_bfloat16_takes_the_plain_path_with_the_same_result() -> None:
    conv = Conv3d(4, 4, 3, padding=1).to(torch.bfloat16)
    x = torch.randn(1, 4, 8, 8, 8, dtype=torch.bfloat16)
    assert torch.equal(conv(x), F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding))


def test_the_stem_is_built_from_it() -> None:
    stem = ConvStem((32, 64, 64), (8, 16, 16), channels=4, hidden_size=16, depth=1)
    convs = [m for m in stem.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 7 and all(type(m) is Conv3d for m in convs)
